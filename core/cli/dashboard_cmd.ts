/**
 * `deno task dashboard [--port 8000] [--host 127.0.0.1] [--runs-dir runs/] [--store URL] [--token T]`: serves
 * the dashboard over the run store (that of the runs directory, or `--store`) until SIGINT or SIGTERM. It
 * only reads: a missing store is an error (exit 2) and nothing is created; a write-protected store is
 * browsed read-only (remote logging answers 503).
 *
 * `--child` (not in the usage: core/cli/live_dashboard.ts passes it) serves the live dashboard of a training
 * command: writes off (no token, whatever `--token` or `$DSMOE_TOKEN` say), a free port if the one asked for
 * is taken, SIGINT ignored (Ctrl-C is for the trainer), and it exits when its stdin, the parent's pipe,
 * closes.
 *
 * @module
 */
import { closeRunStores, openRunStore } from "../runs/open_store.ts";
import { type DashboardServer, serveDashboard, type ServeDashboardOptions } from "../dashboard/server.ts";
import { parseCommandArgs } from "./args.ts";
import { EXIT_OK, UsageError } from "./errors.ts";
import { storeUsage, useStore } from "./store_flag.ts";
import type { CliIo } from "./io.ts";

/** Usage of `dashboard`. */
export const DASHBOARD_USAGE = `Usage: deno task dashboard [options]

Serves the runs dashboard: the runs table, live charts of each run (loss, perplexity, learning rate,
gradient norm, expert load, sparsity frontier), sweeps, a JSON API and remote logging. Stops on Ctrl-C.

Options:
  --port N            port to listen on (default 8000; 0 picks a free one)
  --host HOST         address to bind (default 127.0.0.1: this machine only)
  --allow-host H:P    also accept this Host header (repeatable; e.g. behind a proxy or on 0.0.0.0)
  --token TOKEN       bearer token for writes (POST /api/…); default: $DSMOE_TOKEN, else a random token
                      printed once to stderr
  --json              print {"url","port"} as one JSON line once listening
${storeUsage(22)}`;

/** Options of {@linkcode dashboardCommand} for tests. */
export interface DashboardCommandOptions {
  signal?: AbortSignal; // stops the server, as SIGINT does
}

/** Runs `dashboard`: resolves when the server has stopped. */
export async function dashboardCommand(
  args: string[],
  io: CliIo,
  o: DashboardCommandOptions = {},
): Promise<number> {
  const { values, positionals } = parseCommandArgs("dashboard", args, {
    port: { type: "string" },
    host: { type: "string" },
    "allow-host": { type: "string", multiple: true },
    token: { type: "string" },
    child: { type: "boolean" },
  });
  if (values.help) {
    io.out(DASHBOARD_USAGE);
    return EXIT_OK;
  }
  if (positionals.length > 0) throw new UsageError(`dashboard takes no arguments, got "${positionals[0]}"`);
  const port = _port(values.port);
  const hostname = values.host ?? "127.0.0.1";
  const runsDir = useStore(values);
  const child = values.child === true;
  let token = child ? undefined : values.token ?? Deno.env.get("DSMOE_TOKEN");
  if (token !== undefined && token.length < 8) throw new UsageError("--token must be at least 8 characters");

  const store = await openRunStore(runsDir, { create: false }); // never creates one
  if (token === undefined && !child) {
    token = _randomToken();
    io.err(`Write token (remote logging, Authorization: Bearer …): ${token}`);
  }
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  const signals = _listen(onSignal, child);
  o.signal?.addEventListener("abort", onSignal, { once: true });
  if (child) _exitOnStdinEof(onSignal);
  try {
    const options = {
      store,
      hostname,
      token,
      allowedHosts: values["allow-host"],
      signal: stop.signal,
      log: (line: string) => io.err(line),
    };
    const server = _serve(options, port, child);
    if (server.port !== port && port !== 0) io.err(`Port ${port} is in use: serving on ${server.port}`);
    const mode = store.access.mode === "read-write" ? "" : ` (${store.access.mode}: ${store.access.reason})`;
    io.out(`Dashboard at ${server.url} (store ${store.url}${mode}); Ctrl-C stops it`);
    if (!["127.0.0.1", "localhost", "::1"].includes(hostname)) {
      io.err(
        `Warning: bound to ${hostname}: reads are open to anyone who can reach it; writes need the token.`,
      );
    }
    if (values.json) io.out(JSON.stringify({ url: server.url, port: server.port }));
    await server.finished;
  } finally {
    for (const [s, fn] of signals) Deno.removeSignalListener(s, fn);
    await closeRunStores();
  }
  return EXIT_OK;
}

/** Serves on `port`; if it is taken, a usage error, or (`fallback`) a free port. */
function _serve(o: ServeDashboardOptions, port: number, fallback: boolean): DashboardServer {
  try {
    return serveDashboard({ ...o, port });
  } catch (e) {
    if (!(e instanceof Deno.errors.AddrInUse)) throw e;
    if (fallback && port !== 0) return serveDashboard({ ...o, port: 0 });
    throw new UsageError(
      `Cannot listen on ${o.hostname}:${port}: the address is in use; pass another --port`,
    );
  }
}

/** Calls `fn` when stdin ends (its writer, the parent process, closed it or exited). */
function _exitOnStdinEof(fn: () => void): void {
  (async () => {
    try {
      for await (const _ of Deno.stdin.readable) {
        // The parent sends nothing; only the end matters.
      }
    } catch {
      // A broken pipe is an end too.
    }
    fn();
  })();
}

function _port(v: string | undefined): number {
  if (v === undefined) return 8000;
  const n = Number(v);
  if (!/^\d+$/.test(v) || n > 65535) {
    throw new UsageError(`--port expects an integer from 0 to 65535, got "${v}"`);
  }
  return n;
}

function _randomToken(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/**
 * Listens for SIGINT and SIGTERM (where the OS has them); returns the listeners added. `child`: SIGINT and
 * SIGHUP are ignored (no-op listeners), as Ctrl-C and a closed terminal reach the whole process group: the
 * trainer stops on them with a checkpoint, and the child goes when the trainer does (its stdin closes).
 */
function _listen(fn: () => void, child: boolean): [Deno.Signal, () => void][] {
  const out: [Deno.Signal, () => void][] = [];
  for (const s of child ? ["SIGINT", "SIGTERM", "SIGHUP"] as const : ["SIGINT", "SIGTERM"] as const) {
    const listener = child && s !== "SIGTERM" ? _ignore : fn;
    try {
      Deno.addSignalListener(s, listener);
      out.push([s, listener]);
    } catch {
      // SIGTERM does not exist on Windows.
    }
  }
  return out;
}

function _ignore(): void {}

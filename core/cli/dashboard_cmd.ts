/**
 * `deno task dashboard [--port 8000] [--host 127.0.0.1] [--runs-dir runs/] [--store URL] [--token T]`: serves
 * the dashboard over the run store (that of the runs directory, or `--store`) until SIGINT or SIGTERM.
 *
 * @module
 */
import { closeRunStores, openRunStore } from "../runs/open_store.ts";
import { serveDashboard } from "../dashboard/server.ts";
import { parseCommandArgs } from "./args.ts";
import { EXIT_OK, UsageError } from "./errors.ts";
import { storeUsage, useStore } from "./store_flag.ts";
import type { CliIo } from "./main.ts";

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
  });
  if (values.help) {
    io.out(DASHBOARD_USAGE);
    return EXIT_OK;
  }
  if (positionals.length > 0) throw new UsageError(`dashboard takes no arguments, got "${positionals[0]}"`);
  const port = _port(values.port);
  const hostname = values.host ?? "127.0.0.1";
  const runsDir = useStore(values);
  let token = values.token ?? Deno.env.get("DSMOE_TOKEN");
  if (token !== undefined && token.length < 8) throw new UsageError("--token must be at least 8 characters");
  if (token === undefined) {
    token = _randomToken();
    io.err(`Write token (remote logging, Authorization: Bearer …): ${token}`);
  }

  const store = await openRunStore(runsDir);
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  const signals = _listen(onSignal);
  o.signal?.addEventListener("abort", onSignal, { once: true });
  try {
    let server;
    try {
      server = serveDashboard({
        store,
        hostname,
        port,
        token,
        allowedHosts: values["allow-host"],
        signal: stop.signal,
      });
    } catch (e) {
      if (e instanceof Deno.errors.AddrInUse) {
        throw new Error(`Cannot listen on ${hostname}:${port}: the address is in use; pass another --port`);
      }
      throw e;
    }
    io.out(`Dashboard at ${server.url} (store ${store.url}); Ctrl-C stops it`);
    if (!["127.0.0.1", "localhost", "::1"].includes(hostname)) {
      io.err(
        `Warning: bound to ${hostname}: reads are open to anyone who can reach it; writes need the token.`,
      );
    }
    if (values.json) io.out(JSON.stringify({ url: server.url, port: server.port }));
    await server.finished;
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, onSignal);
    await closeRunStores();
  }
  return EXIT_OK;
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

/** Listens for SIGINT and SIGTERM (where the OS has them); returns those it listens to. */
function _listen(fn: () => void): Deno.Signal[] {
  const out: Deno.Signal[] = [];
  for (const s of ["SIGINT", "SIGTERM"] as const) {
    try {
      Deno.addSignalListener(s, fn);
      out.push(s);
    } catch {
      // SIGTERM does not exist on Windows.
    }
  }
  return out;
}

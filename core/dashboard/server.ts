/**
 * Serves the dashboard app: `Deno.serve` on a Unix socket in a private (0700) temporary directory, behind the
 * connection guard (`guard.ts`) that owns the public TCP port, on 127.0.0.1 by default, answering only to
 * the Host names of the address it is bound to.
 *
 * @module
 */
import type { RunStore } from "../runs/store.ts";
import { createApp } from "./app.ts";
import { ConnectionGuard, type GuardLimits, guardLimits, type GuardStats } from "./guard.ts";
import { defaultAllowedHosts, SECURITY_HEADERS } from "./security.ts";

/** Options of {@linkcode serveDashboard}. */
export interface ServeDashboardOptions {
  store: RunStore;
  hostname?: string; // default 127.0.0.1
  port?: number; // default 8000; 0 picks a free port
  token?: string; // bearer token of writes; none: writes refused
  allowedHosts?: string[]; // extra Host values to accept (e.g. "box.lan:8000")
  signal?: AbortSignal; // aborting it stops the server
  pollMs?: number;
  heartbeatMs?: number;
  limits?: Partial<GuardLimits>; // the connection guard's (tests)
  log?: (line: string) => void; // the guard's lines on server-side faults (guard.ts); default: none
}

/** A running dashboard server. */
export interface DashboardServer {
  url: string; // http://127.0.0.1:8000/
  hostname: string;
  port: number;
  /** Resolves when the server has stopped (after `signal` aborts). */
  finished: Promise<void>;
  /** The connection guard's counters. */
  stats: () => GuardStats;
}

/**
 * Starts the dashboard server. Throws `Deno.errors.AddrInUse` (having started nothing) if the port is taken.
 *
 * @example
 * ```ts
 * import { openSqliteStore } from "../runs/sqlite_store.ts";
 * import { serveDashboard } from "./server.ts";
 * const store = openSqliteStore(":memory:");
 * const stop = new AbortController();
 * const server = serveDashboard({ store, port: 0, signal: stop.signal });
 * const res = await fetch(`${server.url}api/runs`);
 * console.log(res.status); // 200
 * await res.body?.cancel();
 * stop.abort();
 * await server.finished;
 * store.close();
 * ```
 */
export function serveDashboard(o: ServeDashboardOptions): DashboardServer {
  const hostname = o.hostname ?? "127.0.0.1";
  const listener = Deno.listen({ hostname, port: o.port ?? 8000 });
  const port = listener.addr.port;
  const limits = guardLimits(o.limits);
  const app = createApp({
    store: o.store,
    token: o.token,
    pollMs: o.pollMs,
    // A live stream's heartbeat keeps its connection from the guard's idle timeout.
    heartbeatMs: Math.min(o.heartbeatMs ?? 15_000, limits.idleTimeoutMs / 3),
    allowedHosts: [...defaultAllowedHosts(hostname, port), ...(o.allowedHosts ?? [])],
  });
  let inner: _Inner;
  try {
    inner = _serveInner((req) => _badTarget(req) ?? app.fetch(req));
  } catch (e) {
    listener.close();
    throw e;
  }
  const guard = new ConnectionGuard({ listener, connectUpstream: inner.connect, limits, log: o.log });
  const stop = () => {
    guard.close();
    inner.server.shutdown().catch(() => {});
  };
  if (o.signal?.aborted) stop();
  else o.signal?.addEventListener("abort", stop, { once: true });
  const finished = Promise.all([guard.finished, inner.server.finished]).then(inner.cleanup);
  const shown = hostname.includes(":") ? `[${hostname}]` : hostname === "0.0.0.0" ? "127.0.0.1" : hostname;
  return { url: `http://${shown}:${port}/`, hostname, port, finished, stats: () => guard.stats() };
}

/**
 * A 400 for what the Host check cannot judge: a request without Host (an HTTP/1.0 client; its URL would name
 * the Unix socket), or one whose target is absolute-form naming another host than its Host header. Null
 * for every other request.
 */
function _badTarget(req: Request): Response | null {
  const host = req.headers.get("host");
  const url = new URL(req.url);
  const error = host === null
    ? "Missing Host header"
    : url.protocol !== "http+unix:" && url.host.toLowerCase() !== host.toLowerCase()
    ? `Request target names host "${url.host.slice(0, 200)}", not the Host header's`
    : null;
  if (error === null) return null;
  const headers = { ...SECURITY_HEADERS, "Content-Type": "application/json; charset=utf-8" };
  return new Response(JSON.stringify({ error }), { status: 400, headers });
}

/** The server behind the guard, how to reach it, and how to remove what it left. */
interface _Inner {
  server: Deno.HttpServer;
  connect: () => Promise<Deno.Conn>;
  cleanup: () => Promise<void>;
}

/**
 * `Deno.serve` on a Unix socket in a new directory only this user can enter, so that only the guard reaches
 * it; where Unix sockets are not available (Windows), on a free loopback port instead.
 */
function _serveInner(handler: (req: Request) => Response | Promise<Response>): _Inner {
  const quiet = { onListen: () => {} };
  if (Deno.build.os === "windows") {
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, ...quiet }, handler);
    const { port } = server.addr as Deno.NetAddr;
    return {
      server,
      connect: () => Deno.connect({ hostname: "127.0.0.1", port }),
      cleanup: () => Promise.resolve(),
    };
  }
  const dir = Deno.makeTempDirSync({ prefix: "dsmoe-dashboard-" });
  Deno.chmodSync(dir, 0o700);
  const path = `${dir}/http.sock`;
  try {
    const server = Deno.serve({ path, transport: "unix", ...quiet }, handler);
    return {
      server,
      connect: () => Deno.connect({ transport: "unix", path }),
      cleanup: () => Deno.remove(dir, { recursive: true }).catch(() => {}),
    };
  } catch (e) {
    Deno.removeSync(dir, { recursive: true });
    throw e;
  }
}

/**
 * Serves the dashboard app with `Deno.serve`, on 127.0.0.1 by default, answering only to the Host names of
 * the address it is bound to.
 *
 * @module
 */
import type { RunStore } from "../runs/store.ts";
import { createApp } from "./app.ts";
import { defaultAllowedHosts } from "./security.ts";

/** Options of {@linkcode serveDashboard}. */
export interface ServeDashboardOptions {
  store: RunStore;
  hostname?: string; // default 127.0.0.1
  port?: number; // default 8000; 0 picks a free port
  token?: string; // bearer token of writes; none: writes refused
  allowedHosts?: string[]; // extra Host values to accept (e.g. "box.lan:8000")
  signal?: AbortSignal; // aborting it stops the server
  pollMs?: number;
}

/** A running dashboard server. */
export interface DashboardServer {
  url: string; // http://127.0.0.1:8000/
  hostname: string;
  port: number;
  /** Resolves when the server has stopped (after `signal` aborts). */
  finished: Promise<void>;
}

/**
 * Starts the dashboard server.
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
  let app: ReturnType<typeof createApp> | null = null;
  const server = Deno.serve(
    { hostname, port: o.port ?? 8000, signal: o.signal, onListen: () => {} },
    (req) => app ? app.fetch(req) : new Response("Starting", { status: 503 }),
  );
  const port = server.addr.port;
  // The port is known only once bound (port 0): the Host allowlist is made from it.
  app = createApp({
    store: o.store,
    token: o.token,
    pollMs: o.pollMs,
    allowedHosts: [...defaultAllowedHosts(hostname, port), ...(o.allowedHosts ?? [])],
  });
  const shown = hostname.includes(":") ? `[${hostname}]` : hostname === "0.0.0.0" ? "127.0.0.1" : hostname;
  return { url: `http://${shown}:${port}/`, hostname, port, finished: server.finished };
}

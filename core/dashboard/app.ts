/**
 * The dashboard as a Hono app over a {@linkcode RunStore}: HTML pages, the JSON read API with a live SSE
 * stream, and bearer-token remote logging. Every response carries the security headers; every request must
 * name an allowed Host. Served by {@linkcode serveDashboard} in `server.ts`; tests call `app.request()`.
 *
 * @module
 */
import { type Context, Hono } from "hono";
import { HTTPException } from "hono/http-exception";
import type { RunStore } from "../runs/store.ts";
import { StoreDamagedError, StoreReadOnlyError } from "../runs/store_errors.ts";
import { registerReadApi } from "./api_read.ts";
import { registerWriteApi } from "./api_write.ts";
import { errorPage, runPage, runsPage, sweepPage } from "./pages.ts";
import { sweepProgress, sweptKeys } from "./sweep_progress.ts";
import { plannedPoints } from "../runs/sweep_plan.ts";
import { summarizeRuns } from "./run_summary.ts";
import { checkId, DEFAULT_BODY_LIMIT, hostGuard, securityHeaders } from "./security.ts";
import { registerStatic } from "./static_files.ts";
import { registerStudies } from "./study_page.ts";

/** Options of {@linkcode createApp}. */
export interface DashboardOptions {
  store: RunStore;
  /** Bearer token that write requests must send; without one, writes are refused. */
  token?: string;
  /** Accepted Host headers (`host:port`); default: loopback names on any port. */
  allowedHosts?: string[];
  /** Largest request body in bytes (default 1 MiB). */
  bodyLimit?: number;
  /** How often a live stream polls the store, in ms (default 500). */
  pollMs?: number;
  /** Longest silence on a live stream before a heartbeat comment, in ms (default 15,000). */
  heartbeatMs?: number;
}

/** Most runs one page overlays. */
const _MAX_OVERLAY = 12;

/**
 * The dashboard app.
 *
 * @example
 * ```ts
 * import { openSqliteStore } from "../runs/sqlite_store.ts";
 * import { createApp } from "./app.ts";
 * const store = openSqliteStore(":memory:");
 * const res = await createApp({ store }).request("http://localhost/api/runs");
 * console.log(res.status, await res.json()); // 200 { runs: [] }
 * store.close();
 * ```
 */
export function createApp(o: DashboardOptions): Hono {
  const { store } = o;
  const app = new Hono();
  app.use("*", securityHeaders());
  app.use("*", hostGuard(o.allowedHosts));
  app.onError(_onError);
  app.notFound((c) =>
    _onError(new HTTPException(404, { message: `No route for ${c.req.method} ${c.req.path}` }), c)
  );

  registerStatic(app);
  registerReadApi(app, { store, pollMs: o.pollMs ?? 500, heartbeatMs: o.heartbeatMs ?? 15_000 });
  registerWriteApi(app, { store, token: o.token, bodyLimit: o.bodyLimit ?? DEFAULT_BODY_LIMIT });

  app.get("/", async (c) => c.html(runsPage(await summarizeRuns(store, await store.listRuns()))));

  app.get("/runs/:id", async (c) => {
    const run = await _run(store, checkId("run", c.req.param("id")));
    const ids = (c.req.query("compare") ?? "").split(",").map((s) => s.trim()).filter((s) =>
      s && s !== run.id
    );
    const others = await Promise.all(
      [...new Set(ids)].slice(0, _MAX_OVERLAY - 1).map((id) => _run(store, checkId("run", id))),
    );
    return c.html(runPage(run, others));
  });

  app.get("/compare", (c) => {
    const ids = (c.req.query("ids") ?? "").split(",").map((s) => s.trim()).filter((s) => s !== "");
    if (ids.length === 0) throw new HTTPException(400, { message: "Nothing to compare: pass ?ids=a,b" });
    for (const id of ids) checkId("run", id);
    const rest = ids.slice(1).join(",");
    return c.redirect(`/runs/${ids[0]}${rest ? `?compare=${rest}` : ""}`, 302);
  });

  app.get("/sweeps/:id", async (c) => {
    const id = checkId("sweep", c.req.param("id"));
    const [sweep, runs, reports] = await Promise.all([
      store.getSweep(id),
      store.listRuns({ sweepId: id }),
      store.listReports(id),
    ]);
    if (!sweep && runs.length === 0) throw new HTTPException(404, { message: `No sweep "${id}"` });
    const summaries = await summarizeRuns(store, runs);
    const planned = sweep ? plannedPoints(sweep) : null;
    const params = sweptKeys(runs, planned);
    const progress = sweepProgress(planned, summaries, Date.now());
    return c.html(sweepPage(id, sweep, summaries, params, reports[0] ?? null, progress));
  });

  registerStudies(app, store);

  app.get("/favicon.ico", (c) => c.body(null, 204));
  return app;
}

async function _run(store: RunStore, id: string) {
  const run = await store.getRun(id);
  if (!run) throw new HTTPException(404, { message: `No run "${id}"` });
  return run;
}

/**
 * Errors as JSON `{error}` under /api, as a page elsewhere; a store that refuses a write (read-only or
 * damaged) is 503; unexpected ones are 500.
 */
function _onError(err: Error, c: Context): Response {
  const unwritable = err instanceof StoreReadOnlyError || err instanceof StoreDamagedError;
  const status = err instanceof HTTPException ? err.status : unwritable ? 503 : 500;
  const message = err instanceof HTTPException || unwritable ? err.message : `Internal error: ${err.message}`;
  const headers: Record<string, string> = status === 401
    ? { "WWW-Authenticate": 'Bearer realm="dsmoe"' }
    : {};
  if (c.req.path.startsWith("/api/")) return c.json({ error: message }, status, headers);
  return c.html(errorPage(status, message), status, headers);
}

/**
 * The dashboard's read API (open to anyone the Host check lets in): runs, a run's metrics (downsampled),
 * its expert-load heatmap, its sparsity frontier, sweeps (with their queue, on Postgres), and the live SSE
 * stream of a run. Each request reads a bounded number of keys (key_index.ts): a run with 60,000 metric
 * keys costs what the page shows, not all its points.
 *
 * @module
 */
import type { Context, Hono } from "hono";
import { HTTPException } from "hono/http-exception";
import type { RunRecord, RunStore } from "../runs/store.ts";
import { sweepQueueOf } from "../runs/sweep_queue.ts";
import { plannedPoints } from "../runs/sweep_plan.ts";
import { sweepProgress, sweptKeys } from "./sweep_progress.ts";
import { MAX_POINTS } from "./downsample.ts";
import { type RunSummary, summarizeRun, summarizeRuns } from "./run_summary.ts";
import { checkId } from "./security.ts";
import {
  chooseSeries,
  frontierKeys,
  heatmapKeys,
  KeyIndex,
  MAX_LISTED_KEYS,
  metricsOf,
} from "./key_index.ts";
import { buildFrontier, buildHeatmap, type FrontierPoint } from "./series.ts";
import { X_AXES, type XAxis } from "./x_axis.ts";
import { SeriesCache } from "./series_cache.ts";
import { parseEventId, runStream } from "./stream.ts";

/** What the read routes need. */
export interface ReadApiOptions {
  store: RunStore;
  pollMs: number;
  heartbeatMs: number;
}

const _STATUSES = ["running", "finished", "failed", "interrupted"] as const;

/** A run by the `:id` path parameter: 400 if the id is malformed, 404 if there is no such run. */
export async function runParam(c: Context, store: RunStore): Promise<RunRecord> {
  const id = checkId("run", c.req.param("id") ?? "");
  const run = await store.getRun(id);
  if (!run) throw new HTTPException(404, { message: `No run "${id}"` });
  return run;
}

/** Adds the GET /api routes to `app`. */
export function registerReadApi(app: Hono, o: ReadApiOptions): void {
  const index = new KeyIndex(o.store);
  _runRoutes(app, o.store, index);
  _chartRoutes(app, o.store, index);
  _streamRoute(app, o);
  _sweepRoutes(app, o.store, index);
}

/** The sparsity frontier of a run, from at most MAX_FRONTIER_RULES rules. */
async function _frontier(store: RunStore, index: KeyIndex, runId: string) {
  const chosen = frontierKeys(await index.keys(runId));
  return { points: buildFrontier(await metricsOf(store, runId, chosen.keys)), truncated: chosen.truncated };
}

function _runRoutes(app: Hono, store: RunStore, index: KeyIndex): void {
  app.get("/api/runs", async (c) => {
    const sweep = c.req.query("sweep"), status = c.req.query("status");
    if (status !== undefined && !(_STATUSES as readonly string[]).includes(status)) {
      throw new HTTPException(400, {
        message: `Invalid status "${status}": expected ${_STATUSES.join(", ")}`,
      });
    }
    const runs = await store.listRuns({
      sweepId: sweep === undefined ? undefined : checkId("sweep", sweep),
      status: status as (typeof _STATUSES)[number] | undefined,
    });
    return c.json({ runs: await summarizeRuns(store, runs) });
  });

  app.get("/api/runs/:id", async (c) => {
    const run = await runParam(c, store);
    const [summary, keys, events, checkpoints, lastSeq] = await Promise.all([
      summarizeRun(store, run),
      index.keys(run.id),
      store.events(run.id),
      store.checkpoints(run.id),
      store.lastSeq(),
    ]);
    return c.json({
      run: { ...summary, config_yaml: run.config_yaml },
      keys: keys.slice(0, MAX_LISTED_KEYS),
      keys_total: keys.length,
      keys_truncated: keys.length > MAX_LISTED_KEYS,
      events,
      checkpoints,
      last_seq: lastSeq,
    });
  });
}

function _chartRoutes(app: Hono, store: RunStore, index: KeyIndex): void {
  const cache = new SeriesCache(store);
  app.get("/api/runs/:id/metrics", async (c) => {
    const run = await runParam(c, store);
    const keys = c.req.query("keys"), prefix = c.req.query("prefix");
    const x = (c.req.query("x") ?? "step") as XAxis;
    if (!X_AXES.includes(x)) {
      throw new HTTPException(400, { message: `Invalid x "${x}": expected step, tokens or time` });
    }
    const max = _maxParam(c.req.query("max"));
    const keyList = keys === undefined ? undefined : keys.split(",").filter((k) => k !== "");
    if (keyList && keyList.length > 200) {
      throw new HTTPException(400, { message: "Too many keys: at most 200" });
    }
    const lastSeq = await store.lastSeq(); // before the query: the stream resumes here, a client skips repeats
    const chosen = keyList
      ? {
        keys: prefix === undefined ? keyList : keyList.filter((k) => k.startsWith(prefix)),
        truncated: false,
      }
      : chooseSeries(await index.keys(run.id), prefix);
    const series = await cache.series(run.id, chosen.keys, x, max);
    const total = "total" in chosen ? chosen.total : chosen.keys.length;
    return c.json({
      run_id: run.id,
      x,
      max,
      last_seq: lastSeq,
      series,
      keys_total: total,
      truncated: chosen.truncated,
    });
  });

  app.get("/api/runs/:id/heatmap", async (c) => {
    const run = await runParam(c, store);
    const kind = c.req.query("kind") ?? "mlp";
    if (kind !== "mlp" && kind !== "attention") {
      throw new HTTPException(400, { message: `Invalid kind "${kind}": expected mlp or attention` });
    }
    const chosen = heatmapKeys(await index.keys(run.id), kind);
    const rows = await metricsOf(store, run.id, chosen.keys);
    return c.json({ run_id: run.id, ...buildHeatmap(rows, kind), truncated: chosen.truncated });
  });

  app.get("/api/runs/:id/frontier", async (c) => {
    const run = await runParam(c, store);
    return c.json({ run_id: run.id, ...await _frontier(store, index, run.id) });
  });
}

function _streamRoute(app: Hono, o: ReadApiOptions): void {
  const { store } = o;
  app.get("/api/runs/:id/stream", async (c) => {
    const run = await runParam(c, store);
    const resume = parseEventId(c.req.header("last-event-id") ?? "");
    const after = _seqParam("after", c.req.query("after"));
    const afterEvents = _seqParam("after_events", c.req.query("after_events"));
    const afterSeq = resume?.afterSeq ?? after ?? await store.lastSeq();
    const afterEventSeq = resume?.afterEventSeq ?? afterEvents ?? (await store.events(run.id)).at(-1)?.seq ??
      0;
    const body = runStream(store, run.id, {
      afterSeq,
      afterEventSeq,
      pollMs: o.pollMs,
      heartbeatMs: o.heartbeatMs,
    });
    return new Response(body, {
      headers: {
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache, no-transform",
        "X-Accel-Buffering": "no",
      },
    });
  });
}

function _sweepRoutes(app: Hono, store: RunStore, index: KeyIndex): void {
  app.get("/api/sweeps", async (c) => c.json({ sweeps: await store.listSweeps() }));

  app.get("/api/sweeps/:id", async (c) => {
    const id = checkId("sweep", c.req.param("id"));
    const [sweep, runs] = await Promise.all([store.getSweep(id), store.listRuns({ sweepId: id })]);
    if (!sweep && runs.length === 0) throw new HTTPException(404, { message: `No sweep "${id}"` });
    const points: (RunSummary & { frontier: FrontierPoint[] })[] = [];
    for (const r of runs) {
      points.push({
        ...await summarizeRun(store, r),
        frontier: (await _frontier(store, index, r.id)).points,
      });
    }
    const planned = sweep ? plannedPoints(sweep) : null;
    const params = sweptKeys(runs, planned);
    // Where each point stands in the sweep queue (Postgres stores; null elsewhere), without its config.
    const queued = await sweepQueueOf(store)?.points(id);
    const queue = queued?.map(({ config_yaml: _c, claim_id: _k, ...p }) => p) ?? null;
    const progress = sweepProgress(planned, points, Date.now());
    return c.json({ sweep, params, runs: points, queue, progress });
  });
}

function _maxParam(v: string | undefined): number {
  if (v === undefined) return MAX_POINTS;
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < 2) {
    throw new HTTPException(400, {
      message: `Invalid max "${v}": expected an integer from 2 to ${MAX_POINTS}`,
    });
  }
  return Math.min(n, MAX_POINTS);
}

function _seqParam(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d{1,15}$/.test(v)) {
    throw new HTTPException(400, { message: `Invalid ${name} "${v}": expected a seq number` });
  }
  return Number(v);
}

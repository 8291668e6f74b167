/**
 * Remote logging: POST routes that create a run, append metric points to it and finish it, so that a
 * training process on another machine can write into this dashboard's store. Every write needs the bearer
 * token; bodies are read under the byte limit, then validated (finite numbers only) before the store sees them.
 * A store open for reading only (write-protected or damaged) answers 503, naming the store.
 *
 * @module
 */
import type { Hono, MiddlewareHandler } from "hono";
import { HTTPException } from "hono/http-exception";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { newRunId } from "../runs/run_dir.ts";
import type { RunMeta } from "../runs/run_types.ts";
import type { EventKind, MetricPoint, RunStore } from "../runs/store.ts";
import { runParam } from "./api_read.ts";
import { bearerGuard, isValidId, readJsonBody } from "./security.ts";

/** What the write routes need. */
export interface WriteApiOptions {
  store: RunStore;
  token: string | undefined;
  bodyLimit: number;
}

/** Most points one request may log. */
export const MAX_POINTS_PER_REQUEST = 50_000;

function _describe(v: unknown): string {
  if (v === undefined) return "nothing";
  if (typeof v === "number") return String(v); // NaN, Infinity
  if (typeof v === "string") return `string ${JSON.stringify(v.slice(0, 40))}`;
  return v === null ? "null" : Array.isArray(v) ? "an array" : typeof v;
}

const _finite = z.number({ error: (iss) => `expected a finite number, got ${_describe(iss.input)}` });
const _count = z.int({ error: (iss) => `expected a non-negative integer, got ${_describe(iss.input)}` })
  .nonnegative();
const _id = z.string().refine(isValidId, 'expected 1–128 of A-Z a-z 0-9 . _ - (no "..")');
const _text = (max: number) =>
  z.string().max(max).refine((v) => !/\p{Cc}/u.test(v), "must not hold control characters");

/** Body of POST /api/runs. */
export const CreateRunBody = z.strictObject({
  id: _id.optional(),
  name: _text(128).min(1),
  config_yaml: z.string().max(1_000_000),
  seed: z.int().optional(),
  sweep_id: _id.optional(),
  sweep_params: z.record(z.string().max(200), z.union([z.string().max(1000), _finite, z.boolean(), z.null()]))
    .optional(),
});

/** Body of POST /api/runs/:id/metrics. */
export const LogMetricsBody = z.strictObject({
  points: z.array(z.strictObject({
    key: z.string().min(1).max(256).regex(/^[\x21-\x7e]+$/, "expected printable ASCII without spaces"),
    step: _count,
    tokens: _count.optional(),
    time: _finite.nonnegative().optional(),
    value: _finite,
  })).min(1).max(MAX_POINTS_PER_REQUEST),
});

/** Body of POST /api/runs/:id/finish. */
export const FinishRunBody = z.strictObject({
  status: z.enum(["finished", "failed", "interrupted"]),
  error: z.string().max(10_000).optional(),
});

/** Validates `body` with `schema`; a 400 naming each bad field otherwise. */
function _validate<T>(schema: z.ZodType<T>, body: unknown): T {
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  const what = r.error.issues.slice(0, 5).map((i) => {
    const path = i.path.map((p) => typeof p === "number" ? `[${p}]` : `.${String(p)}`).join("").replace(
      /^\./,
      "",
    );
    return `${path || "body"}: ${i.message}`;
  });
  throw new HTTPException(400, { message: `Invalid body: ${what.join("; ")}` });
}

/** Adds the POST /api routes to `app`. */
export function registerWriteApi(app: Hono, o: WriteApiOptions): void {
  const token = bearerGuard(o.token), writable = writableGuard(o.store);
  const auth: MiddlewareHandler = async (c, next) => {
    await token(c, async () => {
      await writable(c, next);
    });
  };
  _createRoute(app, auth, o);
  _metricsRoute(app, auth, o);
  _finishRoute(app, auth, o);
}

/** Refuses (503) every request while `store` is open for reading only, naming the store and why. */
export function writableGuard(store: RunStore): MiddlewareHandler {
  return async function writableGuard(_c, next) {
    const access = store.access;
    if (access.mode !== "read-write") {
      throw new HTTPException(503, {
        message: `The run store ${store.url} is ${access.mode}: ${access.reason}; writes are refused`,
      });
    }
    await next();
  };
}

function _createRoute(app: Hono, auth: MiddlewareHandler, o: WriteApiOptions): void {
  const { store } = o;
  app.post("/api/runs", auth, async (c) => {
    const b = _validate(CreateRunBody, await readJsonBody(c.req.raw, o.bodyLimit));
    try {
      parseYaml(b.config_yaml);
    } catch (e) {
      throw new HTTPException(400, {
        message: `Invalid body: config_yaml: not YAML: ${(e as Error).message}`,
      });
    }
    const id = b.id ?? newRunId(b.name);
    if (await store.getRun(id)) throw new HTTPException(409, { message: `Run "${id}" already exists` });
    const meta: RunMeta = {
      id,
      name: b.name,
      status: "running",
      seed: b.seed ?? 0,
      git_commit: null,
      adapter: "remote",
      started_at: new Date().toISOString(),
      ended_at: null,
      sweep_id: b.sweep_id ?? null,
      sweep_params: b.sweep_params ?? {},
      error: null,
      step: 0,
    };
    if (b.sweep_id !== undefined && !await store.getSweep(b.sweep_id)) {
      await store.createSweep({
        id: b.sweep_id,
        name: b.sweep_id,
        config_yaml: "",
        created_at: meta.started_at,
      });
    }
    await store.createRun(meta, b.config_yaml);
    await store.logEvent(id, { kind: "start", message: "created through the dashboard API" });
    return c.json({ id, url: `/runs/${id}` }, 201);
  });
}

function _metricsRoute(app: Hono, auth: MiddlewareHandler, o: WriteApiOptions): void {
  const { store } = o;
  app.post("/api/runs/:id/metrics", auth, async (c) => {
    const run = await runParam(c, store);
    const b = _validate(LogMetricsBody, await readJsonBody(c.req.raw, o.bodyLimit));
    const now = (Date.now() - Date.parse(run.started_at)) / 1000;
    const points: MetricPoint[] = b.points.map((p) => ({
      key: p.key,
      step: p.step,
      tokens: p.tokens ?? 0,
      time: p.time ?? Math.max(0, now),
      value: p.value,
    }));
    await store.logMetrics(run.id, points);
    const step = Math.max(...points.map((p) => p.step));
    if (run.status === "interrupted") {
      // Marked interrupted while its remote writer was still alive (the dashboard restarted, a heartbeat
      // went stale): the writer is evidently back.
      await store.updateRun(run.id, {
        status: "running",
        ended_at: null,
        error: null,
        step: Math.max(step, run.step),
      });
      await store.logEvent(run.id, {
        kind: "resume",
        message: "points arrived again through the dashboard API",
      });
    } else if (step > run.step) await store.updateRun(run.id, { step });
    else await store.heartbeat(run.id);
    return c.json({ logged: points.length, step: Math.max(step, run.step) });
  });
}

function _finishRoute(app: Hono, auth: MiddlewareHandler, o: WriteApiOptions): void {
  const { store } = o;
  app.post("/api/runs/:id/finish", auth, async (c) => {
    const run = await runParam(c, store);
    const b = _validate(FinishRunBody, await readJsonBody(c.req.raw, o.bodyLimit));
    await store.updateRun(run.id, {
      status: b.status,
      error: b.error ?? null,
      ended_at: new Date().toISOString(),
    });
    const kind: EventKind = b.status === "finished"
      ? "finish"
      : b.status === "failed"
      ? "error"
      : "interrupted";
    await store.logEvent(run.id, {
      kind,
      message: b.error ?? `${b.status} (reported through the dashboard API)`,
    });
    return c.json({ id: run.id, status: b.status });
  });
}

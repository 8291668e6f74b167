/**
 * Rows of the run stores' tables to records and back, the same for the SQLite and the Postgres store (their
 * tables have the same columns): numbers come back as numbers whether the driver gave a number or a string
 * (Postgres BIGINT, exact past 2^53); JSON columns are text, parsed here; metric points that a store cannot
 * keep are refused here.
 *
 * @module
 */
import type {
  CheckpointRecord,
  EventKind,
  MetricPoint,
  MetricRow,
  ReportRecord,
  RunEvent,
  RunRecord,
  SweepRecord,
} from "./store.ts";

/** A row as a driver returns it: column name → value. */
export type StoreRow = Readonly<Record<string, unknown>>;

/** The columns of `runs` that {@linkcode RunMeta} holds, besides `id`. */
export const RUN_FIELDS = [
  "name",
  "status",
  "seed",
  "git_commit",
  "adapter",
  "started_at",
  "ended_at",
  "sweep_id",
  "sweep_params",
  "error",
  "step",
] as const;

/** One of {@linkcode RUN_FIELDS}. */
export type RunField = (typeof RUN_FIELDS)[number];

/** A run field's value as stored: `sweep_params` as JSON text, absent as NULL. */
export function runValue(field: RunField, v: unknown): string | number | null {
  if (field === "sweep_params") return JSON.stringify(v ?? {});
  return (v ?? null) as string | number | null;
}

/**
 * Why a store refuses the batch `points` (a RangeError naming the first bad point), or null: a number that
 * is not finite, or with `integers` (BIGINT columns) a step or token count that is not a safe integer.
 *
 * @example
 * ```ts
 * import { metricPointsError } from "./store_rows.ts";
 * const p = { key: "train/loss", step: 1, tokens: 8, time: 0.5, value: NaN };
 * console.log(metricPointsError([p])?.message); // 'Metric "train/loss" has a non-finite value: NaN'
 * ```
 */
export function metricPointsError(
  points: readonly MetricPoint[],
  o: { integers?: boolean } = {},
): RangeError | null {
  for (const p of points) {
    for (const f of ["step", "tokens", "time", "value"] as const) {
      if (typeof p[f] !== "number" || !Number.isFinite(p[f])) {
        return new RangeError(`Metric "${p.key}" has a non-finite ${f}: ${p[f]}`);
      }
    }
    if (!o.integers) continue;
    for (const f of ["step", "tokens"] as const) {
      if (!Number.isSafeInteger(p[f])) {
        return new RangeError(`Metric "${p.key}" has a non-integer ${f}: ${p[f]}`);
      }
    }
  }
  return null;
}

const _str = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));

/** A `sweeps` row. */
export function sweepFromRow(r: StoreRow): SweepRecord {
  return {
    id: String(r.id),
    name: String(r.name),
    config_yaml: String(r.config_yaml),
    created_at: String(r.created_at),
  };
}

/** A `runs` row. */
export function runFromRow(r: StoreRow): RunRecord {
  return {
    id: String(r.id),
    name: String(r.name),
    status: String(r.status) as RunRecord["status"],
    seed: Number(r.seed),
    git_commit: _str(r.git_commit),
    adapter: _str(r.adapter),
    started_at: String(r.started_at),
    ended_at: _str(r.ended_at),
    sweep_id: _str(r.sweep_id),
    sweep_params: JSON.parse(String(r.sweep_params)),
    error: _str(r.error),
    step: Number(r.step),
    config_yaml: String(r.config_yaml),
    host: _str(r.host),
    pid: r.pid === null ? null : Number(r.pid),
    heartbeat_at: _str(r.heartbeat_at),
  };
}

/** A `metrics` row. */
export function metricFromRow(r: StoreRow): MetricRow {
  return {
    seq: Number(r.seq),
    key: String(r.key),
    step: Number(r.step),
    tokens: Number(r.tokens),
    time: Number(r.time),
    value: Number(r.value),
  };
}

/** An `events` row. */
export function eventFromRow(r: StoreRow): RunEvent {
  return {
    run_id: String(r.run_id),
    seq: Number(r.seq),
    time: String(r.time),
    step: r.step === null ? null : Number(r.step),
    kind: String(r.kind) as EventKind,
    message: String(r.message),
    data: r.data === null ? null : JSON.parse(String(r.data)),
  };
}

/** A `checkpoints` row. */
export function checkpointFromRow(r: StoreRow): CheckpointRecord {
  return {
    run_id: String(r.run_id),
    step: Number(r.step),
    path: String(r.path),
    bytes: Number(r.bytes),
    sha256: String(r.sha256),
    time: String(r.time),
  };
}

/** A `reports` row. */
export function reportFromRow(r: StoreRow): ReportRecord {
  return {
    id: String(r.id),
    kind: String(r.kind),
    sweep_id: _str(r.sweep_id),
    created_at: String(r.created_at),
    markdown: String(r.markdown),
    data: JSON.parse(String(r.data)),
  };
}

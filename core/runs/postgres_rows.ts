/**
 * Rows of the Postgres run store to records and back: BIGINT columns arrive as strings (exact past 2^53),
 * and are numbers again here; JSON columns are text, parsed here.
 *
 * @module
 */
import type { Row } from "postgres";
import type {
  CheckpointRecord,
  EventKind,
  MetricRow,
  ReportRecord,
  RunEvent,
  RunRecord,
  SweepRecord,
} from "./store.ts";

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

/** A run field's value as stored: `sweep_params` as JSON text, absent as NULL. */
export function runValue(field: (typeof RUN_FIELDS)[number], v: unknown): string | number | null {
  if (field === "sweep_params") return JSON.stringify(v ?? {});
  return (v ?? null) as string | number | null;
}

/** SQL for the server's current time as an ISO 8601 string, like JavaScript's `toISOString()`. */
export const SQL_NOW_ISO = `to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;

const _str = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));

/** A `sweeps` row. */
export function sweepFromRow(r: Row): SweepRecord {
  return {
    id: String(r.id),
    name: String(r.name),
    config_yaml: String(r.config_yaml),
    created_at: String(r.created_at),
  };
}

/** A `runs` row. */
export function runFromRow(r: Row): RunRecord {
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
export function metricFromRow(r: Row): MetricRow {
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
export function eventFromRow(r: Row): RunEvent {
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
export function checkpointFromRow(r: Row): CheckpointRecord {
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
export function reportFromRow(r: Row): ReportRecord {
  return {
    id: String(r.id),
    kind: String(r.kind),
    sweep_id: _str(r.sweep_id),
    created_at: String(r.created_at),
    markdown: String(r.markdown),
    data: JSON.parse(String(r.data)),
  };
}

/**
 * The run store (DESIGN.md §6): runs, sweeps, resolved configs, metric points, events and checkpoint records
 * of every run, in one database. SQLite (`node:sqlite`, {@linkcode openSqliteStore}) is the default, at
 * `<runs-dir>/runs.db`; checkpoint files stay on disk beside it (`<runs-dir>/<id>/ckpt/`), the store lists them.
 *
 * Writers: several processes may train into one store at once. Each process holds one connection; writes
 * are short transactions that wait for the lock (busy timeout) and retry, so none is lost or refused.
 * Readers (the dashboard) see every committed point; `seq` orders points as they were committed, so a live
 * reader asks for points after the last `seq` it saw.
 *
 * @module
 */
import type { MetricPoint, RunMeta, RunStatus } from "./run_dir.ts";

export type { MetricPoint, RunMeta, RunStatus };

/** A stored run: its metadata, the resolved config and the process that writes it. */
export interface RunRecord extends RunMeta {
  config_yaml: string;
  host: string | null; // hostname of the writing process
  pid: number | null; // its process id, to tell a crashed run from a live one
  heartbeat_at: string | null; // ISO 8601, refreshed while the run is alive
}

/** A metric point as stored: `seq` is its commit order across the whole store. */
export interface MetricRow extends MetricPoint {
  seq: number;
}

/** What {@linkcode RunStore.metrics} returns. */
export interface MetricQuery {
  keys?: readonly string[]; // exactly these keys
  prefix?: string; // keys starting with this (e.g. "router/")
  afterSeq?: number; // only points committed after this seq (read in seq order: cheap for a recent seq)
  limit?: number; // at most this many, oldest first
}

/** Something that happened in a run besides metric points. */
export type EventKind =
  | "start"
  | "resume"
  | "skipped_step"
  | "checkpoint"
  | "error"
  | "interrupted"
  | "finish"
  | "info";

/** A run event. */
export interface RunEvent {
  run_id: string;
  seq: number;
  time: string; // ISO 8601
  step: number | null;
  kind: EventKind;
  message: string;
  data: Record<string, unknown> | null;
}

/** A checkpoint file of a run, as its manifest lists it. */
export interface CheckpointRecord {
  run_id: string;
  step: number;
  path: string; // relative to the runs directory: `<id>/ckpt/step-N.safetensors`
  bytes: number;
  sha256: string;
  time: string; // ISO 8601
}

/** A sweep: the family of runs that one config's `sweep:` block makes. */
export interface SweepRecord {
  id: string;
  name: string;
  config_yaml: string; // the config with its sweep block, as written
  created_at: string; // ISO 8601
}

/** A report computed from stored runs (e.g. `deno task repro`): its Markdown and the data behind it. */
export interface ReportRecord {
  id: string;
  kind: string; // "repro"
  sweep_id: string | null; // the runs it reports on
  created_at: string; // ISO 8601
  markdown: string;
  data: Record<string, unknown>;
}

/** What {@linkcode RunStore.listRuns} returns. */
export interface RunQuery {
  sweepId?: string;
  status?: RunStatus;
}

/** The run store. Every method is async so that a networked store (Postgres) can implement it. */
export interface RunStore {
  /** Where it is: `sqlite:<path>`. */
  readonly url: string;

  createSweep(s: SweepRecord): Promise<void>; // no-op when the id exists
  getSweep(id: string): Promise<SweepRecord | null>;
  listSweeps(): Promise<SweepRecord[]>;

  /** Records a new run written by this process (its host and pid). Throws if the id exists. */
  createRun(meta: RunMeta, configYaml: string): Promise<void>;
  /** Inserts a run recorded elsewhere (an old run folder), with no writer process; false if the id exists. */
  importRun(meta: RunMeta, configYaml: string): Promise<boolean>;
  /** Updates metadata fields; claims the run for this process (host, pid, heartbeat). */
  updateRun(id: string, patch: Partial<RunMeta>): Promise<void>;
  /** Refreshes the run's heartbeat (a writer calls it while the run is alive). */
  heartbeat(id: string): Promise<void>;
  getRun(id: string): Promise<RunRecord | null>;
  /** Runs, newest first. */
  listRuns(q?: RunQuery): Promise<RunRecord[]>;

  /** Appends points in one transaction: all or none. Non-finite values are refused (RangeError). */
  logMetrics(runId: string, points: readonly MetricPoint[]): Promise<void>;
  /** Points of a run, oldest first (by seq). */
  metrics(runId: string, q?: MetricQuery): Promise<MetricRow[]>;
  /** The distinct metric keys of a run, sorted. */
  metricKeys(runId: string): Promise<string[]>;
  /** The newest point (highest step, then seq) of each key of a run, optionally only `keys`. */
  lastMetrics(runId: string, keys?: readonly string[]): Promise<Map<string, MetricRow>>;
  /** The lowest value of each of `keys` in a run. */
  bestMetrics(runId: string, keys: readonly string[]): Promise<Map<string, MetricRow>>;
  /** The highest seq in the store (0 when empty): a live reader's starting point. */
  lastSeq(): Promise<number>;

  logEvent(
    runId: string,
    e: { kind: EventKind; message: string; step?: number | null; data?: Record<string, unknown> },
  ): Promise<void>;
  events(runId: string, afterSeq?: number): Promise<RunEvent[]>;

  recordCheckpoint(c: CheckpointRecord): Promise<void>; // replaces the record of the same step
  removeCheckpoint(runId: string, step: number): Promise<void>;
  checkpoints(runId: string): Promise<CheckpointRecord[]>; // oldest first

  /**
   * Marks runs still `running` whose writer is gone as `interrupted` (its pid no longer exists on this host,
   * or no heartbeat for `staleSeconds`), with an event. Returns their ids.
   */
  markInterrupted(staleSeconds?: number): Promise<string[]>;

  /** Stores a report (replacing one of the same id). */
  saveReport(r: ReportRecord): Promise<void>;
  getReport(id: string): Promise<ReportRecord | null>;
  /** Reports, newest first, optionally only those of one sweep. */
  listReports(sweepId?: string): Promise<ReportRecord[]>;

  /** Checks the database file's integrity (`PRAGMA integrity_check`): "ok" or the problems found. */
  integrityCheck(): Promise<string>;

  close(): void;
}

/**
 * Of several runs of one experiment point, the one that counts: the newest finished one, else the newest.
 *
 * @example
 * ```ts
 * import { preferredRun } from "./store.ts";
 * const r = (id: string, status: "finished" | "failed", started_at: string) => ({ id, status, started_at });
 * console.log(preferredRun([r("a", "failed", "3"), r("b", "finished", "1"), r("c", "finished", "2")])?.id); // c
 * ```
 */
export function preferredRun<T extends Pick<RunMeta, "status" | "started_at">>(runs: readonly T[]): T | null {
  const done = (r: T) => (r.status === "finished" ? 1 : 0);
  let best: T | null = null;
  for (const r of runs) {
    if (!best || done(r) > done(best) || (done(r) === done(best) && r.started_at > best.started_at)) best = r;
  }
  return best;
}

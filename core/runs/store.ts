/**
 * The run store (docs/reliability.md, "The run store"): runs, sweeps, resolved configs, metric points, events
 * and checkpoint records of every run, in one database. SQLite (`node:sqlite`, {@linkcode openSqliteStore})
 * is the default, at `<runs-dir>/runs.db`; checkpoint files stay on disk beside it (`<runs-dir>/<id>/ckpt/`),
 * the store lists them.
 *
 * Writers: several processes may train into one store at once. Each process holds one connection; writes
 * are short transactions that wait for the lock (busy timeout) and retry, so none is lost or refused.
 * Readers (the dashboard) see every committed point; `seq` orders points as they were committed, so a live
 * reader asks for points after the last `seq` it saw.
 *
 * One process trains a run at a time: it holds the run's lease ({@linkcode RunStore.acquireRun}: host, pid,
 * a random lease id, a heartbeat), and another process that tries to train the run gets a `RunBusyError`
 * naming the holder, until the holder's process is gone (same host) or silent for the stale limit.
 *
 * A store that cannot be written (write-protected) or that failed its check on open is opened for reading
 * only ({@linkcode RunStore.access}): its write methods throw `StoreReadOnlyError` or `StoreDamagedError`
 * (store_errors.ts), naming the store.
 *
 * @module
 */
import type { MetricPoint, RunMeta, RunStatus } from "./run_types.ts";

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

/**
 * A change to a run's record: its metadata, and its resolved config where a resumed run is extended
 * (`run --resume <id> --set train.steps=N`).
 */
export type RunPatch = Partial<RunMeta> & { config_yaml?: string };

/** A report computed from stored runs (e.g. `deno task repro`): its Markdown and the data behind it. */
export interface ReportRecord {
  id: string;
  kind: string; // "repro", "study"
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

/**
 * How a store is open: for reading and writing, or for reading only, because it is write-protected
 * (`read-only`) or failed its check (`damaged`); `reason` says why, naming the store.
 */
export type StoreAccess =
  | { mode: "read-write" }
  | { mode: "read-only" | "damaged"; reason: string };

/** This process's hold on a run: only the holder of a run's lease trains it. */
export interface RunLease {
  run_id: string;
  lease_id: string; // random, new at each acquisition
  /** Why the previous holder lost the run (its process is gone, or it was silent), or null if it had none. */
  took_over: string | null;
}

/** What {@linkcode RunStore.createPointRun} did. */
export type PointRunStart =
  | { kind: "created"; lease: RunLease } // the new run, held by this process
  | { kind: "finished"; run: RunRecord } // the point has a finished run: nothing created
  | { kind: "busy"; run: RunRecord; holder: string }; // another live process trains the point

/** The run store. Every method is async so that a networked store (Postgres) can implement it. */
export interface RunStore {
  /** Where it is: `sqlite:<path>`. */
  readonly url: string;
  /** Whether it takes writes (a store found damaged later, by a statement, turns `damaged` then). */
  readonly access: StoreAccess;

  createSweep(s: SweepRecord): Promise<void>; // no-op when the id exists
  getSweep(id: string): Promise<SweepRecord | null>;
  listSweeps(): Promise<SweepRecord[]>;

  /** Records a new run written by this process (its host and pid). Throws if the id exists. */
  createRun(meta: RunMeta, configYaml: string): Promise<void>;
  /**
   * Records `meta` as the new run of its sweep point (`meta.sweep_id`, `meta.name`), held by this process,
   * unless the point already has a finished run or a run whose lease another live process holds: then
   * nothing is created and that run is returned. One transaction: two processes starting the same point at
   * once create one run. `staleSeconds`: as for {@linkcode RunStore.acquireRun}.
   */
  createPointRun(meta: RunMeta, configYaml: string, o?: { staleSeconds?: number }): Promise<PointRunStart>;
  /** Inserts a run recorded elsewhere (an old run folder), with no writer process; false if the id exists. */
  importRun(meta: RunMeta, configYaml: string): Promise<boolean>;
  /**
   * Updates metadata fields; claims the run for this process (host, pid, heartbeat). With `lease`, only while
   * that lease still holds the run (else RunBusyError naming who holds it now). A status other than
   * `running` ends the run's lease.
   */
  updateRun(id: string, patch: RunPatch, o?: { lease?: RunLease }): Promise<void>;
  /**
   * Takes run `id` for this process: its lease (this host and pid, a new lease id, a heartbeat now). Throws
   * RunBusyError naming the holder ("pid 1234 on host h since … (heartbeat 3 s ago)") while another live
   * process holds it; a holder whose process is gone (on this host) or that sent no heartbeat for
   * `staleSeconds` (default 600) is taken over. A run that does not exist is a `Deno.errors.NotFound`.
   */
  acquireRun(id: string, o?: { staleSeconds?: number }): Promise<RunLease>;
  /** Refreshes the lease's heartbeat; false if the run is no longer this lease's (taken over, or ended). */
  renewRun(lease: RunLease): Promise<boolean>;
  /** Gives the run up, if this lease still holds it. */
  releaseRun(lease: RunLease): Promise<void>;
  /** Refreshes the run's heartbeat (a writer calls it while the run is alive). */
  heartbeat(id: string): Promise<void>;
  getRun(id: string): Promise<RunRecord | null>;
  /** Runs, newest first. */
  listRuns(q?: RunQuery): Promise<RunRecord[]>;
  /**
   * Deletes run `lease.run_id` with its metric points, events and checkpoint records, in one transaction,
   * while `lease` holds it (take it with {@linkcode RunStore.acquireRun} first: that refuses a run another
   * live process trains). False, deleting nothing, when the lease no longer holds the run. Files are not
   * touched: the caller removes the run directory (`deno task runs rm`).
   */
  deleteRun(lease: RunLease): Promise<boolean>;

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
   * or no heartbeat for `staleSeconds`), with an event, ending their leases. Returns their ids.
   */
  markInterrupted(staleSeconds?: number): Promise<string[]>;

  /** Stores a report (replacing one of the same id). */
  saveReport(r: ReportRecord): Promise<void>;
  getReport(id: string): Promise<ReportRecord | null>;
  /** Reports, newest first, optionally only those of one sweep. */
  listReports(sweepId?: string): Promise<ReportRecord[]>;

  /**
   * Checks the database's integrity (SQLite: `PRAGMA integrity_check`, or the cheaper `quick_check` with
   * `quick`): "ok" or the problems found.
   */
  integrityCheck(o?: { quick?: boolean }): Promise<string>;

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

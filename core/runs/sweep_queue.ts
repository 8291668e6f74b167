/**
 * The sweep queue: the points of a sweep as rows that workers on any machine claim, train and finish
 * (`deno task run <sweep.yaml> --enqueue`, `deno task worker`). Only a Postgres store has one
 * ({@linkcode sweepQueueOf}); SQLite stays a one-machine store.
 *
 * A point's life: `queued` → `running` (claimed by one worker, which heartbeats) → `finished` or `failed`.
 * A running point whose heartbeat is older than the claimer's stale limit is claimed again (its worker is
 * taken to be dead) and counts one more attempt; a worker that stops cleanly hands its point back to
 * `queued` without using up an attempt. The run id of a point is fixed at its first claim, so a point that
 * is claimed again continues the same run from its newest checkpoint: one run per point.
 *
 * Every update of a running point names its claim (`claim_id`): a worker whose point was taken over learns
 * so from a heartbeat, finish or hand-back that changes nothing, and stops writing.
 *
 * @module
 */
import type { RunStore, SweepRecord } from "./store.ts";

/** Where a point is in the queue. */
export type PointStatus = "queued" | "running" | "finished" | "failed";

/** A row of the queue. Times are ISO 8601 from the database server's clock. */
export interface QueuedPoint {
  sweep_id: string;
  point_index: number; // 0-based, in the sweep's expansion order
  point_name: string;
  params: Record<string, unknown>;
  config_yaml: string; // the point's resolved config (no sweep block)
  base_dir: string | null; // where relative data paths resolve (the config file's directory at enqueue)
  status: PointStatus;
  worker_id: string | null; // the worker that claimed it last
  claim_id: string | null; // that claim's token
  heartbeat_at: string | null;
  attempts: number; // claims that did not end in a clean hand-back
  run_id: string | null; // fixed at the first claim
  enqueued_at: string;
  claimed_at: string | null;
  finished_at: string | null;
  error: string | null;
}

/** A point to put in the queue. */
export interface PointToEnqueue {
  index: number;
  name: string;
  params: Record<string, unknown>;
  config_yaml: string;
  base_dir: string | null;
  /** A run of this point that already finished (e.g. an earlier `deno task run` of the sweep): not queued. */
  finished_run_id?: string | null;
}

/** What enqueuing did to a point. */
export type EnqueueState =
  | "enqueued" // new in the queue
  | "requeued" // had failed; queued again (its run, if any, resumes)
  | "finished_earlier" // a finished run of it was already in the store: recorded as finished
  | PointStatus; // already in the queue: left as it was

/** One point of {@linkcode SweepQueue.enqueue}'s answer. */
export interface EnqueueOutcome {
  point_index: number;
  point_name: string;
  state: EnqueueState;
  run_id: string | null;
}

/** What {@linkcode SweepQueue.claim} looks for. */
export interface ClaimOptions {
  workerId: string;
  sweepId?: string; // only this sweep's points
  staleSeconds: number; // a running point with no heartbeat for this long is claimed again
  maxAttempts: number; // a point claimed this many times already is marked failed instead
  newRunId: (pointName: string) => string; // the run id of a point claimed for the first time
}

/** A point this worker holds. */
export interface Claim {
  point: QueuedPoint; // as it is after the claim (status running, this worker, attempts counted)
  sweepPoints: number; // how many points its sweep has
  /** The worker it was taken from, and how long ago that one last heartbeated; null for a queued point. */
  takenFrom: { worker_id: string | null; silent_s: number } | null;
}

/** The answer of {@linkcode SweepQueue.claim}. */
export type ClaimResult =
  | { kind: "claimed"; claim: Claim }
  | { kind: "gave_up"; point: QueuedPoint } // attempts used up: marked failed, nothing claimed
  | { kind: "none"; pending: number }; // nothing claimable now; `pending` points are queued or running

/** The queue of sweep points in a store. */
export interface SweepQueue {
  /**
   * Records the sweep and queues each point not yet queued; a failed point is queued again, others are left
   * as they are. In one transaction. Returns every point's state, in index order.
   */
  enqueue(sweep: SweepRecord, points: readonly PointToEnqueue[]): Promise<EnqueueOutcome[]>;
  /** Claims one point (`SELECT … FOR UPDATE SKIP LOCKED`): a stale running one first, else the oldest queued. */
  claim(o: ClaimOptions): Promise<ClaimResult>;
  /** Refreshes the claim's heartbeat (and its run's); false if the point is no longer this claim's. */
  heartbeat(c: Claim): Promise<boolean>;
  /** Marks the claimed point finished with its run; false if it is no longer this claim's. */
  finish(c: Claim): Promise<boolean>;
  /** Marks the claimed point failed with `error`; false if it is no longer this claim's. */
  fail(c: Claim, error: string): Promise<boolean>;
  /** Hands the point back to the queue (a clean stop), not counting the attempt; false if no longer ours. */
  release(c: Claim): Promise<boolean>;
  /** The queue's points, of one sweep or all, by sweep and index. */
  points(sweepId?: string): Promise<QueuedPoint[]>;
}

/** A store that has a sweep queue. */
export interface HasSweepQueue {
  readonly sweepQueue: SweepQueue;
}

/**
 * The sweep queue of `store`, or null for a store without one (SQLite).
 *
 * @example
 * ```ts
 * import { openSqliteStore } from "./sqlite_store.ts";
 * import { sweepQueueOf } from "./sweep_queue.ts";
 * const dir = await Deno.makeTempDir();
 * const store = openSqliteStore(`${dir}/runs.db`);
 * console.log(sweepQueueOf(store)); // null
 * store.close();
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function sweepQueueOf(store: RunStore): SweepQueue | null {
  return "sweepQueue" in store ? (store as RunStore & HasSweepQueue).sweepQueue : null;
}

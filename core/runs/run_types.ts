/**
 * A run's record and its metric points: the types shared by run directories (run_dir.ts), the run store
 * (store.ts) and its implementations. A module of types only, so that all of them can import it.
 *
 * @module
 */

/** Lifecycle of a run. */
export type RunStatus = "running" | "finished" | "failed" | "interrupted";

/** A run's record (also `run.json` of run folders written before the store). */
export interface RunMeta {
  id: string;
  name: string;
  status: RunStatus;
  seed: number;
  git_commit: string | null;
  adapter: string | null;
  started_at: string;
  ended_at: string | null;
  sweep_id: string | null;
  sweep_params: Record<string, unknown>;
  error: string | null;
  step: number; // last completed optimizer step
}

/** One metric point. */
export interface MetricPoint {
  key: string;
  step: number;
  tokens: number;
  time: number; // seconds since the run started
  value: number;
}

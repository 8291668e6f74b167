/**
 * The record of a fresh running run, for tests of the run store.
 *
 * @module
 */
import type { RunMeta } from "../../core/runs/run_types.ts";

/** A `running` run `id` started now, with no sweep; `patch` overrides fields. */
export function runMeta(id: string, patch: Partial<RunMeta> = {}): RunMeta {
  return {
    id,
    name: id,
    status: "running",
    seed: 1,
    git_commit: null,
    adapter: null,
    started_at: new Date().toISOString(),
    ended_at: null,
    sweep_id: null,
    sweep_params: {},
    error: null,
    step: 0,
    ...patch,
  };
}

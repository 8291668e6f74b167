/**
 * Where a sweep stands: each planned point's state (from its runs, matched by the point's name), the points
 * not started yet, and an ETA for the whole sweep from the seconds per step measured so far.
 *
 * The ETA is the steps left (every pending point's `train.steps`, plus what each running point has left)
 * times the measured seconds per step (over the finished points; before any finishes, over the running
 * ones), divided by the points running now (the workers at hand, at least one). Failed and interrupted
 * points are counted apart: a rerun of the sweep trains them again, but nothing will until then.
 *
 * @module
 */
import type { PlannedPoint } from "../runs/sweep_plan.ts";
import type { RunSummary } from "./run_summary.ts";

/** The progress of a sweep. */
export interface SweepProgress {
  /** Planned points (or, when the plan cannot be read, the distinct point names that have runs). */
  total: number;
  finished: number;
  running: number;
  /** Points whose newest run failed or was interrupted (none finished or running). */
  stopped: number;
  /** Points with no run yet, in expansion order. */
  pending: PlannedPoint[];
  /** Steps left to train: pending points' steps plus the running points' remaining steps. */
  remaining_steps: number;
  /** Measured wall seconds per optimizer step; null before any step was measured. */
  seconds_per_step: number | null;
  /** Points training at once now (at least 1): the ETA divides the work among them. */
  workers: number;
  /** Seconds until every pending and running point is done; 0 when nothing is left; null if unknown. */
  eta_seconds: number | null;
}

type _Run = Pick<RunSummary, "name" | "status" | "step" | "last_train_step" | "started_at" | "ended_at"> & {
  config: Record<string, unknown>;
};

/**
 * The progress of a sweep from its planned points (null: unknown plan) and its runs, at time `now` (ms).
 *
 * @example
 * ```ts
 * import { sweepProgress } from "./sweep_progress.ts";
 * const run = (name: string, status: "finished" | "running", step: number, s0: string, s1: string | null) =>
 *   ({ name, status, step, last_train_step: step, started_at: s0, ended_at: s1, config: { "train.steps": 100 } });
 * const plan = ["a", "b", "c"].map((name, index) => ({ index, name, params: {}, steps: 100 }));
 * const p = sweepProgress(plan, [
 *   run("a", "finished", 100, "2026-12-06T10:00:00Z", "2026-12-06T10:01:40Z"), // 1 s per step
 *   run("b", "running", 40, "2026-12-06T10:02:00Z", null),
 * ], Date.parse("2026-12-06T10:03:00Z"));
 * if (p.pending.length !== 1 || p.remaining_steps !== 160 || p.eta_seconds !== 160) throw new Error("bad");
 * ```
 */
export function sweepProgress(
  planned: readonly PlannedPoint[] | null,
  runs: readonly _Run[],
  now: number,
): SweepProgress {
  const byName = new Map<string, _Run[]>();
  for (const r of runs) byName.set(r.name, [...byName.get(r.name) ?? [], r]);
  const names = planned ? planned.map((p) => p.name) : [...byName.keys()];
  let finished = 0, running = 0, stopped = 0, remaining = 0;
  const pending: PlannedPoint[] = [];
  for (const [i, name] of names.entries()) {
    const rs = byName.get(name) ?? [];
    if (rs.some((r) => r.status === "finished")) finished++;
    else if (rs.some((r) => r.status === "running")) {
      running++;
      const r = rs.find((x) => x.status === "running")!;
      remaining += Math.max(0, _steps(r, planned?.[i]) - _live(r));
    } else if (rs.length > 0) stopped++;
    else if (planned) {
      pending.push(planned[i]!);
      remaining += planned[i]!.steps;
    }
  }
  const sps = _secondsPerStep(runs.filter((r) => r.status === "finished"), now) ??
    _secondsPerStep(runs.filter((r) => r.status === "running"), now);
  const workers = Math.max(1, running);
  const eta = remaining === 0 ? 0 : sps === null ? null : (remaining * sps) / workers;
  return {
    total: names.length,
    finished,
    running,
    stopped,
    pending,
    remaining_steps: remaining,
    seconds_per_step: sps,
    workers,
    eta_seconds: eta,
  };
}

function _live(r: _Run): number {
  return Math.max(r.step, r.last_train_step ?? 0);
}

function _steps(r: _Run, p: PlannedPoint | undefined): number {
  const s = r.config["train.steps"];
  return typeof s === "number" ? s : p?.steps ?? _live(r);
}

/** Wall seconds per step over `runs` (ended, or still going at `now`); null when no step was measured. */
function _secondsPerStep(runs: readonly _Run[], now: number): number | null {
  let seconds = 0, steps = 0;
  for (const r of runs) {
    const t0 = Date.parse(r.started_at), t1 = r.ended_at === null ? now : Date.parse(r.ended_at);
    const n = _live(r);
    if (!Number.isFinite(t0) || !Number.isFinite(t1) || t1 <= t0 || n <= 0) continue;
    seconds += (t1 - t0) / 1000;
    steps += n;
  }
  return steps > 0 ? seconds / steps : null;
}

/** The swept keys of a sweep, sorted: those of its planned points and those its runs carry. */
export function sweptKeys(
  runs: readonly { sweep_params: Record<string, unknown> }[],
  planned: readonly PlannedPoint[] | null,
): string[] {
  const keys = [
    ...runs.flatMap((r) => Object.keys(r.sweep_params)),
    ...(planned ?? []).flatMap((p) => Object.keys(p.params)),
  ];
  return [...new Set(keys)].sort();
}

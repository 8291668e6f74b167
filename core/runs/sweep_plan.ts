/**
 * The points a sweep plans, read back from its stored config (the config with its `sweep:` block, as the
 * sweep record keeps it): what the dashboard lists as pending before any run of a point exists, and the steps
 * each point will train, for the sweep's ETA.
 *
 * @module
 */
import { parseExperimentText } from "../config/load.ts";
import type { SweepRecord } from "./store.ts";

/** One planned point of a sweep. */
export interface PlannedPoint {
  index: number;
  /** The point's run name (runs of the point carry it). */
  name: string;
  params: Record<string, unknown>;
  /** Optimizer steps the point trains (`train.steps`). */
  steps: number;
}

const _cache = new Map<string, PlannedPoint[] | null>();
const _MAX_CACHED = 64;

/**
 * The points of `sweep` in expansion order; null when its stored config no longer parses (a store written
 * by another version), so that the sweep's page still shows the runs it has. Memoized by sweep id: a sweep's
 * config never changes once stored.
 *
 * @example
 * ```ts
 * import { plannedPoints } from "./sweep_plan.ts";
 * const pts = plannedPoints({
 *   id: "s1",
 *   name: "s",
 *   created_at: "2026-12-06T00:00:00Z",
 *   config_yaml: "name: s\ntrain: {steps: 50, schedule: {warmup: 5}}\nsweep: {grid: {seed: [1, 2]}}\n",
 * })!;
 * if (pts.map((p) => `${p.name}:${p.steps}`).join() !== "s.seed=1:50,s.seed=2:50") throw new Error("bad");
 * ```
 */
export function plannedPoints(sweep: Readonly<SweepRecord>): PlannedPoint[] | null {
  const key = `${sweep.id}\0${sweep.config_yaml.length}`;
  if (_cache.has(key)) return _cache.get(key)!;
  let points: PlannedPoint[] | null;
  try {
    points = parseExperimentText(sweep.config_yaml, `sweep ${sweep.id}`).points.map((p) => ({
      index: p.index,
      name: p.name,
      params: p.params,
      steps: p.config.train.steps,
    }));
  } catch {
    points = null;
  }
  if (_cache.size >= _MAX_CACHED) _cache.delete(_cache.keys().next().value!);
  _cache.set(key, points);
  return points;
}

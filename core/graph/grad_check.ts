/**
 * Gradient check: analytic gradients from the rule table against float64 central differences of the loss,
 * on sampled entries of every parameter. Used per op and for whole small models; a deliberately broken
 * rule must fail it (tests keep one such case, so the check itself is tested).
 *
 * @module
 */
import { Rng } from "../util/rng.ts";
import { gradients } from "./autodiff.ts";
import { evaluateGraph, type HostValue } from "./cpu_executor.ts";
import { CPU_OPS } from "./cpu_ops.ts";
import type { Graph, Value } from "./ir.ts";
import { OPS, type OpTable } from "./ops.ts";
import { schedule } from "./schedule.ts";

/** Outcome: the worst relative error found, and where. */
export interface GradCheckResult {
  worst: number; // max |analytic − numeric| / max(|analytic| + |numeric|, floor)
  where: string; // "param[index]: analytic vs numeric"
  checked: number; // entries compared
}

/** Options of {@linkcode checkGradients}. */
export interface GradCheckOptions {
  table?: OpTable; // rule table (tests pass a broken one)
  samples?: number; // entries per parameter (default 4)
  eps?: number; // central-difference step (default 1e-5)
  floor?: number; // denominator floor for tiny gradients (default 1e-7)
  seed?: number;
}

/**
 * Compares d`loss`/d`params` from autodiff with central differences. `feeds` holds every leaf value;
 * parameter arrays are perturbed in place and restored.
 */
export function checkGradients(
  g: Graph,
  loss: Value,
  params: readonly Value[],
  feeds: Map<number, HostValue>,
  o: GradCheckOptions = {},
): GradCheckResult {
  const eps = o.eps ?? 1e-5, floor = o.floor ?? 1e-7, rng = new Rng(o.seed ?? 1);
  const grads = gradients(g, loss, params, o.table ?? OPS);
  const all = schedule(g, [loss, ...grads]).nodes;
  const analytic = evaluateGraph(all, feeds, grads, CPU_OPS) as Float64Array[];
  const forward = schedule(g, [loss]).nodes;
  const lossAt = () => evaluateGraph(forward, feeds, [loss], CPU_OPS)[0]![0]!;
  let worst = 0, where = "", checked = 0;
  params.forEach((p, k) => {
    const x = feeds.get(p.id) as Float64Array;
    const n = Math.min(o.samples ?? 4, x.length);
    for (let s = 0; s < n; s++) {
      const i = n === x.length ? s : rng.int(x.length);
      const keep = x[i]!;
      x[i] = keep + eps;
      const up = lossAt();
      x[i] = keep - eps;
      const down = lossAt();
      x[i] = keep;
      const num = (up - down) / (2 * eps), ana = analytic[k]![i]!;
      const err = Math.abs(ana - num) / Math.max(Math.abs(ana) + Math.abs(num), floor);
      checked++;
      if (err > worst || Number.isNaN(err)) {
        worst = Number.isNaN(err) ? Infinity : err, where = `${p.name}[${i}]: ${ana} vs ${num}`;
      }
    }
  });
  return { worst, where, checked };
}

/** Random float64 values for every f32 leaf of `g` (u32 leaves must be given in `fixed`). */
export function randomFeeds(
  g: Graph,
  seed: number,
  fixed: Map<number, HostValue>,
  scale = 1,
): Map<number, HostValue> {
  const rng = new Rng(seed), feeds = new Map(fixed);
  for (const { value } of g.leaves.values()) {
    if (feeds.has(value.id)) continue;
    if (value.dtype !== "f32") {
      throw new RangeError(`Leaf "${value.name}" (${value.dtype}) needs a fixed value`);
    }
    const n = value.shape.reduce((a, b) => a * b, 1);
    feeds.set(value.id, Float64Array.from({ length: n }, () => scale * (2 * rng.next() - 1)));
  }
  return feeds;
}

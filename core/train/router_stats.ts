/**
 * Router statistics from probabilities: per-expert load (top-1 share), mean probability and mean entropy.
 *
 * @module
 */
import type { RouterLoad } from "../plan/model.ts";
import type { RouterStats, RouterStepStats } from "./backend.ts";

/** Load (top-1 fraction per expert), mean probability and mean entropy of router probabilities (N, E). */
export function routerStats(
  layer: number,
  kind: RouterStats["kind"],
  probs: ArrayLike<number>,
  experts: number,
): RouterStats {
  const n = probs.length / experts;
  const load = new Array(experts).fill(0), meanProb = new Array(experts).fill(0);
  let entropy = 0;
  for (let t = 0; t < n; t++) {
    let best = 0;
    for (let e = 0; e < experts; e++) {
      const p = probs[t * experts + e]!;
      meanProb[e] += p / n;
      if (p > 0) entropy -= (p * Math.log(p)) / n;
      if (p > probs[t * experts + best]!) best = e;
    }
    load[best] += 1 / n;
  }
  return { layer, kind, load, meanProb, entropy };
}

/**
 * The step metrics of each routed block from its selection statistics (`values` in the order of
 * `loadValues(model)`, core/plan/plan.ts: selected, then kept where there is a capacity): each expert's share
 * of the token-assignments, selected_i / k, the dropped share (Σ_real selected − Σ kept) / k, the share of
 * null experts Σ_null selected / k (router.null_experts), and the aux-free balancing biases (`biases`, in
 * `routerState` order) where the block has one.
 */
export function routerStepStats(
  loads: readonly RouterLoad[],
  values: readonly ArrayLike<number>[],
  biases: readonly ArrayLike<number>[] = [],
): RouterStepStats[] {
  let at = 0, b = 0;
  const sum = (a: ArrayLike<number>) => Array.from(a).reduce((x, y) => x + y, 0);
  return loads.map((l) => {
    const selected = values[at++]!, kept = l.kept ? values[at++]! : undefined;
    const real = Array.from(selected).slice(0, l.experts), nulls = Array.from(selected).slice(l.experts);
    return {
      layer: l.layer,
      kind: l.kind,
      load: Array.from(selected, (v) => v / l.k),
      ...(kept ? { dropped: (sum(real) - sum(kept)) / l.k } : {}),
      ...(nulls.length > 0 ? { nullShare: sum(nulls) / l.k } : {}),
      ...(l.bias ? { bias: Array.from(biases[b++]!) } : {}),
    };
  });
}

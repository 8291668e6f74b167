/**
 * Router statistics from probabilities: per-expert load (top-1 share), mean probability and mean entropy;
 * and, for the routers of docs/design.md §16, the statistics of the training rule's gate (per-expert share
 * of the token-assignments, the share of tokens no expert took, experts per token, zero gates).
 *
 * @module
 */
import type { RouterLoad } from "../plan/model.ts";
import type { RouterStats, RouterStepStats, TrainRuleStats } from "./backend.ts";

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
 * null experts Σ_null selected / k (router.null_experts), and the aux-free balancing bias where the block has
 * one (from `state`, the router state after the step by name).
 */
export function routerStepStats(
  loads: readonly RouterLoad[],
  values: readonly ArrayLike<number>[],
  state: ReadonlyMap<string, ArrayLike<number>> = new Map(),
): RouterStepStats[] {
  let at = 0;
  const sum = (a: ArrayLike<number>) => Array.from(a).reduce((x, y) => x + y, 0);
  return loads.map((l) => {
    const selected = values[at++]!, kept = l.kept ? values[at++]! : undefined;
    const real = Array.from(selected).slice(0, l.experts), nulls = Array.from(selected).slice(l.experts);
    const bias = l.bias && state.get(l.bias.name);
    return {
      layer: l.layer,
      kind: l.kind,
      load: Array.from(selected, (v) => v / l.k),
      ...(kept ? { dropped: (sum(real) - sum(kept)) / l.k } : {}),
      ...(nulls.length > 0 ? { nullShare: sum(nulls) / l.k } : {}),
      ...(bias ? { bias: Array.from(bias) } : {}),
    };
  });
}

/**
 * Statistics of a training rule's gate (N, E), a (token, expert) pair routed iff its gate is above 0:
 * each expert's share of the routed pairs (0 for all when none is routed), the share of tokens routed to no
 * expert, the mean routed experts per token and the share of zero gates (1 − experts per token / E).
 *
 * @example
 * ```ts
 * import { trainRuleStats } from "./router_stats.ts";
 * const s = trainRuleStats([0.5, 0, 0.2, 0.3, 0, 0], 2); // token 2 is routed to no expert
 * if (s.load.join() !== "0.5,0.5" || s.dropped !== 1 / 3 || s.perToken !== 1) throw new Error();
 * ```
 */
export function trainRuleStats(gate: ArrayLike<number>, experts: number): TrainRuleStats {
  const n = gate.length / experts, count = new Array(experts).fill(0);
  let routed = 0, none = 0;
  for (let t = 0; t < n; t++) {
    let any = false;
    for (let e = 0; e < experts; e++) {
      if (gate[t * experts + e]! > 0) count[e]++, routed++, any = true;
    }
    if (!any) none++;
  }
  return {
    load: count.map((c) => routed > 0 ? c / routed : 0),
    dropped: none / n,
    perToken: routed / n,
    sparsity: 1 - routed / (n * experts),
  };
}

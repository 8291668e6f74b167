/**
 * Float64 reference of the inference routing rules (docs/design.md §5): which experts run
 * for each token, as a 0/1 mask over the router probabilities S (N tokens × E experts). The gate is then
 * S ⊙ mask: raw probabilities, not renormalized, as in the DS-MoE paper.
 *
 * Ranks order experts by S, larger first, ties to the lower index (the same order as {@linkcode topkMaskRef}).
 *
 * @module
 */
import type { RouteRule } from "../graph/op_types.ts";
import { topkMaskRef } from "./router.ts";

/**
 * The 0/1 mask of the experts `rule` runs, per row of s (N, E).
 * - `threshold`: expert i runs iff E·S_i > ε (E·S_i is the "normalized probability"; 1 = uniform).
 * - `topk`: the k largest.
 * - `threshold_topk`: K = the threshold rule's mean count over all N rows, rounded, at least 1; then top-K.
 * - `top_p`: the smallest prefix, by rank, whose mass reaches p (an expert runs iff the mass ranked before
 *   it is below p), so at least one expert always runs.
 * - `dense`: all experts.
 *
 * @example
 * ```ts
 * import { routeMaskRef } from "./routing.ts";
 * const m = routeMaskRef([0.7, 0.2, 0.1], 3, { kind: "threshold", epsilon: 0.5, k: 2, p: 0.9 });
 * // 3·0.7 = 2.1 and 3·0.2 = 0.6 exceed 0.5; 3·0.1 = 0.3 does not
 * if (m.join() !== "1,1,0") throw new Error(m.join());
 * ```
 */
export function routeMaskRef(s: ArrayLike<number>, experts: number, rule: RouteRule): Float64Array {
  const N = s.length / experts;
  switch (rule.kind) {
    case "dense":
      return new Float64Array(s.length).fill(1);
    case "threshold":
      return Float64Array.from(s, (v) => (experts * v > rule.epsilon ? 1 : 0));
    case "topk":
      return topkMaskRef(s, experts, Math.min(rule.k, experts));
    case "threshold_topk":
      return topkMaskRef(s, experts, thresholdTopkK(s, experts, rule.epsilon));
    case "top_p": {
      const mask = new Float64Array(s.length);
      for (let t = 0; t < N; t++) {
        const row = Array.from({ length: experts }, (_, i) => s[t * experts + i]!);
        for (let e = 0; e < experts; e++) {
          let before = 0;
          for (let f = 0; f < experts; f++) {
            if (row[f]! > row[e]! || (row[f] === row[e] && f < e)) before += row[f]!;
          }
          mask[t * experts + e] = before < rule.p ? 1 : 0;
        }
      }
      return mask;
    }
  }
}

/** The K of `threshold_topk`: the mean number of experts over the threshold per row, rounded, in [1, E]. */
export function thresholdTopkK(s: ArrayLike<number>, experts: number, epsilon: number): number {
  let count = 0;
  for (let i = 0; i < s.length; i++) if (experts * s[i]! > epsilon) count++;
  return Math.min(experts, Math.max(1, Math.round(count / (s.length / experts))));
}

/** The field a rule kind reads (`k` for topk, `p` for top_p, `epsilon` for the threshold rules), or null. */
export function ruleParam(kind: RouteRule["kind"]): "epsilon" | "k" | "p" | null {
  return kind === "dense" ? null : kind === "topk" ? "k" : kind === "top_p" ? "p" : "epsilon";
}

/**
 * Float64 references of the routers of the literature (docs/design.md §16): expert-choice selection, the
 * dynamic (entropy) loss of top-p routing, and ReLU routing's L1 term, sparsity and inference router.
 *
 * @module
 */
import type { RouteRule } from "../graph/op_types.ts";
import { MI_EPS } from "./losses.ts";
import { routeMaskRef } from "./routing.ts";

/**
 * Expert-choice routing: the 0/1 mask (N, E) in which each expert (a column of s, N tokens × E experts)
 * takes its `tokens` largest entries; ties go to the lower token index. A token may be taken by several
 * experts or by none.
 *
 * @example
 * ```ts
 * import { expertChoiceMaskRef } from "./router_zoo.ts";
 * // 3 tokens, 2 experts, each expert takes 1 token: expert 0 takes token 2, expert 1 takes token 0.
 * const m = expertChoiceMaskRef([0.4, 0.6, 0.5, 0.5, 0.9, 0.1], 2, 1);
 * if (m.join() !== "0,1,0,0,1,0") throw new Error(m.join());
 * ```
 */
export function expertChoiceMaskRef(s: ArrayLike<number>, experts: number, tokens: number): Float64Array {
  const N = s.length / experts, mask = new Float64Array(s.length);
  for (let e = 0; e < experts; e++) {
    const order = Array.from({ length: N }, (_, t) => t)
      .sort((a, b) => s[b * experts + e]! - s[a * experts + e]! || a - b);
    for (const t of order.slice(0, tokens)) mask[t * experts + e] = 1;
  }
  return mask;
}

/** The dynamic loss of top-p routing: (1/N) Σ_t H(S_t), H(p) = −Σ_i p_i log(p_i + ε); s (N, E). */
export function entropyLossRef(s: ArrayLike<number>, experts: number): number {
  const N = s.length / experts;
  let h = 0;
  for (let i = 0; i < s.length; i++) h -= s[i]! * Math.log(s[i]! + MI_EPS);
  return h / N;
}

/** dL/dS = −(dl/N) · [log(S + ε) + S/(S + ε)]. */
export function entropyLossBackwardRef(s: ArrayLike<number>, experts: number, dl: number): Float64Array {
  const N = s.length / experts;
  return Float64Array.from(s, (v) => (-dl / N) * (Math.log(v + MI_EPS) + v / (v + MI_EPS)));
}

/** The L1 term of ReLU routing: λ · (1/N) Σ g over gates g (N, E). */
export function l1LossRef(g: ArrayLike<number>, experts: number, lambda: number): number {
  let sum = 0;
  for (let i = 0; i < g.length; i++) sum += g[i]!;
  return (lambda * sum) / (g.length / experts);
}

/** dL/dg = dl · λ / N for every gate. */
export function l1LossBackwardRef(
  g: ArrayLike<number>,
  experts: number,
  lambda: number,
  dl: number,
): Float64Array {
  return new Float64Array(g.length).fill((dl * lambda) / (g.length / experts));
}

/** The share of entries ≤ 0 (of ReLU gates: the zero ones). */
export function zeroShareRef(x: ArrayLike<number>): number {
  let zeros = 0;
  for (let i = 0; i < x.length; i++) if (x[i]! <= 0) zeros++;
  return zeros / x.length;
}

/**
 * The inference router of a ReLU-routed model over logits z (N, E): g = ReLU(z); ĝ = g / Σ_i g_i per token
 * (0 when every gate is 0); the rule's mask of ĝ (core/ref/routing.ts; not threshold_topk, whose K is a
 * batch mean) kept only where g > 0; the gate g ⊙ mask (the raw ReLU gates the model was trained with).
 *
 * @example
 * ```ts
 * import { reluRouteGateRef } from "./router_zoo.ts";
 * const [nrm, mask, gate] = reluRouteGateRef([2, -1, 1, 0], 4, { kind: "dense", epsilon: 0, k: 1, p: 1 });
 * if (mask.join() !== "1,0,1,0" || gate.join() !== "2,0,1,0" || nrm[0] !== 2 / 3) throw new Error();
 * ```
 */
export function reluRouteGateRef(
  z: ArrayLike<number>,
  experts: number,
  rule: RouteRule,
): [Float64Array, Float64Array, Float64Array] {
  if (rule.kind === "threshold_topk") {
    throw new RangeError("Cannot fuse the ReLU router gate for threshold_topk: its K is a batch mean");
  }
  const g = Float64Array.from(z, (v) => Math.max(v, 0)), nrm = new Float64Array(g.length);
  for (let t = 0; t < g.length / experts; t++) {
    let sum = 0;
    for (let e = 0; e < experts; e++) sum += g[t * experts + e]!;
    for (let e = 0; e < experts; e++) nrm[t * experts + e] = sum > 0 ? g[t * experts + e]! / sum : 0;
  }
  const mask = routeMaskRef(nrm, experts, rule).map((m, i) => (g[i]! > 0 ? m : 0));
  return [nrm, mask, g.map((v, i) => v * mask[i]!)];
}

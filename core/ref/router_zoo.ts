/**
 * Float64 references of the routers of the literature (docs/design.md §16): expert-choice selection and
 * the dynamic (entropy) loss of top-p routing.
 *
 * @module
 */
import { MI_EPS } from "./losses.ts";

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

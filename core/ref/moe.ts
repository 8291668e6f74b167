/**
 * Float64 reference of the sparse MoE MLP over the stacked-expert layout (docs/design.md §3): W1 is (d, E·h)
 * with expert e's block in columns e·h…(e+1)·h−1, W2 is (E·h, d) with expert e's block in rows e·h…, and y[t]
 * = Σ_e gate[t, e] · act(x[t]·W1_e) · W2_e over the experts whose gate is non-zero (gate = router probability
 * ⊙ 0/1 mask). Only routed (token, expert) pairs are computed, as on the GPU (gpu/kernels/moe.ts); with every
 * gate non-zero it equals the dense stacked formula.
 *
 * @module
 */
import { activationAt, type ActivationKind } from "./activation.ts";

/** Sizes of {@linkcode moeMlpRef}: N tokens, model width d, E experts of hidden width h. */
export interface MoeDims {
  N: number;
  d: number;
  E: number;
  h: number;
  activation: ActivationKind;
}

/**
 * y (N, d) from x (N, d), gate (N, E), w1 (d, E·h) and w2 (E·h, d); unrouted experts (gate 0) are skipped.
 *
 * @example
 * ```ts
 * import { moeMlpRef } from "./moe.ts";
 * // One token, d = 1, two experts of width 1: only expert 1 is routed, with gate 0.5.
 * const y = moeMlpRef([2], [0, 0.5], [1, 3], [10, 100], { N: 1, d: 1, E: 2, h: 1, activation: "relu" });
 * if (y[0] !== 0.5 * (2 * 3) * 100) throw new Error(String(y[0]));
 * ```
 */
export function moeMlpRef(
  x: ArrayLike<number>,
  gate: ArrayLike<number>,
  w1: ArrayLike<number>,
  w2: ArrayLike<number>,
  dims: MoeDims,
): Float64Array {
  const { N, d, E, h, activation } = dims, w = E * h;
  const need: [string, ArrayLike<number>, number][] = [["x", x, N * d], ["gate", gate, N * E], [
    "w1",
    w1,
    d * w,
  ], ["w2", w2, w * d]];
  for (const [name, a, n] of need) {
    if (a.length !== n) throw new RangeError(`moeMlpRef: ${name} has ${a.length} elements, expected ${n}`);
  }
  const y = new Float64Array(N * d), hid = new Float64Array(h);
  for (let t = 0; t < N; t++) {
    for (let e = 0; e < E; e++) {
      const g = gate[t * E + e]!;
      if (!(g > 0)) continue; // not routed: this expert's weights are never read for this token
      hid.fill(0);
      for (let k = 0; k < d; k++) {
        const xv = x[t * d + k]!;
        for (let j = 0; j < h; j++) hid[j]! += xv * w1[k * w + e * h + j]!;
      }
      for (let j = 0; j < h; j++) {
        const a = g * activationAt(activation, hid[j]!);
        const row = (e * h + j) * d;
        for (let c = 0; c < d; c++) y[t * d + c]! += a * w2[row + c]!;
      }
    }
  }
  return y;
}

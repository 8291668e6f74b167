/**
 * Float64 reference of the top-k token-choice router pieces (docs/design.md §16, "Top-k token choice"):
 * expert capacity (token dropping in token order), gates renormalised to sum 1 per token, softmax over the
 * kept logits (softmax after top-k), and the auxiliary-loss-free balancing bias update (sign rule).
 *
 * @module
 */

/**
 * The kept part of a 0/1 routing mask (N, E) under an expert capacity: per column (expert), the first
 * `capacity` ones in row (token) order stay 1, the later ones become 0 (those tokens are dropped for that
 * expert; the residual stream carries them).
 *
 * @example
 * ```ts
 * import { capacityMaskRef } from "./token_choice.ts";
 * // expert 0 is chosen by tokens 0, 1 and 2; with capacity 2 token 2 is dropped there.
 * const kept = capacityMaskRef([1, 0, 1, 1, 1, 0], 2, 2);
 * if (kept.join() !== "1,0,1,1,0,0") throw new Error(kept.join());
 * ```
 */
export function capacityMaskRef(mask: ArrayLike<number>, E: number, capacity: number): Float64Array {
  const out = new Float64Array(mask.length), used = new Array<number>(E).fill(0);
  for (let i = 0; i < mask.length; i++) {
    const e = i % E;
    if (mask[i]! > 0 && used[e]! < capacity) {
      out[i] = 1;
      used[e]!++;
    }
  }
  return out;
}

/** The first `width` of the `cols` columns of each row of x (N, cols). */
export function sliceColsRef(x: ArrayLike<number>, cols: number, width: number): Float64Array {
  const N = x.length / cols, y = new Float64Array(N * width);
  for (let r = 0; r < N; r++) for (let j = 0; j < width; j++) y[r * width + j] = x[r * cols + j]!;
  return y;
}

/** dy (N, width) padded with zeros to (N, cols): the gradient of {@linkcode sliceColsRef}. */
export function sliceColsBackwardRef(dy: ArrayLike<number>, width: number, cols: number): Float64Array {
  const N = dy.length / width, dx = new Float64Array(N * cols);
  for (let r = 0; r < N; r++) for (let j = 0; j < width; j++) dx[r * cols + j] = dy[r * width + j]!;
  return dx;
}

/** y = x / Σ_row x per row of x (N, E); a row summing to 0 stays 0. */
export function renormalizeRowsRef(x: ArrayLike<number>, E: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let r = 0; r < x.length / E; r++) {
    let s = 0;
    for (let e = 0; e < E; e++) s += x[r * E + e]!;
    if (s !== 0) { for (let e = 0; e < E; e++) y[r * E + e] = x[r * E + e]! / s; }
  }
  return y;
}

/** dx_j = (dy_j − Σ_i dy_i·y_i) / s with s = Σ_row x and y = x / s; 0 on a row whose s is 0. */
export function renormalizeRowsBackwardRef(
  x: ArrayLike<number>,
  dy: ArrayLike<number>,
  E: number,
): Float64Array {
  const dx = new Float64Array(x.length);
  for (let r = 0; r < x.length / E; r++) {
    let s = 0;
    for (let e = 0; e < E; e++) s += x[r * E + e]!;
    if (s === 0) continue;
    let dot = 0;
    for (let e = 0; e < E; e++) dot += dy[r * E + e]! * (x[r * E + e]! / s);
    for (let e = 0; e < E; e++) dx[r * E + e] = (dy[r * E + e]! - dot) / s;
  }
  return dx;
}

/**
 * Softmax over the kept entries of each row: y_i = mask_i·exp(z_i − m) / Σ_j mask_j·exp(z_j − m), m the
 * largest kept logit; z, mask (N, E). A row with nothing kept is 0. Its gradient in z is the softmax
 * gradient at y (`softmaxBackwardRef(y, dy)`): entries outside the mask have y = 0 and get none.
 */
export function maskedSoftmaxRef(z: ArrayLike<number>, mask: ArrayLike<number>, E: number): Float64Array {
  const y = new Float64Array(z.length);
  for (let r = 0; r < z.length / E; r++) {
    let m = -Infinity;
    for (let e = 0; e < E; e++) if (mask[r * E + e]! > 0) m = Math.max(m, z[r * E + e]!);
    if (m === -Infinity) continue;
    let s = 0;
    for (let e = 0; e < E; e++) {
      const i = r * E + e;
      if (mask[i]! > 0) s += y[i] = Math.exp(z[i]! - m);
    }
    for (let e = 0; e < E; e++) y[r * E + e]! /= s;
  }
  return y;
}

/**
 * The auxiliary-loss-free balancing update of one router's bias (docs/design.md §16): b_i ← b_i + γ ·
 * sign(mean load − load_i), with load_i the step's share of tokens that selected expert i (`load`, E
 * values summing to k) over `tokens` tokens. The comparison is made on the integer counts
 * c_i = round(load_i · tokens) (k·tokens against E·c_i), so it is exact whatever the float type of `load`.
 */
export function balanceBiasUpdateRef(
  bias: ArrayLike<number>,
  load: ArrayLike<number>,
  o: { rate: number; k: number; tokens: number },
): Float64Array {
  const E = bias.length;
  return Float64Array.from(bias, (b, i) => {
    const count = Math.round(load[i]! * o.tokens);
    return b + o.rate * Math.sign(o.k * o.tokens - E * count);
  });
}

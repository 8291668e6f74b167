/**
 * Float64 reference of the row softmax and its backward.
 *
 * @module
 */

/** Softmax over the last dim of x (rows, L), max-subtracted. */
export function softmaxRef(x: ArrayLike<number>, L: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let r = 0; r < x.length / L; r++) {
    let max = -Infinity, sum = 0;
    for (let j = 0; j < L; j++) max = Math.max(max, x[r * L + j]!);
    for (let j = 0; j < L; j++) sum += y[r * L + j] = Math.exp(x[r * L + j]! - max);
    for (let j = 0; j < L; j++) y[r * L + j]! /= sum;
  }
  return y;
}

/** dx = y ⊙ (dy − Σ_j dy_j y_j) per row. */
export function softmaxBackwardRef(y: ArrayLike<number>, dy: ArrayLike<number>, L: number): Float64Array {
  const dx = new Float64Array(y.length);
  for (let r = 0; r < y.length / L; r++) {
    let dot = 0;
    for (let j = 0; j < L; j++) dot += dy[r * L + j]! * y[r * L + j]!;
    for (let j = 0; j < L; j++) dx[r * L + j] = y[r * L + j]! * (dy[r * L + j]! - dot);
  }
  return dx;
}

/** log Σ exp over each row of x (rows, L). */
export function logSumExpRef(x: ArrayLike<number>, L: number): Float64Array {
  const out = new Float64Array(x.length / L);
  for (let r = 0; r < out.length; r++) {
    let max = -Infinity, sum = 0;
    for (let j = 0; j < L; j++) max = Math.max(max, x[r * L + j]!);
    for (let j = 0; j < L; j++) sum += Math.exp(x[r * L + j]! - max);
    out[r] = max + Math.log(sum);
  }
  return out;
}

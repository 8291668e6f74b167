/**
 * Float64 reference of the embedding lookup and its scatter-add gradient, and of the row-periodic add used
 * for learned positions (y[n] = x[n] + P[n mod period]) with its gradient.
 *
 * @module
 */

/** y (N, d) = W[ids]. */
export function embeddingRef(ids: ArrayLike<number>, w: ArrayLike<number>, d: number): Float64Array {
  const y = new Float64Array(ids.length * d);
  for (let t = 0; t < ids.length; t++) for (let j = 0; j < d; j++) y[t * d + j] = w[ids[t]! * d + j]!;
  return y;
}

/** dW (vocab, d): rows of dy summed into their token's row. */
export function embeddingGradRef(
  ids: ArrayLike<number>,
  dy: ArrayLike<number>,
  vocab: number,
  d: number,
): Float64Array {
  const dw = new Float64Array(vocab * d);
  for (let t = 0; t < ids.length; t++) for (let j = 0; j < d; j++) dw[ids[t]! * d + j]! += dy[t * d + j]!;
  return dw;
}

/** y (N, d) = x + p[n mod period]. */
export function addRowsRef(
  x: ArrayLike<number>,
  p: ArrayLike<number>,
  period: number,
  d: number,
): Float64Array {
  return Float64Array.from(x, (v, i) => v + p[(Math.floor(i / d) % period) * d + (i % d)]!);
}

/** (period, d): rows of dy summed by n mod period. */
export function sumRowsModRef(dy: ArrayLike<number>, period: number, d: number): Float64Array {
  const out = new Float64Array(period * d);
  for (let i = 0; i < dy.length; i++) out[(Math.floor(i / d) % period) * d + (i % d)]! += dy[i]!;
  return out;
}

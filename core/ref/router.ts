/**
 * Float64 reference of the router ops: per-token per-block scaling of stacked experts (the gate) and its
 * backward, and the top-k mask over experts.
 *
 * @module
 */

/** y[t, i·h + j] = s[t, i] · x[t, i·h + j]; x (N, E·h), s (N, E). */
export function routerScaleRef(x: ArrayLike<number>, s: ArrayLike<number>, experts: number): Float64Array {
  const N = s.length / experts, w = x.length / N, h = w / experts;
  return Float64Array.from(x, (v, i) => v * s[Math.floor(i / w) * experts + Math.floor((i % w) / h)]!);
}

/** ds[t, i] = Σ_j x[t, i·h + j] · dy[t, i·h + j]. */
export function routerScaleDsRef(
  x: ArrayLike<number>,
  dy: ArrayLike<number>,
  experts: number,
  N: number,
): Float64Array {
  const w = x.length / N, h = w / experts, ds = new Float64Array(N * experts);
  for (let i = 0; i < x.length; i++) {
    ds[Math.floor(i / w) * experts + Math.floor((i % w) / h)]! += x[i]! * dy[i]!;
  }
  return ds;
}

/** 0/1 mask of the k largest entries per row of s (N, E); ties go to the lower index. */
export function topkMaskRef(s: ArrayLike<number>, experts: number, k: number): Float64Array {
  const mask = new Float64Array(s.length);
  for (let t = 0; t < s.length / experts; t++) {
    const order = Array.from({ length: experts }, (_, i) => i)
      .sort((a, b) => s[t * experts + b]! - s[t * experts + a]! || a - b);
    for (const i of order.slice(0, k)) mask[t * experts + i] = 1;
  }
  return mask;
}

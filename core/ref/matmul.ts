/**
 * Float64 reference of matmul: C = alpha · op(A) · op(B) (+ C when accumulate), op = optional transpose.
 *
 * @module
 */

/** Options of {@linkcode matmulRef}: logical sizes of op(A) (m, k) and op(B) (k, n). */
export interface MatmulDims {
  m: number;
  k: number;
  n: number;
  transA?: boolean; // A stored (k, m)
  transB?: boolean; // B stored (n, k)
  alpha?: number;
}

/**
 * C (m, n) = alpha · op(A) · op(B).
 *
 * @example
 * ```ts
 * import { matmulRef } from "./matmul.ts";
 * const c = matmulRef(new Float64Array([1, 2]), new Float64Array([3, 4]), { m: 1, k: 2, n: 1 });
 * if (c[0] !== 11) throw new Error("1·3 + 2·4");
 * ```
 */
export function matmulRef(a: ArrayLike<number>, b: ArrayLike<number>, d: MatmulDims): Float64Array {
  const { m, k, n } = d, alpha = d.alpha ?? 1;
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let p = 0; p < k; p++) {
      const av = alpha * a[d.transA ? p * m + i : i * k + p]!;
      if (av === 0) continue;
      for (let j = 0; j < n; j++) c[i * n + j]! += av * b[d.transB ? j * k + p : p * n + j]!;
    }
  }
  return c;
}

/**
 * Float64 reference of matmul: C = alpha · op(A) · op(B) (+ C₀ when given), op = optional transpose,
 * optionally batched (B broadcast across the batch when `broadcastB`).
 *
 * @module
 */

/** Options of {@linkcode matmulRef}: logical sizes of op(A) (m, k) and op(B) (k, n). */
export interface MatmulDims {
  m: number;
  k: number;
  n: number;
  transA?: boolean; // A stored (batch, k, m)
  transB?: boolean; // B stored (batch, n, k)
  alpha?: number;
  /** Independent products laid out one after another. Default 1. */
  batch?: number;
  /** One B (k·n elements) shared by every batch entry. */
  broadcastB?: boolean;
  /** Initial C (batch, m, n) the product is added to (the GPU kernel's `accumulate`). */
  c?: ArrayLike<number>;
}

/**
 * C (batch, m, n) = alpha · op(A) · op(B) (+ c).
 *
 * @example
 * ```ts
 * import { matmulRef } from "./matmul.ts";
 * const c = matmulRef(new Float64Array([1, 2]), new Float64Array([3, 4]), { m: 1, k: 2, n: 1 });
 * if (c[0] !== 11) throw new Error("1·3 + 2·4");
 * ```
 */
export function matmulRef(a: ArrayLike<number>, b: ArrayLike<number>, d: MatmulDims): Float64Array {
  const { m, k, n } = d, alpha = d.alpha ?? 1, batch = d.batch ?? 1;
  const c = d.c ? Float64Array.from(d.c) : new Float64Array(batch * m * n);
  if (c.length !== batch * m * n) {
    throw new RangeError(`matmulRef: c has ${c.length} elements, expected ${batch * m * n}`);
  }
  for (let s = 0; s < batch; s++) {
    const ao = s * m * k, bo = d.broadcastB ? 0 : s * k * n, co = s * m * n;
    for (let i = 0; i < m; i++) {
      for (let p = 0; p < k; p++) {
        const av = alpha * a[ao + (d.transA ? p * m + i : i * k + p)]!;
        if (av === 0) continue;
        for (let j = 0; j < n; j++) c[co + i * n + j]! += av * b[bo + (d.transB ? j * k + p : p * n + j)]!;
      }
    }
  }
  return c;
}

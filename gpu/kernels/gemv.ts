/**
 * Matrix × vector for one row (M = 1, batch-1 decoding) on real GPUs (`gpu` profile): one dispatch of
 * {@linkcode columnSums} (16 columns × 16 lanes over K per workgroup, the lanes' partials added in a fixed
 * order) in place of the tiled matmul with K split across workgroups and a second dispatch summing the
 * slices (gpu/kernels/matmul.ts). docs/performance.md "Dispatches per decoded token".
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { columnSums } from "./common.ts";

/** Options of {@linkcode gemv}: c (1, n) = a (1, k) · op(B), B stored (k, n), or (n, k) with `transB`. */
export interface GemvOptions {
  a: GpuTensor;
  b: GpuTensor;
  c: GpuTensor;
  k: number;
  n: number;
  transB?: boolean;
}

/**
 * Whether a matmul of the graph runs as {@linkcode gemv}: one row, A not transposed, on the `gpu` profile
 * where the tiled kernel would split K (`splits` > 1 from matmulPlan) and so take two dispatches.
 */
export function gemvFits(ctx: GpuContext, m: number, transA: boolean, splits: number): boolean {
  return ctx.profile === "gpu" && m === 1 && !transA && splits > 1;
}

/**
 * c[i] = Σ_r a[r] · B[r, i] (or B[i, r] with `transB`) in one dispatch.
 *
 * @example
 * ```ts ignore
 * const call = gemv(ctx, { a, b, c, k: 512, n: 4096 }); // a (1, 512), b (512, 4096), c (1, 4096)
 * ```
 */
export function gemv(ctx: GpuContext, o: GemvOptions): KernelCall {
  if (o.a.size !== o.k || o.b.size !== o.k * o.n || o.c.size !== o.n) {
    throw new RangeError(
      `Cannot gemv: a [${o.a.shape}], b [${o.b.shape}], c [${o.c.shape}] do not fit k ${o.k}, n ${o.n}`,
    );
  }
  return columnSums(ctx, {
    label: o.transB ? "gemv_nt" : "gemv_nn",
    bindings: [
      { name: "A", tensor: o.a },
      { name: "B", tensor: o.b },
      { name: "C", tensor: o.c, write: true },
    ],
    fields: [["n", "u32", o.n], ["rows", "u32", o.k]],
    terms: [o.transB ? "A[r] * B[i * u.rows + r]" : "A[r] * B[r * u.n + i]"],
    finish: "C[i] = s0;",
  });
}

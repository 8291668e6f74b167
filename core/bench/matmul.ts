/**
 * The matmul suite: C = A·B (row-major, no transposes) at square and tall shapes, ours
 * (gpu/kernels/matmul.ts) beside tfjs-webgpu's `tf.matMul`. GFLOP/s counts 2·M·K·N per run.
 *
 * @module
 */
import type { GpuTensor } from "../../gpu/buffers.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { matmul } from "../../gpu/kernels/matmul.ts";
import { matmulRef } from "../ref/matmul.ts";
import type { BenchCase } from "./case.ts";
import { randomF32 } from "./data.ts";
import { oursRunnable, upload } from "./ours.ts";
import { type Tfjs, tfjsRunnable } from "./tfjs.ts";

/** A matmul shape: op(A) is (m, k), B is (k, n). */
export type MatmulShape = readonly [m: number, k: number, n: number];

/** Shapes of the full suite (the tables of docs/performance.md). */
export const MATMUL_SHAPES: readonly MatmulShape[] = [
  [256, 256, 256],
  [512, 512, 512],
  [1024, 1024, 1024],
  [2048, 2048, 2048],
  [4096, 256, 1024],
];

/**
 * The large square product of the fp32-peak target (docs/performance.md "MFU"): added on real GPUs (the `gpu`
 * kernel profile) or with `bench --large`; llvmpipe takes minutes over it.
 */
export const MATMUL_LARGE: MatmulShape = [4096, 4096, 4096];

/** Shapes of `--quick` (tests): small, and one that is not a multiple of the tile. */
export const MATMUL_SHAPES_QUICK: readonly MatmulShape[] = [[128, 128, 128], [200, 64, 96]];

// f32 sums of k products of values in [-1, 1) are off by ~√k·2⁻²⁴ from float64; a wrong kernel is off by O(1).
const _TOL = { atol: 1e-3, rtol: 1e-3 };

// Rows of C compared with the reference: a full reference at 2048³ would take the CPU tens of seconds.
function _checkedRows(m: number): number[] {
  return [...new Set([0, Math.floor(m / 3), Math.floor((2 * m) / 3), m - 1])];
}

/**
 * The matmul cases for `shapes`, each checked (sampled rows of C) and timed for ours and tfjs.
 *
 * @example
 * ```ts ignore
 * const rows = await runCases(matmulCases(ctx, tfjs, MATMUL_SHAPES_QUICK), { warmup: 1, reps: 2 });
 * ```
 */
export function matmulCases(ctx: GpuContext, t: Tfjs, shapes: readonly MatmulShape[]): BenchCase[] {
  return shapes.map(([m, k, n]) => ({
    suite: "matmul",
    name: `${m}x${k}x${n}`,
    flops: 2 * m * k * n,
    setup() {
      const a = randomF32(m * k, m + 7 * k + 13 * n), b = randomF32(k * n, m + 7 * k + 13 * n + 1);
      const rows = _checkedRows(m);
      return {
        tolerance: _TOL,
        reference() {
          const aRows = new Float64Array(rows.length * k);
          rows.forEach((r, i) => aRows.set(a.subarray(r * k, (r + 1) * k), i * k));
          return matmulRef(aRows, b, { m: rows.length, k, n });
        },
        select: (out) =>
          Float64Array.from({ length: rows.length * n }, (_, i) => out[rows[(i / n) | 0]! * n + (i % n)]!),
        impls: {
          dsmoe: () => {
            const owned: GpuTensor[] = [];
            const ta = upload(ctx, owned, [m, k], a, "a"), tb = upload(ctx, owned, [k, n], b, "b");
            const tc = upload(ctx, owned, [m, n], null, "c");
            return oursRunnable(ctx, [matmul(ctx, { a: ta, b: tb, c: tc, m, k, n })], tc, owned);
          },
          "tfjs-webgpu": () => {
            const ta = t.tf.tensor2d(a, [m, k]), tb = t.tf.tensor2d(b, [k, n]);
            return tfjsRunnable(t, () => t.tf.matMul(ta, tb), [ta, tb]);
          },
        },
      };
    },
  }));
}

/**
 * Our kernels as a benchmark {@linkcode Runnable}: the calls are prepared once (pipelines, bind groups,
 * uniforms), and every repetition encodes them into one step, submits it and waits for the queue.
 *
 * @module
 */
import { createTensor, type DType, type GpuTensor, type HostArray, readTensor } from "../../gpu/buffers.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { type KernelCall, prepare, releaseCall, Step } from "../../gpu/dispatch.ts";
import type { Runnable } from "./case.ts";

/**
 * A tensor made from host data, tracked in `owned` so the runnable can free it.
 *
 * @example
 * ```ts ignore
 * const owned: GpuTensor[] = [];
 * const x = upload(ctx, owned, [4, 8], Float32Array.from(data), "x");
 * ```
 */
export function upload(
  ctx: GpuContext,
  owned: GpuTensor[],
  shape: readonly number[],
  data: HostArray | null,
  label: string,
  dtype: DType = "f32",
): GpuTensor {
  const t = createTensor(ctx, shape, dtype, data ?? undefined, label);
  owned.push(t);
  return t;
}

/**
 * Wraps prepared `calls` whose result is `output`; `owned` tensors are destroyed on dispose.
 *
 * @example
 * ```ts ignore
 * const r = oursRunnable(ctx, [matmul(ctx, { a, b, c, m, k, n })], c, [a, b, c]);
 * await r.run();
 * ```
 */
export function oursRunnable(
  ctx: GpuContext,
  calls: readonly KernelCall[],
  output: GpuTensor,
  owned: readonly GpuTensor[],
): Runnable {
  const prepared = calls.map((c) => prepare(ctx, c));
  return {
    async run(times = 1) {
      let step: Step | null = null;
      for (let i = 0; i < times; i++) {
        step = new Step(ctx, { label: "bench" });
        for (const p of prepared) step.dispatch(p);
        step.submit();
      }
      await step?.done();
    },
    output: () => readTensor(ctx, output),
    dispose() {
      prepared.forEach(releaseCall);
      for (const t of owned) t.buffer.destroy();
    },
  };
}

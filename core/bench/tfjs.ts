/**
 * tfjs with its WebGPU backend, as the comparison of every benchmark row. tfjs is handed OUR GPUDevice
 * (`new WebGPUBackend(ctx.device)`), so both implementations run on the same adapter, limits and queue,
 * and one `onSubmittedWorkDone()` on that queue waits for either. tfjs records ops into its own command
 * encoder and submits only every 15 dispatches; after issuing an op we end its compute pass and submit
 * (`endComputePassEncoder()`, `submitQueue()`), so a repetition is encode + submit + wait, as for ours.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs-core";
import { WebGPUBackend } from "@tensorflow/tfjs-backend-webgpu";
import type { GpuContext } from "../../gpu/device.ts";
import type { Runnable } from "./case.ts";

/** The tfjs module, set to the WebGPU backend on our device. */
export interface Tfjs {
  tf: typeof tf;
  backend: WebGPUBackend;
  device: GPUDevice;
}

/**
 * Registers tfjs's WebGPU backend on `ctx`'s device (replacing the one the package registers on import,
 * which would open a second device) and makes it current; throws unless tfjs really runs on "webgpu".
 *
 * @example
 * ```ts ignore
 * const t = await openTfjs(await openGpu());
 * t.tf.matMul(a, b);
 * ```
 */
export async function openTfjs(ctx: GpuContext): Promise<Tfjs> {
  const current = tf.findBackend("webgpu");
  if (!(current instanceof WebGPUBackend && current.device === ctx.device)) {
    if (tf.engine().registryFactory["webgpu"]) tf.removeBackend("webgpu");
    // tfjs reads only vendor and architecture (to tune for Intel GPUs) from the adapter info.
    const info = { vendor: ctx.adapter.vendor, architecture: ctx.adapter.architecture } as GPUAdapterInfo;
    tf.registerBackend("webgpu", () => new WebGPUBackend(ctx.device, info));
  }
  // Without this, tfjs runs ops on small not-yet-uploaded inputs on its CPU backend instead.
  tf.env().set("WEBGPU_CPU_FORWARD", false);
  if (!(await tf.setBackend("webgpu"))) {
    throw new Error("Cannot benchmark tfjs: its webgpu backend failed to start");
  }
  await tf.ready();
  const backend = tf.backend();
  if (tf.getBackend() !== "webgpu" || !(backend instanceof WebGPUBackend)) {
    throw new Error(`Cannot benchmark tfjs: backend is "${tf.getBackend()}", not "webgpu"`);
  }
  return { tf, backend, device: ctx.device };
}

/**
 * Wraps `op` (a pure function of tensors made beforehand) as a runnable: each run issues it inside
 * `tf.tidy` (intermediates freed), flushes tfjs's encoder and waits for the queue. `owned` inputs are
 * disposed on dispose.
 *
 * @example
 * ```ts ignore
 * const r = tfjsRunnable(t, () => t.tf.matMul(a, b), [a, b]);
 * await r.run();
 * ```
 */
export function tfjsRunnable(t: Tfjs, op: () => tf.Tensor, owned: readonly tf.Tensor[]): Runnable {
  let last: tf.Tensor | null = null;
  return {
    async run(times = 1) {
      for (let i = 0; i < times; i++) {
        last?.dispose();
        last = t.tf.tidy(op);
        t.backend.ensureCommandEncoderReady(); // submitQueue() needs an encoder, even an empty one
        t.backend.endComputePassEncoder();
        t.backend.submitQueue();
      }
      await t.device.queue.onSubmittedWorkDone();
    },
    async output() {
      if (!last) throw new Error("Cannot read a tfjs result before a run");
      return await last.data() as Float32Array;
    },
    dispose() {
      last?.dispose();
      last = null;
      for (const x of owned) x.dispose();
    },
  };
}

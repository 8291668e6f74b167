/**
 * jax-js (npm `@jax-js/jax`) as a peer of the train suite, on its WebGPU and its WebAssembly backends. It
 * opens its own GPU device on the same adapter; a repetition issues the step and waits until every output
 * array is ready. The training step is `jit(valueAndGrad(loss))` for the gradients, then global-norm
 * clipping and a jitted AdamW update per parameter, following jax-js's ownership rules (every argument is
 * consumed; `.ref` keeps an array for a second use).
 *
 * @module
 */
import { type Array as JaxArray, defaultDevice, init, jit, nn, numpy as np, valueAndGrad } from "@jax-js/jax";
import type { Runnable } from "./case.ts";

/** The jax-js backends benchmarked. */
export type JaxDevice = "webgpu" | "wasm";

let _devices: Promise<string[]> | null = null;

/** Starts jax-js's backends once; throws if `device` is not among them. */
export async function openJax(device: JaxDevice): Promise<void> {
  _devices ??= init();
  const have = await _devices;
  if (!have.includes(device)) {
    throw new Error(`jax-js has no ${device} backend here (it has ${have.join(", ")})`);
  }
  defaultDevice(device);
}

/** Dimensions and hyperparameters of the block's training step (see train_step.ts). */
export interface JaxTrainSpec {
  N: number;
  d: number;
  E: number;
  h: number;
  lr: number;
  clip: number;
  betas: readonly [number, number];
  eps: number;
  weightDecay: number;
}

type _Params = { wr: JaxArray; w1: JaxArray; w2: JaxArray };

/** The MoE-MLP block training step in jax-js on `device`; the output is the last step's gradients. */
export async function jaxTrainRunnable(
  device: JaxDevice,
  s: JaxTrainSpec,
  x: Float32Array,
  targets: Uint32Array,
  init: Float32Array[],
): Promise<Runnable> {
  await openJax(device);
  const { N, d, E, h } = s, [b1, b2] = s.betas;
  const xa = np.array(new Float32Array(x)).reshape([N, d]);
  const onehot = nn.oneHot(np.array(Int32Array.from(targets)), d);
  const shapes: [number, number][] = [[d, E], [d, E * h], [E * h, d]];
  let params = init.map((v, i) => np.array(new Float32Array(v)).reshape(shapes[i]!));
  let ms = shapes.map((sh) => np.zeros(sh)), vs = shapes.map((sh) => np.zeros(sh));
  const loss = (p: _Params, xx: JaxArray, oh: JaxArray) => {
    const sr = nn.softmax(np.matmul(xx.ref, p.wr), -1);
    const a = nn.gelu(np.matmul(xx, p.w1), { approximate: true }).reshape([N, E, h]);
    const scaled = a.mul(sr.reshape([N, E, 1])).reshape([N, E * h]);
    return nn.logSoftmax(np.matmul(scaled, p.w2), -1).mul(oh).sum().mul(-1 / N);
  };
  const gradStep = jit(valueAndGrad(loss));
  const adamw = jit((
    p: JaxArray,
    g0: JaxArray,
    m: JaxArray,
    v: JaxArray,
    scale: JaxArray,
    bc1: JaxArray,
    bc2: JaxArray,
  ) => {
    const g = g0.mul(scale);
    const m2 = m.mul(b1).add(g.ref.mul(1 - b1));
    const v2 = v.mul(b2).add(np.square(g).mul(1 - b2));
    const upd = m2.ref.div(bc1).div(np.sqrt(v2.ref.div(bc2)).add(s.eps)).add(p.ref.mul(s.weightDecay));
    return [p.sub(upd.mul(s.lr)), m2, v2];
  });
  let step = 0, grads: JaxArray[] = [];
  return {
    async run(times = 1) {
      defaultDevice(device);
      for (let rep = 0; rep < times; rep++) {
        step++;
        const [value, g] = gradStep(
          { wr: params[0]!.ref, w1: params[1]!.ref, w2: params[2]!.ref },
          xa.ref,
          onehot.ref,
        );
        value.dispose();
        for (const old of grads) old.dispose();
        grads = [g.wr, g.w1, g.w2];
        const norm = np.sqrt(grads.map((t) => np.square(t.ref).sum()).reduce((a, b) => a.add(b)));
        const scale = np.minimum(np.array(1), np.array(s.clip).div(np.maximum(norm, 1e-12)));
        const bc1 = np.array(1 - b1 ** step), bc2 = np.array(1 - b2 ** step);
        const next = params.map((p, i) =>
          adamw(p, grads[i]!.ref, ms[i]!, vs[i]!, scale.ref, bc1.ref, bc2.ref)
        );
        scale.dispose(), bc1.dispose(), bc2.dispose();
        params = next.map((r) => r[0]!);
        ms = next.map((r) => r[1]!);
        vs = next.map((r) => r[2]!);
        // WebAssembly computes on this machine's CPUs, so a queue buys nothing there, and the pending
        // intermediates of many queued steps outgrow wasm's 4 GiB memory (seen at 64 steps of N = 2048).
        if (device === "wasm") await Promise.all([...params, ...ms, ...vs].map((a) => a.blockUntilReady()));
      }
      await Promise.all([...params, ...ms, ...vs, ...grads].map((a) => a.blockUntilReady()));
    },
    async output() {
      const parts = await Promise.all(grads.map((g) => g.ref.data()));
      return Float32Array.from(parts.flatMap((p) => Array.from(p as Float32Array)));
    },
    dispose() {
      for (const a of [...params, ...ms, ...vs, ...grads, xa, onehot]) a.dispose();
      grads = [];
    },
    hostBound: device === "wasm",
  };
}

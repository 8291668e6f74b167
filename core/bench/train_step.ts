/**
 * The train suite: one training step of a DS-MoE MLP block, trained densely as DS-MoE trains it. Router
 * S = softmax(x·Wr); every expert runs: y = (gelu(x·W1) scaled blockwise by S)·W2; loss = cross-entropy of
 * y against fixed targets; then the gradient of every parameter, the global gradient norm with clipping at
 * 1, and an AdamW update. Ours is the training graph (core/graph autodiff, gpu executor, the trainer's
 * optimizer kernels); jax-js (WebGPU and WebAssembly) with `jit(valueAndGrad(…))` and a jitted AdamW;
 * tfjs-webgpu computes the same with its backward pass and AdamW written in tfjs ops
 * (tfjs-core's Node build registers no gradient functions, so `variableGrads` is not available to it). The
 * checked output is the three gradients of the first step, against the float64 CPU graph.
 *
 * @module
 */
import type * as tf from "@tensorflow/tfjs-core";
import { createTensor, type GpuTensor, readTensor, writeTensor } from "../../gpu/buffers.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { prepare, releaseCall, Step } from "../../gpu/dispatch.ts";
import { GraphExecutor } from "../../gpu/executor.ts";
import { ExperimentSchema } from "../config/schema.ts";
import { gradients } from "../graph/autodiff.ts";
import { evaluateGraph, type HostValue } from "../graph/cpu_executor.ts";
import { CPU_OPS } from "../graph/cpu_ops.ts";
import { Graph } from "../graph/ir.ts";
import { apply, apply1 } from "../graph/ops.ts";
import { schedule } from "../graph/schedule.ts";
import { optimizerCalls } from "../train/optimizer_calls.ts";
import { type BenchCase, IMPLS, JAX_IMPLS, type Runnable } from "./case.ts";
import { jaxTrainRunnable, type JaxTrainSpec } from "./jaxjs.ts";
import { randomF32, randomIds } from "./data.ts";
import { type Tfjs, tfjsRunnable } from "./tfjs.ts";

/** The block: N tokens of width d, E experts of width h. */
export interface TrainStepDims {
  N: number;
  d: number;
  E: number;
  h: number;
}

/** The block: 2048 tokens, d 256, 8 experts × 128. */
export const TRAIN_DIMS: TrainStepDims = { N: 2048, d: 256, E: 8, h: 128 };
/** `--quick` (tests). */
export const TRAIN_DIMS_QUICK: TrainStepDims = { N: 64, d: 16, E: 4, h: 8 };

const _OPT = ExperimentSchema.parse({}).train.optimizer;
const _LR = 1e-3, _CLIP = 1;

/** The block's graph: inputs x and targets, parameters Wr, W1, W2, the loss and its gradients. */
export function trainBlockGraph(dims: TrainStepDims) {
  const { N, d, E, h } = dims, g = new Graph();
  const x = g.leaf("input", "x", [N, d]), targets = g.leaf("input", "targets", [N], "u32");
  const wr = g.leaf("param", "wr", [d, E]), w1 = g.leaf("param", "w1", [d, E * h]);
  const w2 = g.leaf("param", "w2", [E * h, d]);
  const s = apply1(g, "softmax", [apply1(g, "matmul", [x, wr])]);
  // The activation and the router gate in one op, as the model's routed MLP has them.
  const [, a] = apply(g, "gated_activation", [apply1(g, "matmul", [x, w1]), s], { kind: "gelu", blocks: E });
  const y = apply1(g, "matmul", [a!, w2]);
  const loss = apply1(g, "cross_entropy", [y, targets]);
  const params = [wr, w1, w2];
  return { g, x, targets, params, loss, grads: gradients(g, loss, params) };
}

/** The train cases: one block at `dims`, ours against tfjs-webgpu. */
export function trainStepCases(ctx: GpuContext, tfjs: Tfjs, dims: TrainStepDims): BenchCase[] {
  const { N, d, E, h } = dims;
  return [{
    suite: "train",
    name: `MoE-MLP block N${N} d${d} E${E}x${h} fwd+bwd+AdamW`,
    // Forward: router 2·N·d·E, up and down 2·2·N·d·E·h; backward twice that.
    flops: 3 * (2 * N * d * E + 4 * N * d * E * h),
    impls: [...IMPLS, ...JAX_IMPLS],
    setup() {
      const x = randomF32(N * d, 41), targets = randomIds(N, d, 42);
      const init = [
        randomF32(d * E, 43, -0.2, 0.2),
        randomF32(d * E * h, 44, -0.1, 0.1),
        randomF32(E * h * d, 45, -0.1, 0.1),
      ];
      return {
        tolerance: { atol: 2e-6, rtol: 2e-3 },
        reference() {
          const m = trainBlockGraph(dims);
          const feeds = new Map<number, HostValue>([[m.x.id, Float64Array.from(x)], [m.targets.id, targets]]);
          m.params.forEach((p, i) => feeds.set(p.id, Float64Array.from(init[i]!)));
          const out = evaluateGraph(schedule(m.g, m.grads).nodes, feeds, m.grads, CPU_OPS);
          return Float64Array.from(out.flatMap((o) => Array.from(o as Float64Array)));
        },
        impls: {
          dsmoe: () => _ours(ctx, dims, x, targets, init),
          "tfjs-webgpu": () => _tfjs(tfjs, dims, x, targets, init),
          "jax-js-webgpu": () => jaxTrainRunnable("webgpu", _jaxSpec(dims), x, targets, init),
          "jax-js-wasm": () => jaxTrainRunnable("wasm", _jaxSpec(dims), x, targets, init),
        },
      };
    },
  }];
}

function _jaxSpec(dims: TrainStepDims): JaxTrainSpec {
  return {
    ...dims,
    lr: _LR,
    clip: _CLIP,
    betas: _OPT.betas,
    eps: _OPT.eps,
    weightDecay: _OPT.weight_decay,
  };
}

function _ours(
  ctx: GpuContext,
  dims: TrainStepDims,
  x: Float32Array,
  targets: Uint32Array,
  init: Float32Array[],
): Runnable {
  const m = trainBlockGraph(dims);
  const leaves = [...m.g.leaves.values()].map((l) => l.value);
  const exec = new GraphExecutor(ctx, schedule(m.g, [m.loss, ...m.grads]), leaves);
  writeTensor(ctx, exec.tensor(m.x), x);
  writeTensor(ctx, exec.tensor(m.targets), targets);
  m.params.forEach((p, i) => writeTensor(ctx, exec.tensor(p), init[i]!));
  const stats = createTensor(ctx, [3], "f32", undefined, "bench.stats");
  const hyper = createTensor(ctx, [3], "f32", undefined, "bench.hyper");
  const opt = optimizerCalls(
    ctx,
    m.params.map((p, i) => ({
      name: p.name,
      param: exec.tensor(p),
      grad: exec.tensor(m.grads[i]!),
      decay: true,
    })),
    { loss: exec.tensor(m.loss), stats, hyper, optimizer: _OPT, gradClip: _CLIP },
  );
  const prepared = opt.calls.map((c) => prepare(ctx, c));
  let t = 0;
  const own: GpuTensor[] = [stats, hyper, ...opt.m.values(), ...opt.v.values()];
  return {
    async run(times = 1) {
      let step: Step | null = null;
      for (let i = 0; i < times; i++) {
        t++;
        writeTensor(ctx, hyper, new Float32Array([_LR, 1 - _OPT.betas[0] ** t, 1 - _OPT.betas[1] ** t]));
        step = new Step(ctx, { label: "bench.train" });
        exec.encode(step);
        for (const p of prepared) step.dispatch(p);
        step.submit();
      }
      await step?.done();
    },
    async output() {
      const parts = await Promise.all(m.grads.map((g) => readTensor(ctx, exec.tensor(g))));
      return Float32Array.from(parts.flatMap((p) => Array.from(p as Float32Array)));
    },
    dispose() {
      prepared.forEach(releaseCall);
      for (const o of own) o.buffer.destroy();
      exec.destroy();
    },
  };
}

/** The same step in tfjs ops: forward, the backward written out, global-norm clipping, AdamW. */
function _tfjs(
  t: Tfjs,
  dims: TrainStepDims,
  x: Float32Array,
  targets: Uint32Array,
  init: Float32Array[],
): Runnable {
  const { tf: T } = t, { N, d, E, h } = dims;
  const xt = T.tensor2d(x, [N, d]), onehot = T.oneHot(T.tensor1d(Int32Array.from(targets), "int32"), d);
  const shapes: [number, number][] = [[d, E], [d, E * h], [E * h, d]];
  const vars = init.map((v, i) => T.variable(T.tensor2d(v, shapes[i]!)));
  const ms = shapes.map((s) => T.variable(T.zeros(s))), vs = shapes.map((s) => T.variable(T.zeros(s)));
  const c = Math.sqrt(2 / Math.PI), k3 = 0.044715;
  /** Gradients of the cross-entropy loss for Wr, W1, W2. */
  const grads = (): tf.Tensor[] => {
    const [wr, w1, w2] = vars as [tf.Variable, tf.Variable, tf.Variable];
    const s = T.softmax(T.matMul(xt, wr)); // (N, E)
    const u = T.matMul(xt, w1); // (N, E·h)
    const th = T.tanh(T.mul(c, T.add(u, T.mul(k3, T.pow(u, 3)))));
    const a = T.mul(T.mul(u, 0.5), T.add(1, th));
    const s3 = T.reshape(s, [N, E, 1]);
    const scaled = T.reshape(T.mul(T.reshape(a, [N, E, h]), s3), [N, E * h]);
    const y = T.matMul(scaled, w2); // (N, d)
    const dy = T.div(T.sub(T.softmax(y), onehot), N);
    const dw2 = T.matMul(scaled, dy, true, false);
    const dscaled = T.reshape(T.matMul(dy, w2, false, true), [N, E, h]);
    const ds = T.sum(T.mul(dscaled, T.reshape(a, [N, E, h])), 2); // (N, E)
    const da = T.reshape(T.mul(dscaled, s3), [N, E * h]);
    const dgelu = T.add(
      T.mul(0.5, T.add(1, th)),
      T.mul(T.mul(T.mul(0.5, u), T.sub(1, T.square(th))), T.mul(c, T.add(1, T.mul(3 * k3, T.square(u))))),
    );
    const dw1 = T.matMul(xt, T.mul(da, dgelu), true, false);
    const dz = T.mul(s, T.sub(ds, T.sum(T.mul(ds, s), 1, true)));
    const dwr = T.matMul(xt, dz, true, false);
    return [dwr, dw1, dw2];
  };
  let step = 0;
  return tfjsRunnable(t, () => {
    step++;
    const gs = grads();
    const norm = T.sqrt(T.addN(gs.map((g) => T.sum(T.square(g)))));
    const scale = T.minimum(1, T.div(_CLIP, T.maximum(norm, 1e-12)));
    const [b1, b2] = _OPT.betas;
    gs.forEach((g0, i) => {
      const g = T.mul(g0, scale);
      ms[i]!.assign(T.add(T.mul(ms[i]!, b1), T.mul(g, 1 - b1)));
      vs[i]!.assign(T.add(T.mul(vs[i]!, b2), T.mul(T.square(g), 1 - b2)));
      const mh = T.div(ms[i]!, 1 - b1 ** step), vh = T.div(vs[i]!, 1 - b2 ** step);
      const upd = T.add(T.div(mh, T.add(T.sqrt(vh), _OPT.eps)), T.mul(vars[i]!, _OPT.weight_decay));
      vars[i]!.assign(T.sub(vars[i]!, T.mul(upd, _LR)));
    });
    return T.concat(gs.map((g) => T.reshape(g, [-1])));
  }, [...vars, ...ms, ...vs, xt, onehot]);
}

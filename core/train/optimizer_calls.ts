/**
 * The optimizer part of a training step on the GPU: squared norms of every gradient, the global norm and
 * its clip factor (a non-finite norm marks the step skipped), then one AdamW update per parameter. Used by
 * the training backend and by the training-step benchmark, so both time the same work.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import { createTensor, type GpuTensor } from "../../gpu/buffers.ts";
import type { GpuContext } from "../../gpu/device.ts";
import type { KernelCall } from "../../gpu/dispatch.ts";
import {
  adamw,
  gradNormFinish,
  partialsFor,
  sumSquares,
  sumSquaresGroup,
} from "../../gpu/kernels/optimizer.ts";

/** One optimized parameter: its tensor, its gradient's tensor, and whether weight decay applies. */
export interface OptimizedParam {
  name: string;
  param: GpuTensor;
  grad: GpuTensor;
  decay: boolean;
}

/** The calls, and the Adam moments they created (zeros), by parameter name. */
export interface OptimizerCalls {
  calls: KernelCall[];
  m: Map<string, GpuTensor>;
  v: Map<string, GpuTensor>;
}

/**
 * Builds the optimizer calls. `stats` (3,) receives norm, clip factor and finite flag; `hyper` (3,) holds
 * the learning rate and both bias corrections, written by the caller before each step.
 */
export function optimizerCalls(
  ctx: GpuContext,
  params: readonly OptimizedParam[],
  o: {
    loss: GpuTensor;
    stats: GpuTensor;
    hyper: GpuTensor;
    optimizer: Experiment["train"]["optimizer"];
    gradClip: number;
    /** Dynamic loss scaling: the state [S, good, last S]; the gradients are S times the loss's. */
    lossScale?: GpuTensor;
  },
): OptimizerCalls {
  const total = params.reduce((n, p) => n + partialsFor(p.grad.size), 0);
  const partials = createTensor(ctx, [total], "f32", undefined, "grad.partials");
  const calls: KernelCall[] = [];
  const group = sumSquaresGroup(ctx);
  for (let first = 0, offset = 0; first < params.length; first += group) {
    const xs = params.slice(first, first + group).map((p) => p.grad);
    calls.push(sumSquares(ctx, { xs, partials, offset }));
    offset += xs.reduce((n, x) => n + partialsFor(x.size), 0);
  }
  calls.push(
    gradNormFinish(ctx, {
      partials,
      count: total,
      loss: o.loss,
      stats: o.stats,
      maxNorm: o.gradClip,
      ...(o.lossScale ? { scale: o.lossScale } : {}),
    }),
  );
  const m = new Map<string, GpuTensor>(), v = new Map<string, GpuTensor>();
  for (const p of params) {
    const n = p.param.size;
    const mt = createTensor(ctx, p.param.shape, "f32", new Float32Array(n), `adam.m.${p.name}`);
    const vt = createTensor(ctx, p.param.shape, "f32", new Float32Array(n), `adam.v.${p.name}`);
    m.set(p.name, mt);
    v.set(p.name, vt);
    calls.push(adamw(ctx, {
      param: p.param,
      grad: p.grad,
      m: mt,
      v: vt,
      stats: o.stats,
      hyper: o.hyper,
      beta1: o.optimizer.betas[0],
      beta2: o.optimizer.betas[1],
      eps: o.optimizer.eps,
      weightDecay: p.decay ? o.optimizer.weight_decay : 0,
    }));
  }
  return { calls, m, v };
}

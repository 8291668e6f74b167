/**
 * The kernels suite: every other kernel of a training step at model-like sizes (tokens = batch·seq rows),
 * ours (gpu/kernels) beside the closest tfjs-webgpu expression. tfjs-core has no fused GELU, LayerNorm,
 * attention or AdamW op, so those rows time the expression a tfjs user would write (each is commented
 * where it is built): the comparison is what each library offers for the operation, not kernel for kernel.
 *
 * @module
 */
import type { GpuTensor } from "../../gpu/buffers.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { activation } from "../../gpu/kernels/activation.ts";
import { attention } from "../../gpu/kernels/attention.ts";
import { biasAdd, embedding, sumRows } from "../../gpu/kernels/embedding.ts";
import { crossEntropy } from "../../gpu/kernels/losses.ts";
import { norm } from "../../gpu/kernels/norm.ts";
import { adamw } from "../../gpu/kernels/optimizer.ts";
import { softmax } from "../../gpu/kernels/softmax.ts";
import { activationRef } from "../ref/activation.ts";
import { adamwStepRef } from "../ref/adamw.ts";
import { attentionRef } from "../ref/attention.ts";
import { biasAddRef, sumRowsRef } from "../ref/elementwise.ts";
import { embeddingRef } from "../ref/embedding.ts";
import { crossEntropyRef } from "../ref/losses.ts";
import { normRef } from "../ref/norm.ts";
import { softmaxRef } from "../ref/softmax.ts";
import type { BenchCase, CaseSetup } from "./case.ts";
import { randomF32, randomIds } from "./data.ts";
import { oursRunnable, upload } from "./ours.ts";
import { type Tfjs, tfjsRunnable } from "./tfjs.ts";

/** Model sizes the kernels run at. */
export interface KernelDims {
  batch: number;
  seq: number;
  d: number; // d_model
  hidden: number; // MLP width
  vocab: number;
  heads: number;
  headDim: number;
}

/** Full suite: 1024 tokens of a small DS-MoE model (d 256, MLP 1024, byte vocab, 8 heads × 16). */
export const KERNEL_DIMS: KernelDims = {
  batch: 16,
  seq: 64,
  d: 256,
  hidden: 1024,
  vocab: 256,
  heads: 8,
  headDim: 16,
};

/** `--quick` (tests). */
export const KERNEL_DIMS_QUICK: KernelDims = {
  batch: 2,
  seq: 16,
  d: 32,
  hidden: 64,
  vocab: 32,
  heads: 2,
  headDim: 8,
};

const _ELEMENTWISE = { atol: 1e-5, rtol: 1e-4 }, _REDUCE = { atol: 1e-4, rtol: 1e-3 };
const _ADAMW = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.01 };

/**
 * The kernel cases at `dims`: softmax, layernorm, gelu, bias add, causal attention, cross-entropy,
 * embedding lookup, AdamW step and a column-sum reduction.
 *
 * @example
 * ```ts ignore
 * const rows = await runCases(kernelCases(ctx, tfjs, KERNEL_DIMS_QUICK), { warmup: 1, reps: 2 });
 * ```
 */
export function kernelCases(ctx: GpuContext, t: Tfjs, dims: KernelDims): BenchCase[] {
  const { batch: B, seq: T, d, hidden: F, vocab: V, heads: H, headDim: D } = dims;
  const env: _Env = { ctx, t, tf: t.tf, B, T, N: B * T, d, F, V, H, D };
  return [_softmax, _layernorm, _gelu, _biasAdd, _attention, _crossEntropy, _embedding, _adamw, _sumRows].map(
    (f) => f(env),
  );
}

// Sizes as short names: B batch, T seq, N = B·T tokens, d model, F MLP width, V vocab, H heads × D head dim.
interface _Env {
  ctx: GpuContext;
  t: Tfjs;
  tf: Tfjs["tf"];
  B: number;
  T: number;
  N: number;
  d: number;
  F: number;
  V: number;
  H: number;
  D: number;
}

function _case(name: string, flops: number | null, setup: () => CaseSetup): BenchCase {
  return { suite: "kernels", name, flops, setup };
}

function _softmax({ ctx, t, tf, N, V }: _Env): BenchCase {
  return _case(`softmax ${N}x${V}`, null, () => {
    const x = randomF32(N * V, 11, -4, 4);
    return {
      tolerance: _ELEMENTWISE,
      reference: () => softmaxRef(x, V),
      impls: {
        dsmoe: () => {
          const o: GpuTensor[] = [],
            tx = upload(ctx, o, [N, V], x, "x"),
            y = upload(ctx, o, [N, V], null, "y");
          return oursRunnable(ctx, [softmax(ctx, { x: tx, y })], y, o);
        },
        "tfjs-webgpu": () => {
          const tx = tf.tensor2d(x, [N, V]);
          return tfjsRunnable(t, () => tf.softmax(tx), [tx]);
        },
      },
    };
  });
}

function _layernorm({ ctx, t, tf, N, d }: _Env): BenchCase {
  return _case(`layernorm ${N}x${d}`, null, () => {
    const x = randomF32(N * d, 12, -2, 2), g = randomF32(d, 13, 0.5, 1.5), b = randomF32(d, 14);
    return {
      tolerance: _REDUCE,
      reference: () => normRef("layernorm", x, g, b, d, 1e-5).y,
      impls: {
        dsmoe: () => {
          const o: GpuTensor[] = [];
          const y = upload(ctx, o, [N, d], null, "y");
          const call = norm(ctx, {
            kind: "layernorm",
            eps: 1e-5,
            x: upload(ctx, o, [N, d], x, "x"),
            gamma: upload(ctx, o, [d], g, "gamma"),
            beta: upload(ctx, o, [d], b, "beta"),
            y,
            mean: upload(ctx, o, [N], null, "mean"),
            rstd: upload(ctx, o, [N], null, "rstd"),
          });
          return oursRunnable(ctx, [call], y, o);
        },
        "tfjs-webgpu": () => {
          const tx = tf.tensor2d(x, [N, d]), tg = tf.tensor1d(g), tb = tf.tensor1d(b);
          // tf.moments + the normalising expression: tfjs has no fused LayerNorm.
          return tfjsRunnable(t, () => {
            const { mean, variance } = tf.moments(tx, -1, true);
            return tf.add(tf.mul(tf.mul(tf.sub(tx, mean), tf.rsqrt(tf.add(variance, 1e-5))), tg), tb);
          }, [tx, tg, tb]);
        },
      },
    };
  });
}

function _gelu({ ctx, t, tf, N, F }: _Env): BenchCase {
  return _case(`gelu ${N}x${F}`, null, () => {
    const x = randomF32(N * F, 15, -3, 3);
    return {
      tolerance: _ELEMENTWISE,
      reference: () => activationRef("gelu", x),
      impls: {
        dsmoe: () => {
          const o: GpuTensor[] = [],
            tx = upload(ctx, o, [N, F], x, "x"),
            y = upload(ctx, o, [N, F], null, "y");
          return oursRunnable(ctx, [activation(ctx, { kind: "gelu", x: tx, y })], y, o);
        },
        "tfjs-webgpu": () => {
          const tx = tf.tensor2d(x, [N, F]);
          // tf.gelu is not in tfjs-core: the tanh form 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
          return tfjsRunnable(t, () => {
            const inner = tf.mul(tf.add(tx, tf.mul(tf.pow(tx, 3), 0.044715)), Math.sqrt(2 / Math.PI));
            return tf.mul(tf.mul(tx, 0.5), tf.add(tf.tanh(inner), 1));
          }, [tx]);
        },
      },
    };
  });
}

function _biasAdd({ ctx, t, tf, N, F }: _Env): BenchCase {
  return _case(`bias add ${N}x${F}`, null, () => {
    const x = randomF32(N * F, 16), b = randomF32(F, 17);
    return {
      tolerance: _ELEMENTWISE,
      reference: () => biasAddRef(x, b),
      impls: {
        dsmoe: () => {
          const o: GpuTensor[] = [], y = upload(ctx, o, [N, F], null, "y");
          const call = biasAdd(ctx, {
            x: upload(ctx, o, [N, F], x, "x"),
            b: upload(ctx, o, [F], b, "b"),
            y,
          });
          return oursRunnable(ctx, [call], y, o);
        },
        "tfjs-webgpu": () => {
          const tx = tf.tensor2d(x, [N, F]), tb = tf.tensor1d(b);
          return tfjsRunnable(t, () => tf.add(tx, tb), [tx, tb]);
        },
      },
    };
  });
}

// Causal: QKᵀ and P·V over the T(T+1)/2 visible (query, key) pairs, 2 FLOPs per multiply-add.
function _attention({ ctx, t, tf, B, T, H, D }: _Env): BenchCase {
  return _case(`attention causal B${B} T${T} H${H}x${D}`, 4 * B * H * D * (T * (T + 1)) / 2, () => {
    const n = B * T * H * D, q = randomF32(n, 18), k = randomF32(n, 19), v = randomF32(n, 20);
    return {
      tolerance: _REDUCE,
      reference: () => attentionRef(q, k, v, { B, T, Hq: H, Hkv: H, D }).o,
      impls: {
        dsmoe: () => {
          const o: GpuTensor[] = [], shape = [B, T, H, D];
          const out = upload(ctx, o, shape, null, "o");
          const call = attention(ctx, {
            q: upload(ctx, o, shape, q, "q"),
            k: upload(ctx, o, shape, k, "k"),
            v: upload(ctx, o, shape, v, "v"),
            o: out,
            lse: upload(ctx, o, [B, H, T], null, "lse"),
          });
          return oursRunnable(ctx, [call], out, o);
        },
        "tfjs-webgpu": () => {
          // q, k, v go in already as (B, H, T, D), made once outside the timed runs (a tfjs model would
          // project straight into that layout); the output transpose back to (B, T, H, D) is timed.
          const heads = (x: Float32Array) => tf.transpose(tf.tensor4d(x, [B, T, H, D]), [0, 2, 1, 3]);
          const tq = heads(q), tk = heads(k), tv = heads(v);
          const above = Float32Array.from(
            { length: T * T },
            (_, i) => (i % T > Math.floor(i / T) ? -1e9 : 0),
          );
          const mask = tf.tensor2d(above, [T, T]);
          // Batched matMul with an additive causal mask: tfjs has no fused attention.
          return tfjsRunnable(t, () => {
            const p = tf.softmax(tf.add(tf.mul(tf.matMul(tq, tk, false, true), 1 / Math.sqrt(D)), mask));
            return tf.transpose(tf.matMul(p, tv), [0, 2, 1, 3]);
          }, [tq, tk, tv, mask]);
        },
      },
    };
  });
}

function _crossEntropy({ ctx, t, tf, N, V }: _Env): BenchCase {
  return _case(`cross-entropy ${N}x${V}`, null, () => {
    const x = randomF32(N * V, 21, -4, 4), tg = randomIds(N, V, 22);
    return {
      tolerance: _REDUCE,
      reference: () => [crossEntropyRef(x, tg, V)],
      impls: {
        dsmoe: () => {
          const o: GpuTensor[] = [], loss = upload(ctx, o, [1], null, "loss");
          const calls = crossEntropy(ctx, {
            logits: upload(ctx, o, [N, V], x, "logits"),
            targets: upload(ctx, o, [N], tg, "targets", "u32"),
            loss,
            rowLoss: upload(ctx, o, [N], null, "row_loss"),
          });
          return oursRunnable(ctx, calls, loss, o);
        },
        "tfjs-webgpu": () => {
          const tx = tf.tensor2d(x, [N, V]);
          const oneHot = tf.tensor2d(
            Float32Array.from({ length: N * V }, (_, i) => i % V === tg[(i / V) | 0] ? 1 : 0),
            [
              N,
              V,
            ],
          );
          return tfjsRunnable(t, () => tf.losses.softmaxCrossEntropy(oneHot, tx), [tx, oneHot]);
        },
      },
    };
  });
}

function _embedding({ ctx, t, tf, N, d, V }: _Env): BenchCase {
  return _case(`embedding ${N}x${d} vocab ${V}`, null, () => {
    const w = randomF32(V * d, 23), ids = randomIds(N, V, 24);
    return {
      tolerance: _ELEMENTWISE,
      reference: () => embeddingRef(ids, w, d),
      impls: {
        dsmoe: () => {
          const o: GpuTensor[] = [], y = upload(ctx, o, [N, d], null, "y");
          const call = embedding(ctx, {
            ids: upload(ctx, o, [N], ids, "ids", "u32"),
            w: upload(ctx, o, [V, d], w, "w"),
            y,
          });
          return oursRunnable(ctx, [call], y, o);
        },
        "tfjs-webgpu": () => {
          const tw = tf.tensor2d(w, [V, d]), ti = tf.tensor1d(Int32Array.from(ids), "int32");
          return tfjsRunnable(t, () => tf.gather(tw, ti), [tw, ti]);
        },
      },
    };
  });
}

function _adamw({ ctx, t, tf, d, F }: _Env): BenchCase {
  return _case(`adamw step ${d}x${F}`, null, () => {
    const n = d * F, p = randomF32(n, 25), g = randomF32(n, 26), m = randomF32(n, 27, -0.1, 0.1);
    const v = randomF32(n, 28, 0, 0.01);
    const { lr, beta1, beta2, eps, weightDecay } = _ADAMW, c1 = 1 - beta1, c2 = 1 - beta2; // step 1
    return {
      tolerance: _ELEMENTWISE,
      reference() {
        const a = { param: Float64Array.from(p), m: Float64Array.from(m), v: Float64Array.from(v) };
        adamwStepRef({ ...a, grad: g, lr, beta1, beta2, eps, weightDecay, step: 1 });
        return a.param;
      },
      impls: {
        dsmoe: () => {
          const o: GpuTensor[] = [], param = upload(ctx, o, [n], p, "param");
          const call = adamw(ctx, {
            param,
            grad: upload(ctx, o, [n], g, "grad"),
            m: upload(ctx, o, [n], m, "m"),
            v: upload(ctx, o, [n], v, "v"),
            stats: upload(ctx, o, [3], Float32Array.of(0, 1, 1), "stats"), // [norm, clip 1, finite]
            hyper: upload(ctx, o, [3], Float32Array.of(lr, c1, c2), "hyper"),
            beta1,
            beta2,
            eps,
            weightDecay,
          });
          // In place: the check reads the first step; later repetitions keep stepping (same work).
          return oursRunnable(ctx, [call], param, o);
        },
        "tfjs-webgpu": () => {
          const tp = tf.tensor1d(p), tgr = tf.tensor1d(g), tm = tf.tensor1d(m), tv = tf.tensor1d(v);
          // The update as tfjs ops (its AdamOptimizer has no decoupled weight decay); new m, v are computed too.
          return tfjsRunnable(t, () => {
            const m1 = tf.add(tf.mul(tm, beta1), tf.mul(tgr, 1 - beta1));
            const v1 = tf.add(tf.mul(tv, beta2), tf.mul(tf.square(tgr), 1 - beta2));
            const step = tf.div(tf.mul(tf.div(m1, c1), lr), tf.add(tf.sqrt(tf.div(v1, c2)), eps));
            return tf.sub(tf.mul(tp, 1 - lr * weightDecay), step);
          }, [tp, tgr, tm, tv]);
        },
      },
    };
  });
}

function _sumRows({ ctx, t, tf, N, d }: _Env): BenchCase {
  return _case(`sum rows ${N}x${d}`, null, () => {
    const x = randomF32(N * d, 29);
    return {
      tolerance: _REDUCE,
      reference: () => sumRowsRef(x, d),
      impls: {
        dsmoe: () => {
          const o: GpuTensor[] = [], out = upload(ctx, o, [d], null, "sum");
          return oursRunnable(ctx, [sumRows(ctx, { x: upload(ctx, o, [N, d], x, "x"), out })], out, o);
        },
        "tfjs-webgpu": () => {
          const tx = tf.tensor2d(x, [N, d]);
          return tfjsRunnable(t, () => tf.sum(tx, 0), [tx]);
        },
      },
    };
  });
}

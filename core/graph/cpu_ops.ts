/**
 * The CPU implementations of every graph op, in float64, backed by the references of core/ref.
 *
 * @module
 */
import { moeMlpRef } from "../ref/moe.ts";
import {
  cachedAttentionRef,
  cacheWindow,
  kvWriteRef,
  moaAttentionRef,
  sequenceWindow,
} from "../ref/cached_attention.ts";
import { batchCacheWindow, kvWriteBatchRef } from "../ref/batch_decode.ts";
import { routeMaskRef } from "../ref/routing.ts";
import {
  entropyLossBackwardRef,
  entropyLossRef,
  expertChoiceMaskRef,
  l1LossBackwardRef,
  l1LossRef,
  reluRouteGateRef,
  zeroShareRef,
} from "../ref/router_zoo.ts";
import { fusedGemvParts, fusedRouterParts, type NormKind, routeRuleOf } from "./op_types.ts";
import { activationBackwardRef, activationRef } from "../ref/activation.ts";
import { attentionBackwardRef, attentionRef } from "../ref/attention.ts";
import { biasAddRef, sumRowsRef } from "../ref/elementwise.ts";
import { addRowsRef, embeddingGradRef, embeddingRef, sumRowsModRef } from "../ref/embedding.ts";
import {
  crossEntropyBackwardRef,
  crossEntropyRef,
  meanRowsRef,
  miLossBackwardRef,
  miLossGlobalBackwardRef,
  miLossGlobalRef,
  miLossRef,
  switchLossBackwardRef,
  switchLossGlobalBackwardRef,
  switchLossGlobalRef,
  switchLossRef,
  zLossBackwardRef,
  zLossRef,
} from "../ref/losses.ts";
import { matmulRef } from "../ref/matmul.ts";
import { switchLossSeqBackwardRef, switchLossSeqRef } from "../ref/balance.ts";
import { normBackwardRef, normRef } from "../ref/norm.ts";
import { routerScaleDsRef, routerScaleRef, topkMaskRef } from "../ref/router.ts";
import { softmaxBackwardRef, softmaxRef } from "../ref/softmax.ts";
import {
  capacityMaskRef,
  maskedSoftmaxRef,
  renormalizeRowsBackwardRef,
  renormalizeRowsRef,
  sliceColsBackwardRef,
  sliceColsRef,
} from "../ref/token_choice.ts";
import type { CpuTable, HostValue } from "./cpu_executor.ts";
import { attrsOf, type Node, numel } from "./ir.ts";

const last = (n: Node, i = 0) => n.inputs[i]!.shape.at(-1)!;
const scalar = (v: number) => new Float64Array([v]);
const attDims = (n: Node) => {
  const [B, T, Hq, D] = n.inputs[0]!.shape as [number, number, number, number];
  return { B, T, Hq, Hkv: n.inputs[1]!.shape[2]!, D };
};

/** Every op's CPU implementation: the trivial element-wise ones here, the rest backed by core/ref. */
export const CPU_OPS: CpuTable = {
  leaf: null, // fed, never computed
  fill: (_, n) => [new Float64Array(numel(n.attrs.shape)).fill(n.attrs.value)],
  add: ([a, b]) => [_zip(a!, b!, (x, y) => x + y)],
  add_n: (xs) => {
    const out = new Float64Array(xs[0]!.length);
    for (const x of xs) for (let i = 0; i < out.length; i++) out[i]! += x[i]!;
    return [out];
  },
  mul: ([a, b]) => [_zip(a!, b!, (x, y) => x * y)],
  scale: ([x], n) => [Float64Array.from(x!, (v) => v * n.attrs.alpha)],
  reshape: ([x]) => [x!],
  dot: ([a, b]) => {
    let sum = 0;
    for (let i = 0; i < a!.length; i++) sum += a![i]! * b![i]!;
    return [scalar(sum)];
  },
  mul_scalar: ([x, s]) => [Float64Array.from(x!, (v) => v * s![0]!)],
  embedding: ([ids, w], n) => [embeddingRef(ids!, w!, last(n, 1))],
  embedding_pair: ([ids, wte, pos, wpe], n) => [
    _plus(embeddingRef(ids!, wte!, last(n, 1)), embeddingRef(pos!, wpe!, last(n, 3))),
  ],
  embedding_grad: ([ids, dy], n) => [embeddingGradRef(ids!, dy!, n.attrs.vocab, last(n, 1))],
  add_rows: ([x, p], n) => [addRowsRef(x!, p!, n.inputs[1]!.shape[0]!, last(n))],
  sum_rows_mod: ([dy], n) => [sumRowsModRef(dy!, n.attrs.period, last(n))],
  bias_add: ([x, b]) => [biasAddRef(x!, b!)],
  sum_rows: ([x], n) => [sumRowsRef(x!, last(n))],
  matmul: ([a, b], n) => {
    const tA = !!n.attrs.transA, [a0, a1] = n.inputs[0]!.shape as [number, number];
    const [m, k] = tA ? [a1, a0] : [a0, a1];
    return [matmulRef(a!, b!, { m, k, n: n.outputs[0]!.shape[1]!, transA: tA, transB: !!n.attrs.transB })];
  },
  norm: ([x, g, b], n) => {
    const r = normRef(n.attrs.kind, x!, g!, b ?? null, last(n), n.attrs.eps);
    return [r.y, r.mean, r.rstd];
  },
  norm_backward: ([x, g, mean, rstd, dy], n) => {
    const r = normBackwardRef(n.attrs.kind, x!, g!, mean!, rstd!, dy!, last(n));
    return [r.dx, r.dgamma, r.dbeta];
  },
  activation: ([x], n) => [activationRef(n.attrs.kind, x!)],
  activation_backward: ([x, dy], n) => [activationBackwardRef(n.attrs.kind, x!, dy!)],
  gated_activation: ([u, s], n) => {
    const a = activationRef(n.attrs.kind, u!);
    return [a, routerScaleRef(a, s!, n.attrs.blocks)];
  },
  gated_activation_backward: ([u, s, dy], n) => [
    activationBackwardRef(n.attrs.kind, u!, routerScaleRef(dy!, s!, n.attrs.blocks)),
  ],
  softmax: ([x], n) => [softmaxRef(x!, last(n))],
  softmax_backward: ([y, dy], n) => [softmaxBackwardRef(y!, dy!, last(n))],
  attention: ([q, k, v], n) => {
    const r = attentionRef(q!, k!, v!, attDims(n));
    return [r.o, r.lse];
  },
  attention_backward: ([q, k, v, o, lse, dO], n) => {
    const r = attentionBackwardRef(q!, k!, v!, o!, lse!, dO!, attDims(n));
    return [r.dq, r.dk, r.dv];
  },
  router_scale: ([x, s], n) => [routerScaleRef(x!, s!, last(n, 1))],
  router_scale_ds: (
    [x, dy],
    n,
  ) => [routerScaleDsRef(x!, dy!, n.attrs.blocks, n.inputs[0]!.shape[0]!)],
  topk_mask: ([s], n) => [topkMaskRef(s!, last(n), n.attrs.k)],
  expert_choice_mask: ([s], n) => [expertChoiceMaskRef(s!, last(n), n.attrs.tokens)],
  topp_mask: ([s], n) => [routeMaskRef(s!, last(n), { kind: "top_p", epsilon: 0, k: 1, p: n.attrs.p })],
  relu_route_gate: ([z], n) => reluRouteGateRef(z!, last(n), routeRuleOf(n)),
  zero_share: ([x]) => [scalar(zeroShareRef(x!))],
  route_mask: ([s], n) => [routeMaskRef(s!, last(n), routeRuleOf(n))],
  route_gate: ([z], n) => {
    const probs = softmaxRef(z!, last(n)), mask = routeMaskRef(probs, last(n), routeRuleOf(n));
    return [probs, mask, probs.map((v, i) => v * mask[i]!)];
  },
  moe_mlp: ([x, gate, w1, w2, r], n) => {
    const [N, d] = n.inputs[0]!.shape as [number, number], E = n.attrs.experts;
    const h = n.inputs[2]!.shape[1]! / E, activation = n.attrs.activation;
    return [
      _plus(moeMlpRef(x!, gate!, w1!, w2!, { N, d, E, h, activation }), n.attrs.residual ? r : undefined),
    ];
  },
  fused_gemv: (xs, n) => {
    const a = n.attrs, p = fusedGemvParts(xs, a), [m, d] = n.inputs[0]!.shape as [number, number];
    const h = _normed(a, p, d);
    const ys = p.weights.map((w, i) => {
      let y: HostValue = matmulRef(h, w, { m, k: d, n: _width(n, i), transB: !!a.transB });
      if (a.activation !== "none") y = activationRef(a.activation, y);
      return _plus(y, p.residual);
    });
    return a.normOut ? [h, ...ys] : ys;
  },
  fused_matmul: ([x, w, r], n) => {
    const [m, k] = n.inputs[0]!.shape as [number, number], a = n.attrs;
    let y: HostValue = matmulRef(x!, w!, { m, k, n: n.outputs[0]!.shape[1]! });
    if (a.activation !== "none") y = activationRef(a.activation, y);
    return [_plus(y, a.residual ? r : undefined)];
  },
  fused_route_gate: (xs, n) => {
    const a = n.attrs, p = fusedRouterParts(xs, a), [m, d] = n.inputs[0]!.shape as [number, number];
    const h = _normed(a, p, d), E = fusedRouterParts(n.inputs, a).w.shape[1]!;
    const z = matmulRef(h, p.w, { m, k: d, n: E });
    const probs = softmaxRef(z, E), mask = routeMaskRef(probs, E, routeRuleOf(n));
    return [probs, mask, probs.map((v, i) => v * mask[i]!), z, ...(a.normOut ? [h] : [])];
  },
  attention_cached: ([q, k, v, kc, vc, pos], n) => {
    const D = n.attrs.head_dim, Hkv = n.attrs.kv_heads, N = n.inputs[0]!.shape[0]!;
    kvWriteRef(k!, v!, kc as Float64Array, vc as Float64Array, pos![0]!, Hkv * D);
    return [
      cachedAttentionRef(q!, kc!, vc!, { N, H: n.attrs.heads, Hkv, D }, cacheWindow(pos![0]!)),
    ];
  },
  moa_attention: ([x, gate, wq, k, v, wo, kc, vc, pos, ...rest], n) => {
    const [N, d] = n.inputs[0]!.shape as [number, number], G = n.attrs.heads;
    const D = n.attrs.head_dim, dims = { N, d, E: n.attrs.experts, G, D };
    if (!kc) {
      return [moaAttentionRef(x!, gate!, wq!, k!, v!, wo!, dims, sequenceWindow(n.attrs.seq))];
    }
    kvWriteRef(k!, v!, kc as Float64Array, vc as Float64Array, pos![0]!, G * D);
    const y = moaAttentionRef(x!, gate!, wq!, kc, vc!, wo!, dims, cacheWindow(pos![0]!));
    return [_plus(y, n.attrs.residual ? rest[0] : undefined)];
  },
  attention_cached_batch: ([q, k, v, kc, vc, pos], n) => {
    const D = n.attrs.head_dim, Hkv = n.attrs.kv_heads, T = n.attrs.seq, N = n.inputs[0]!.shape[0]!;
    kvWriteBatchRef(k!, v!, kc as Float64Array, vc as Float64Array, pos!, T, Hkv * D);
    return [cachedAttentionRef(q!, kc!, vc!, { N, H: n.attrs.heads, Hkv, D }, batchCacheWindow(T, pos!))];
  },
  moa_attention_batch: ([x, gate, wq, k, v, wo, kc, vc, pos, r], n) => {
    const [N, d] = n.inputs[0]!.shape as [number, number], G = n.attrs.heads, T = n.attrs.seq;
    const D = n.attrs.head_dim, dims = { N, d, E: n.attrs.experts, G, D };
    kvWriteBatchRef(k!, v!, kc as Float64Array, vc as Float64Array, pos!, T, G * D);
    const y = moaAttentionRef(x!, gate!, wq!, kc!, vc!, wo!, dims, batchCacheWindow(T, pos!));
    return [_plus(y, n.attrs.residual ? r : undefined)];
  },
  cross_entropy: ([logits, t], n) => [scalar(crossEntropyRef(logits!, t!, last(n)))],
  cross_entropy_backward: ([logits, t, dl], n) => [crossEntropyBackwardRef(logits!, t!, last(n), dl![0]!)],
  mi_loss: ([s], n) => [scalar(miLossRef(s!, last(n)))],
  mi_loss_backward: ([s, dl], n) => [miLossBackwardRef(s!, last(n), dl![0]!)],
  switch_loss: ([s, m], n) => [scalar(switchLossRef(s!, m!, last(n), n.attrs.k))],
  switch_loss_backward: (
    [s, m, dl],
    n,
  ) => [switchLossBackwardRef(s!, m!, last(n), n.attrs.k, dl![0]!)],
  mi_loss_global: ([s, p], n) => [scalar(miLossGlobalRef(s!, last(n), p!))],
  mi_loss_global_backward: ([s, p, dl], n) => [miLossGlobalBackwardRef(s!, last(n), p!, dl![0]!)],
  mean_rows: ([x], n) => [meanRowsRef(x!, last(n))],
  switch_loss_global: ([s, f], n) => [scalar(switchLossGlobalRef(s!, f!, last(n), n.attrs.k))],
  switch_loss_global_backward: (
    [s, f, dl],
    n,
  ) => [switchLossGlobalBackwardRef(s!, f!, last(n), n.attrs.k, dl![0]!)],
  z_loss: ([x], n) => [scalar(zLossRef(x!, last(n)))],
  z_loss_backward: ([x, dl], n) => [zLossBackwardRef(x!, last(n), dl![0]!)],
  capacity_mask: ([m], n) => [capacityMaskRef(m!, last(n), n.attrs.capacity)],
  renormalize_rows: ([x], n) => [renormalizeRowsRef(x!, last(n))],
  renormalize_rows_backward: ([x, dy], n) => [renormalizeRowsBackwardRef(x!, dy!, last(n))],
  masked_softmax: ([z, m], n) => [maskedSoftmaxRef(z!, m!, last(n))],
  switch_loss_seq: ([s, m], n) => [scalar(switchLossSeqRef(s!, m!, last(n), n.attrs.k, n.attrs.seq))],
  slice_cols: ([x], n) => [sliceColsRef(x!, last(n), n.attrs.width)],
  slice_cols_backward: ([dy], n) => [sliceColsBackwardRef(dy!, last(n), n.attrs.cols)],
  switch_loss_seq_backward: ([s, m, dl], n) => [
    switchLossSeqBackwardRef(s!, m!, last(n), n.attrs.k, n.attrs.seq, dl![0]!),
  ],
  entropy_loss: ([s], n) => [scalar(entropyLossRef(s!, last(n)))],
  entropy_loss_backward: ([s, dl], n) => [entropyLossBackwardRef(s!, last(n), dl![0]!)],
  l1_loss: ([g, lambda], n) => [scalar(l1LossRef(g!, last(n), lambda![0]!))],
  l1_loss_backward: ([g, lambda, dl], n) => [l1LossBackwardRef(g!, last(n), lambda![0]!, dl![0]!)],
};

/** y + r (element-wise), or y itself without r. */
function _plus(y: HostValue, r: HostValue | undefined): HostValue {
  return r ? _zip(y, r, (a, b) => a + b) : y;
}

/** The input of a fused decoding op, normalized by its norm (itself without one). */
function _normed(
  a: { norm: NormKind | "none"; eps: number },
  p: { x: HostValue; gamma: HostValue | undefined; beta: HostValue | undefined },
  d: number,
): HostValue {
  return a.norm === "none" ? p.x : normRef(a.norm, p.x, p.gamma!, p.beta ?? null, d, a.eps).y;
}

/** Columns of a fused_gemv node's i-th product. */
function _width(n: Node, i: number): number {
  const a = attrsOf(n, "fused_gemv"), w = fusedGemvParts(n.inputs, a).weights[i]!;
  return a.transB ? w.shape[0]! : w.shape[1]!;
}

function _zip(a: HostValue, b: HostValue, f: (x: number, y: number) => number): Float64Array {
  if (a.length !== b.length) throw new RangeError(`Element-wise op on ${a.length} vs ${b.length} elements`);
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = f(a[i]!, b[i]!);
  return out;
}

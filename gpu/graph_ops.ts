/**
 * Which kernels run each graph op on WebGPU (the twin of core/graph/cpu_ops.ts): {@linkcode GPU_IMPLS}, the
 * table that gpu/executor.ts and gpu/preflight.ts run nodes with.
 *
 * @module
 */
import {
  moaAttentionSparse,
  moeMlpSparse,
  moeRouteWords,
  type MoeScratch,
  type MoeShape,
  moeTile,
} from "./kernels/moe.ts";
import { attentionCached } from "./kernels/cached_attention.ts";
import { attentionCachedBatch, moaAttentionBatch } from "./kernels/batch_decode.ts";
import { fusedGemvParts, fusedRouterParts, type OpName, routeRuleOf } from "../core/graph/op_types.ts";
import { routeGate, routeMask } from "./kernels/routing.ts";
import {
  entropyLoss,
  entropyLossBackward,
  expertChoiceMask,
  l1Loss,
  l1LossBackward,
  reluRouteGate,
  zeroShare,
} from "./kernels/router_zoo.ts";
import type { Node, OpNode } from "../core/graph/ir.ts";
import type { GpuTensor } from "./buffers.ts";
import type { GpuContext } from "./device.ts";
import type { KernelCall } from "./dispatch.ts";
import { activation, activationBackward } from "./kernels/activation.ts";
import { attention, attentionBackward, attentionDkvScratch } from "./kernels/attention.ts";
import { add, addN, fill, mul, scale } from "./kernels/elementwise.ts";
import {
  addRows,
  biasAdd,
  embedding,
  embeddingGrad,
  embeddingGradScratch,
  embeddingPair,
  sumRows,
  sumRowsMod,
} from "./kernels/embedding.ts";
import {
  crossEntropy,
  crossEntropyBackward,
  meanRows,
  miLoss,
  miLossBackward,
  miLossGlobal,
  miLossGlobalBackward,
  switchLoss,
  switchLossBackward,
  switchLossGlobal,
  switchLossGlobalBackward,
  zLoss,
  zLossBackward,
} from "./kernels/losses.ts";
import { matmulCalls, matmulPlan, matmulScratch } from "./kernels/matmul.ts";
import { gemv, gemvFits } from "./kernels/gemv.ts";
import { fusedGemv, fusedRouteGate } from "./kernels/decode_fused.ts";
import { norm, normBackward } from "./kernels/norm.ts";
import { gatedActivation, routerScale, routerScaleDs, topkMask } from "./kernels/router.ts";
import { softmax, softmaxBackward } from "./kernels/softmax.ts";
import { switchLossSeq, switchLossSeqBackward } from "./kernels/balance.ts";
import {
  capacityMask,
  maskedSoftmax,
  renormalizeRows,
  renormalizeRowsBackward,
  sliceCols,
} from "./kernels/token_choice.ts";

/** Kernel calls of one node, given tensors of its inputs and outputs. */
export type GpuImpl<K extends OpName = OpName> = (
  ctx: GpuContext,
  node: OpNode<K>,
  inputs: GpuTensor[],
  outputs: GpuTensor[],
  scratch: Scratch, // private buffers the calls may use
) => KernelCall[];

/** Allocates a private buffer of a node's calls: f32 or u32 storage, or u32 indirect-dispatch arguments. */
export type Scratch = (
  shape: readonly number[],
  label: string,
  kind?: "f32" | "u32" | "indirect",
) => GpuTensor;

/**
 * An implementation for every op of core/graph/op_types.ts (`deno check` names a missing one); null for an op
 * that WebGPU does not run as kernels.
 */
export type GpuTable = { readonly [K in OpName]: GpuImpl<K> | null };

const cols = (n: Node) => n.inputs[0]!.shape.at(-1)!;

/** The sparse-expert shape of a moe_mlp or (batched) moa_attention node whose experts are h wide. */
function moeShapeOf(n: OpNode<"moe_mlp" | "moa_attention" | "moa_attention_batch">, h: number): MoeShape {
  const [N, d] = n.inputs[0]!.shape as [number, number];
  return { N, d, E: n.attrs.experts, h };
}

/** Worst-case scratch of a sparse-expert node (every pair routed). */
function moeScratchOf(s: MoeShape, tm: number, scratch: Scratch): MoeScratch {
  const P = s.N * s.E;
  return {
    route: scratch([moeRouteWords(s, tm)], "route", "u32"),
    hidden: scratch([P, s.h], "hidden"),
    partial: scratch([P, s.d], "partial"),
    args: scratch([6], "args", "indirect"),
  };
}

/**
 * What a moa_attention or moa_attention_batch node's kernels take in common: inputs x, gate, wq, k, v, wo
 * (the first six), y, the experts' shape, the tile for this profile and the worst-case scratch.
 */
function moaOptionsOf(
  ctx: GpuContext,
  n: OpNode<"moa_attention" | "moa_attention_batch">,
  [x, gate, wq, k, v, wo]: readonly GpuTensor[],
  y: GpuTensor,
  scratch: Scratch,
) {
  const G = n.attrs.heads, D = n.attrs.head_dim;
  const s = moeShapeOf(n, G * D), tile = moeTile(ctx, s);
  return {
    x: x!,
    gate: gate!,
    wq: wq!,
    wo: wo!,
    k: k!,
    v: v!,
    y,
    E: s.E,
    G,
    D,
    tile,
    scratch: moeScratchOf(s, tile.tm, scratch),
  };
}

/** Op → kernel calls, by op name. */
export const GPU_IMPLS: GpuTable = {
  leaf: null, // fed, never computed
  reshape: null, // a view of its input's buffer, or a buffer copy: the executor's own (gpu/executor.ts)
  dot: null, // CPU only: gradient checks (core/graph/grad_check_test.ts)
  mul_scalar: null, // CPU only: gradient checks
  fill: (ctx, n, _i, [y]) => [fill(ctx, { y: y!, value: n.attrs.value })],
  add: (ctx, _n, [a, b], [y]) => [add(ctx, { a: a!, b: b!, y: y! })],
  add_n: (ctx, _n, xs, [y]) => addN(ctx, { xs, y: y! }),
  mul: (ctx, _n, [a, b], [y]) => [mul(ctx, { a: a!, b: b!, y: y! })],
  scale: (ctx, n, [x], [y]) => [scale(ctx, { x: x!, y: y!, alpha: n.attrs.alpha })],
  embedding: (ctx, _n, [ids, w], [y]) => [embedding(ctx, { ids: ids!, w: w!, y: y! })],
  embedding_pair: (ctx, _n, [ids, wte, pos, wpe], [y]) => [
    embeddingPair(ctx, { ids: ids!, wte: wte!, pos: pos!, wpe: wpe!, y: y! }),
  ],
  embedding_grad: (ctx, _n, [ids, dy], [dw], scratch) =>
    embeddingGrad(ctx, {
      ids: ids!,
      dy: dy!,
      dw: dw!,
      links: scratch([embeddingGradScratch(dw!.shape[0]!, ids!.size)], "links", "u32"),
    }),
  add_rows: (ctx, _n, [x, p], [y]) => [addRows(ctx, { x: x!, p: p!, y: y! })],
  sum_rows_mod: (ctx, _n, [dy], [out]) => [sumRowsMod(ctx, { dy: dy!, out: out! })],
  bias_add: (ctx, _n, [x, b], [y]) => [biasAdd(ctx, { x: x!, b: b!, y: y! })],
  sum_rows: (ctx, _n, [x], [out]) => [sumRows(ctx, { x: x!, out: out! })],
  matmul: (ctx, n, [a, b], [c], scratch) => {
    const transA = !!n.attrs.transA, transB = !!n.attrs.transB;
    const [m, nn] = n.outputs[0]!.shape as [number, number];
    const k = transA ? n.inputs[0]!.shape[0]! : n.inputs[0]!.shape[1]!;
    const { splits } = matmulPlan(ctx, m, k, nn);
    // One row (decoding) where K would be split: one GEMV dispatch instead of slices + their sum.
    if (gemvFits(ctx, m, transA, splits)) return [gemv(ctx, { a: a!, b: b!, c: c!, k, n: nn, transB })];
    const partial = splits > 1 ? scratch([matmulScratch(m, nn, splits)], "partial") : undefined;
    return matmulCalls(ctx, { a: a!, b: b!, c: c!, m, k, n: nn, transA, transB, splits, partial });
  },
  fused_matmul: (ctx, n, [a, b, r], [c], scratch) => {
    const [m, nn] = n.outputs[0]!.shape as [number, number], k = n.inputs[0]!.shape[1]!;
    const { splits } = matmulPlan(ctx, m, k, nn);
    const partial = splits > 1 ? scratch([matmulScratch(m, nn, splits)], "partial") : undefined;
    const epilogue = {
      ...(n.attrs.activation !== "none" ? { activation: n.attrs.activation } : {}),
      ...(n.attrs.residual ? { residual: r! } : {}),
    };
    return matmulCalls(ctx, { a: a!, b: b!, c: c!, m, k, n: nn, splits, partial, epilogue });
  },
  norm: (ctx, n, [x, gamma, beta], [y, mean, rstd]) => [
    norm(ctx, {
      kind: n.attrs.kind,
      eps: n.attrs.eps,
      x: x!,
      gamma: gamma!,
      beta,
      y: y!,
      mean: mean!,
      rstd: rstd!,
    }),
  ],
  norm_backward: (ctx, n, [x, gamma, mean, rstd, dy], [dx, dgamma, dbeta]) =>
    normBackward(ctx, {
      kind: n.attrs.kind,
      x: x!,
      gamma: gamma!,
      mean: mean!,
      rstd: rstd!,
      dy: dy!,
      dx: dx!,
      dgamma: dgamma!,
      dbeta,
    }),
  activation: (ctx, n, [x], [y]) => [activation(ctx, { kind: n.attrs.kind, x: x!, y: y! })],
  activation_backward: (ctx, n, [x, dy], [dx]) => [
    activationBackward(ctx, { kind: n.attrs.kind, x: x!, dy: dy!, dx: dx! }),
  ],
  softmax: (ctx, _n, [x], [y]) => [softmax(ctx, { x: x!, y: y! })],
  softmax_backward: (ctx, _n, [y, dy], [dx]) => [softmaxBackward(ctx, { y: y!, dy: dy!, dx: dx! })],
  attention: (ctx, _n, [q, k, v], [o, lse]) => [attention(ctx, { q: q!, k: k!, v: v!, o: o!, lse: lse! })],
  attention_backward: (ctx, n, [q, k, v, o, lse, dO], [dq, dk, dv], scratch) =>
    attentionBackward(ctx, {
      q: q!,
      k: k!,
      v: v!,
      o: o!,
      lse: lse!,
      dO: dO!,
      dq: dq!,
      dk: dk!,
      dv: dv!,
      delta: scratch(n.inputs[4]!.shape, "delta"),
      partial: ctx.profile === "gpu"
        ? scratch([attentionDkvScratch(n.inputs[0]!.shape)], "dkv_partial")
        : undefined,
    }),
  router_scale: (ctx, _n, [x, s], [y]) => [routerScale(ctx, { x: x!, s: s!, y: y! })],
  gated_activation: (ctx, n, [u, s], [a, y]) => [
    gatedActivation(ctx, { kind: n.attrs.kind, u: u!, s: s!, a: a!, y: y! }),
  ],
  gated_activation_backward: (ctx, n, [u, s, dy], [du]) => [
    gatedActivation(ctx, { kind: n.attrs.kind, u: u!, s: s!, dy: dy!, du: du! }),
  ],
  router_scale_ds: (ctx, _n, [x, dy], [ds]) => [routerScaleDs(ctx, { x: x!, dy: dy!, ds: ds! })],
  topk_mask: (ctx, n, [s], [mask]) => [topkMask(ctx, { s: s!, mask: mask!, k: n.attrs.k })],
  expert_choice_mask: (ctx, n, [s], [mask]) => [
    expertChoiceMask(ctx, { s: s!, mask: mask!, tokens: n.attrs.tokens }),
  ],
  topp_mask: (ctx, n, [s], [mask]) =>
    routeMask(ctx, { s: s!, mask: mask!, rule: { kind: "top_p", epsilon: 0, k: 1, p: n.attrs.p } }),
  relu_route_gate: (ctx, n, [logits], [probs, mask, gate]) => [
    reluRouteGate(ctx, { logits: logits!, probs: probs!, mask: mask!, gate: gate!, rule: routeRuleOf(n) }),
  ],
  zero_share: (ctx, _n, [x], [share]) => [zeroShare(ctx, { x: x!, share: share! })],
  moe_mlp: (ctx, n, [x, gate, w1, w2, r], [y], scratch) => {
    const E = n.attrs.experts,
      s = moeShapeOf(n, n.inputs[2]!.shape[1]! / E),
      tile = moeTile(ctx, s);
    return moeMlpSparse(ctx, {
      x: x!,
      gate: gate!,
      w1: w1!,
      w2: w2!,
      y: y!,
      E,
      h: s.h,
      activation: n.attrs.activation,
      ...(n.attrs.residual ? { residual: r! } : {}),
      tile,
      scratch: moeScratchOf(s, tile.tm, scratch),
    });
  },
  moa_attention: (ctx, n, inputs, [y], scratch) => {
    const [kcache, vcache, pos, r] = inputs.slice(6);
    return moaAttentionSparse(ctx, {
      ...moaOptionsOf(ctx, n, inputs, y!, scratch),
      ...(kcache ? { cache: { kcache, vcache: vcache!, pos: pos! } } : { T: n.attrs.seq }),
      ...(n.attrs.residual ? { residual: r! } : {}),
    });
  },
  fused_gemv: (ctx, n, inputs, outputs) => {
    const a = n.attrs, p = fusedGemvParts(inputs, a), ys = a.normOut ? outputs.slice(1) : outputs;
    return [fusedGemv(ctx, {
      x: p.x,
      norm: { kind: a.norm, eps: a.eps, gamma: p.gamma, beta: p.beta },
      weights: p.weights,
      ys,
      ...(a.normOut ? { h: outputs[0]! } : {}),
      activation: a.activation,
      ...(p.residual ? { residual: p.residual } : {}),
      ...(a.transB ? { transB: true } : {}),
    })];
  },
  fused_route_gate: (ctx, n, inputs, [probs, mask, gate, logits, h]) => {
    const a = n.attrs, p = fusedRouterParts(inputs, a);
    return [fusedRouteGate(ctx, {
      x: p.x,
      norm: { kind: a.norm, eps: a.eps, gamma: p.gamma, beta: p.beta },
      w: p.w,
      probs: probs!,
      mask: mask!,
      gate: gate!,
      logits: logits!,
      ...(a.normOut ? { h: h! } : {}),
      rule: routeRuleOf(n),
    })];
  },
  attention_cached: (ctx, n, [q, k, v, kcache, vcache, pos], [o]) =>
    attentionCached(ctx, {
      q: q!,
      k: k!,
      v: v!,
      kcache: kcache!,
      vcache: vcache!,
      pos: pos!,
      o: o!,
      H: n.attrs.heads,
      Hkv: n.attrs.kv_heads,
      D: n.attrs.head_dim,
    }),
  attention_cached_batch: (ctx, n, [q, k, v, kcache, vcache, pos], [o]) =>
    attentionCachedBatch(ctx, {
      q: q!,
      k: k!,
      v: v!,
      kcache: kcache!,
      vcache: vcache!,
      pos: pos!,
      T: n.attrs.seq,
      o: o!,
      H: n.attrs.heads,
      Hkv: n.attrs.kv_heads,
      D: n.attrs.head_dim,
    }),
  moa_attention_batch: (ctx, n, inputs, [y], scratch) => {
    const [kcache, vcache, pos, r] = inputs.slice(6);
    return moaAttentionBatch(ctx, {
      ...moaOptionsOf(ctx, n, inputs, y!, scratch),
      cache: { kcache: kcache!, vcache: vcache!, pos: pos!, T: n.attrs.seq },
      ...(n.attrs.residual ? { residual: r! } : {}),
    });
  },
  route_mask: (ctx, n, [s], [mask], scratch) => {
    const rule = routeRuleOf(n);
    // Only threshold_topk keeps per-token counts and the batch's K between its passes.
    const counts = rule.kind === "threshold_topk" ? scratch([s!.shape[0]! + 1], "counts", "u32") : undefined;
    return routeMask(ctx, { s: s!, mask: mask!, rule, scratch: counts });
  },
  route_gate: (ctx, n, [logits], [probs, mask, gate]) => [
    routeGate(ctx, { logits: logits!, probs: probs!, mask: mask!, gate: gate!, rule: routeRuleOf(n) }),
  ],
  cross_entropy: (ctx, n, [logits, targets], [loss], scratch) =>
    crossEntropy(ctx, {
      logits: logits!,
      targets: targets!,
      loss: loss!,
      rowLoss: scratch([n.inputs[0]!.shape[0]!], "rows"),
    }),
  cross_entropy_backward: (ctx, _n, [logits, targets, dl], [dlogits]) => [
    crossEntropyBackward(ctx, { logits: logits!, targets: targets!, dl: dl!, dlogits: dlogits! }),
  ],
  mi_loss: (ctx, n, [s], [loss], scratch) =>
    miLoss(ctx, { s: s!, loss: loss!, pbar: scratch([cols(n)], "pbar") }),
  mi_loss_backward: (ctx, n, [s, dl], [ds], scratch) =>
    miLossBackward(ctx, { s: s!, dl: dl!, ds: ds!, pbar: scratch([cols(n)], "pbar") }),
  switch_loss: (ctx, n, [s, mask], [loss], scratch) =>
    switchLoss(ctx, {
      s: s!,
      mask: mask!,
      loss: loss!,
      k: n.attrs.k,
      f: scratch([cols(n)], "f"),
      p: scratch([cols(n)], "p"),
    }),
  switch_loss_backward: (ctx, n, [s, mask, dl], [ds], scratch) =>
    switchLossBackward(ctx, {
      s: s!,
      mask: mask!,
      dl: dl!,
      ds: ds!,
      k: n.attrs.k,
      f: scratch([cols(n)], "f"),
    }),
  mi_loss_global: (ctx, n, [s, pbar], [loss], scratch) =>
    miLossGlobal(ctx, { s: s!, pbar: pbar!, loss: loss!, own: scratch([cols(n)], "own") }),
  mi_loss_global_backward: (ctx, _n, [s, pbar, dl], [ds]) => [
    miLossGlobalBackward(ctx, { s: s!, pbar: pbar!, dl: dl!, ds: ds! }),
  ],
  mean_rows: (ctx, _n, [x], [out]) => [meanRows(ctx, { x: x!, out: out! })],
  switch_loss_global: (ctx, n, [s, f], [loss], scratch) =>
    switchLossGlobal(ctx, { s: s!, f: f!, loss: loss!, k: n.attrs.k, p: scratch([cols(n)], "p") }),
  switch_loss_global_backward: (ctx, n, [s, f, dl], [ds]) => [
    switchLossGlobalBackward(ctx, { s: s!, f: f!, dl: dl!, ds: ds!, k: n.attrs.k }),
  ],
  z_loss: (ctx, _n, [logits], [loss]) => [zLoss(ctx, { logits: logits!, loss: loss! })],
  entropy_loss: (ctx, _n, [s], [loss]) => [entropyLoss(ctx, { s: s!, loss: loss! })],
  entropy_loss_backward: (ctx, _n, [s, dl], [ds]) => [entropyLossBackward(ctx, { s: s!, dl: dl!, ds: ds! })],
  l1_loss: (ctx, _n, [g, lambda], [loss]) => [l1Loss(ctx, { g: g!, lambda: lambda!, loss: loss! })],
  l1_loss_backward: (ctx, _n, [g, lambda, dl], [dg]) => [
    l1LossBackward(ctx, { g: g!, lambda: lambda!, dl: dl!, dg: dg! }),
  ],
  z_loss_backward: (
    ctx,
    _n,
    [logits, dl],
    [dx],
  ) => [zLossBackward(ctx, { logits: logits!, dl: dl!, dx: dx! })],
  capacity_mask: (ctx, n, [mask], [kept]) => [
    capacityMask(ctx, { mask: mask!, kept: kept!, capacity: n.attrs.capacity }),
  ],
  renormalize_rows: (ctx, _n, [x], [y]) => [renormalizeRows(ctx, { x: x!, y: y! })],
  renormalize_rows_backward: (ctx, _n, [x, dy], [dx]) => [
    renormalizeRowsBackward(ctx, { x: x!, dy: dy!, dx: dx! }),
  ],
  masked_softmax: (ctx, _n, [z, mask], [y]) => [maskedSoftmax(ctx, { z: z!, mask: mask!, y: y! })],
  slice_cols: (ctx, _n, [x], [y]) => [sliceCols(ctx, { wide: x!, narrow: y!, backward: false })],
  slice_cols_backward: (ctx, _n, [dy], [dx]) => [sliceCols(ctx, { wide: dx!, narrow: dy!, backward: true })],
  switch_loss_seq: (ctx, n, [s, mask], [loss], scratch) =>
    switchLossSeq(ctx, {
      s: s!,
      mask: mask!,
      loss: loss!,
      k: n.attrs.k,
      seq: n.attrs.seq,
      fp: scratch([s!.shape[0]! / n.attrs.seq, cols(n)], "fp"),
    }),
  switch_loss_seq_backward: (ctx, n, [s, mask, dl], [ds], scratch) =>
    switchLossSeqBackward(ctx, {
      s: s!,
      mask: mask!,
      dl: dl!,
      ds: ds!,
      k: n.attrs.k,
      seq: n.attrs.seq,
      f: scratch([s!.shape[0]! / n.attrs.seq, cols(n)], "f"),
    }),
};

/** Ops with a WebGPU implementation. */
export const GPU_OPS: readonly string[] = Object.entries(GPU_IMPLS).filter(([, impl]) => impl).map(([op]) =>
  op
);

/** The implementation of `node`'s op in `impls`; throws for an op WebGPU does not run as kernels. */
export function gpuImplOf<K extends OpName>(node: OpNode<K>, impls: GpuTable = GPU_IMPLS): GpuImpl<K> {
  const impl = impls[node.op];
  if (!impl) throw new TypeError(`No WebGPU implementation for op "${node.op}"`);
  return impl;
}

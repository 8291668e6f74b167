/**
 * Kernels of the routers of the literature (docs/design.md §16); float64 twins in core/ref/router_zoo.ts.
 * Expert-choice selection: one invocation per (token, expert) counts the tokens ranked ahead of it in its
 * expert's column (O(N) per invocation, no sort, no shared memory). The dynamic (entropy) loss of top-p
 * routing and its gradient (the top-p mask itself is the inference rule's kernel, gpu/kernels/routing.ts).
 * ReLU routing: the L1 term and its gradient, the share of zero gates, the update of λ after a step, and the
 * inference router of a ReLU-routed model (the fused gate of routing.ts over normalized ReLU gates).
 *
 * @module
 */
import type { RouteRule } from "../../core/graph/op_types.ts";
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import {
  type Binding,
  loopBudget,
  simpleKernel,
  tableKernel,
  totalSum,
  type UniformFields,
} from "./common.ts";
import { RANK_WGSL, RULE_KEEP_WGSL, ruleFields } from "./routing.ts";

/** ε inside the entropy's log (core/ref/losses.ts MI_EPS). */
const _EPS = 1e-9;

/** What to lower when an expert-choice column is too long for one invocation on llvmpipe. */
const _TOKENS_HINT = "Lower train.micro_batch × data.seq_len (the tokens one graph execution routes)";

/**
 * mask (N, E): 1 where expert e takes token t, i.e. fewer than `tokens` tokens of column e rank ahead of t
 * (a larger probability, or an equal one at a lower token index); s (N, E) router probabilities.
 */
export function expertChoiceMask(
  ctx: GpuContext,
  o: { s: GpuTensor; mask: GpuTensor; tokens: number },
): KernelCall {
  const [N, E] = o.s.shape as [number, number];
  loopBudget(ctx, N, `expert_choice_mask (${N} tokens)`, _TOKENS_HINT);
  return simpleKernel(ctx, {
    label: "expert_choice_mask",
    bindings: [{ name: "s", tensor: o.s }, { name: "mask", tensor: o.mask, write: true }],
    fields: [["n", "u32", N * E], ["N", "u32", N], ["E", "u32", E], ["C", "u32", o.tokens]],
    invocations: N * E,
    body: `  let t = i / u.E;
  let e = i % u.E;
  let v = s[i];
  var rank = 0u;
  for (var r = 0u; r < u.N; r = r + 1u) {
    let w = s[r * u.E + e];
    if (w > v || (w == v && r < t)) { rank = rank + 1u; }
  }
  mask[i] = select(0.0, 1.0, rank < u.C);`,
  });
}

/** loss (1,) = −(1/N) Σ S log(S + ε): the mean per-token entropy of router probabilities S (N, E). */
export function entropyLoss(ctx: GpuContext, o: { s: GpuTensor; loss: GpuTensor }): KernelCall {
  const [N, E] = o.s.shape as [number, number];
  return _sumAll(ctx, "entropy_loss", {
    x: o.s,
    bindings: [{ name: "x", tensor: o.s }, { name: "l", tensor: o.loss, write: true }],
    fields: [["N", "u32", N], ["E", "u32", E], ["eps", "f32", _EPS]],
    term: "x[k] * log(x[k] + u.eps)",
    finish: "l[0] = -total / f32(u.N);",
  });
}

/** dS = −(dl/N)·[log(S + ε) + S/(S + ε)]. */
export function entropyLossBackward(
  ctx: GpuContext,
  o: { s: GpuTensor; dl: GpuTensor; ds: GpuTensor },
): KernelCall {
  return tableKernel(ctx, {
    label: "entropy_loss_backward",
    shape: o.s.shape,
    per: "entry",
    inputs: [{ name: "s", tensor: o.s }, { name: "dl", tensor: o.dl }],
    out: { name: "ds", tensor: o.ds },
    extra: [["eps", "f32", _EPS]],
    body: `  let v = s[i];
  ds[i] = -dl[0] / f32(u.N) * (log(v + u.eps) + v / (v + u.eps));`,
  });
}

/**
 * One sum over the N·E entries of `x` per call: a 256-thread workgroup on real GPUs, one invocation looping
 * on software adapters (refused past llvmpipe's loop limit). `term` is a WGSL expression of `x[k]`; `finish`
 * gets the sum as `total`.
 */
function _sumAll(
  ctx: GpuContext,
  label: string,
  o: { x: GpuTensor; bindings: Binding[]; fields: UniformFields; term: string; finish: string },
): KernelCall {
  const [N, E] = o.x.shape as [number, number];
  if (ctx.profile === "gpu") {
    const { bindings, fields, term, finish } = o;
    return totalSum(ctx, { label, bindings, fields, count: "u.N * u.E", term, finish });
  }
  loopBudget(ctx, N * E, `${label} (${N} rows × ${E} experts)`, _TOKENS_HINT);
  return simpleKernel(ctx, {
    label,
    bindings: o.bindings,
    fields: o.fields,
    invocations: 1,
    workgroup: 1,
    body: `  if (i > 0u) { return; }
  var total = 0.0;
  for (var k = 0u; k < u.N * u.E; k = k + 1u) { total = total + (${o.term}); }
  ${o.finish}`,
  });
}

/** loss (1,) = λ · (1/N) Σ g: the L1 term of ReLU gates g (N, E) with λ (1,). */
export function l1Loss(ctx: GpuContext, o: { g: GpuTensor; lambda: GpuTensor; loss: GpuTensor }): KernelCall {
  const [N, E] = o.g.shape as [number, number];
  return _sumAll(ctx, "l1_loss", {
    x: o.g,
    bindings: [{ name: "x", tensor: o.g }, { name: "lam", tensor: o.lambda }, {
      name: "l",
      tensor: o.loss,
      write: true,
    }],
    fields: [["N", "u32", N], ["E", "u32", E]],
    term: "x[k]",
    finish: "l[0] = lam[0] * total / f32(u.N);",
  });
}

/** dg = dl · λ / N for every gate. */
export function l1LossBackward(
  ctx: GpuContext,
  o: { g: GpuTensor; lambda: GpuTensor; dl: GpuTensor; dg: GpuTensor },
): KernelCall {
  return tableKernel(ctx, {
    label: "l1_loss_backward",
    shape: o.g.shape,
    per: "entry",
    inputs: [{ name: "lam", tensor: o.lambda }, { name: "dl", tensor: o.dl }],
    out: { name: "dg", tensor: o.dg },
    body: "  dg[i] = dl[0] * lam[0] / f32(u.N);",
  });
}

/** share (1,) = the share of entries of x (N, E) that are ≤ 0. */
export function zeroShare(ctx: GpuContext, o: { x: GpuTensor; share: GpuTensor }): KernelCall {
  const [N, E] = o.x.shape as [number, number];
  return _sumAll(ctx, "zero_share", {
    x: o.x,
    bindings: [{ name: "x", tensor: o.x }, { name: "l", tensor: o.share, write: true }],
    fields: [["N", "u32", N], ["E", "u32", E]],
    term: "select(0.0, 1.0, x[k] <= 0.0)",
    finish: "l[0] = total / f32(u.N * u.E);",
  });
}

/**
 * After a step: λ ← λ · rate^sign(target − sparsity), only when the step was finite (`stats[2]` = 1, the
 * flag of the gradient-norm kernel, gpu/kernels/optimizer.ts); sparsity (1,) is the step's measured share of
 * zero gates (core/plan/router_zoo.ts `nextL1Lambda` is the float64 rule).
 */
export function l1LambdaUpdate(
  ctx: GpuContext,
  o: { lambda: GpuTensor; sparsity: GpuTensor; stats: GpuTensor; target: number; rate: number },
): KernelCall {
  return simpleKernel(ctx, {
    label: "l1_lambda_update",
    bindings: [
      { name: "sp", tensor: o.sparsity },
      { name: "st", tensor: o.stats },
      { name: "lam", tensor: o.lambda, write: true },
    ],
    fields: [["n", "u32", 1], ["goal", "f32", o.target], ["rate", "f32", o.rate]],
    invocations: 1,
    workgroup: 1,
    body: `  if (st[2] != 1.0) { return; }
  if (u.goal > sp[0]) { lam[0] = lam[0] * u.rate; } else if (u.goal < sp[0]) { lam[0] = lam[0] / u.rate; }`,
  });
}

/**
 * The inference router of a ReLU-routed model in one dispatch, per token: g = max(z, 0), s = g / Σ g (0 when
 * every gate is 0), the rule's mask of s kept where g > 0, and gate = g ⊙ mask. Every rule but
 * threshold_topk (whose K is a batch mean).
 */
export function reluRouteGate(
  ctx: GpuContext,
  o: { logits: GpuTensor; probs: GpuTensor; mask: GpuTensor; gate: GpuTensor; rule: RouteRule },
): KernelCall {
  const [N, E] = o.logits.shape as [number, number], cond = RULE_KEEP_WGSL[o.rule.kind];
  if (cond === null) throw new RangeError(`Cannot fuse the ReLU router gate for rule ${o.rule.kind}`);
  return simpleKernel(ctx, {
    label: "relu_route_gate",
    bindings: [
      { name: "z", tensor: o.logits },
      { name: "s", tensor: o.probs, write: true },
      { name: "mask", tensor: o.mask, write: true },
      { name: "gate", tensor: o.gate, write: true },
    ],
    fields: ruleFields(N, E, o.rule),
    invocations: N,
    workgroup: 8,
    body: `  let b = i * u.E;
  var sum = 0.0;
  for (var e = 0u; e < u.E; e = e + 1u) { sum = sum + max(z[b + e], 0.0); }
  for (var e = 0u; e < u.E; e = e + 1u) { s[b + e] = select(0.0, max(z[b + e], 0.0) / sum, sum > 0.0); }
  for (var e = 0u; e < u.E; e = e + 1u) {
  ${RANK_WGSL}
    let g = max(z[b + e], 0.0);
    let on = select(0.0, 1.0, (${cond}) && g > 0.0);
    mask[b + e] = on;
    gate[b + e] = g * on;
  }`,
  });
}

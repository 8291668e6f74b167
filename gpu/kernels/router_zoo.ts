/**
 * Kernels of the routers of the literature (docs/design.md §16); float64 twins in core/ref/router_zoo.ts.
 * Expert-choice selection: one invocation per (token, expert) counts the tokens ranked ahead of it in its
 * expert's column (O(N) per invocation, no sort, no shared memory). The dynamic (entropy) loss of top-p
 * routing and its gradient (the top-p mask itself is the inference rule's kernel, gpu/kernels/routing.ts).
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { loopBudget, simpleKernel, totalSum, type UniformFields } from "./common.ts";

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
  const bindings = [{ name: "s", tensor: o.s }, { name: "l", tensor: o.loss, write: true }];
  const fields: UniformFields = [["N", "u32", N], ["E", "u32", E], ["eps", "f32", _EPS]];
  if (ctx.profile === "gpu") {
    return totalSum(ctx, {
      label: "entropy_loss",
      bindings,
      fields,
      count: "u.N * u.E",
      term: "s[k] * log(s[k] + u.eps)",
      finish: "l[0] = -total / f32(u.N);",
    });
  }
  loopBudget(ctx, N * E, `entropy_loss (${N} rows × ${E} experts)`, _TOKENS_HINT);
  return simpleKernel(ctx, {
    label: "entropy_loss",
    bindings,
    fields,
    invocations: 1,
    workgroup: 1,
    body: `  if (i > 0u) { return; }
  var h = 0.0;
  for (var k = 0u; k < u.N * u.E; k = k + 1u) { h = h + s[k] * log(s[k] + u.eps); }
  l[0] = -h / f32(u.N);`,
  });
}

/** dS = −(dl/N)·[log(S + ε) + S/(S + ε)]. */
export function entropyLossBackward(
  ctx: GpuContext,
  o: { s: GpuTensor; dl: GpuTensor; ds: GpuTensor },
): KernelCall {
  const [N, E] = o.s.shape as [number, number];
  return simpleKernel(ctx, {
    label: "entropy_loss_backward",
    bindings: [{ name: "s", tensor: o.s }, { name: "dl", tensor: o.dl }, {
      name: "ds",
      tensor: o.ds,
      write: true,
    }],
    fields: [["n", "u32", N * E], ["N", "u32", N], ["eps", "f32", _EPS]],
    invocations: N * E,
    body: `  let v = s[i];
  ds[i] = -dl[0] / f32(u.N) * (log(v + u.eps) + v / (v + u.eps));`,
  });
}

/**
 * Inference routing rules on the GPU: the 0/1 mask of the experts each token runs (threshold, top-k,
 * threshold-top-K, top-p, dense). Float64 twin: core/ref/routing.ts. One invocation per token; E is small
 * (≤ 64 experts), so ranks are counted directly (O(E²) per token) with no sort and no shared memory.
 *
 * @module
 */
import type { RouteRule } from "../../core/graph/op_types.ts";
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { simpleKernel, type UniformFields } from "./common.ts";
import { softmaxRowWgsl } from "./softmax.ts";

/** WGSL of `before`: Σ S_f over experts ranked ahead of e (larger, or equal with a lower index), and rank. */
const _RANK = `  var rank = 0u;
    var before = 0.0;
    let v = s[b + e];
    for (var f = 0u; f < u.E; f = f + 1u) {
      let w = s[b + f];
      if (w > v || (w == v && f < e)) { rank = rank + 1u; before = before + w; }
    }`;

/**
 * Calls writing `mask` (N, E) for `rule` from router probabilities `s` (N, E). `threshold_topk` needs
 * `scratch`: N + 1 words for the per-token counts and the batch's K (a mean over all tokens, computed on
 * the GPU so no readback sits between layers).
 *
 * @example
 * ```ts ignore
 * const calls = routeMask(ctx, { s, mask, rule: { kind: "threshold", epsilon: 0.5, k: 2, p: 0.9 } });
 * ```
 */
export function routeMask(
  ctx: GpuContext,
  o: { s: GpuTensor; mask: GpuTensor; rule: RouteRule; scratch?: GpuTensor },
): KernelCall[] {
  const [N, E] = o.s.shape as [number, number], r = o.rule;
  const rows = (
    label: string,
    body: string,
    extra: { name: string; tensor: GpuTensor; type?: "u32" }[] = [],
  ) =>
    simpleKernel(ctx, {
      label,
      bindings: [{ name: "s", tensor: o.s }, { name: "mask", tensor: o.mask, write: true }, ...extra],
      fields: _ruleFields(N, E, r),
      invocations: N,
      workgroup: 8,
      body: `  let b = i * u.E;
  for (var e = 0u; e < u.E; e = e + 1u) {
  ${body}
  }`,
    });
  switch (r.kind) {
    case "dense":
      return [rows(
        "route_dense",
        `  _ = s[b + e]; // keeps the binding in the auto layout
    mask[b + e] = 1.0;`,
      )];
    case "threshold":
      return [rows("route_threshold", `  mask[b + e] = select(0.0, 1.0, f32(u.E) * s[b + e] > u.eps);`)];
    case "topk":
      return [rows("route_topk", `${_RANK}\n    mask[b + e] = select(0.0, 1.0, rank < u.k);`)];
    case "top_p":
      return [rows("route_top_p", `${_RANK}\n    mask[b + e] = select(0.0, 1.0, before < u.p);`)];
    case "threshold_topk": {
      if (!o.scratch || o.scratch.size < N + 1) {
        throw new RangeError(`Cannot route threshold_topk: needs a scratch tensor of ${N + 1} words`);
      }
      const counts = { name: "counts", tensor: o.scratch, type: "u32" as const };
      const count = simpleKernel(ctx, {
        label: "route_count",
        bindings: [{ name: "s", tensor: o.s }, { ...counts, write: true }],
        fields: [["n", "u32", N], ["E", "u32", E], ["eps", "f32", r.epsilon]],
        invocations: N,
        workgroup: 8,
        body: `  var c = 0u;
  for (var e = 0u; e < u.E; e = e + 1u) { c = c + select(0u, 1u, f32(u.E) * s[i * u.E + e] > u.eps); }
  counts[i] = c;`,
      });
      // K = floor(mean + 1/2) in integers: (2·Σc + N) / (2N), clamped to [1, E]; stored after the counts.
      const k = simpleKernel(ctx, {
        label: "route_k",
        bindings: [{ ...counts, write: true }],
        fields: [["N", "u32", N], ["E", "u32", E]],
        invocations: 1,
        workgroup: 1,
        body: `  if (i > 0u) { return; }
  var total = 0u;
  for (var t = 0u; t < u.N; t = t + 1u) { total = total + counts[t]; }
  counts[u.N] = clamp((2u * total + u.N) / (2u * u.N), 1u, u.E);`,
      });
      const mask = rows(
        "route_threshold_topk",
        `${_RANK}\n    mask[b + e] = select(0.0, 1.0, rank < counts[u.n]);`,
        [counts],
      );
      return [count, k, mask];
    }
  }
}

/**
 * The inference router of one layer in one dispatch: per token, probs = softmax(logits) (max-subtracted,
 * as softmax.ts), the rule's mask, and gate = probs ⊙ mask — three dispatches of decoding (softmax,
 * route mask, mul) become one. Every rule but `threshold_topk` (whose K is a mean over the batch).
 *
 * @example
 * ```ts ignore
 * const call = routeGate(ctx, { logits, probs, mask, gate, rule: { kind: "topk", epsilon: 0.5, k: 2, p: 0.9 } });
 * ```
 */
export function routeGate(
  ctx: GpuContext,
  o: { logits: GpuTensor; probs: GpuTensor; mask: GpuTensor; gate: GpuTensor; rule: RouteRule },
): KernelCall {
  const [N, E] = o.logits.shape as [number, number], r = o.rule;
  const cond = _KEEP[r.kind];
  if (cond === null) throw new RangeError(`Cannot fuse the router gate for rule ${r.kind}: use routeMask`);
  return simpleKernel(ctx, {
    label: "route_gate",
    bindings: [
      { name: "z", tensor: o.logits },
      { name: "s", tensor: o.probs, write: true },
      { name: "mask", tensor: o.mask, write: true },
      { name: "gate", tensor: o.gate, write: true },
    ],
    fields: _ruleFields(N, E, r),
    invocations: N,
    workgroup: 8,
    body: `  let b = i * u.E;
${softmaxRowWgsl("z", "s", "u.E")}
  for (var e = 0u; e < u.E; e = e + 1u) {
  ${_RANK}
    let on = select(0.0, 1.0, ${cond});
    mask[b + e] = on;
    gate[b + e] = v * on;
  }`,
  });
}

/**
 * WGSL of a fused gate's condition that expert e (probability v, `rank` and mass `before` from `_RANK`) runs;
 * null for threshold_topk, whose K is a batch mean.
 */
const _KEEP: Record<RouteRule["kind"], string | null> = {
  dense: "true",
  threshold: "f32(u.E) * v > u.eps",
  topk: "rank < u.k",
  top_p: "before < u.p",
  threshold_topk: null,
};

/**
 * The pieces of the fused router gate, for gates over other scores (gpu/kernels/router_zoo.ts): the rank
 * WGSL, the rule conditions and the uniform fields.
 */
export { _KEEP as RULE_KEEP_WGSL, _RANK as RANK_WGSL, _ruleFields as ruleFields };

/** Uniform fields of the per-token rule kernels: tokens, experts and the rule's parameters. */
function _ruleFields(N: number, E: number, r: RouteRule): UniformFields {
  return [["n", "u32", N], ["E", "u32", E], ["eps", "f32", r.epsilon], ["k", "u32", Math.min(r.k, E)], [
    "p",
    "f32",
    r.p,
  ]];
}

/**
 * Router kernels: per-token per-block scaling of stacked experts (the gate) and its backward, and the top-k
 * mask over experts (ties to the lower index).
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { type ActivationKind, activationWgsl } from "./activation.ts";
import { type Binding, simpleKernel, vecGroup } from "./common.ts";

/** y[t, e·h + j] = s[t, e] · x[t, e·h + j]; x (N, E·h), s (N, E). */
export function routerScale(ctx: GpuContext, o: { x: GpuTensor; s: GpuTensor; y: GpuTensor }): KernelCall {
  const E = o.s.shape[1]!, N = o.s.shape[0]!, w = o.x.size / N, h = w / E;
  if (h % 4 === 0) {
    // G vec4s of one expert block per invocation: one index division per 4·G elements, not per element
    // (integer division is slow on CPU adapters; wide contiguous work per invocation is fast there).
    const G = vecGroup(h);
    return simpleKernel(ctx, {
      label: "router_scale",
      bindings: [
        { name: "x", tensor: o.x, type: "vec4<f32>" },
        { name: "s", tensor: o.s },
        { name: "y", tensor: o.y, write: true, type: "vec4<f32>" },
      ],
      fields: [["n", "u32", o.x.size / (4 * G)], ["w", "u32", w], ["h", "u32", h], ["E", "u32", E]],
      invocations: o.x.size / (4 * G),
      body: `  let v = i * ${G}u;
  let at = v * 4u;
  let sv = s[(at / u.w) * u.E + (at % u.w) / u.h];
  for (var g = 0u; g < ${G}u; g = g + 1u) { y[v + g] = x[v + g] * sv; }`,
    });
  }
  return simpleKernel(ctx, {
    label: "router_scale",
    bindings: [{ name: "x", tensor: o.x }, { name: "s", tensor: o.s }, {
      name: "y",
      tensor: o.y,
      write: true,
    }],
    fields: [["n", "u32", o.x.size], ["w", "u32", w], ["h", "u32", w / E], ["E", "u32", E]],
    invocations: o.x.size,
    body: `  y[i] = x[i] * s[(i / u.w) * u.E + (i % u.w) / u.h];`,
  });
}

/**
 * The expert activation and router gate of dense training in one pass: a = act(u), y[t, e·h + j] =
 * s[t, e] · a[t, e·h + j] (a is kept for the router's gradient); u (N, E·h), s (N, E). With `dy` instead it is
 * the backward: du = act'(u) ⊙ s ⊙ dy. vec4s of one expert block per invocation when h allows.
 */
export function gatedActivation(
  ctx: GpuContext,
  o:
    & { kind: ActivationKind; u: GpuTensor; s: GpuTensor }
    & (
      | { a: GpuTensor; y: GpuTensor; dy?: undefined; du?: undefined }
      | { dy: GpuTensor; du: GpuTensor; a?: undefined; y?: undefined }
    ),
): KernelCall {
  const E = o.s.shape[1]!, N = o.s.shape[0]!, w = o.u.size / N, h = w / E;
  const G = vecGroup(h);
  const T = G ? "vec4<f32>" : "f32", sfx = G ? "4" : "", per = G ? 4 * G : 1, k = o.kind;
  const outs: Binding[] = o.dy
    ? [{ name: "dy", tensor: o.dy, type: T }, { name: "du", tensor: o.du, write: true, type: T }]
    : [{ name: "a", tensor: o.a!, write: true, type: T }, { name: "y", tensor: o.y!, write: true, type: T }];
  const step = o.dy
    ? `du[v] = ${k}_grad${sfx}(x[v]) * dy[v] * sv;`
    : `let av = ${k}${sfx}(x[v]); a[v] = av; y[v] = av * sv;`;
  return simpleKernel(ctx, {
    label: o.dy ? `gated_activation_backward_${k}` : `gated_activation_${k}`,
    bindings: [{ name: "x", tensor: o.u, type: T }, { name: "s", tensor: o.s }, ...outs],
    fields: [["n", "u32", o.u.size / per], ["w", "u32", w], ["h", "u32", h], ["E", "u32", E]],
    invocations: o.u.size / per,
    prelude: activationWgsl(T, sfx),
    body: `  let v0 = i * ${Math.max(1, G)}u;
  let at = i * ${per}u;
  let sv = s[(at / u.w) * u.E + (at % u.w) / u.h];
  for (var g = 0u; g < ${Math.max(1, G)}u; g = g + 1u) { let v = v0 + g; ${step} }`,
  });
}

/** ds[t, e] = Σ_j x[t, e·h + j] · dy[t, e·h + j]. */
export function routerScaleDs(
  ctx: GpuContext,
  o: { x: GpuTensor; dy: GpuTensor; ds: GpuTensor },
): KernelCall {
  const [N, E] = o.ds.shape as [number, number], w = o.x.size / N, h = w / E;
  if (h % 4 === 0) {
    return simpleKernel(ctx, {
      label: "router_scale_ds",
      bindings: [
        { name: "x", tensor: o.x, type: "vec4<f32>" },
        { name: "dy", tensor: o.dy, type: "vec4<f32>" },
        { name: "ds", tensor: o.ds, write: true },
      ],
      fields: [["n", "u32", N * E], ["w4", "u32", w / 4], ["h4", "u32", h / 4], ["E", "u32", E]],
      invocations: N * E,
      body: `  let b = (i / u.E) * u.w4 + (i % u.E) * u.h4;
  var acc = vec4<f32>(0.0);
  for (var j = 0u; j < u.h4; j = j + 1u) { acc = acc + x[b + j] * dy[b + j]; }
  ds[i] = acc.x + acc.y + acc.z + acc.w;`,
    });
  }
  return simpleKernel(ctx, {
    label: "router_scale_ds",
    bindings: [{ name: "x", tensor: o.x }, { name: "dy", tensor: o.dy }, {
      name: "ds",
      tensor: o.ds,
      write: true,
    }],
    fields: [["n", "u32", N * E], ["w", "u32", w], ["h", "u32", w / E], ["E", "u32", E]],
    invocations: N * E,
    body: `  let b = (i / u.E) * u.w + (i % u.E) * u.h;
  var acc = 0.0;
  for (var j = 0u; j < u.h; j = j + 1u) { acc = acc + x[b + j] * dy[b + j]; }
  ds[i] = acc;`,
  });
}

/** mask (N, E): 1 for the k largest probabilities of each row, else 0. */
export function topkMask(ctx: GpuContext, o: { s: GpuTensor; mask: GpuTensor; k: number }): KernelCall {
  const [N, E] = o.s.shape as [number, number];
  return simpleKernel(ctx, {
    label: "topk_mask",
    bindings: [{ name: "s", tensor: o.s }, { name: "mask", tensor: o.mask, write: true }],
    fields: [["n", "u32", N], ["E", "u32", E], ["k", "u32", o.k]],
    invocations: N,
    workgroup: 8,
    body: `  let b = i * u.E;
  for (var e = 0u; e < u.E; e = e + 1u) {
    // Rank of e: entries strictly larger, or equal with a lower index.
    var rank = 0u;
    let v = s[b + e];
    for (var f = 0u; f < u.E; f = f + 1u) {
      let w = s[b + f];
      if (w > v || (w == v && f < e)) { rank = rank + 1u; }
    }
    mask[b + e] = select(0.0, 1.0, rank < u.k);
  }`,
  });
}

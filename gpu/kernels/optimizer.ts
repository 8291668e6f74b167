/**
 * Optimizer kernels, with no host sync: per-gradient partial sums of squares, one finishing kernel that
 * writes [global norm, clip coefficient, finite flag] to a small stats buffer, and AdamW updates that read
 * that buffer — so clipping needs no readback, and a non-finite step leaves parameters and moments as they
 * were. Per-step hyperparameters [lr, 1 − β1^t, 1 − β2^t] live in a storage buffer written once per step.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { simpleKernel, totalSum } from "./common.ts";

/** Elements summed by one invocation of {@linkcode sumSquares}. */
export const SQ_CHUNK = 256;

/** Partial sums needed for a gradient of `n` elements. */
export function partialsFor(n: number): number {
  return Math.ceil(n / SQ_CHUNK);
}

/** The most gradients one {@linkcode sumSquares} dispatch reads: the device's storage bindings, less one. */
export function sumSquaresGroup(ctx: GpuContext): number {
  return Math.max(1, Math.min(15, ctx.limits.maxStorageBuffersPerShaderStage - 1));
}

/**
 * Sums of squares of several gradients in one dispatch: partials[offset + c] = Σ x² over chunk c of the
 * gradients laid end to end, chunk by chunk (each gradient's chunks after the previous one's, as
 * {@linkcode partialsFor} counts them). At most {@linkcode sumSquaresGroup} tensors; one dispatch per group
 * instead of one per parameter (the H200 profile showed 52 tiny dispatches taking a tenth of a step).
 */
export function sumSquares(
  ctx: GpuContext,
  o: { xs: readonly GpuTensor[]; partials: GpuTensor; offset: number },
): KernelCall {
  const n = o.xs.length;
  if (n < 1 || n > sumSquaresGroup(ctx)) {
    throw new RangeError(`Cannot sum squares of ${n} tensors in one dispatch (1 to ${sumSquaresGroup(ctx)})`);
  }
  const starts: number[] = [];
  let chunks = 0;
  for (const x of o.xs) {
    starts.push(chunks);
    chunks += partialsFor(x.size);
  }
  const branch = (t: number) =>
    `{ let b = (i - u.s${t}) * ${SQ_CHUNK}u; let e = min(b + ${SQ_CHUNK}u, u.len${t});
    for (var j = b; j < e; j = j + 1u) { acc = acc + x${t}[j] * x${t}[j]; } }`;
  const body = o.xs.map((_, t) =>
    t === n - 1
      ? `  ${t > 0 ? "else " : ""}${branch(t)}`
      : `  ${t > 0 ? "else " : ""}if (i < u.s${t + 1}) ${branch(t)}`
  ).join("\n");
  return simpleKernel(ctx, {
    label: "sum_squares",
    bindings: [...o.xs.map((x, t) => ({ name: `x${t}`, tensor: x })), {
      name: "p",
      tensor: o.partials,
      write: true,
    }],
    fields: [
      ["n", "u32", chunks],
      ["offset", "u32", o.offset],
      ...o.xs.flatMap((x, t) => [[`s${t}`, "u32", starts[t]!] as const, [`len${t}`, "u32", x.size] as const]),
    ],
    invocations: chunks,
    body: `  var acc = 0.0;
${body}
  p[u.offset + i] = acc;`,
  });
}

/**
 * stats = [norm, clip, finite]: norm = sqrt(Σ partials), clip = min(1, maxNorm/(norm + 1e-6)) (1 when
 * maxNorm is 0), finite = 1 when the norm and the loss are finite (checked on the bits: compilers may
 * assume floats are never NaN).
 *
 * With `scale` (dynamic loss scaling, core/train/loss_scale.ts: the gradients are S times the loss's, S =
 * scale[0], a power of two) the norm is sqrt(Σ partials) / S and the factor AdamW multiplies gradients by is
 * clip / S: scaling and unscaling by a power of two are exact, so the update is the unscaled one bit for bit.
 */
export function gradNormFinish(
  ctx: GpuContext,
  o: {
    partials: GpuTensor;
    count: number;
    loss: GpuTensor;
    stats: GpuTensor;
    maxNorm: number;
    scale?: GpuTensor;
  },
): KernelCall {
  // One workgroup, each thread summing every 256th partial, then a fixed-order tree: deterministic, and
  // within llvmpipe's per-invocation loop limit up to 16.7M partials (4.3G parameters).
  const scaled = o.scale !== undefined;
  return totalSum(ctx, {
    label: scaled ? "grad_norm_finish_scaled" : "grad_norm_finish",
    bindings: [
      { name: "p", tensor: o.partials },
      { name: "loss", tensor: o.loss },
      { name: "stats", tensor: o.stats, write: true },
      ...(o.scale ? [{ name: "scale", tensor: o.scale }] : []),
    ],
    fields: [["count", "u32", o.count], ["maxNorm", "f32", o.maxNorm]],
    count: "u.count",
    term: "p[k]",
    prelude: `fn finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }`,
    finish: scaled
      ? `let acc = total;
    let s = scale[0];
    let norm = sqrt(acc) / s;
    var clip = 1.0;
    if (u.maxNorm > 0.0) { clip = min(1.0, u.maxNorm / (norm + 1e-6)); }
    let ok = finite(acc) && finite(loss[0]);
    stats[0] = norm; stats[1] = select(0.0, clip / s, ok); stats[2] = select(0.0, 1.0, ok);`
      : `let acc = total;
    let norm = sqrt(acc);
    var clip = 1.0;
    if (u.maxNorm > 0.0) { clip = min(1.0, u.maxNorm / (norm + 1e-6)); }
    let ok = finite(acc) && finite(loss[0]);
    stats[0] = norm; stats[1] = select(0.0, clip, ok); stats[2] = select(0.0, 1.0, ok);`,
  });
}

/**
 * Dynamic loss scaling's update after a step (core/train/loss_scale.ts `nextLossScale` is its reference):
 * `state` = [S, good steps, S of the step just taken]; `stats[2]` is the step's finite flag. A non-finite
 * step divides S by `factor` (not below `min`) and restarts the count; `growthInterval` finite steps in a row
 * multiply it (not above `max`). One invocation, no host sync.
 */
export function lossScaleUpdate(
  ctx: GpuContext,
  o: {
    state: GpuTensor;
    stats: GpuTensor;
    settings: { growthInterval: number; factor: number; min: number; max: number };
  },
): KernelCall {
  if (o.state.size < 3) {
    throw new RangeError(`Cannot update the loss scale: "${o.state.label}" needs 3 elements`);
  }
  const s = o.settings;
  return simpleKernel(ctx, {
    label: "loss_scale_update",
    bindings: [{ name: "state", tensor: o.state, write: true }, { name: "stats", tensor: o.stats }],
    fields: [["n", "u32", 1], ["interval", "f32", s.growthInterval], ["factor", "f32", s.factor], [
      "lo",
      "f32",
      s.min,
    ], ["hi", "f32", s.max]],
    invocations: 1,
    workgroup: 1,
    body: `  let s = state[0];
  state[2] = s;
  if (stats[2] == 0.0) { state[0] = max(u.lo, s / u.factor); state[1] = 0.0; return; }
  let good = state[1] + 1.0;
  if (good < u.interval) { state[1] = good; } else { state[0] = min(u.hi, s * u.factor); state[1] = 0.0; }`,
  });
}

/** In-place AdamW of one parameter; `hyper` = [lr, 1 − β1^t, 1 − β2^t], `stats` from gradNormFinish. */
export function adamw(
  ctx: GpuContext,
  o: {
    param: GpuTensor;
    grad: GpuTensor;
    m: GpuTensor;
    v: GpuTensor;
    stats: GpuTensor;
    hyper: GpuTensor;
    beta1: number;
    beta2: number;
    eps: number;
    weightDecay: number;
  },
): KernelCall {
  // Four elements per invocation when the size allows: the same formula on vec4s.
  const T = o.param.size % 4 === 0 ? "vec4<f32>" : "f32", n = T === "f32" ? o.param.size : o.param.size / 4;
  return simpleKernel(ctx, {
    label: "adamw",
    bindings: [
      { name: "p", tensor: o.param, write: true, type: T },
      { name: "g", tensor: o.grad, type: T },
      { name: "m", tensor: o.m, write: true, type: T },
      { name: "v", tensor: o.v, write: true, type: T },
      { name: "stats", tensor: o.stats },
      { name: "hyper", tensor: o.hyper },
    ],
    fields: [["n", "u32", n], ["b1", "f32", o.beta1], ["b2", "f32", o.beta2], [
      "eps",
      "f32",
      o.eps,
    ], [
      "wd",
      "f32",
      o.weightDecay,
    ]],
    invocations: n,
    body: `  if (stats[2] == 0.0) { return; }
  let lr = hyper[0];
  let gr = g[i] * stats[1];
  let mi = u.b1 * m[i] + (1.0 - u.b1) * gr;
  let vi = u.b2 * v[i] + (1.0 - u.b2) * gr * gr;
  m[i] = mi; v[i] = vi;
  p[i] = p[i] * (1.0 - lr * u.wd) - lr * (mi / hyper[1]) / (sqrt(vi / hyper[2]) + u.eps);`,
  });
}

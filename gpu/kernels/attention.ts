/**
 * Causal grouped-query attention: query head h reads KV head h mod Hkv. Layout q, o (B, T, Hq, D);
 * k, v (B, T, Hkv, D); lse (B, Hq, T). Forward: one invocation per query row with an online softmax, the
 * row of o held in registers. Backward: delta = dO·o per row, then dq per query row and dk/dv per key row
 * (summing over the query heads that share it) — deterministic, no atomics.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { GpuLimitError } from "../errors.ts";
import { simpleKernel, type UniformFields } from "./common.ts";

/** Largest head dimension the register-held rows support. */
export const MAX_HEAD_DIM = 256;

function _dims(q: GpuTensor, k: GpuTensor): UniformFields {
  const [B, T, Hq, D] = q.shape as [number, number, number, number];
  if (D > MAX_HEAD_DIM) {
    throw new GpuLimitError(`Cannot run attention: head_dim ${D} exceeds ${MAX_HEAD_DIM}`);
  }
  return [["n", "u32", B * Hq * T], ["T", "u32", T], ["Hq", "u32", Hq], ["Hkv", "u32", k.shape[2]!], [
    "scale",
    "f32",
    1 / Math.sqrt(D),
  ]];
}

// i = ((b·Hq + h)·T + t): neighbouring invocations share (b, h).
const _ROW = `  let t = i % u.T; let h = (i / u.T) % u.Hq; let bb = i / (u.T * u.Hq); let kh = h % u.Hkv;
  let qo = ((bb * u.T + t) * u.Hq + h) * D;`;

/** o and lse from q, k, v. */
export function attention(
  ctx: GpuContext,
  o: { q: GpuTensor; k: GpuTensor; v: GpuTensor; o: GpuTensor; lse: GpuTensor },
): KernelCall {
  const D = o.q.shape[3]!, fields = _dims(o.q, o.k);
  return simpleKernel(ctx, {
    label: "attention",
    bindings: [
      { name: "q", tensor: o.q },
      { name: "k", tensor: o.k },
      { name: "v", tensor: o.v },
      { name: "o", tensor: o.o, write: true },
      { name: "lse", tensor: o.lse, write: true },
    ],
    fields,
    invocations: fields[0]![2],
    workgroup: 8,
    prelude: `const D = ${D}u;`,
    body: `${_ROW}
  var qr: array<f32, ${D}>; var acc: array<f32, ${D}>;
  for (var j = 0u; j < D; j = j + 1u) { qr[j] = q[qo + j] * u.scale; acc[j] = 0.0; }
  var m = -3.0e38; var s = 0.0;
  for (var s_u = 0u; s_u <= t; s_u = s_u + 1u) {
    let ko = ((bb * u.T + s_u) * u.Hkv + kh) * D;
    var dot = 0.0;
    for (var j = 0u; j < D; j = j + 1u) { dot = dot + qr[j] * k[ko + j]; }
    let mn = max(m, dot); let corr = exp(m - mn); let p = exp(dot - mn);
    s = s * corr + p;
    for (var j = 0u; j < D; j = j + 1u) { acc[j] = acc[j] * corr + p * v[ko + j]; }
    m = mn;
  }
  let inv = 1.0 / s;
  for (var j = 0u; j < D; j = j + 1u) { o[qo + j] = acc[j] * inv; }
  lse[i] = m + log(s);`,
  });
}

/** dq, dk, dv from the forward's o and lse and the output gradient dO; delta is scratch (B, Hq, T). */
export function attentionBackward(
  ctx: GpuContext,
  o: {
    q: GpuTensor;
    k: GpuTensor;
    v: GpuTensor;
    o: GpuTensor;
    lse: GpuTensor;
    dO: GpuTensor;
    dq: GpuTensor;
    dk: GpuTensor;
    dv: GpuTensor;
    delta: GpuTensor;
  },
): KernelCall[] {
  const D = o.q.shape[3]!, fields = _dims(o.q, o.k), rows = fields[0]![2];
  const prelude = `const D = ${D}u;`;
  const delta = simpleKernel(ctx, {
    label: "attention_backward_delta",
    bindings: [{ name: "o", tensor: o.o }, { name: "dO", tensor: o.dO }, {
      name: "delta",
      tensor: o.delta,
      write: true,
    }],
    fields,
    invocations: rows,
    workgroup: 8,
    prelude,
    body: `${_ROW}
  var acc = 0.0;
  for (var j = 0u; j < D; j = j + 1u) { acc = acc + o[qo + j] * dO[qo + j]; }
  delta[i] = acc;`,
  });
  // Both gradient kernels read the same six tensors.
  const reads = [
    { name: "q", tensor: o.q },
    { name: "k", tensor: o.k },
    { name: "v", tensor: o.v },
    { name: "lse", tensor: o.lse },
    { name: "dO", tensor: o.dO },
    { name: "delta", tensor: o.delta },
  ];
  const dq = simpleKernel(ctx, {
    label: "attention_backward_dq",
    bindings: [...reads, { name: "dq", tensor: o.dq, write: true }],
    fields,
    invocations: rows,
    workgroup: 8,
    prelude,
    body: `${_ROW}
  var qr: array<f32, ${D}>; var dor: array<f32, ${D}>; var acc: array<f32, ${D}>;
  for (var j = 0u; j < D; j = j + 1u) { qr[j] = q[qo + j]; dor[j] = dO[qo + j]; acc[j] = 0.0; }
  let l = lse[i]; let dl = delta[i];
  for (var s_u = 0u; s_u <= t; s_u = s_u + 1u) {
    let ko = ((bb * u.T + s_u) * u.Hkv + kh) * D;
    var dot = 0.0; var dp = 0.0;
    for (var j = 0u; j < D; j = j + 1u) { dot = dot + qr[j] * k[ko + j]; dp = dp + dor[j] * v[ko + j]; }
    let ds = exp(dot * u.scale - l) * (dp - dl) * u.scale;
    for (var j = 0u; j < D; j = j + 1u) { acc[j] = acc[j] + ds * k[ko + j]; }
  }
  for (var j = 0u; j < D; j = j + 1u) { dq[qo + j] = acc[j]; }`,
  });
  const [B, T] = o.q.shape as [number, number];
  const kvRows = B * o.k.shape[2]! * T;
  const dkv = simpleKernel(ctx, {
    label: "attention_backward_dkv",
    bindings: [...reads, { name: "dk", tensor: o.dk, write: true }, {
      name: "dv",
      tensor: o.dv,
      write: true,
    }],
    fields: [["n", "u32", kvRows], ...fields.slice(1)],
    invocations: kvRows,
    workgroup: 8,
    prelude,
    body: `  let s_u = i % u.T; let kh = (i / u.T) % u.Hkv; let bb = i / (u.T * u.Hkv);
  let ko = ((bb * u.T + s_u) * u.Hkv + kh) * D;
  var kr: array<f32, ${D}>; var vr: array<f32, ${D}>; var dk_acc: array<f32, ${D}>; var dv_acc: array<f32, ${D}>;
  for (var j = 0u; j < D; j = j + 1u) { kr[j] = k[ko + j]; vr[j] = v[ko + j]; dk_acc[j] = 0.0; dv_acc[j] = 0.0; }
  for (var h = kh; h < u.Hq; h = h + u.Hkv) {
    for (var t = s_u; t < u.T; t = t + 1u) {
      let qo = ((bb * u.T + t) * u.Hq + h) * D; let row = (bb * u.Hq + h) * u.T + t;
      var dot = 0.0; var dp = 0.0;
      for (var j = 0u; j < D; j = j + 1u) { dot = dot + q[qo + j] * kr[j]; dp = dp + dO[qo + j] * vr[j]; }
      let p = exp(dot * u.scale - lse[row]);
      let ds = p * (dp - delta[row]) * u.scale;
      for (var j = 0u; j < D; j = j + 1u) { dk_acc[j] = dk_acc[j] + ds * q[qo + j]; dv_acc[j] = dv_acc[j] + p * dO[qo + j]; }
    }
  }
  for (var j = 0u; j < D; j = j + 1u) { dk[ko + j] = dk_acc[j]; dv[ko + j] = dv_acc[j]; }`,
  });
  return [delta, dq, dkv];
}

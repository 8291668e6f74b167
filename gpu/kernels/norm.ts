/**
 * LayerNorm and RMSNorm forward (saving mean and rstd per row) and backward: dx one invocation per row,
 * dgamma/dbeta one invocation per column looping over rows (deterministic, no atomics). On a real GPU
 * (`gpu` profile) a row's serial walk is latency-bound (an H200 took 130 µs per 512-wide decode row), so
 * forward and dx give each row a workgroup of 64 threads with tree reductions, and dgamma/dbeta are
 * column sums over row lanes.
 *
 * @module
 */
import type { NormKind } from "../../core/graph/op_types.ts";
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import {
  type Binding,
  columnSums,
  loopBudget,
  simpleKernel,
  type UniformFields,
  workgroupPerItem,
  workgroupReduceWgsl,
} from "./common.ts";

/** Threads of a row's workgroup in the `gpu` profile's norm kernels. */
const _ROW_THREADS = 64;

/**
 * A kernel with a workgroup of 64 threads per row: the body sees `row`, `t` (thread) and `rowSum(v)`, the
 * workgroup's sum of every thread's v in a fixed order (call it in uniform control flow). The uniform
 * fields must start with `n` (rows).
 */
function rowKernel(
  ctx: GpuContext,
  o: { label: string; bindings: readonly Binding[]; fields: UniformFields; rows: number; body: string },
): KernelCall {
  const W = _ROW_THREADS;
  return workgroupPerItem(ctx, {
    ...o,
    items: o.rows,
    threads: W,
    prelude: `var<workgroup> red: array<f32, ${W}>;\n${workgroupReduceWgsl("rowSum", W, "red", "sum")}`,
    body: `  let row = wi;\n${o.body}`,
  });
}

export type { NormKind };

/** y (rows, d), mean (rows), rstd (rows); beta only for LayerNorm. */
export function norm(
  ctx: GpuContext,
  o: {
    kind: NormKind;
    eps: number;
    x: GpuTensor;
    gamma: GpuTensor;
    beta?: GpuTensor;
    y: GpuTensor;
    mean: GpuTensor;
    rstd: GpuTensor;
  },
): KernelCall {
  const d = o.gamma.size, rows = o.x.size / d, ln = o.kind === "layernorm";
  const beta = ln ? [{ name: "beta", tensor: o.beta! }] : [];
  const bindings = [
    { name: "x", tensor: o.x },
    { name: "gamma", tensor: o.gamma },
    ...beta,
    { name: "y", tensor: o.y, write: true },
    { name: "mean", tensor: o.mean, write: true },
    { name: "rstd", tensor: o.rstd, write: true },
  ];
  const fields = [["n", "u32", rows], ["d", "u32", d], ["eps", "f32", o.eps]] as const;
  if (ctx.profile === "gpu") {
    const W = _ROW_THREADS;
    return rowKernel(ctx, {
      label: `norm_${o.kind}`,
      bindings,
      fields,
      rows,
      body: `  let b = row * u.d;
  var mu = 0.0;
  ${
        ln
          ? `var a = 0.0;
  for (var j = t; j < u.d; j = j + ${W}u) { a = a + x[b + j]; }
  mu = rowSum(a, t) / f32(u.d);`
          : ""
      }
  var v = 0.0;
  for (var j = t; j < u.d; j = j + ${W}u) { let c = x[b + j] - mu; v = v + c * c; }
  let rs = inverseSqrt(rowSum(v, t) / f32(u.d) + u.eps);
  if (t == 0u) { mean[row] = mu; rstd[row] = rs; }
  for (var j = t; j < u.d; j = j + ${W}u) { y[b + j] = (x[b + j] - mu) * rs * gamma[j]${
        ln ? " + beta[j]" : ""
      }; }`,
    });
  }
  return simpleKernel(ctx, {
    label: `norm_${o.kind}`,
    bindings,
    fields,
    invocations: rows,
    workgroup: 8,
    body: `  let b = i * u.d;
  var mu = 0.0;
  ${ln ? "for (var j = 0u; j < u.d; j = j + 1u) { mu = mu + x[b + j]; } mu = mu / f32(u.d);" : ""}
  var v = 0.0;
  for (var j = 0u; j < u.d; j = j + 1u) { let c = x[b + j] - mu; v = v + c * c; }
  let rs = inverseSqrt(v / f32(u.d) + u.eps);
  mean[i] = mu; rstd[i] = rs;
  for (var j = 0u; j < u.d; j = j + 1u) { y[b + j] = (x[b + j] - mu) * rs * gamma[j]${
      ln ? " + beta[j]" : ""
    }; }`,
  });
}

/** Options of {@linkcode normBackward}. */
export interface NormBackwardOptions {
  kind: NormKind;
  x: GpuTensor;
  gamma: GpuTensor;
  mean: GpuTensor;
  rstd: GpuTensor;
  dy: GpuTensor;
  dx: GpuTensor;
  dgamma: GpuTensor;
  dbeta?: GpuTensor;
}

/** dx (rows, d), dgamma (d), dbeta (d, LayerNorm only) from the saved mean and rstd. */
export function normBackward(ctx: GpuContext, o: NormBackwardOptions): KernelCall[] {
  if (ctx.profile === "gpu") return [_dxRowKernel(ctx, o), _paramsColumnSums(ctx, o)];
  return [_dxKernel(ctx, o), _paramsKernel(ctx, o)];
}

/** Row width d, row count and whether the norm is a LayerNorm (which has a mean and a beta). */
function _sizes(o: NormBackwardOptions): { d: number; rows: number; ln: boolean } {
  const d = o.gamma.size;
  return { d, rows: o.x.size / d, ln: o.kind === "layernorm" };
}

/** The tensors both backward kernels read: x, gamma, mean, rstd, dy. */
function _reads(o: NormBackwardOptions): Binding[] {
  return [
    { name: "x", tensor: o.x },
    { name: "gamma", tensor: o.gamma },
    { name: "mean", tensor: o.mean },
    { name: "rstd", tensor: o.rstd },
    { name: "dy", tensor: o.dy },
  ];
}

/** `norm_backward_dx` on a real GPU: a workgroup per row, its two sums over the row as tree reductions. */
function _dxRowKernel(ctx: GpuContext, o: NormBackwardOptions): KernelCall {
  const { d, rows, ln } = _sizes(o), W = _ROW_THREADS;
  return rowKernel(ctx, {
    label: `norm_backward_dx_${o.kind}`,
    bindings: [..._reads(o), { name: "dx", tensor: o.dx, write: true }],
    fields: [["n", "u32", rows], ["d", "u32", d]],
    rows,
    body: `  let b = row * u.d; let mu = mean[row]; let rs = rstd[row];
  var a = 0.0; var ax = 0.0;
  for (var j = t; j < u.d; j = j + ${W}u) {
    let g = dy[b + j] * gamma[j]; a = a + g; ax = ax + g * (x[b + j] - mu) * rs;
  }
  let fd = f32(u.d);
  ${ln ? "let sg = rowSum(a, t);" : ""}
  let sgx = rowSum(ax, t);
  for (var j = t; j < u.d; j = j + ${W}u) {
    let g = dy[b + j] * gamma[j]; let xh = (x[b + j] - mu) * rs;
    dx[b + j] = rs * (g ${ln ? "- sg / fd " : ""}- xh * sgx / fd);
  }`,
  });
}

/** `norm_backward_dx` on cpu-simd: one invocation per row, walking it twice (sums, then dx). */
function _dxKernel(ctx: GpuContext, o: NormBackwardOptions): KernelCall {
  const { d, rows, ln } = _sizes(o);
  return simpleKernel(ctx, {
    label: `norm_backward_dx_${o.kind}`,
    bindings: [..._reads(o), { name: "dx", tensor: o.dx, write: true }],
    fields: [["n", "u32", rows], ["d", "u32", d]],
    invocations: rows,
    workgroup: 8,
    body: `  let b = i * u.d; let mu = mean[i]; let rs = rstd[i];
  var sg = 0.0; var sgx = 0.0;
  for (var j = 0u; j < u.d; j = j + 1u) {
    let g = dy[b + j] * gamma[j]; sg = sg + g; sgx = sgx + g * (x[b + j] - mu) * rs;
  }
  let fd = f32(u.d);
  for (var j = 0u; j < u.d; j = j + 1u) {
    let g = dy[b + j] * gamma[j]; let xh = (x[b + j] - mu) * rs;
    dx[b + j] = rs * (g ${ln ? "- sg / fd " : ""}- xh * sgx / fd);
  }`,
  });
}

/** Bindings of the dgamma/dbeta kernels: the reads less gamma, then dgamma and (LayerNorm) dbeta. */
function _paramBindings(o: NormBackwardOptions): Binding[] {
  return [
    ..._reads(o).filter((b) => b.name !== "gamma"), // auto layouts drop unused bindings; gamma is not read here
    { name: "dgamma", tensor: o.dgamma, write: true },
    ...(o.kind === "layernorm" ? [{ name: "dbeta", tensor: o.dbeta!, write: true }] : []),
  ];
}

/** `norm_backward_params` on a real GPU: dgamma and dbeta as column sums over row lanes. */
function _paramsColumnSums(ctx: GpuContext, o: NormBackwardOptions): KernelCall {
  const { d, rows, ln } = _sizes(o);
  return columnSums(ctx, {
    label: `norm_backward_params_${o.kind}`,
    bindings: _paramBindings(o),
    fields: [["n", "u32", d], ["rows", "u32", rows]],
    perRow: "let e = dy[r * u.n + i];",
    terms: ["e * (x[r * u.n + i] - mean[r]) * rstd[r]", ...(ln ? ["e"] : [])],
    finish: `dgamma[i] = s0;${ln ? " dbeta[i] = s1;" : ""}`,
  });
}

/** `norm_backward_params` on cpu-simd: one invocation per column looping over every row (loop-budgeted). */
function _paramsKernel(ctx: GpuContext, o: NormBackwardOptions): KernelCall {
  const { d, rows, ln } = _sizes(o);
  loopBudget(
    ctx,
    rows,
    `norm_backward_params_${o.kind} (${rows} rows)`,
    "Lower train.micro_batch × data.seq_len (the tokens one micro-step sums over)",
  );
  return simpleKernel(ctx, {
    label: `norm_backward_params_${o.kind}`,
    bindings: _paramBindings(o),
    fields: [["n", "u32", d], ["rows", "u32", rows]],
    invocations: d,
    body: `  var g = 0.0; var bsum = 0.0;
  for (var r = 0u; r < u.rows; r = r + 1u) {
    let e = dy[r * u.n + i]; g = g + e * (x[r * u.n + i] - mean[r]) * rstd[r]; bsum = bsum + e;
  }
  dgamma[i] = g;${ln ? " dbeta[i] = bsum;" : ""}`,
  });
}

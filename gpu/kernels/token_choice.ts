/**
 * Top-k token-choice router kernels (docs/design.md §16): expert capacity (the first C tokens of each expert
 * in token order are kept), gates renormalised per token and their backward, and softmax over the kept
 * logits (softmax after top-k). Float64 twins: core/ref/token_choice.ts. Rows are E wide (a few experts),
 * so each token's row is one invocation's serial loop, as in softmax.ts.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { type Binding, loopBudget, simpleKernel, tableKernel } from "./common.ts";

/**
 * kept (N, E): per expert (one invocation each, walking its column in token order), the first `capacity`
 * ones of `mask`. Serial over the N tokens, so that the order is the token order without atomics.
 */
export function capacityMask(
  ctx: GpuContext,
  o: { mask: GpuTensor; kept: GpuTensor; capacity: number },
): KernelCall {
  const [N, E] = o.mask.shape as [number, number];
  loopBudget(ctx, N, `capacity_mask (${N} tokens)`, "Lower train.micro_batch × data.seq_len");
  return simpleKernel(ctx, {
    label: "capacity_mask",
    bindings: [{ name: "m", tensor: o.mask }, { name: "kept", tensor: o.kept, write: true }],
    fields: [["n", "u32", E], ["N", "u32", N], ["cap", "u32", o.capacity]],
    invocations: E,
    workgroup: 8,
    body: `  var used = 0u;
  for (var t = 0u; t < u.N; t = t + 1u) {
    let on = m[t * u.n + i] > 0.0 && used < u.cap;
    kept[t * u.n + i] = select(0.0, 1.0, on);
    used = used + select(0u, 1u, on);
  }`,
  });
}

/** A row kernel of `tableKernel` whose body starts with the row's base `b`. */
function _rowKernel(
  ctx: GpuContext,
  label: string,
  shape: readonly number[],
  inputs: Binding[],
  out: Binding,
  body: string,
): KernelCall {
  return tableKernel(ctx, { label, shape, per: "row", inputs, out, body: `  let b = i * u.E;\n${body}` });
}

/** WGSL: `inv` = 1 / Σ_row x of row `b`, 0 on a row summing to 0. */
const _ROW_INV = `  var s = 0.0;
  for (var e = 0u; e < u.E; e = e + 1u) { s = s + x[b + e]; }
  let inv = select(0.0, 1.0 / s, s != 0.0);`;

/** y = x / Σ_row x per row of (N, E); 0 on a row summing to 0. */
export function renormalizeRows(ctx: GpuContext, o: { x: GpuTensor; y: GpuTensor }): KernelCall {
  return _rowKernel(
    ctx,
    "renormalize_rows",
    o.x.shape,
    [{ name: "x", tensor: o.x }],
    { name: "y", tensor: o.y },
    `${_ROW_INV}
  for (var e = 0u; e < u.E; e = e + 1u) { y[b + e] = x[b + e] * inv; }`,
  );
}

/** dx = (dy − Σ dy ⊙ x/s) / s per row, s = Σ_row x; 0 on a row whose s is 0. */
export function renormalizeRowsBackward(
  ctx: GpuContext,
  o: { x: GpuTensor; dy: GpuTensor; dx: GpuTensor },
): KernelCall {
  const inputs = [{ name: "x", tensor: o.x }, { name: "dy", tensor: o.dy }];
  return _rowKernel(
    ctx,
    "renormalize_rows_backward",
    o.x.shape,
    inputs,
    { name: "dx", tensor: o.dx },
    `${_ROW_INV}
  var dot = 0.0;
  for (var e = 0u; e < u.E; e = e + 1u) { dot = dot + dy[b + e] * x[b + e] * inv; }
  for (var e = 0u; e < u.E; e = e + 1u) { dx[b + e] = (dy[b + e] - dot) * inv; }`,
  );
}

/** y = softmax over each row's kept logits (mask > 0), 0 elsewhere and on a row with nothing kept. */
export function maskedSoftmax(
  ctx: GpuContext,
  o: { z: GpuTensor; mask: GpuTensor; y: GpuTensor },
): KernelCall {
  const inputs = [{ name: "z", tensor: o.z }, { name: "m", tensor: o.mask }];
  return _rowKernel(
    ctx,
    "masked_softmax",
    o.z.shape,
    inputs,
    { name: "y", tensor: o.y },
    `  var rowMax = -3.0e38;
  var any = false;
  for (var e = 0u; e < u.E; e = e + 1u) {
    if (m[b + e] > 0.0) { rowMax = max(rowMax, z[b + e]); any = true; }
  }
  var s = 0.0;
  for (var e = 0u; e < u.E; e = e + 1u) {
    let v = select(0.0, exp(z[b + e] - rowMax), m[b + e] > 0.0);
    y[b + e] = v;
    s = s + v;
  }
  let inv = select(0.0, 1.0 / s, any);
  for (var e = 0u; e < u.E; e = e + 1u) { y[b + e] = y[b + e] * inv; }`,
  );
}

/**
 * y (N, w) = the first w columns of x (N, W) (the real experts' gates of N + N_null), or with `backward`,
 * x (N, W) = y padded with zeros. One invocation per element written.
 */
export function sliceCols(
  ctx: GpuContext,
  o: { wide: GpuTensor; narrow: GpuTensor; backward: boolean },
): KernelCall {
  const [N, W] = o.wide.shape as [number, number], w = o.narrow.shape[1]!;
  const fields = [["W", "u32", W], ["w", "u32", w]] as const;
  if (o.backward) {
    return simpleKernel(ctx, {
      label: "slice_cols_backward",
      bindings: [{ name: "dy", tensor: o.narrow }, { name: "dx", tensor: o.wide, write: true }],
      fields: [["n", "u32", N * W], ...fields],
      invocations: N * W,
      body: `  let j = i % u.W;
  dx[i] = select(0.0, dy[(i / u.W) * u.w + min(j, u.w - 1u)], j < u.w);`,
    });
  }
  return simpleKernel(ctx, {
    label: "slice_cols",
    bindings: [{ name: "x", tensor: o.wide }, { name: "y", tensor: o.narrow, write: true }],
    fields: [["n", "u32", N * w], ...fields],
    invocations: N * w,
    body: `  y[i] = x[(i / u.w) * u.W + i % u.w];`,
  });
}

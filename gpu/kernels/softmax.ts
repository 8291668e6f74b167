/**
 * Row softmax (max-subtracted) and its backward; one invocation per row with a serial loop, the fastest
 * layout on llvmpipe for rows of modest length (docs/llvmpipe.md).
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { simpleKernel } from "./common.ts";

/** y = softmax(x) over the last dim of (rows, L). */
export function softmax(ctx: GpuContext, o: { x: GpuTensor; y: GpuTensor }): KernelCall {
  const L = o.x.shape.at(-1)!, rows = o.x.size / L;
  return simpleKernel(ctx, {
    label: "softmax",
    bindings: [{ name: "x", tensor: o.x }, { name: "y", tensor: o.y, write: true }],
    fields: [["n", "u32", rows], ["L", "u32", L]],
    invocations: rows,
    workgroup: 8,
    body: `  let b = i * u.L;
${softmaxRowWgsl("x", "y", "u.L")}`,
  });
}

/**
 * WGSL statements writing y[b + j] = softmax(x[b …])[j] for j < L (max-subtracted; `b` in scope), one
 * invocation's serial loop over a row. Shared by {@linkcode softmax} and the fused router gate.
 */
export function softmaxRowWgsl(x: string, y: string, L: string): string {
  return `  var rowMax = -3.0e38;
  for (var j = 0u; j < ${L}; j = j + 1u) { rowMax = max(rowMax, ${x}[b + j]); }
  var rowSum = 0.0;
  for (var j = 0u; j < ${L}; j = j + 1u) { let e = exp(${x}[b + j] - rowMax); ${y}[b + j] = e; rowSum = rowSum + e; }
  let inv = 1.0 / rowSum;
  for (var j = 0u; j < ${L}; j = j + 1u) { ${y}[b + j] = ${y}[b + j] * inv; }`;
}

/** dx = y ⊙ (dy − Σ dy⊙y) per row. */
export function softmaxBackward(
  ctx: GpuContext,
  o: { y: GpuTensor; dy: GpuTensor; dx: GpuTensor },
): KernelCall {
  const L = o.y.shape.at(-1)!, rows = o.y.size / L;
  return simpleKernel(ctx, {
    label: "softmax_backward",
    bindings: [{ name: "y", tensor: o.y }, { name: "dy", tensor: o.dy }, {
      name: "dx",
      tensor: o.dx,
      write: true,
    }],
    fields: [["n", "u32", rows], ["L", "u32", L]],
    invocations: rows,
    workgroup: 8,
    body: `  let b = i * u.L;
  var dot = 0.0;
  for (var j = 0u; j < u.L; j = j + 1u) { dot = dot + dy[b + j] * y[b + j]; }
  for (var j = 0u; j < u.L; j = j + 1u) { dx[b + j] = y[b + j] * (dy[b + j] - dot); }`,
  });
}

/**
 * Element-wise kernels for graph plumbing: a + b, Σ of up to 8 inputs, a ⊙ b, alpha·x, and fill.
 * Memory bound: vec4 loads, one vec4 per invocation, workgroups of 64 (docs/llvmpipe.md: 4–6 GB/s there),
 * with a scalar tail so any length works.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import { grid, type KernelCall } from "../dispatch.ts";

/** Inputs a single add_n dispatch sums; longer lists chain dispatches. */
export const MAX_ADD_N = 8;

const _WG = 64;

/** `expr` uses X0…X7 (inputs), Y (the output's current value) and A (the uniform alpha). */
function _wgsl(inputs: number, expr: string): string {
  const decl = Array.from(
    { length: inputs },
    (_, i) => `@group(0) @binding(${i}) var<storage, read> x${i}: array<f32>;`,
  ).join("\n");
  const vec = expr.replace(/X(\d)/g, "vec4<f32>(x$1[b], x$1[b + 1u], x$1[b + 2u], x$1[b + 3u])")
    .replace(/Y/g, "vec4<f32>(y[b], y[b + 1u], y[b + 2u], y[b + 3u])").replace(/A/g, "vec4<f32>(u.alpha)");
  const scalar = expr.replace(/X(\d)/g, "x$1[j]").replace(/Y/g, "y[j]").replace(/A/g, "u.alpha");
  return `${decl}
@group(0) @binding(${inputs}) var<storage, read_write> y: array<f32>;
struct U { n: u32, alpha: f32 }
@group(0) @binding(${inputs + 1}) var<uniform> u: U;

@compute @workgroup_size(${_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * ${_WG}u + lid; // vec4 index
  let b = i * 4u;
  if (b + 3u < u.n) {
    let v = ${vec};
    y[b] = v.x; y[b + 1u] = v.y; y[b + 2u] = v.z; y[b + 3u] = v.w;
  } else {
    for (var j = b; j < u.n; j = j + 1u) { y[j] = ${scalar}; }
  }
}`;
}

function _call(
  ctx: GpuContext,
  label: string,
  inputs: GpuTensor[],
  y: GpuTensor,
  expr: string,
  alpha = 0,
): KernelCall {
  const n = y.size;
  for (const t of inputs) {
    if (t.size !== n) throw new RangeError(`Cannot ${label}: ${t.label} has ${t.size} elements, output ${n}`);
  }
  const u = new ArrayBuffer(8);
  new Uint32Array(u, 0, 1)[0] = n;
  new Float32Array(u, 4, 1)[0] = alpha;
  const groups = Math.ceil(Math.ceil(n / 4) / _WG);
  return {
    label,
    code: _wgsl(inputs.length, expr),
    bindings: [...inputs, y],
    uniform: u,
    workgroups: grid(ctx, groups),
  };
}

/** y = a + b. a, b, y: (n,). */
export function add(ctx: GpuContext, o: { a: GpuTensor; b: GpuTensor; y: GpuTensor }): KernelCall {
  return _call(ctx, "add", [o.a, o.b], o.y, "X0 + X1");
}

/** y = a ⊙ b. */
export function mul(ctx: GpuContext, o: { a: GpuTensor; b: GpuTensor; y: GpuTensor }): KernelCall {
  return _call(ctx, "mul", [o.a, o.b], o.y, "X0 * X1");
}

/** y = alpha · x. */
export function scale(ctx: GpuContext, o: { x: GpuTensor; y: GpuTensor; alpha: number }): KernelCall {
  return _call(ctx, "scale", [o.x], o.y, "A * X0", o.alpha);
}

/** y = value everywhere. */
export function fill(ctx: GpuContext, o: { y: GpuTensor; value: number }): KernelCall {
  return _call(ctx, "fill", [], o.y, "A", o.value);
}

/**
 * y = Σ xs. Up to {@linkcode MAX_ADD_N} inputs in one dispatch; more accumulate into y in further
 * dispatches (y += …), so y must not alias any input.
 */
export function addN(ctx: GpuContext, o: { xs: readonly GpuTensor[]; y: GpuTensor }): KernelCall[] {
  if (o.xs.length === 0) throw new RangeError("Cannot add_n: no inputs");
  if (o.xs.some((t) => t.buffer === o.y.buffer)) {
    throw new RangeError("Cannot add_n: output aliases an input");
  }
  const calls: KernelCall[] = [];
  for (let at = 0; at < o.xs.length; at += MAX_ADD_N) {
    const take = o.xs.slice(at, at + MAX_ADD_N);
    const terms = take.map((_, i) => `X${i}`);
    const expr = (at === 0 ? terms : ["Y", ...terms]).join(" + ");
    calls.push(_call(ctx, at === 0 ? "add_n" : "add_n_acc", take, o.y, expr));
  }
  return calls;
}

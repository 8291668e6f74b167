/**
 * Shared pieces of kernel templates: binding declarations, the uniform struct, the folded linear
 * invocation index (so any element count fits the 65535-per-dimension dispatch limit), and uniform packing.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import { grid, type KernelCall } from "../dispatch.ts";
import { GpuLimitError } from "../errors.ts";
import { mesaAtLeast } from "../mesa.ts";

/**
 * A binding of a kernel: name in WGSL, element type, and whether the kernel writes it; a texture view (the
 * `rgba32float` copy of a frozen weight, gpu/buffers.ts `textureMirror`) is declared
 * {@linkcode WEIGHT_TEXTURE} and read with {@linkcode texel}.
 */
export interface Binding {
  name: string;
  tensor: GpuTensor | GPUTextureView;
  write?: boolean;
  type?: "f32" | "u32" | "vec4<f32>"; // element type in WGSL; default the tensor's dtype
  /** A tensor read through the texture copy made before each dispatch (gpu/dispatch.ts `textureCopies`). */
  texture?: boolean;
}

/** Uniform fields: name → value, with `u32:` or `f32:` typing by the field list. */
export type UniformFields = readonly (readonly [name: string, type: "u32" | "f32", value: number])[];

/** Packs uniform fields (4 bytes each, in order) into a buffer matching {@linkcode uniformStruct}. */
export function packUniform(fields: UniformFields): ArrayBuffer {
  const buf = new ArrayBuffer(Math.max(16, Math.ceil((fields.length * 4) / 16) * 16));
  const u = new Uint32Array(buf), f = new Float32Array(buf);
  fields.forEach(([, type, v], i) => {
    if (type === "u32") {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
        throw new RangeError(`Uniform ${fields[i]![0]} = ${v} is not a u32`);
      }
      u[i] = v;
    } else f[i] = v;
  });
  return buf;
}

/**
 * How kernels declare a texture copy of a matrix (a frozen weight's, gpu/buffers.ts `textureMirror`, or one
 * made before each dispatch, gpu/dispatch.ts `textureCopies`): a read-only storage texture, not a sampled
 * one. llvmpipe loads its texels without the sampler's code, with the same values: one step of d512
 * decoding took 4.59 ms instead of 6.74 for the DS-MoE model and 9.95 instead of 15.08 for the dense one
 * (queued steps, medians of 4 interleaved runs, GL, Mesa 22.3.6 on 2 threads, 2026-12-07), and the products
 * that read B from a texture gained up to 1.3× (docs/llvmpipe.md "Storage textures, not sampled ones").
 */
export const WEIGHT_TEXTURE = "texture_storage_2d<rgba32float, read>";

/** WGSL of texel (x, y) of a {@linkcode WEIGHT_TEXTURE} binding `name` (a storage texture has no mip level). */
export function texel(name: string, x: string, y: string): string {
  return `textureLoad(${name}, vec2<u32>(${x}, ${y}))`;
}

/** WGSL of the bindings and the uniform struct `u` (binding after the storage ones). */
export function header(bindings: readonly Binding[], fields: UniformFields): string {
  const lines = bindings.map((b, i) =>
    b.tensor instanceof GPUTextureView || b.texture
      ? `@group(0) @binding(${i}) var ${b.name}: ${WEIGHT_TEXTURE};`
      : `@group(0) @binding(${i}) var<storage, ${b.write ? "read_write" : "read"}> ${b.name}: array<${
        b.type ?? b.tensor.dtype
      }>;`
  );
  const members = fields.map(([n, t]) => `${n}: ${t}`).join(", ");
  lines.push(`struct U { ${members} }`, `@group(0) @binding(${bindings.length}) var<uniform> u: U;`);
  return lines.join("\n");
}

/**
 * A kernel call whose WGSL is the {@linkcode header} of `bindings` and `fields` followed by `code` (helper
 * functions, workgroup variables, the entry point), with the uniform packed from `fields`.
 */
export function headedKernel(o: {
  label: string;
  bindings: readonly Binding[];
  fields: UniformFields;
  code: string;
  workgroups: KernelCall["workgroups"];
}): KernelCall {
  return {
    label: o.label,
    code: `${header(o.bindings, o.fields)}
${o.code}`,
    bindings: o.bindings.map((b) => b.tensor),
    uniform: packUniform(o.fields),
    workgroups: o.workgroups,
  };
}

/** Entry point whose body sees `i`, the linear invocation index, folded over a 2-D dispatch. */
export function entry(workgroup: number, body: string): string {
  return `@compute @workgroup_size(${workgroup})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * ${workgroup}u + lid;
${body}
}`;
}

/**
 * A kernel call with one invocation per unit of work (`invocations`), guarded by the caller's body
 * (`if (i >= u.n) { return; }` is added when the first uniform field is named `n`).
 */
export function simpleKernel(
  ctx: GpuContext,
  o: {
    label: string;
    bindings: readonly Binding[];
    fields: UniformFields;
    invocations: number;
    body: string;
    workgroup?: number;
    prelude?: string;
  },
): KernelCall {
  const wg = o.workgroup ?? 64;
  const guard = o.fields[0]?.[0] === "n" ? "  if (i >= u.n) { return; }\n" : "";
  return headedKernel({
    ...o,
    code: `${o.prelude ?? ""}\n${entry(wg, guard + o.body)}`,
    workgroups: grid(ctx, Math.max(1, Math.ceil(o.invocations / wg))),
  });
}

/** Options of {@linkcode workgroupPerItem}. */
export interface WorkgroupPerItemOptions {
  label: string;
  bindings: readonly Binding[];
  fields: UniformFields;
  items: number;
  threads: number;
  body: string;
  prelude?: string;
}

/**
 * A kernel with a workgroup of `threads` threads per item (`items` folded over a 2-D dispatch): `body`
 * sees `wi` (the item) and `t` (the thread), after a return past `u.n` (the first uniform field, which must
 * be the item count; the return is uniform per workgroup, so barriers may follow). `prelude` goes before
 * the entry point (workgroup variables, helper functions).
 */
export function workgroupPerItem(ctx: GpuContext, o: WorkgroupPerItemOptions): KernelCall {
  if (o.fields[0]?.[0] !== "n") {
    throw new RangeError(`workgroupPerItem(${o.label}): the first uniform field must be n (items)`);
  }
  return headedKernel({
    ...o,
    code: `${o.prelude ?? ""}
@compute @workgroup_size(${o.threads})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) t: u32) {
  let wi = wid.x + wid.y * nwg.x;
  if (wi >= u.n) { return; }
${o.body}
}`,
    workgroups: grid(ctx, Math.max(1, o.items)),
  });
}

/** Row lanes per column in {@linkcode columnSums}: a workgroup is 16 columns × 16 row lanes. */
const _COL_LANES = 16;

/**
 * Sums over the rows of a (rows, n) layout, per column, for real GPUs (`gpu` profile): a workgroup of 16
 * columns × 16 row lanes, lane l adding rows l, l + 16, …; the 16 partials are then added in lane order
 * through workgroup memory, so the result does not depend on scheduling. `terms` are WGSL expressions of
 * `r` (row) and `i` (column), after the optional `perRow` statements; `finish` runs once per column with
 * the sums as `s0, s1, …` (`perRow` may `continue` past a row or `break` off a column). `prelude` goes
 * before the entry point (helper functions). The uniform fields must start with `n` (columns) and `rows`.
 */
export function columnSums(
  ctx: GpuContext,
  o: {
    label: string;
    bindings: readonly Binding[];
    fields: UniformFields;
    terms: readonly string[];
    perRow?: string;
    finish: string;
    prelude?: string;
  },
): KernelCall {
  if (o.fields[0]?.[0] !== "n" || o.fields[1]?.[0] !== "rows") {
    throw new RangeError(`columnSums(${o.label}): the uniform fields must start with n and rows`);
  }
  const L = _COL_LANES;
  const each = (f: (t: number) => string) => o.terms.map((_, t) => f(t)).join(" ");
  const code = `${o.prelude ?? ""}
${each((t) => `var<workgroup> red${t}: array<f32, ${L * L}>;`)}
@compute @workgroup_size(${L}, ${L})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let i = (wid.x + wid.y * nwg.x) * ${L}u + lid.x;
  ${each((t) => `var a${t} = 0.0;`)}
  if (i < u.n) {
    for (var r = lid.y; r < u.rows; r = r + ${L}u) {
      ${o.perRow ?? ""}
      ${o.terms.map((x, t) => `a${t} = a${t} + (${x});`).join(" ")}
    }
  }
  ${each((t) => `red${t}[lid.y * ${L}u + lid.x] = a${t};`)}
  workgroupBarrier();
  if (lid.y == 0u && i < u.n) {
    ${each((t) => `var s${t} = 0.0;`)}
    for (var l = 0u; l < ${L}u; l = l + 1u) { ${each((t) => `s${t} = s${t} + red${t}[l * ${L}u + lid.x];`)} }
    ${o.finish}
  }
}`;
  const cols = o.fields[0][2];
  return headedKernel({ ...o, code, workgroups: grid(ctx, Math.max(1, Math.ceil(cols / L))) });
}

/**
 * WGSL `fn ${name}(v: f32, t: u32) -> f32`: the sum (or, with `max`, the maximum) of every thread's v over a
 * workgroup of `threads` threads (a power of two), through the workgroup array `scratch` (`array<f32,
 * threads>`, declared by the caller; one may serve several reductions), in a fixed tree order, so the result
 * does not depend on scheduling. Every thread gets the result; call it in uniform control flow.
 */
export function workgroupReduceWgsl(
  name: string,
  threads: number,
  scratch: string,
  op: "sum" | "max",
): string {
  const combine = op === "sum"
    ? `${scratch}[t] + ${scratch}[t + s]`
    : `max(${scratch}[t], ${scratch}[t + s])`;
  return `fn ${name}(v: f32, t: u32) -> f32 {
  ${scratch}[t] = v;
  workgroupBarrier();
  for (var s = ${threads / 2}u; s > 0u; s = s >> 1u) {
    if (t < s) { ${scratch}[t] = ${combine}; }
    workgroupBarrier();
  }
  let r = ${scratch}[0];
  workgroupBarrier();
  return r;
}`;
}

/** Threads of the one workgroup in {@linkcode totalSum}. */
const _SUM_THREADS = 256;

/**
 * One sum over `count` terms for real GPUs (`gpu` profile): one workgroup of 256 threads, thread t adding
 * terms t, t + 256, …, then a fixed-order tree through workgroup memory. `term` is a WGSL expression of
 * `k`; `finish` runs on thread 0 with the sum as `total`.
 */
export function totalSum(
  _ctx: GpuContext,
  o: {
    label: string;
    bindings: readonly Binding[];
    fields: UniformFields;
    count: string;
    term: string;
    finish: string;
    prelude?: string;
  },
): KernelCall {
  const S = _SUM_THREADS;
  const code = `${o.prelude ?? ""}
var<workgroup> red: array<f32, ${S}>;
${workgroupReduceWgsl("workgroupSum", S, "red", "sum")}
@compute @workgroup_size(${S})
fn main(@builtin(local_invocation_index) t: u32) {
  var a = 0.0;
  for (var k = t; k < ${o.count}; k = k + ${S}u) { a = a + (${o.term}); }
  let total = workgroupSum(a, t);
  if (t == 0u) {
    ${o.finish}
  }
}`;
  return headedKernel({ ...o, code, workgroups: [1] });
}

/**
 * Loop iterations one invocation may run on llvmpipe: Mesa's loop limiter ends every loop of an invocation
 * once their iterations together pass 65,535, silently (tests/gpu_limits_test.ts measures it).
 */
export const LLVMPIPE_LOOP_LIMIT = 65535;

/**
 * The loop limit of `ctx`'s adapter, or null where it has none: {@linkcode LLVMPIPE_LOOP_LIMIT} on a software
 * adapter (`cpu-simd` profile) unless it runs Mesa 25 or later, whose llvmpipe counted one invocation's loop
 * to 100,000 (25.0.7, through Vulkan; 22.3.6 stopped at 65,535 through GL and Vulkan alike). Releases between
 * were not measured and keep the limit: a refusal is safe, a loop cut short is not.
 *
 * @example
 * ```ts ignore
 * if (loopLimit(ctx) !== null) console.log(`loops stop after ${loopLimit(ctx)} iterations here`);
 * ```
 */
export function loopLimit(ctx: GpuContext): number | null {
  if (ctx.profile !== "cpu-simd") return null;
  return mesaAtLeast(ctx.mesa, 25) ? null : LLVMPIPE_LOOP_LIMIT;
}

/**
 * Throws a {@linkcode GpuLimitError} where `ctx`'s adapter has a loop limit ({@linkcode loopLimit}: older
 * llvmpipe) and one invocation of `what` would run more loop iterations than it, which llvmpipe would cut
 * short without an error; `hint` says which sizes to lower. Real GPUs have no such limit.
 */
export function loopBudget(ctx: GpuContext, iterations: number, what: string, hint: string): void {
  const limit = loopLimit(ctx);
  if (limit === null || iterations <= limit) return;
  throw new GpuLimitError(
    `Cannot run ${what} on ${ctx.adapter.description}: one invocation would loop ${iterations} times, and ` +
      `this software adapter stops every loop after ${limit} in total (the result would be ` +
      `silently wrong). ${hint}, or run on a real GPU.`,
  );
}

/**
 * vec4s of one row per invocation for a width: 4, 2 or 1 when `width` is a multiple of 16, 8 or 4; 0 when it
 * is not a multiple of 4 (scalar loads).
 *
 * @example
 * ```ts
 * import { vecGroup } from "./common.ts";
 * if (vecGroup(32) !== 4 || vecGroup(24) !== 2 || vecGroup(12) !== 1 || vecGroup(10) !== 0) throw new Error();
 * ```
 */
export function vecGroup(width: number): number {
  return width % 16 === 0 ? 4 : width % 8 === 0 ? 2 : width % 4 === 0 ? 1 : 0;
}

/**
 * The loads of A and the multiply-adds of one pass of a register-tile loop, `rows` rows: each row's load
 * beside its own updates (`{ let a = …; … }`), or with `first` every row's load (`let a0 = …;` …) before
 * any update, the form Mesa 23.0 and later want (docs/llvmpipe.md, "Mesa 25"). `update(r, a)` is row r's
 * multiply-adds reading its A value under the name `a`.
 */
export function rowUpdates(
  rows: number,
  first: boolean,
  load: (r: number) => string,
  update: (r: number, a: string) => string,
): string {
  return first
    ? `${lines(rows, (r) => `    let a${r} = ${load(r)};`)}\n${
      lines(rows, (r) => `    ${update(r, `a${r}`)}`)
    }`
    : lines(rows, (r) => `    { let a = ${load(r)}; ${update(r, "a")} }`);
}

/** 0, 1, …, n − 1. */
export const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** `f(0)`, …, `f(n − 1)`, one a line (kernel templates' unrolled code). */
export const lines = (n: number, f: (i: number) => string): string => range(n).map(f).join("\n");

/** The lanes of a WGSL vec4, in order. */
export const VEC4_LANES = ["x", "y", "z", "w"] as const;

/**
 * `a(0) * b(0) + … + a(3) * b(3)` as one WGSL expression: four steps of K summed before they reach an
 * accumulator (one accumulator write per 4 products, which llvmpipe rewards).
 */
export function sumOf4(a: (e: number) => string, b: (e: number) => string): string {
  return [0, 1, 2, 3].map((e) => `${a(e)} * ${b(e)}`).join(" + ");
}

/**
 * A {@linkcode simpleKernel} over an (N, E) tensor `shape` that reads `inputs` and writes `out`: one
 * invocation per row (`per: "row"`, workgroup 8, uniforms n = N and E) or per entry (`per: "entry"`,
 * uniforms n = N·E and N), uniforms `extra` after those.
 */
export function tableKernel(
  ctx: GpuContext,
  o: {
    label: string;
    shape: readonly number[];
    per: "row" | "entry";
    inputs: readonly Binding[];
    out: Binding;
    extra?: UniformFields;
    body: string;
  },
): KernelCall {
  const [N, E] = o.shape as [number, number], row = o.per === "row";
  return simpleKernel(ctx, {
    label: o.label,
    bindings: [...o.inputs, { ...o.out, write: true }],
    fields: [["n", "u32", row ? N : N * E], row ? ["E", "u32", E] : ["N", "u32", N], ...o.extra ?? []],
    invocations: row ? N : N * E,
    ...(row ? { workgroup: 8 } : {}),
    body: o.body,
  });
}

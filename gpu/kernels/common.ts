/**
 * Shared pieces of kernel templates: binding declarations, the uniform struct, the folded linear
 * invocation index (so any element count fits the 65535-per-dimension dispatch limit), and uniform packing.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import { grid, type KernelCall } from "../dispatch.ts";

/** A storage binding of a kernel: name in WGSL, element type, and whether the kernel writes it. */
export interface Binding {
  name: string;
  tensor: GpuTensor;
  write?: boolean;
  type?: "f32" | "u32" | "vec4<f32>"; // element type in WGSL; default the tensor's dtype
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

/** WGSL of the bindings and the uniform struct `u` (binding after the storage ones). */
export function header(bindings: readonly Binding[], fields: UniformFields): string {
  const lines = bindings.map((b, i) =>
    `@group(0) @binding(${i}) var<storage, ${b.write ? "read_write" : "read"}> ${b.name}: array<${
      b.type ?? b.tensor.dtype
    }>;`
  );
  const members = fields.map(([n, t]) => `${n}: ${t}`).join(", ");
  lines.push(`struct U { ${members} }`, `@group(0) @binding(${bindings.length}) var<uniform> u: U;`);
  return lines.join("\n");
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
  const code = `${header(o.bindings, o.fields)}\n${o.prelude ?? ""}\n${entry(wg, guard + o.body)}`;
  return {
    label: o.label,
    code,
    bindings: o.bindings.map((b) => b.tensor),
    uniform: packUniform(o.fields),
    workgroups: grid(ctx, Math.max(1, Math.ceil(o.invocations / wg))),
  };
}

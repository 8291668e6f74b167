/**
 * Executes a graph on the CPU in float64 — the oracle for gradient checks and for the WebGPU backend.
 * Each op's implementation comes from {@linkcode CPU_IMPLS}; the trivial element-wise ops live here, the
 * rest wrap the reference kernels of core/ref (registered in core/graph/cpu_ops.ts).
 *
 * @module
 */
import { type Node, numel, type Value } from "./ir.ts";

/** Host values: f32 values as Float64Array, u32 values (ids, targets) as Uint32Array. */
export type HostValue = Float64Array | Uint32Array;

/** One op on the CPU: input arrays (in input order) → output arrays (in output order). */
export type CpuImpl = (inputs: readonly HostValue[], node: Node) => HostValue[];

/** Implementations by op name; core/graph/cpu_ops.ts adds the reference-backed ones. */
export const CPU_IMPLS: Record<string, CpuImpl> = {
  fill: (_, n) => [new Float64Array(numel(n.attrs.shape as number[])).fill(n.attrs.value as number)],
  add: ([a, b]) => [_zip(a!, b!, (x, y) => x + y)],
  add_n: (xs) => {
    const out = new Float64Array(xs[0]!.length);
    for (const x of xs) for (let i = 0; i < out.length; i++) out[i]! += x[i]!;
    return [out];
  },
  mul: ([a, b]) => [_zip(a!, b!, (x, y) => x * y)],
  scale: ([x], n) => [Float64Array.from(x!, (v) => v * (n.attrs.alpha as number))],
  reshape: ([x]) => [x!],
};

/** Evaluates the nodes needed for `outputs`, given leaf values by value id (or by leaf name). */
export function evaluateGraph(
  nodes: readonly Node[],
  feeds: ReadonlyMap<number, HostValue>,
  outputs: readonly Value[],
  impls: Record<string, CpuImpl> = CPU_IMPLS,
): HostValue[] {
  const env = new Map<number, HostValue>(feeds);
  for (const node of nodes) {
    if (node.op === "leaf") {
      const v = node.outputs[0]!;
      if (!env.has(v.id)) throw new RangeError(`No value fed for leaf "${v.name}"`);
      continue;
    }
    if (node.outputs.every((o) => env.has(o.id))) continue;
    const impl = impls[node.op];
    if (!impl) throw new TypeError(`No CPU implementation for op "${node.op}"`);
    const ins = node.inputs.map((i) => {
      const v = env.get(i.id);
      if (!v) {
        throw new RangeError(`Value "${i.name}" used by node ${node.id} (${node.op}) before it was computed`);
      }
      return v;
    });
    const outs = impl(ins, node);
    node.outputs.forEach((o, k) => {
      const v = outs[k];
      if (!v || v.length !== numel(o.shape)) {
        throw new RangeError(
          `CPU ${node.op} produced ${v?.length} elements for "${o.name}" of shape [${o.shape}]`,
        );
      }
      env.set(o.id, v);
    });
  }
  return outputs.map((o) => {
    const v = env.get(o.id);
    if (!v) throw new RangeError(`Output "${o.name}" was not computed`);
    return v;
  });
}

function _zip(a: HostValue, b: HostValue, f: (x: number, y: number) => number): Float64Array {
  if (a.length !== b.length) throw new RangeError(`Element-wise op on ${a.length} vs ${b.length} elements`);
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = f(a[i]!, b[i]!);
  return out;
}

/**
 * Executes a graph on the CPU in float64 — the oracle for gradient checks and for the WebGPU backend.
 * Each op's implementation comes from the table it is given: `CPU_OPS` of core/graph/cpu_ops.ts, which wraps
 * the reference kernels of core/ref.
 *
 * @module
 */
import { type Node, numel, type OpNode, type Value } from "./ir.ts";
import type { OpName } from "./op_types.ts";

/** Host values: f32 values as Float64Array, u32 values (ids, targets) as Uint32Array. */
export type HostValue = Float64Array | Uint32Array;

/** One op on the CPU: input arrays (in input order) → output arrays (in output order). */
export type CpuImpl<K extends OpName = OpName> = (
  inputs: readonly HostValue[],
  node: OpNode<K>,
) => HostValue[];

/**
 * An implementation for every op of core/graph/op_types.ts (`deno check` names a missing one); null for an op
 * that is never executed (a leaf is fed).
 */
export type CpuTable = { readonly [K in OpName]: CpuImpl<K> | null };

/** The implementation of `node`'s op in `impls` (null: none). */
export function cpuImplOf<K extends OpName>(impls: CpuTable, node: OpNode<K>): CpuImpl<K> | null {
  return impls[node.op];
}

/**
 * Evaluates the nodes needed for `outputs` with the implementations `impls` (`CPU_OPS`), given leaf values by
 * value id (or by leaf name).
 */
export function evaluateGraph(
  nodes: readonly Node[],
  feeds: ReadonlyMap<number, HostValue>,
  outputs: readonly Value[],
  impls: CpuTable,
): HostValue[] {
  const env = new Map<number, HostValue>(feeds);
  for (const node of nodes) {
    if (node.op === "leaf") {
      const v = node.outputs[0]!;
      if (!env.has(v.id)) throw new RangeError(`No value fed for leaf "${v.name}"`);
      continue;
    }
    if (node.outputs.every((o) => env.has(o.id))) continue;
    const impl = cpuImplOf(impls, node);
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

/**
 * A check before anything is allocated: builds the kernel calls of every node of a schedule against
 * placeholder tensors (no GPU buffer is created and nothing is compiled), so that a size this device cannot
 * run — llvmpipe's loop limit (gpu/kernels/common.ts `loopBudget`), workgroup counts past the dispatch limit,
 * an over-large binding — is refused at once, with the kernel's own reason and what to lower, instead of
 * after the plan's buffers (gigabytes for a large model) have been allocated.
 *
 * @module
 */
import type { Node } from "../core/graph/ir.ts";
import type { Schedule } from "../core/graph/schedule.ts";
import { GpuTensor, paddedBytes, shapeSize } from "./buffers.ts";
import type { GpuContext } from "./device.ts";
import { GPU_IMPLS, gpuImplOf, type GpuTable, type Scratch } from "./graph_ops.ts";

/**
 * Throws the first error a node of `sched` would throw while its kernels are built on `ctx` (a
 * GpuLimitError, gpu/errors.ts, for a size limit), prefixed with `what`; returns when every kernel builds.
 * `impls` is the op → kernel calls table the schedule will run with.
 */
export function assertScheduleBuilds(
  ctx: GpuContext,
  sched: Schedule,
  what: string,
  impls: GpuTable = GPU_IMPLS,
): void {
  for (const node of sched.nodes) {
    if (node.op === "reshape") continue;
    const impl = gpuImplOf(node, impls);
    try {
      impl(ctx, node, node.inputs.map(_placeholder), node.outputs.map(_placeholder), _scratch(node));
    } catch (e) {
      if (e instanceof Error) e.message = `${what}: ${e.message}`;
      throw e;
    }
  }
}

/** A tensor of `v`'s shape over a stand-in buffer that only knows its size (kernel builders read no more). */
function _placeholder(v: { shape: readonly number[]; dtype: "f32" | "u32"; name: string }): GpuTensor {
  return new GpuTensor(_buffer(shapeSize(v.shape), v.name), v.shape, v.dtype, v.name);
}

function _scratch(node: Node): Scratch {
  return (shape, label, kind = "f32") => {
    const name = `${node.op}${node.id}.${label}`;
    return new GpuTensor(_buffer(shapeSize(shape), name), shape, kind === "f32" ? "f32" : "u32", name);
  };
}

function _buffer(elements: number, label: string): GPUBuffer {
  return { size: paddedBytes(elements * 4), label } as unknown as GPUBuffer;
}

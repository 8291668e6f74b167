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
import { GpuLimitError } from "./errors.ts";
import { fmtBytes } from "../core/util/format.ts";
import { GPU_IMPLS, gpuImplOf, type GpuTable, type Scratch } from "./graph_ops.ts";

/**
 * Throws the first error a node of `sched` would throw while its kernels are built on `ctx` (a
 * GpuLimitError, gpu/errors.ts, for a size limit), prefixed with `what`; when every kernel builds, returns
 * the bytes of the scratch buffers they ask for (split-K partial sums, routing tables: what an executor of
 * the schedule allocates besides its planned buffers and leaves). `impls` is the op → kernel calls table the
 * schedule will run with.
 */
export function assertScheduleBuilds(
  ctx: GpuContext,
  sched: Schedule,
  what: string,
  impls: GpuTable = GPU_IMPLS,
): number {
  const scratch = { bytes: 0 };
  for (const node of sched.nodes) {
    if (node.op === "reshape") continue;
    const impl = gpuImplOf(node, impls);
    try {
      impl(
        ctx,
        node,
        node.inputs.map(placeholderTensor),
        node.outputs.map(placeholderTensor),
        _scratch(node, scratch),
      );
    } catch (e) {
      if (e instanceof Error) e.message = `${what}: ${e.message}`;
      throw e;
    }
  }
  return scratch.bytes;
}

/** A tensor of `v`'s shape over a stand-in buffer that only knows its size (kernel builders read no more). */
export function placeholderTensor(
  v: { shape: readonly number[]; dtype: "f32" | "u32"; name: string },
): GpuTensor {
  return new GpuTensor(_buffer(shapeSize(v.shape), v.name), v.shape, v.dtype, v.name);
}

/** Placeholder scratch of `node`, its padded bytes counted into `total`. */
function _scratch(node: Node, total: { bytes: number }): Scratch {
  return (shape, label, kind = "f32") => {
    const name = `${node.op}${node.id}.${label}`;
    const t = new GpuTensor(_buffer(shapeSize(shape), name), shape, kind === "f32" ? "f32" : "u32", name);
    total.bytes += t.buffer.size;
    return t;
  };
}

function _buffer(elements: number, label: string): GPUBuffer {
  return { size: paddedBytes(elements * 4), label } as unknown as GPUBuffer;
}

/**
 * Refuses, before anything is allocated or initialised, a tensor (a parameter, a cache) that one buffer or
 * one storage binding of this device cannot hold: a {@linkcode GpuLimitError} prefixed with `what` that
 * names the tensor, its shape and size, the limit and the adapter. A model's weights are one tensor each,
 * so its largest tensor (often the embedding, vocabulary × d_model) is what must fit.
 *
 * @example
 * ```ts ignore
 * assertTensorsFit(ctx, decoder.params.map((p) => p.value), "decode 1b");
 * ```
 */
export function assertTensorsFit(
  ctx: GpuContext,
  values: readonly { name: string; shape: readonly number[] }[],
  what: string,
): void {
  const limits = [
    ["maxBufferSize", ctx.limits.maxBufferSize],
    ["maxStorageBufferBindingSize", ctx.limits.maxStorageBufferBindingSize],
  ] as const;
  for (const v of values) {
    const bytes = paddedBytes(shapeSize(v.shape) * 4);
    for (const [name, max] of limits) {
      if (bytes <= max) continue;
      throw new GpuLimitError(
        `${what}: tensor "${v.name}" [${v.shape.join(", ")}] takes ${bytes} bytes (${
          fmtBytes(bytes)
        }), more ` +
          `than ${name} (${max}, ${
            fmtBytes(max)
          }) of ${ctx.adapter.description}; run it on an adapter whose ` +
          `limits allow it, or make that tensor smaller`,
      );
    }
  }
}

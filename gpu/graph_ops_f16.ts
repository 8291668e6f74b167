/**
 * The op table of half precision training (docs/performance.md "Half precision"): `GPU_IMPLS` with every
 * matmul reading f16 copies of its operands and summing in f32 into its f32 output. A value's f16 copy is
 * made once per execution, by the first matmul that reads it (the weights, f32 masters updated by the
 * optimizer, and the activations and their gradients), and read again by the later matmuls of the same value
 * (a weight's forward product and its input gradient, an activation's forward product and its weight
 * gradient). Every other op runs in f32 as before.
 *
 * Each executor takes its own table (each execution makes its own copies): call {@linkcode f16MatmulImpls}
 * once per `GraphExecutor` and once per preflight. The copies' buffers are the node's scratch (held while the
 * executor lives), or, for executors of one graph that never run at once (a training step, its evaluation,
 * its router statistics pass), the buffers of one {@linkcode F16Copies}, planned by the copies' lifetimes.
 *
 * @module
 */
import { numel, type Value } from "../core/graph/ir.ts";
import { type CopyPlan, planMatmulCopies, type Schedule } from "../core/graph/schedule.ts";
import { createTensor, GpuTensor } from "./buffers.ts";
import type { GpuContext } from "./device.ts";
import type { KernelCall } from "./dispatch.ts";
import { GPU_IMPLS, type GpuImpl, type GpuTable } from "./graph_ops.ts";
import { castF16, f16Words } from "./kernels/f16.ts";
import { gemvFits } from "./kernels/gemv.ts";
import { matmulCalls, matmulPlan, matmulScratch } from "./kernels/matmul.ts";

/** How f16 operands are read: `array<f16>` (the device has shader-f16) or unpacked from u32 words. */
export type F16Storage = "f16" | "f16-packed";

/**
 * The f16 copies' buffers of executors that never run at once, planned by liveness
 * ({@linkcode planMatmulCopies}): within a schedule, copies whose values no later matmul reads give their
 * buffers to later ones, and the schedules share buffers by size rank. Each executor still makes its own
 * copies in each of its runs (its table casts at its first read).
 */
export class F16Copies {
  readonly #schedules: readonly Schedule[];
  readonly #plan: CopyPlan;
  readonly #buffers: GPUBuffer[] = [];

  constructor(ctx: GpuContext, schedules: readonly Schedule[]) {
    this.#schedules = schedules;
    this.#plan = planMatmulCopies(schedules);
    this.#plan.words.forEach((w, i) =>
      this.#buffers.push(createTensor(ctx, [w], "u32", undefined, `f16_copy${i}`).buffer)
    );
  }

  /** The copies of `sched`'s executor: a value's copy as a tensor of its words over its planned buffer. */
  forSchedule(sched: Schedule): (v: Value) => GpuTensor {
    const i = this.#schedules.indexOf(sched);
    if (i < 0) throw new RangeError("This schedule's f16 copies were not planned here");
    const slots = this.#plan.slots[i]!;
    return (v) => {
      const slot = slots.get(v.id);
      if (slot === undefined) throw new RangeError(`No f16 copy planned for "${v.name}"`);
      return new GpuTensor(this.#buffers[slot]!, [f16Words(numel(v.shape))], "u32", `${v.name}.f16_copy`);
    };
  }

  destroy(): void {
    for (const b of this.#buffers) b.destroy();
  }
}

/**
 * `GPU_IMPLS` with f16-operand matmuls (`storage`: native `array<f16>`, or packed words for adapters without
 * shader-f16 — the same bits and the same f32 sums). One-row products that run as a GEMV stay f32. The
 * copies go to the buffers `shared` gives (one schedule's of {@linkcode F16Copies}), else to each node's
 * scratch.
 *
 * @example
 * ```ts ignore
 * const ex = new GraphExecutor(ctx, sched, leaves, undefined, f16MatmulImpls("f16"));
 * ```
 */
export function f16MatmulImpls(storage: F16Storage, shared?: (v: Value) => GpuTensor): GpuTable {
  const copies = new Map<number, GpuTensor>(); // value id → its f16 copy, made by this table's executor
  const matmul: GpuImpl<"matmul"> = (ctx, n, ins, outs, scratch) => {
    const transA = !!n.attrs.transA, transB = !!n.attrs.transB;
    const [m, nn] = n.outputs[0]!.shape as [number, number];
    const k = transA ? n.inputs[0]!.shape[0]! : n.inputs[0]!.shape[1]!;
    const { splits } = matmulPlan(ctx, m, k, nn);
    if (gemvFits(ctx, m, transA, splits)) return GPU_IMPLS.matmul!(ctx, n, ins, outs, scratch);
    const calls: KernelCall[] = [];
    const half = (v: Value, t: GpuTensor, label: string): GpuTensor => {
      let h = copies.get(v.id);
      if (!h) {
        h = shared ? shared(v) : scratch([f16Words(t.size)], label, "u32");
        copies.set(v.id, h);
        calls.push(castF16(ctx, { x: t, y: h }));
      }
      return h;
    };
    const a = half(n.inputs[0]!, ins[0]!, "a_f16"), b = half(n.inputs[1]!, ins[1]!, "b_f16");
    const partial = splits > 1 ? scratch([matmulScratch(m, nn, splits)], "partial") : undefined;
    calls.push(
      ...matmulCalls(ctx, {
        a,
        b,
        c: outs[0]!,
        m,
        k,
        n: nn,
        transA,
        transB,
        splits,
        partial,
        operands: storage,
      }),
    );
    return calls;
  };
  return { ...GPU_IMPLS, matmul };
}

/**
 * The conformance check of a WebGPU graph op against its float64 CPU twin: a small graph built on seeded
 * random inputs runs on both executors, and every output must satisfy |got − ref| ≤ atol + rtol·|ref|;
 * and {@linkcode runBoth}, a scheduled graph's outputs from both executors, for whole-model comparisons.
 *
 * @module
 */
import { evaluateGraph, type HostValue } from "../../core/graph/cpu_executor.ts";
import { CPU_OPS } from "../../core/graph/cpu_ops.ts";
import { Graph, type Value } from "../../core/graph/ir.ts";
import { type Schedule, schedule } from "../../core/graph/schedule.ts";
import { Rng } from "../../core/util/rng.ts";
import { readTensor, writeTensor } from "../../gpu/buffers.ts";
import { GraphExecutor } from "../../gpu/executor.ts";
import { type GpuContext, openGpu } from "../../gpu/device.ts";
import { assertClose, testGpu, type Tolerance } from "./gpu.ts";

/** Builds the graph of a case: f makes an f32 input (uniform in [lo, hi)), ids a u32 one. */
export type Build = (
  g: Graph,
  f: (shape: number[], lo?: number, hi?: number) => Value,
  ids: (n: number, max: number) => Value,
) => Value[];

let _gpuProfile: Promise<GpuContext> | null = null;
/** A second device on this adapter that builds the real-GPU (`gpu` profile) kernel templates. */
function gpuProfileCtx(): Promise<GpuContext> {
  return _gpuProfile ??= testGpu().then(() => openGpu({ profile: "gpu", validation: true }));
}

/**
 * Runs `build`'s outputs on WebGPU (with `gpuKernels`, the real-GPU kernel templates) and on the float64
 * executor, and asserts them close within `tol`.
 */
export async function conform(
  name: string,
  build: Build,
  tol: Tolerance,
  gpuKernels = false,
): Promise<void> {
  const ctx = gpuKernels ? await gpuProfileCtx() : await testGpu();
  const g = new Graph(), rng = new Rng(name.length * 7919);
  const feeds = new Map<number, HostValue>();
  const f = (shape: number[], lo = -1, hi = 1) => {
    const v = g.leaf("input", `x${feeds.size}`, shape);
    const n = shape.reduce((a, b) => a * b, 1);
    feeds.set(v.id, Float64Array.from(Float32Array.from({ length: n }, () => lo + (hi - lo) * rng.next())));
    return v;
  };
  const ids = (n: number, max: number) => {
    const v = g.leaf("input", `ids${feeds.size}`, [n], "u32");
    feeds.set(v.id, Uint32Array.from({ length: n }, () => rng.int(max)));
    return v;
  };
  const outs = build(g, f, ids);
  const sched = schedule(g, outs);
  const ref = evaluateGraph(sched.nodes, feeds, outs, CPU_OPS);
  const leaves = [...g.leaves.values()].map((l) => l.value);
  const ex = new GraphExecutor(ctx, sched, leaves);
  for (const v of leaves) {
    const d = feeds.get(v.id)!;
    writeTensor(ctx, ex.tensor(v), d instanceof Uint32Array ? d : Float32Array.from(d));
  }
  await ex.check();
  await ctx.scoped(name, () => ex.run().done());
  for (let i = 0; i < outs.length; i++) {
    assertClose(
      await readTensor(ctx, ex.tensor(outs[i]!)),
      ref[i]!,
      tol,
      `${name} output ${i} (${outs[i]!.node.op})`,
    );
  }
  ex.destroy();
}

/** Evaluates `outs` on the float64 CPU reference and on the GPU from the same feeds. */
export async function runBoth(
  ctx: GpuContext,
  m: { graph: Graph },
  sched: Schedule,
  feeds: Map<number, HostValue>,
  outs: Value[],
  label: string,
): Promise<{ ref: HostValue[]; got: Float32Array[] }> {
  const ref = evaluateGraph(sched.nodes, feeds, outs, CPU_OPS);
  const leaves = [...m.graph.leaves.values()].map((l) => l.value);
  const ex = new GraphExecutor(ctx, sched, leaves);
  try {
    for (const v of leaves) {
      const data = feeds.get(v.id)!;
      writeTensor(ctx, ex.tensor(v), data instanceof Uint32Array ? data : Float32Array.from(data));
    }
    await ex.check();
    await ctx.scoped(label, () => ex.run().done());
    const got: Float32Array[] = [];
    for (const o of outs) got.push(await readTensor(ctx, ex.tensor(o)) as Float32Array);
    return { ref, got };
  } finally {
    ex.destroy();
  }
}

/**
 * Shared test helpers: one GPU context per test process (tests fail, never skip, without an adapter),
 * the closeness check used by every kernel conformance test, and a seeded random source.
 *
 * @module
 */
import { createTensor, destroyTensor, type GpuTensor } from "../../gpu/buffers.ts";
import { GpuContext, openGpu } from "../../gpu/device.ts";
import { type KernelCall, runCalls } from "../../gpu/dispatch.ts";
import { Rng } from "../../core/util/rng.ts";

let _ctx: Promise<GpuContext> | null = null;

/** The process-wide test device. Throws "no WebGPU adapter: …" when there is none; tests must not skip. */
export function testGpu(): Promise<GpuContext> {
  _ctx ??= openGpu({ validation: true });
  return _ctx;
}

/** Tolerance of a comparison: |got − ref| ≤ atol + rtol·|ref|. */
export interface Tolerance {
  atol: number;
  rtol: number;
}

/**
 * Asserts element-wise closeness and reports the worst element (index, got, ref) when it fails.
 * NaN or ±Infinity in `got` where `ref` is finite always fails.
 */
export function assertClose(
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  tol: Tolerance,
  what = "value",
): void {
  if (got.length !== ref.length) throw new Error(`${what}: length ${got.length} != reference ${ref.length}`);
  let worst = -1, worstExcess = 0, bad = 0;
  for (let i = 0; i < ref.length; i++) {
    const g = got[i]!, r = ref[i]!;
    const limit = tol.atol + tol.rtol * Math.abs(r);
    const err = Math.abs(g - r);
    if (!(err <= limit) && !(g === r)) {
      bad++;
      const excess = Number.isFinite(err) ? err / limit : Infinity;
      if (excess >= worstExcess) worstExcess = excess, worst = i;
    }
  }
  if (bad > 0) {
    throw new Error(
      `${what}: ${bad}/${ref.length} elements outside atol=${tol.atol} rtol=${tol.rtol}; worst at [${worst}]: ` +
        `got ${got[worst]}, ref ${ref[worst]}`,
    );
  }
}

/** A seeded generator of floats in [0, 1) for test data (core/util/rng.ts). */
export function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

/** `n` uniform values in [lo, hi) as float64 (round to f32 with `Float32Array.from` for GPU input). */
export function randomArray(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  const r = rng(seed), out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * r();
  return out;
}

/**
 * A view of `ctx` whose device's `createBuffer` goes through `create` (the descriptor, and the device's own
 * `createBuffer` to call or not); everything else is the device's.
 */
export function interceptBuffers(
  ctx: GpuContext,
  create: (d: GPUBufferDescriptor, real: (d: GPUBufferDescriptor) => GPUBuffer) => GPUBuffer,
): GpuContext {
  const device = new Proxy(ctx.device, {
    get(target, key) {
      if (key === "createBuffer") return (d: GPUBufferDescriptor) => create(d, (x) => target.createBuffer(x));
      const v = Reflect.get(target, key, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  return Object.create(ctx, { device: { value: device } }) as GpuContext;
}

/**
 * `ctx` with a device whose `createBuffer` throws and is counted: a test that a refusal comes before anything
 * is allocated checks `allocations()` is 0 afterwards (and the throw names what was allocated too early).
 */
export function allocationGuard(ctx: GpuContext): { ctx: GpuContext; allocations: () => number } {
  let allocations = 0;
  const guarded = interceptBuffers(ctx, () => {
    allocations++;
    throw new Error("allocated before the refusal");
  });
  return { ctx: guarded, allocations: () => allocations };
}

/** Tensors created by one test, destroyed at its end. */
export class Owned {
  readonly all: GpuTensor[] = [];
  constructor(readonly ctx: GpuContext) {}
  f32(shape: number[], v?: Float64Array, label = "t"): GpuTensor {
    const t = createTensor(this.ctx, shape, "f32", v ? Float32Array.from(v) : undefined, label);
    this.all.push(t);
    return t;
  }
  u32(values: number[], label = "pos"): GpuTensor {
    const t = createTensor(this.ctx, [values.length], "u32", Uint32Array.from(values), label);
    this.all.push(t);
    return t;
  }
  destroy(): void {
    for (const t of this.all) destroyTensor(t);
  }
}

/** Runs `calls` in one step after checking that each shader compiles, inside an error scope named `what`. */
export async function runChecked(ctx: GpuContext, calls: KernelCall[], what: string): Promise<void> {
  for (const call of calls) await ctx.pipelines.check(call.code, call.label);
  await ctx.scoped(what, () => runCalls(ctx, calls).done());
}

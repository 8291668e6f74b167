import { activationRef } from "../../core/ref/activation.ts";
import { matmulRef } from "../../core/ref/matmul.ts";
import { assertClose, randomArray, testGpu } from "../../tests/helpers/gpu.ts";
import { createTensor, destroyTensor, freezeTensor, readTensor, writeTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import { type KernelCall, prepare, releaseCall, runCalls, Step } from "../dispatch.ts";
import { WEIGHT_TEXTURE } from "./common.ts";
import {
  GPU_TILE_LARGE,
  GPU_TILE_SMALL,
  GPU_TILE_XL,
  type GpuMatmulTile,
  matmul,
  matmulCalls,
  matmulCopiesB,
  type MatmulOptions,
  matmulPlan,
  matmulScratch,
  type MatmulTile,
  matmulTile,
  mesaLoadsFirst,
} from "./matmul.ts";
import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";

// f32 products summed over k terms of size ≤ 1 against float64 on the same f32-rounded inputs: the error
// grows like √k·2⁻²⁴·|a||b|. 2e-5 absolute + 1e-5 relative is ~20× the worst seen at k = 1000.
const TOL = { atol: 2e-5, rtol: 1e-5 };

/** Logical (m, k, n) at the odd sizes the brief asks for, plus one that fills whole vec4 tiles. */
const SHAPES: [number, number, number][] = [[1, 1, 1], [7, 33, 1000], [1000, 7, 33], [33, 1000, 7], [
  64,
  128,
  256,
]];
const LAYOUTS = [[false, false], [false, true], [true, false], [true, true]] as const;

/** A matmul call without its tensors. */
type Case = Omit<MatmulOptions, "a" | "b" | "c">;

const f32 = (x: Float64Array) => Float64Array.from(Float32Array.from(x));

/** Runs one case on `build` (a context whose profile picks the template) and compares with the reference. */
async function check(ctx: GpuContext, c: Case, build: GpuContext = ctx): Promise<void> {
  const batch = c.batch ?? 1, seed = c.m * 7 + c.k * 13 + c.n;
  const a64 = f32(randomArray(batch * c.m * c.k, seed)),
    b64 = f32(randomArray((c.broadcastB ? 1 : batch) * c.k * c.n, seed + 1));
  const c0 = f32(randomArray(batch * c.m * c.n, seed + 2));
  const a = createTensor(ctx, [a64.length], "f32", Float32Array.from(a64), "a");
  const b = createTensor(ctx, [b64.length], "f32", Float32Array.from(b64), "b");
  const out = createTensor(ctx, [c0.length], "f32", Float32Array.from(c0), "c");
  const call = matmul(build, { ...c, a, b, c: out } satisfies MatmulOptions);
  await ctx.pipelines.check(call.code, call.label);
  await ctx.scoped(call.label, () => runCalls(ctx, [call]).done());
  const want = matmulRef(a64, b64, { ...c, c: c.accumulate ? c0 : undefined });
  assertClose(await readTensor(ctx, out), want, TOL, `${call.label} ${JSON.stringify(c)}`);
  for (const t of [a, b, out]) t.buffer.destroy();
}

Deno.test("matmul() matches the float64 reference at odd sizes for all four transpose layouts", async () => {
  const ctx = await testGpu();
  for (const [m, k, n] of SHAPES) {
    for (const [transA, transB] of LAYOUTS) await check(ctx, { m, k, n, transA, transB });
  }
});

Deno.test("matmul() scales by alpha, accumulates into C, batches and broadcasts B like the reference", async () => {
  const ctx = await testGpu();
  await check(ctx, { m: 33, k: 7, n: 20, alpha: -0.5, accumulate: true });
  await check(ctx, { m: 33, k: 8, n: 21, transB: true, alpha: 2, accumulate: true });
  await check(ctx, { m: 7, k: 33, n: 12, batch: 3 });
  await check(ctx, { m: 9, k: 12, n: 7, batch: 4, transA: true, transB: true });
  await check(ctx, { m: 33, k: 16, n: 40, batch: 3, broadcastB: true, transA: true });
  await check(ctx, { m: 5, k: 9, n: 33, batch: 2, broadcastB: true, transB: true, accumulate: true });
  // A as vec4s in the outer form: along K (K % 4 = 0), or along M when transposed (M % 4 = 0).
  await check(ctx, { m: 9, k: 12, n: 20, batch: 3, alpha: 1.5, accumulate: true });
  await check(ctx, { m: 68, k: 20, n: 44, batch: 2, transA: true, broadcastB: true, alpha: -2 });
  await check(ctx, { m: 68, k: 21, n: 44, transA: true, accumulate: true }); // one step of K per pass
});

Deno.test("matmul() is exact for every forced register tile, including edge tiles on both axes", async () => {
  const ctx = await testGpu();
  const tiles: MatmulTile[] = [{ tm: 32, tn: 32, wx: 8 }, { tm: 16, tn: 16, wx: 8 }, { tm: 1, tn: 4, wx: 1 }];
  for (const tile of tiles) {
    await check(ctx, { m: 70, k: 36, n: 300, tile });
    // A transposed with M % 4 = 0 loads 4 rows per vec4; 68 rows end inside a 32- or 16-row tile.
    await check(ctx, { m: 68, k: 36, n: 300, tile, transA: true });
    // Dot-form (A·Bᵀ) tiles stop at 512 outputs: 32×32 took 25 s to compile on llvmpipe.
    if (tile.tm * tile.tn <= 512) await check(ctx, { m: 70, k: 36, n: 300, tile, transB: true });
  }
});

Deno.test("matmul() with the gpu-profile template (shared-memory tiles) matches the reference on this adapter", async () => {
  const ctx = await testGpu();
  // The kernels only read the profile and limits from the context they are built with.
  const gpuCtx = ctx.withProfile("gpu");
  for (const [transA, transB] of LAYOUTS) {
    await check(ctx, { m: 33, k: 70, n: 45, transA, transB }, gpuCtx);
    // Edge blocks on both axes of the large tile, and a K that ends inside a staged step.
    await check(ctx, { m: 130, k: 37, n: 70, transA, transB, gpuTile: GPU_TILE_LARGE }, gpuCtx);
    await check(ctx, { m: 130, k: 21, n: 260, transA, transB, gpuTile: GPU_TILE_XL }, gpuCtx);
  }
  await check(ctx, { m: 1, k: 1, n: 1 }, gpuCtx);
  await check(ctx, { m: 20, k: 9, n: 7, batch: 3, broadcastB: true, alpha: 0.5, accumulate: true }, gpuCtx);
  const tiles: GpuMatmulTile[] = [
    { tm: 8, tn: 8, wx: 16, wy: 16, bk: 8 },
    { tm: 8, tn: 4, wx: 8, wy: 16, bk: 32 },
    { tm: 4, tn: 8, wx: 32, wy: 4, bk: 8 },
  ];
  for (const gpuTile of tiles) await check(ctx, { m: 75, k: 50, n: 140, transA: true, gpuTile }, gpuCtx);
});

/** Runs matmulCalls (split K into scratch, then the sum) on the gpu profile against the reference. */
async function checkSplit(ctx: GpuContext, c: Case & { splits: number }): Promise<void> {
  const gpuCtx = ctx.withProfile("gpu");
  const batch = c.batch ?? 1, seed = c.m + c.k * 3 + c.n * 5;
  const a64 = f32(randomArray(batch * c.m * c.k, seed)), b64 = f32(randomArray(batch * c.k * c.n, seed + 1));
  const c0 = f32(randomArray(batch * c.m * c.n, seed + 2));
  const a = createTensor(ctx, [a64.length], "f32", Float32Array.from(a64), "a");
  const b = createTensor(ctx, [b64.length], "f32", Float32Array.from(b64), "b");
  const out = createTensor(ctx, [c0.length], "f32", Float32Array.from(c0), "c");
  const partial = createTensor(ctx, [matmulScratch(c.m, c.n, c.splits, batch)], "f32", undefined, "partial");
  const calls = matmulCalls(gpuCtx, { ...c, a, b, c: out, partial });
  assertEquals(calls.map((x) => x.label).at(-1), "matmul_split_sum");
  await ctx.scoped("split", () => runCalls(ctx, calls).done());
  const want = matmulRef(a64, b64, { ...c, c: c.accumulate ? c0 : undefined });
  assertClose(await readTensor(ctx, out), want, TOL, `split ${JSON.stringify(c)}`);
  for (const t of [a, b, out, partial]) t.buffer.destroy();
}

Deno.test("matmul() split over K (gpu profile) sums its slices into the same product, any layout", async () => {
  const ctx = await testGpu();
  for (const [transA, transB] of LAYOUTS) {
    await checkSplit(ctx, { m: 40, k: 300, n: 24, transA, transB, splits: 3 });
  }
  // More slices than whole steps of K leaves some slices empty; alpha and accumulate apply once, in the sum.
  await checkSplit(ctx, { m: 9, k: 40, n: 13, splits: 8, alpha: -2, accumulate: true });
  await checkSplit(ctx, { m: 17, k: 200, n: 33, batch: 2, transA: true, splits: 4 });
  // The plan splits a weight gradient's long K on a real GPU, and never on cpu-simd.
  const gpuCtx = ctx.withProfile("gpu");
  assertEquals(matmulPlan(gpuCtx, 64, 1024, 64), { tile: GPU_TILE_LARGE, splits: 8 });
  assertEquals(matmulPlan(gpuCtx, 256, 2048, 1024), { tile: GPU_TILE_LARGE, splits: 4 });
  assertEquals(matmulPlan(gpuCtx, 64, 1024, 8), { tile: GPU_TILE_SMALL, splits: 8 });
  assertEquals(matmulPlan(gpuCtx, 1024, 1024, 1024), { tile: GPU_TILE_LARGE, splits: 1 });
  assertEquals(matmulPlan(gpuCtx, 2048, 2048, 2048), { tile: GPU_TILE_XL, splits: 1 });
  assertEquals(matmulPlan(ctx, 64, 1024, 64).splits, 1);
});

Deno.test("matmul() refuses non-positive sizes, tensors too small for the sizes, and unknown tiles", async () => {
  const ctx = await testGpu();
  const t = createTensor(ctx, [12], "f32", undefined, "small");
  const expect = (o: Partial<MatmulOptions>, msg: RegExp) => {
    try {
      matmul(ctx, { a: t, b: t, c: t, m: 3, k: 4, n: 3, ...o });
    } catch (e) {
      if (e instanceof RangeError && msg.test(e.message)) return;
      throw e;
    }
    throw new Error(`no error for ${JSON.stringify(o)}`);
  };
  expect({ m: 0 }, /m \(0\) must be a positive integer/);
  expect({ k: 5 }, /a \("small"\) has 12 elements, needs 15/);
  expect({ batch: 2 }, /needs 24/);
  expect({ tile: { tm: 3, tn: 4, wx: 8 } }, /unsupported tile/);
  t.buffer.destroy();
});

Deno.test("matmul() epilogue: R + act(A·B) in the product's stores, or in the split sum (both profiles)", async () => {
  const ctx = await testGpu();
  const cases: (Case & { splits?: number; profile: "cpu-simd" | "gpu" })[] = [
    { profile: "cpu-simd", m: 32, k: 64, n: 96, epilogue: { activation: "gelu" } }, // vec4 stores
    { profile: "cpu-simd", m: 7, k: 33, n: 30, alpha: 0.5, epilogue: { activation: "silu" } }, // scalar stores
    { profile: "cpu-simd", m: 9, k: 40, n: 24, transB: true, epilogue: { activation: "relu" } }, // the dot form
    { profile: "gpu", m: 33, k: 70, n: 45, epilogue: { activation: "gelu" } },
    { profile: "gpu", m: 9, k: 300, n: 24, splits: 3, epilogue: { activation: "gelu" } }, // in the sum
  ];
  for (const c of cases) {
    for (const residual of [false, true]) {
      const build = ctx.withProfile(c.profile), seed = c.m + c.k + c.n;
      const a64 = f32(randomArray(c.m * c.k, seed)), b64 = f32(randomArray(c.k * c.n, seed + 1));
      const r64 = f32(randomArray(c.m * c.n, seed + 2));
      const a = createTensor(ctx, [a64.length], "f32", Float32Array.from(a64), "a");
      const b = createTensor(ctx, [b64.length], "f32", Float32Array.from(b64), "b");
      const out = createTensor(ctx, [c.m * c.n], "f32", undefined, "c");
      const r = createTensor(ctx, [r64.length], "f32", Float32Array.from(r64), "r");
      const partial = c.splits
        ? createTensor(ctx, [matmulScratch(c.m, c.n, c.splits)], "f32", undefined, "partial")
        : undefined;
      const epilogue = { ...c.epilogue, ...(residual ? { residual: r } : {}) };
      const calls = matmulCalls(build, { ...c, a, b, c: out, epilogue, ...(partial ? { partial } : {}) });
      assertEquals(calls.length, c.splits ? 2 : 1);
      await ctx.scoped(calls.at(-1)!.label, () => runCalls(ctx, calls).done());
      let want: Float64Array = matmulRef(a64, b64, c); // alpha included
      want = activationRef(c.epilogue!.activation!, want);
      if (residual) want = want.map((v, i) => v + r64[i]!);
      const what = `${calls.map((x) => x.label).join(" + ")} ${JSON.stringify({ ...c, residual })}`;
      assertClose(await readTensor(ctx, out), want, TOL, what);
      for (const t of [a, b, out, r, partial]) t?.buffer.destroy();
    }
  }
  const t = createTensor(ctx, [12], "f32", undefined, "t");
  throws(
    () =>
      matmul(ctx, { a: t, b: t, c: t, m: 3, k: 4, n: 3, accumulate: true, epilogue: { activation: "gelu" } }),
    /an epilogue and accumulate together/,
  );
  throws(
    () =>
      matmul(ctx, {
        a: t,
        b: t,
        c: t,
        m: 3,
        k: 4,
        n: 3,
        epilogue: { residual: createTensor(ctx, [4], "f32") },
      }),
    /the residual \(".*"\) has 4 elements, C 9/,
  );
  t.buffer.destroy();
});

/** The frozen-B cases of the texture test, built on `build` (its Mesa release decides the dot form's texture). */
async function checkFrozen(ctx: GpuContext, build: GpuContext): Promise<void> {
  const dot = matmulCopiesB(build);
  const cases: [Case & { residual?: boolean }, boolean][] = [
    [{ m: 32, k: 64, n: 256 }, true],
    [{ m: 7, k: 33, n: 128 }, true],
    [{ m: 5, k: 20, n: 64, batch: 3, broadcastB: true }, true],
    [{ m: 9, k: 48, n: 192, alpha: 0.5, epilogue: { activation: "gelu" }, residual: true }, true],
    [{ m: 9, k: 48, n: 100 }, false],
    [{ m: 9, k: 64, n: 64, transB: true }, dot],
    [{ m: 9, k: 64, n: 30, transA: true, transB: true }, dot],
    [{ m: 3, k: 16, n: 64, batch: 2 }, false],
  ];
  for (const [c, texture] of cases) {
    const batch = c.batch ?? 1, seed = c.m * 3 + c.k + c.n;
    const a64 = f32(randomArray(batch * c.m * c.k, seed));
    const b64 = f32(randomArray((c.broadcastB ? 1 : batch) * c.k * c.n, seed + 1));
    const r64 = f32(randomArray(batch * c.m * c.n, seed + 2));
    const a = createTensor(ctx, [a64.length], "f32", Float32Array.from(a64), "a");
    const b = freezeTensor(createTensor(ctx, [b64.length], "f32", Float32Array.from(b64), "b"));
    const out = createTensor(ctx, [r64.length], "f32", undefined, "c");
    const r = createTensor(ctx, [r64.length], "f32", Float32Array.from(r64), "r");
    const { residual, ...o } = c;
    const epilogue = residual ? { ...c.epilogue, residual: r } : c.epilogue;
    const call = matmul(build, { ...o, a, b, c: out, ...(epilogue ? { epilogue } : {}) });
    const what = `${call.label} ${JSON.stringify(c)}`;
    assertEquals(call.code.includes(WEIGHT_TEXTURE), texture, what);
    assertEquals(call.bindings[1] instanceof GPUTextureView, texture, what);
    await ctx.scoped(call.label, () => runCalls(ctx, [call]).done());
    let want: Float64Array = matmulRef(a64, b64, o);
    if (c.epilogue?.activation) want = activationRef(c.epilogue.activation, want);
    if (residual) want = want.map((v, i) => v + r64[i]!);
    assertClose(await readTensor(ctx, out), want, TOL, what);
    for (const t of [a, b, out, r]) destroyTensor(t);
  }
}

Deno.test("matmul() reads a frozen B from its texture copy (cpu-simd) with the same results", async () => {
  const ctx = await testGpu();
  const cpu = ctx.withProfile("cpu-simd");
  // [case, whether B is read from a texture]: K divisible by 4 (A as vec4s, 4 rows of B per pass) or not
  // (one row per pass), edge tiles, B broadcast over a batch, and an epilogue with a residual; then the
  // layouts that keep the buffer: N not a multiple of 64 (a texture copy's row), a batch of Bs; B transposed
  // reads its (n, k) texture where B's that change are copied (matmulCopiesB: Mesa 23 and later; run on
  // this adapter as it is and taken for a Mesa 25 one).
  const m25 = Object.create(cpu, { mesa: { value: "25.0.7" } }) as GpuContext;
  for (const build of [cpu, m25]) await checkFrozen(ctx, build);

  // The same tensor unfrozen reads its buffer (or, where matmulCopiesB says so, a copy made before each run);
  // a frozen one cannot be written.
  const b = createTensor(ctx, [64 * 64], "f32", undefined, "b");
  const t = createTensor(ctx, [64 * 64], "f32", undefined, "t");
  const unfrozen = matmul(cpu, { a: t, b, c: t, m: 64, k: 64, n: 64 });
  assert(!(unfrozen.bindings[1] instanceof GPUTextureView));
  assertEquals(unfrozen.code.includes(WEIGHT_TEXTURE), matmulCopiesB(cpu));
  freezeTensor(b);
  throws(() => writeTensor(ctx, b, new Float32Array(64 * 64)), /Cannot write "b": it is frozen/);
  for (const x of [b, t]) destroyTensor(x);
});

/**
 * Runs case `c` on `build` with a matmul option off and on (`option(on)`), `inspect`s each call, checks both
 * results against the float64 reference, and asserts they are the same bits.
 */
async function sameBitsBothWays(
  ctx: GpuContext,
  build: GpuContext,
  c: Case,
  seed: number,
  option: (on: boolean) => Partial<MatmulOptions>,
  inspect: (call: KernelCall, on: boolean, what: string) => void,
): Promise<void> {
  const batch = c.batch ?? 1;
  const a64 = f32(randomArray(batch * c.m * c.k, seed));
  const b64 = f32(randomArray((c.broadcastB ? 1 : batch) * c.k * c.n, seed + 1));
  const c64 = f32(randomArray(batch * c.m * c.n, seed + 2));
  const a = createTensor(ctx, [a64.length], "f32", Float32Array.from(a64), "a");
  const b = createTensor(ctx, [b64.length], "f32", Float32Array.from(b64), "b");
  const got: Float32Array[] = [];
  for (const on of [false, true]) {
    const out = createTensor(ctx, [c64.length], "f32", Float32Array.from(c64), "c");
    const call = matmul(build, { ...c, a, b, c: out, ...option(on) });
    const what = `${call.label} ${JSON.stringify(option(on))} ${JSON.stringify(c)}`;
    inspect(call, on, what);
    await ctx.scoped(call.label, () => runCalls(ctx, [call]).done());
    let want: Float64Array = matmulRef(a64, b64, { ...c, c: c.accumulate ? c64 : undefined });
    if (c.epilogue?.activation) want = activationRef(c.epilogue.activation, want);
    const o = await readTensor(ctx, out) as Float32Array;
    assertClose(o, want, TOL, what);
    got.push(o);
    destroyTensor(out);
  }
  assertEquals(got[1], got[0], `off and on differ: ${JSON.stringify(option(true))} ${JSON.stringify(c)}`);
  for (const t of [a, b]) destroyTensor(t);
}

/** A load of A on a line of its own (loads first); beside the multiply-adds each sits in a `{ … }` block. */
const _HOISTED = /^\s*let a\w* = (vec4<f32>\()?A\[/m;

Deno.test("matmul() with A's loads first (Mesa 23 and later) gives the same bits as beside its multiply-adds", async () => {
  const ctx = await testGpu();
  const cpu = ctx.withProfile("cpu-simd");
  // Every cpu-simd loop: the outer form with 4 steps of K per pass (A along K, or transposed along M), with
  // one step per pass (K % 4 ≠ 0; A scalars, or transposed vec4s), the dot form with and without its scalar K
  // tail; edge tiles, a batch, accumulate, alpha and an epilogue.
  const cases: Case[] = [
    { m: 33, k: 64, n: 96 },
    { m: 68, k: 20, n: 44, transA: true, batch: 2, alpha: -2 },
    { m: 9, k: 33, n: 40, accumulate: true },
    { m: 68, k: 21, n: 44, transA: true },
    { m: 40, k: 48, n: 24, transB: true, epilogue: { activation: "gelu" } },
    { m: 13, k: 30, n: 7, transA: true, transB: true },
    { m: 7, k: 33, n: 1000 },
  ];
  for (const c of cases) {
    await sameBitsBothWays(
      ctx,
      cpu,
      c,
      c.m * 5 + c.k * 3 + c.n,
      (aFirst) => ({ aFirst }),
      (call, aFirst, what) => {
        // The loads first: each row's A is named before the first multiply-add of the pass reads it.
        assertEquals(_HOISTED.test(call.code), aFirst, what);
      },
    );
  }
  // The default follows the Mesa release the adapter computes on (read from the driver this process mapped).
  if (/llvmpipe/.test(ctx.adapter.description) && Deno.build.os === "linux") {
    assert(/^\d+\.\d+\.\d+$/.test(cpu.mesa ?? ""), `Mesa release of ${ctx.adapter.description}: ${cpu.mesa}`);
  }
  const t = createTensor(ctx, [64 * 64], "f32", undefined, "t");
  const code = matmul(cpu, { a: t, b: t, c: t, m: 64, k: 64, n: 64 }).code;
  assertEquals(/let a\d+ = A\[/.test(code), mesaLoadsFirst(cpu.mesa), `default for Mesa ${cpu.mesa}`);
  assert(
    !/let a\d+ = A\[/.test(matmul(ctx.withProfile("gpu"), { a: t, b: t, c: t, m: 64, k: 64, n: 64 }).code),
  );
  destroyTensor(t);
});

Deno.test("matmul() reads a B that changes from a texture copy made before every run, with the same bits", async () => {
  const ctx = await testGpu();
  const cpu = ctx.withProfile("cpu-simd");
  // [case, whether B goes through a copy]: the outer form with 4 steps of K per pass, A transposed, one step
  // per pass with accumulate, a batch over one broadcast B, an epilogue, the dot form (B transposed, its rows
  // of K as texels; A transposed too); then the layouts that keep the buffer: B's rows not a multiple of 64
  // floats (N, or K when transposed), a batch of Bs.
  const cases: [Case, boolean][] = [
    [{ m: 33, k: 64, n: 128 }, true],
    [{ m: 68, k: 20, n: 64, transA: true, alpha: -2 }, true],
    [{ m: 9, k: 33, n: 192, accumulate: true }, true],
    [{ m: 5, k: 20, n: 64, batch: 3, broadcastB: true }, true],
    [{ m: 40, k: 48, n: 64, epilogue: { activation: "gelu" } }, true],
    [{ m: 9, k: 64, n: 64, transB: true }, true],
    [{ m: 40, k: 128, n: 21, transA: true, transB: true, alpha: 0.5 }, true],
    [{ m: 9, k: 48, n: 100 }, false],
    [{ m: 9, k: 48, n: 64, transB: true }, false],
    [{ m: 3, k: 16, n: 64, batch: 2 }, false],
  ];
  for (const [c, copied] of cases) {
    await sameBitsBothWays(
      ctx,
      cpu,
      c,
      c.m * 11 + c.k * 5 + c.n,
      (bCopy) => ({ bCopy }),
      (call, bCopy, what) => {
        const expect = bCopy && copied;
        const [rows, cols] = c.transB ? [c.n, c.k] : [c.k, c.n];
        assertEquals(call.textureCopies ?? [], expect ? [{ binding: 1, rows, cols }] : [], what);
        assertEquals(call.code.includes(WEIGHT_TEXTURE), expect, what);
      },
    );
  }

  // One prepared call run twice with B rewritten between: the second run reads the new B.
  const [m, k, n] = [16, 32, 64];
  const a64 = f32(randomArray(m * k, 1)), b1 = f32(randomArray(k * n, 2)), b2 = f32(randomArray(k * n, 3));
  const a = createTensor(ctx, [m * k], "f32", Float32Array.from(a64), "a");
  const b = createTensor(ctx, [k * n], "f32", Float32Array.from(b1), "b");
  const out = createTensor(ctx, [m * n], "f32", undefined, "c");
  const prepared = prepare(ctx, matmul(cpu, { a, b, c: out, m, k, n, bCopy: true }));
  assertEquals(prepared.copies.length, 1);
  for (const b64 of [b1, b2]) {
    writeTensor(ctx, b, Float32Array.from(b64));
    const step = new Step(ctx);
    step.dispatch(prepared);
    assertEquals(step.dispatches, 1, "a copy is not a dispatch");
    step.submit();
    await step.done();
    assertClose(await readTensor(ctx, out), matmulRef(a64, b64, { m, k, n }), TOL, "after B changed");
  }
  releaseCall(prepared);

  // The default follows the Mesa release (23 and later copy) on the cpu-simd profile only; a frozen B
  // keeps its one texture mirror; a copy wider than 64-float rows is refused when prepared.
  const m25 = Object.create(cpu, { mesa: { value: "25.0.7" } }) as GpuContext;
  const copies = (x: GpuContext) => (matmul(x, { a, b, c: out, m, k, n }).textureCopies ?? []).length;
  assertEquals(copies(cpu), matmulCopiesB(cpu) ? 1 : 0, `default for Mesa ${cpu.mesa}`);
  assertEquals([copies(m25), copies(ctx.withProfile("gpu"))], [1, 0]);
  assert(matmulCopiesB(m25) && !matmulCopiesB(ctx.withProfile("gpu")));
  const bad = {
    ...matmul(cpu, { a, b, c: out, m, k, n, bCopy: true }),
    textureCopies: [{ binding: 1, rows: k, cols: 32 }],
  };
  throws(() => prepare(ctx, bad), /texture copy of binding 1 needs .*cols a multiple of 64 \(32×32\)/);
  const tooBig = { ...bad, textureCopies: [{ binding: 1, rows: 64, cols: 64 }] };
  throws(() => prepare(ctx, tooBig), /\(64×64\) is larger than "b"/);
  freezeTensor(b);
  const frozen = matmul(m25, { a, b, c: out, m, k, n });
  assert(frozen.textureCopies === undefined && frozen.bindings[1] instanceof GPUTextureView);
  for (const t of [a, b, out]) destroyTensor(t);
});

Deno.test("matmulTile keeps 32×32 blocks where the adapter's threads need fewer workgroups", async () => {
  // Batched decoding's down projection at B = 32 (32×4096·4096×512): 4 workgroups of 16×32 for 4 threads,
  // 2 of 32×32 for 2 (docs/llvmpipe.md measured the latter 1.5× faster on 2 threads).
  assertEquals(matmulTile(32, 512), { tm: 16, tn: 32, wx: 8 });
  assertEquals(matmulTile(32, 512, 1, false, 2), { tm: 32, tn: 32, wx: 8 });
  assertEquals(matmulTile(32, 512, 1, false, 1), { tm: 32, tn: 32, wx: 8 });
  // Training's shapes fill any number of threads at the largest tile.
  assertEquals(matmulTile(2048, 1024, 1, false, 2), matmulTile(2048, 1024));
  const ctx = await testGpu();
  if (ctx.profile === "cpu-simd") assert(ctx.threads >= 1, `threads ${ctx.threads}`);
});

import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import type { ActivationKind } from "../../core/ref/activation.ts";
import { moeMlpRef } from "../../core/ref/moe.ts";
import { assertClose, randomArray, rng, testGpu } from "../../tests/helpers/gpu.ts";
import { createTensor, destroyTensor, freezeTensor, type GpuTensor, readTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import { runCalls } from "../dispatch.ts";
import { WEIGHT_TEXTURE } from "./common.ts";
import { matmulCopiesB, mesaLoadsFirst } from "./matmul.ts";
import { moeMlpSparse, moeScratch, type MoeShape, type MoeTile, moeTile } from "./moe.ts";

// f32 sums of d then h products (|x| ≤ 1, |w| ≤ 0.5) against float64 on the same f32 inputs: the error
// is ~√k·2⁻²⁴ of the terms' magnitude (≤ 1e-5 here at k = 256), and WGSL's tanh in GELU is within a few
// ulp. 1e-4 absolute + 1e-4 relative is ~10× the worst seen; a wrong pair or a missed expert is off by O(0.1).
const TOL = { atol: 1e-4, rtol: 1e-4 };

/**
 * How gates are chosen. `mixed`: token t runs t mod (E + 1) experts (none, some, or all E) at random;
 * `dead`: token t runs t mod E of the first E − 1 experts, so the last expert gets no token; `all`: every
 * gate non-zero (the dense formula); `none`: no expert anywhere (y must be zero); `even`: experts whose
 * index has the parity of t.
 */
type Routing = "mixed" | "dead" | "all" | "none" | "even";

interface Case extends MoeShape {
  routing: Routing;
  activation?: ActivationKind;
  tile?: MoeTile;
}

const f32 = (x: Float64Array) => Float64Array.from(Float32Array.from(x));

/** Gates (N, E): router-like probabilities in [0.05, 1) where routed, 0 elsewhere. */
function gates(c: Case, seed: number): Float64Array {
  const { N, E } = c, r = rng(seed), g = new Float64Array(N * E);
  const live = c.routing === "dead" ? E - 1 : E;
  for (let t = 0; t < N; t++) {
    const k = c.routing === "none" ? 0 : c.routing === "all" ? E : t % (live + 1);
    // Fisher–Yates: a random comparator in sort() gives different orders once V8 optimizes the loop.
    const order = Array.from({ length: live }, (_, i) => i);
    for (let i = live - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    const chosen = c.routing === "even" ? order.filter((e) => (e + t) % 2 === 0) : order.slice(0, k);
    for (const e of chosen) g[t * E + e] = 0.05 + 0.95 * r();
  }
  return f32(g);
}

/** Runs one case on `build` (whose profile picks the tiles) and compares with the float64 reference. */
async function check(ctx: GpuContext, c: Case, build: GpuContext = ctx): Promise<Float32Array> {
  const { N, d, E, h } = c, seed = N * 31 + d * 7 + E * 3 + h;
  const activation = c.activation ?? "gelu";
  const x64 = f32(randomArray(N * d, seed)), g64 = gates(c, seed + 1);
  const w164 = f32(randomArray(d * E * h, seed + 2, -0.5, 0.5));
  const w264 = f32(randomArray(E * h * d, seed + 3, -0.5, 0.5));
  const owned: GpuTensor[] = [];
  const up = (shape: number[], v: Float64Array | null, label: string) => {
    const t = createTensor(ctx, shape, "f32", v ? Float32Array.from(v) : undefined, label);
    owned.push(t);
    return t;
  };
  const x = up([N, d], x64, "x"), gate = up([N, E], g64, "gate");
  const w1 = up([d, E * h], w164, "w1"), w2 = up([E * h, d], w264, "w2");
  // y starts as NaN so a token the kernels forget to write fails the comparison.
  const y = up([N, d], new Float64Array(N * d).fill(NaN), "y");
  const tile = c.tile ?? moeTile(build, c);
  const scratch = moeScratch(ctx, c, tile);
  const calls = moeMlpSparse(build, { x, gate, w1, w2, y, E, h, activation, scratch, tile });
  for (const call of calls) await ctx.pipelines.check(call.code, call.label);
  await ctx.scoped("moe", () => runCalls(ctx, calls).done());
  const got = (await readTensor(ctx, y)) as Float32Array;
  const want = moeMlpRef(x64, g64, w164, w264, { N, d, E, h, activation });
  assertClose(got, want, TOL, `moe ${JSON.stringify({ ...c, tile })}`);
  for (const t of [...owned, ...Object.values(scratch)]) t.buffer.destroy();
  return got;
}

Deno.test("moeMlpSparse matches the float64 reference at odd sizes with 0, some and all experts per token and an idle expert", async () => {
  const ctx = await testGpu();
  const shapes: MoeShape[] = [
    { N: 1, d: 8, E: 4, h: 12 },
    { N: 7, d: 13, E: 4, h: 5 }, // d and h not multiples of 4: scalar loads and stores
    { N: 33, d: 20, E: 8, h: 7 },
    { N: 200, d: 36, E: 8, h: 16 },
    { N: 40, d: 32, E: 4, h: 12 }, // the gather sums 4 vec4s per invocation (2 with d = 10 below)
    { N: 40, d: 64, E: 4, h: 64 }, // cpu-simd: x and H read through texture copies (k divisible by 64)
    { N: 24, d: 64, E: 8, h: 20 }, // x through its copy, H from its buffer
  ];
  for (const s of shapes) await check(ctx, { ...s, routing: "mixed" });
  await check(ctx, { N: 7, d: 13, E: 4, h: 5, routing: "dead" });
  await check(ctx, { N: 200, d: 36, E: 8, h: 16, routing: "dead" });
  await check(ctx, { N: 33, d: 10, E: 4, h: 8, routing: "none" });
});

Deno.test("moeMlpSparse for one token (decoding) matches the float64 reference on the scalar and vec4 paths", async () => {
  const ctx = await testGpu();
  // h and d multiples of 16, 8, 4 or neither pick 4, 2, 1 vec4 columns per invocation or scalar loads.
  // The gpu profile sums columns over 16 lanes in workgroup memory instead.
  const gpuCtx = ctx.withProfile("gpu");
  for (const [d, h] of [[13, 5], [24, 8], [32, 32], [20, 12], [40, 37]] as const) {
    for (const build of [ctx, gpuCtx]) {
      await check(ctx, { N: 1, d, E: 4, h, routing: "even" }, build);
      await check(ctx, { N: 1, d, E: 4, h, routing: "all", activation: "silu" }, build);
    }
  }
  await check(ctx, { N: 1, d: 16, E: 4, h: 16, routing: "none" });
  await check(ctx, { N: 1, d: 16, E: 4, h: 16, routing: "none" }, gpuCtx);
});

Deno.test("moeMlpSparse with every gate non-zero equals the dense stacked formula", async () => {
  const ctx = await testGpu();
  await check(ctx, { N: 200, d: 24, E: 4, h: 9, routing: "all" });
  await check(ctx, { N: 33, d: 7, E: 8, h: 4, routing: "all", activation: "relu" });
  await check(ctx, { N: 7, d: 12, E: 4, h: 8, routing: "all", activation: "silu" });
});

Deno.test("moeMlpSparse is exact for forced tiles, the gpu-profile tiles, and is bitwise deterministic", async () => {
  const ctx = await testGpu();
  const c: Case = { N: 200, d: 40, E: 8, h: 12, routing: "mixed" };
  await check(ctx, { ...c, tile: { tm: 1, tnUp: 4, tnDown: 4, wxUp: 1, wxDown: 1 } });
  await check(ctx, { ...c, tile: { tm: 16, tnUp: 8, tnDown: 16, wxUp: 2, wxDown: 4 } });
  // A half-height copy of the loop for an expert's last tile (batched decoding's), over several blocks and one.
  await check(ctx, { ...c, tile: { tm: 16, tmShort: 4, tnUp: 8, tnDown: 16, wxUp: 2, wxDown: 4 } });
  await check(ctx, { ...c, N: 40, tile: { tm: 8, tmShort: 4, tnUp: 4, tnDown: 8, wxUp: 2, wxDown: 2 } });
  const gpuCtx = ctx.withProfile("gpu");
  await check(ctx, c, gpuCtx);
  const a = await check(ctx, c), b = await check(ctx, c);
  assertEquals(Array.from(a), Array.from(b));
});

Deno.test("moeMlpSparse with A's loads first (Mesa 23 and later) gives the same bits as without", async () => {
  const ctx = await testGpu();
  // The same device, taken for a Mesa 25 lavapipe: the grouped matmuls load a pass's A first.
  const m25 = Object.create(ctx, { mesa: { value: "25.0.7" } }) as GpuContext;
  const cases: Case[] = [
    { N: 200, d: 40, E: 8, h: 12, routing: "mixed" }, // A as vec4s
    { N: 33, d: 13, E: 4, h: 5, routing: "mixed" }, // scalar A
    {
      N: 40,
      d: 32,
      E: 8,
      h: 16,
      routing: "mixed",
      tile: { tm: 8, tmShort: 4, tnUp: 4, tnDown: 8, wxUp: 2, wxDown: 2 },
    },
    { N: 40, d: 64, E: 4, h: 64, routing: "mixed" }, // A (x, H) from texture copies
  ];
  const hoisted = /^\s*let a\d+ = (A\[|textureLoad\(A,)/m;
  for (const c of cases) {
    const tile = c.tile ?? moeTile(ctx, c), scratch = moeScratch(ctx, c, tile);
    const t = (shape: number[]) => createTensor(ctx, shape, "f32");
    const args = {
      x: t([c.N, c.d]),
      gate: t([c.N, c.E]),
      w1: t([c.d, c.E * c.h]),
      w2: t([c.E * c.h, c.d]),
      y: t([c.N, c.d]),
    };
    const code = (b: GpuContext) =>
      moeMlpSparse(b, { ...args, E: c.E, h: c.h, activation: "gelu", scratch, tile })
        .filter((k) => k.label.startsWith("moe_up") || k.label.startsWith("moe_down")).map((k) => k.code);
    assert(code(m25).length === 2 && code(m25).every((k) => hoisted.test(k)), JSON.stringify(c));
    assertEquals(code(ctx).some((k) => hoisted.test(k)), mesaLoadsFirst(ctx.mesa));
    for (const x of [...Object.values(args), ...Object.values(scratch)]) x.buffer.destroy();
    assertEquals(Array.from(await check(ctx, c, m25)), Array.from(await check(ctx, c)), JSON.stringify(c));
  }
});

Deno.test("the pair list of one block is one dispatch (moe_pairs), of several blocks three", async () => {
  const ctx = await testGpu();
  const labels = (N: number) => {
    const s: MoeShape = { N, d: 8, E: 4, h: 4 };
    const t = (shape: number[]) => createTensor(ctx, shape, "f32");
    const o = {
      x: t([N, 8]),
      gate: t([N, 4]),
      w1: t([8, 16]),
      w2: t([16, 8]),
      y: t([N, 8]),
      E: 4,
      h: 4,
      scratch: moeScratch(ctx, s),
      activation: "gelu" as const,
    };
    return moeMlpSparse(ctx, o).map((k) => k.label);
  };
  assertEquals(labels(40), ["moe_pairs", "moe_up", "moe_down", "moe_gather"]);
  assertEquals(labels(200), ["moe_count", "moe_scan", "moe_place", "moe_up", "moe_down", "moe_gather"]);
});

Deno.test("moeMlpSparse refuses wrong sizes and a non-INDIRECT args buffer", async () => {
  const ctx = await testGpu();
  const s: MoeShape = { N: 4, d: 8, E: 4, h: 4 };
  const t = (n: number, label: string) => createTensor(ctx, [n], "f32", undefined, label);
  const x = createTensor(ctx, [4, 8], "f32", undefined, "x"), gate = createTensor(ctx, [4, 4], "f32");
  const scratch = moeScratch(ctx, s);
  const base = { x, gate, w1: t(128, "w1"), w2: t(128, "w2"), y: t(32, "y"), E: 4, h: 4, scratch };
  assertThrows(
    () => moeMlpSparse(ctx, { ...base, w2: t(100, "small"), activation: "gelu" }),
    /w2 \("small"\) is f32 × 100, needs f32 × 128/,
  );
  const calls = moeMlpSparse(ctx, { ...base, activation: "gelu" });
  const up = calls.find((c) => c.label === "moe_up")!;
  assert(up.indirect);
  assertThrows(
    () => runCalls(ctx, [{ ...up, indirect: { buffer: scratch.route, offset: 0 } }]),
    /lacks INDIRECT usage/,
  );
  assertThrows(() => runCalls(ctx, [{ ...up, indirect: { buffer: scratch.args, offset: 2 } }]), /offset 2/);
});

Deno.test("moeMlpSparse for one token reads no weights of unrouted experts (they hold NaN)", async () => {
  const ctx = await testGpu();
  // `frozen`: the weights frozen (a decoder's) and which of [moe_up1, moe_down1] read texture copies on
  // cpu-simd (E·h, resp. d, a multiple of 64; d = 30 takes x one element a pass). moe_down1's invocations
  // take 4 vec4s of y at d = 16 and 64, 2 at d = 24, single floats at d = 30.
  const cases: { d: number; h: number; frozen?: [boolean, boolean] }[] = [
    { d: 16, h: 8 },
    { d: 24, h: 8 },
    { d: 64, h: 16, frozen: [true, true] },
    { d: 30, h: 16, frozen: [true, false] },
  ];
  for (const { d, h, frozen } of cases) {
    const E = 4, s = { N: 1, d, E, h };
    const x64 = f32(randomArray(d, 5)), w164 = f32(randomArray(d * E * h, 6, -0.5, 0.5));
    const w264 = f32(randomArray(E * h * d, 7, -0.5, 0.5)), g64 = f32(Float64Array.of(0, 0.6, 0, 0.3));
    const { w1NaN, w2NaN } = nanExperts(w164, w264, s, [0, 2]);
    const make = (shape: number[], v: Float64Array) => createTensor(ctx, shape, "f32", Float32Array.from(v));
    const x = make([1, d], x64), gate = make([1, E], g64), w1 = make([d, E * h], w1NaN);
    const w2 = make([E * h, d], w2NaN), y = make([1, d], new Float64Array(d));
    if (frozen) [w1, w2].forEach(freezeTensor);
    for (const build of [ctx.withProfile("cpu-simd"), ctx.withProfile("gpu")]) {
      const scratch = moeScratch(build, s), what = `${build.profile} ${JSON.stringify(s)}`;
      const calls = moeMlpSparse(build, { x, gate, w1, w2, y, E, h, activation: "gelu", scratch });
      const textured = calls.map((c) => c.code.includes(WEIGHT_TEXTURE));
      assertEquals(textured, build.profile === "cpu-simd" && frozen ? frozen : [false, false], what);
      await ctx.scoped("moe one token", () => runCalls(ctx, calls).done());
      const got = await readTensor(ctx, y);
      assert(got.every(Number.isFinite), `${what}: an unrouted expert's weights were read`);
      assertClose(got, moeMlpRef(x64, g64, w164, w264, { ...s, activation: "gelu" }), TOL, what);
      for (const t of Object.values(scratch)) t.buffer.destroy();
    }
    for (const t of [x, gate, w1, w2, y]) destroyTensor(t);
  }
});

/**
 * NaN in the columns of W1 and the rows of W2 of experts `dead` (the stacked layout of docs/design.md §3), so
 * that any read of an unrouted expert's weights poisons the output.
 */
function nanExperts(w1: Float64Array, w2: Float64Array, s: MoeShape, dead: readonly number[]) {
  const { d, E, h } = s, w1NaN = Float64Array.from(w1), w2NaN = Float64Array.from(w2);
  for (const e of dead) {
    for (let r = 0; r < d; r++) w1NaN.fill(NaN, r * E * h + e * h, r * E * h + (e + 1) * h);
    w2NaN.fill(NaN, e * h * d, (e + 1) * h * d);
  }
  return { w1NaN, w2NaN };
}

Deno.test("moeMlpSparse over many tokens reads no weights of experts no token routes to (they hold NaN)", async () => {
  const ctx = await testGpu(), gpuCtx = ctx.withProfile("gpu"), cpuCtx = ctx.withProfile("cpu-simd");
  // The same device taken for a Mesa 25 lavapipe: weights that are not frozen go through a texture copy too.
  const m25 = Object.create(cpuCtx, { mesa: { value: "25.0.7" } }) as GpuContext;
  // Dead experts at both ends and side by side, so a tile that strays past its expert's block (columns of
  // W1, rows of W2) into a neighbour's reads NaN; h and d off and on multiples of 4 (scalar and vec4 loads).
  // `frozen`: W1 and W2 are frozen (a decoder's weights), and whether [moe_up, moe_down] read them from
  // texture copies: on cpu-simd where the layout allows (W1's E·h and W2's d multiples of 64), never on gpu.
  // Not frozen, they are read through a copy made before each dispatch where matmulCopiesB says so.
  const cases: {
    s: MoeShape;
    live: number[];
    tile?: MoeTile;
    build?: GpuContext;
    frozen?: [boolean, boolean];
  }[] = [
    { s: { N: 48, d: 64, E: 8, h: 16 }, live: [0, 3, 4, 7], build: cpuCtx, frozen: [true, true] },
    { s: { N: 24, d: 13, E: 4, h: 16 }, live: [1, 2], build: cpuCtx, frozen: [true, false] }, // A scalar
    { s: { N: 200, d: 64, E: 4, h: 32 }, live: [1, 3], build: cpuCtx, frozen: [true, true] }, // 32×32 tiles
    { s: { N: 40, d: 64, E: 4, h: 64 }, live: [0, 2], build: cpuCtx, frozen: [true, true] },
    { s: { N: 40, d: 64, E: 4, h: 64 }, live: [0, 2], build: gpuCtx },
    { s: { N: 40, d: 64, E: 4, h: 64 }, live: [1, 3], build: m25 },
    { s: { N: 48, d: 64, E: 8, h: 16 }, live: [0, 3, 4, 7], build: gpuCtx, frozen: [false, false] },
    { s: { N: 48, d: 64, E: 8, h: 16 }, live: [0, 3, 4, 7], build: m25 },
    { s: { N: 200, d: 64, E: 4, h: 32 }, live: [1, 3], build: m25 },
    { s: { N: 24, d: 13, E: 4, h: 16 }, live: [1, 2], build: m25 },
    { s: { N: 33, d: 20, E: 8, h: 7 }, live: [1, 2, 5] },
    { s: { N: 200, d: 36, E: 8, h: 16 }, live: [2, 6] },
    { s: { N: 200, d: 36, E: 8, h: 16 }, live: [2, 6], build: gpuCtx },
    { s: { N: 40, d: 13, E: 4, h: 5 }, live: [1] },
    {
      s: { N: 200, d: 40, E: 8, h: 12 },
      live: [0, 3, 4],
      tile: { tm: 1, tnUp: 4, tnDown: 4, wxUp: 1, wxDown: 1 },
    },
    {
      s: { N: 200, d: 40, E: 8, h: 12 },
      live: [3, 7],
      tile: { tm: 16, tnUp: 8, tnDown: 16, wxUp: 2, wxDown: 4 },
    },
  ];
  for (const { s, live, tile, build = ctx, frozen } of cases) {
    const { N, d, E, h } = s, seed = N + d + E + h, r = rng(seed);
    const dead = Array.from({ length: E }, (_, e) => e).filter((e) => !live.includes(e));
    // Token t runs a non-empty subset of the live experts (every live expert gets tokens), or none.
    const g64 = new Float64Array(N * E);
    for (let t = 0; t < N; t++) {
      live.forEach((e, i) => {
        if (t % 5 !== 4 && ((t >> i) & 1 || i === t % live.length)) g64[t * E + e] = 0.05 + 0.95 * r();
      });
    }
    const gate64 = f32(g64), x64 = f32(randomArray(N * d, seed + 1));
    const w164 = f32(randomArray(d * E * h, seed + 2, -0.5, 0.5));
    const w264 = f32(randomArray(E * h * d, seed + 3, -0.5, 0.5));
    const { w1NaN, w2NaN } = nanExperts(w164, w264, s, dead);
    const make = (shape: number[], v: Float64Array) => createTensor(ctx, shape, "f32", Float32Array.from(v));
    const x = make([N, d], x64), gate = make([N, E], gate64), w1 = make([d, E * h], w1NaN);
    const w2 = make([E * h, d], w2NaN), y = make([N, d], new Float64Array(N * d).fill(NaN));
    if (frozen) [w1, w2].forEach(freezeTensor);
    const t = tile ?? moeTile(build, s), scratch = moeScratch(ctx, s, t);
    const calls = moeMlpSparse(build, { x, gate, w1, w2, y, E, h, activation: "gelu", scratch, tile: t });
    const grouped = ["moe_up", "moe_down"].map((l) => calls.find((c) => c.label === l)!.code);
    const textured = grouped.map((code) => code.includes(`var B: ${WEIGHT_TEXTURE}`));
    // A (x for moe_up, H for moe_down) from a copy made before each dispatch: cpu-simd, k divisible by 64.
    const aTextured = grouped.map((code) => code.includes(`var A: ${WEIGHT_TEXTURE}`));
    const aFits = [d % 64 === 0 && h % 4 === 0, h % 64 === 0 && d % 4 === 0];
    assertEquals(
      aTextured,
      aFits.map((f) => f && build.profile === "cpu-simd"),
      `${JSON.stringify(s)}: A copies`,
    );
    const copies = build.profile === "cpu-simd" && matmulCopiesB(build);
    const copied = [h % 4 === 0 && (E * h) % 64 === 0, d % 64 === 0].map((fits) => copies && fits);
    assertEquals(textured, frozen ?? copied, `${build.profile} ${JSON.stringify(s)}: texture reads`);
    if (build === m25) assertEquals(textured, [true, d % 64 === 0], "copies on Mesa 25");
    for (const call of calls) await ctx.pipelines.check(call.code, call.label);
    await ctx.scoped("moe dead experts", () => runCalls(ctx, calls).done());
    const got = await readTensor(ctx, y),
      what = `${build.profile} ${JSON.stringify({ ...s, live, tile: t })}`;
    assert(got.every(Number.isFinite), `${what}: an unrouted expert's weights were read`);
    // The reference with the dead experts excluded: their gates are 0, so their (finite) weights add nothing.
    assertClose(got, moeMlpRef(x64, gate64, w164, w264, { ...s, activation: "gelu" }), TOL, what);
    for (const b of [x, gate, w1, w2, y, ...Object.values(scratch)]) destroyTensor(b);
  }
});

Deno.test("moeTile: batched decoding's pair tiles are sized to the tokens, with a half-height last tile", async () => {
  const ctx = await testGpu();
  const cpu = ctx.withProfile("cpu-simd");
  const at = (N: number) => moeTile(cpu, { N, d: 512, E: 8, h: 512 });
  // B = 32, top-2 of 8: about 8 pairs an expert; tiles of 16 rows, 8 for an expert's last few.
  assertEquals(at(32), { tm: 16, tmShort: 8, tnUp: 16, tnDown: 16, wxUp: 8, wxDown: 8 });
  // B = 64 (N = 8E) keeps 16-row tiles; B = 8, about 2 pairs an expert, 4-row tiles and no second loop.
  assertEquals(at(64), { tm: 16, tmShort: 8, tnUp: 16, tnDown: 16, wxUp: 8, wxDown: 8 });
  assertEquals(at(8), { tm: 4, tnUp: 16, tnDown: 16, wxUp: 8, wxDown: 8 });
  // One token, and more tokens than 8E (training, evaluation): the full 32 × 32 tiles, no second loop.
  for (const N of [1, 65, 4096]) assertEquals(at(N), { tm: 32, tnUp: 32, tnDown: 32, wxUp: 8, wxDown: 8 });
  assertEquals(moeTile(ctx.withProfile("gpu"), { N: 32, d: 512, E: 8, h: 512 }).tmShort, undefined);
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  cachedAttentionRef,
  cacheWindow,
  moaAttentionRef,
  sequenceWindow,
} from "../../core/ref/cached_attention.ts";
import { attentionRef } from "../../core/ref/attention.ts";
import { assertClose, Owned, randomArray, rng, runChecked as run, testGpu } from "../../tests/helpers/gpu.ts";
import { freezeTensor, readTensor, writeTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import { WEIGHT_TEXTURE } from "./common.ts";
import { attentionCached } from "./cached_attention.ts";
import { matmulCopiesB } from "./matmul.ts";
import { moaAttentionSparse, moeScratch } from "./moe.ts";

// Softmax-weighted sums of f32 products over ≤ 40 keys of width ≤ 16, then a d-long projection: errors
// are ~1e-6 here; a wrong key row, head or expert is off by O(0.01–0.1).
const TOL = { atol: 2e-5, rtol: 2e-5 };

const f32 = (x: Float64Array) => Float64Array.from(Float32Array.from(x));

Deno.test("attentionCached decoding one token at a time equals causal attention over the whole sequence", async () => {
  const ctx = await testGpu(), own = new Owned(ctx);
  const T = 11, H = 4, Hkv = 2, D = 8, L = 9; // cache of T rows; decode L tokens (GQA: 2 query heads per KV head)
  const q = f32(randomArray(L * H * D, 1)),
    k = f32(randomArray(L * Hkv * D, 2)),
    v = f32(randomArray(L * Hkv * D, 3));
  const kc = own.f32([T, Hkv * D], undefined, "kc"), vc = own.f32([T, Hkv * D], undefined, "vc");
  const qt = own.f32([1, H * D]), kt = own.f32([1, Hkv * D]), vt = own.f32([1, Hkv * D]);
  const pos = own.u32([0]), o = own.f32([1, H * D]);
  const calls = attentionCached(ctx, { q: qt, k: kt, v: vt, kcache: kc, vcache: vc, pos, o, H, Hkv, D });
  const want = attentionRef(q, k, v, { B: 1, T: L, Hq: H, Hkv, D }).o;
  for (let t = 0; t < L; t++) {
    writeTensor(ctx, qt, Float32Array.from(q.subarray(t * H * D, (t + 1) * H * D)));
    writeTensor(ctx, kt, Float32Array.from(k.subarray(t * Hkv * D, (t + 1) * Hkv * D)));
    writeTensor(ctx, vt, Float32Array.from(v.subarray(t * Hkv * D, (t + 1) * Hkv * D)));
    writeTensor(ctx, pos, Uint32Array.of(t));
    await run(ctx, calls, "attention_cached");
    assertClose(await readTensor(ctx, o), want.subarray(t * H * D, (t + 1) * H * D), TOL, `position ${t}`);
  }
  // The cache holds exactly the keys written, row by row.
  assertClose(
    await readTensor(ctx, kc),
    [...k, ...new Float64Array((T - L) * Hkv * D)],
    { atol: 0, rtol: 0 },
    "kcache",
  );
  own.destroy();
});

Deno.test("attentionCached with 3 new rows at position 4 sees the earlier cache rows and its causal prefix", async () => {
  const ctx = await testGpu(), own = new Owned(ctx);
  const T = 8, H = 2, Hkv = 1, D = 4, N = 3, P = 4;
  const q = f32(randomArray(N * H * D, 4)),
    k = f32(randomArray(N * Hkv * D, 5)),
    v = f32(randomArray(N * Hkv * D, 6));
  const kc0 = f32(randomArray(T * Hkv * D, 7)), vc0 = f32(randomArray(T * Hkv * D, 8));
  const kc = own.f32([T, Hkv * D], kc0), vc = own.f32([T, Hkv * D], vc0), o = own.f32([N, H * D]);
  const calls = attentionCached(ctx, {
    q: own.f32([N, H * D], q),
    k: own.f32([N, Hkv * D], k),
    v: own.f32([N, Hkv * D], v),
    kcache: kc,
    vcache: vc,
    pos: own.u32([P]),
    o,
    H,
    Hkv,
    D,
  });
  await run(ctx, calls, "attention_cached");
  const kw = Float64Array.from(kc0), vw = Float64Array.from(vc0);
  kw.set(k, P * D), vw.set(v, P * D);
  const want = cachedAttentionRef(q, kw, vw, { N, H, Hkv, D }, cacheWindow(P));
  assertClose(await readTensor(ctx, o), want, TOL, "o");
  own.destroy();
});

/** Gates (N, E): token t routes to `pattern(t)` experts (a set), with router-like weights. */
function gates(N: number, E: number, seed: number, pattern: (t: number) => number[]): Float64Array {
  const r = rng(seed), g = new Float64Array(N * E);
  for (let t = 0; t < N; t++) for (const e of pattern(t)) g[t * E + e] = 0.05 + 0.95 * r();
  return f32(g);
}

interface MoaCase {
  B: number;
  T: number;
  d: number;
  E: number;
  G: number;
  D: number;
}

Deno.test("moaAttentionSparse over sequence batches matches the float64 reference with 0, some and all experts per token", async () => {
  const ctx = await testGpu();
  const cases: MoaCase[] = [
    { B: 1, T: 1, d: 8, E: 2, G: 1, D: 4 },
    { B: 2, T: 13, d: 12, E: 4, G: 2, D: 8 },
    { B: 3, T: 9, d: 13, E: 3, G: 2, D: 4 }, // d not a multiple of 4: scalar loads in the grouped matmuls
  ];
  for (const c of cases) {
    const own = new Owned(ctx), N = c.B * c.T, w = c.G * c.D, { d, E, G, D } = c;
    const patterns: [string, (t: number) => number[]][] = [
      ["mixed", (t) => Array.from({ length: t % (E + 1) }, (_, i) => (t + 2 * i) % E)],
      ["all", () => Array.from({ length: E }, (_, i) => i)],
      ["none", () => []],
    ];
    const x = f32(randomArray(N * d, 10)), k = f32(randomArray(N * w, 11)), v = f32(randomArray(N * w, 12));
    const wq = f32(randomArray(d * E * w, 13, -0.5, 0.5)), wo = f32(randomArray(E * w * d, 14, -0.5, 0.5));
    for (const [name, pattern] of patterns) {
      const g = gates(N, E, 15, pattern), y = own.f32([N, d], new Float64Array(N * d).fill(NaN), "y");
      const scratch = moeScratch(ctx, { N, d, E, h: w });
      const calls = moaAttentionSparse(ctx, {
        x: own.f32([N, d], x),
        gate: own.f32([N, E], g),
        wq: own.f32([d, E * w], wq),
        wo: own.f32([E * w, d], wo),
        k: own.f32([N, w], k),
        v: own.f32([N, w], v),
        y,
        E,
        G,
        D,
        T: c.T,
        scratch,
      });
      await run(ctx, calls, "moa");
      const want = moaAttentionRef(x, g, wq, k, v, wo, { N, d, E, G, D }, sequenceWindow(c.T));
      assertClose(await readTensor(ctx, y), want, TOL, `moa ${name} ${JSON.stringify(c)}`);
      if (name === "all") {
        // Every expert on: the dense MoA layer — GQA attention, head groups scaled by the gate, then Wo.
        const o = attentionRef(
          Array.from({ length: N * E * w }, (_, i) => {
            const t = Math.floor(i / (E * w)), col = i % (E * w);
            let s = 0;
            for (let j = 0; j < d; j++) s += x[t * d + j]! * wq[j * E * w + col]!;
            return s;
          }),
          k,
          v,
          { B: c.B, T: c.T, Hq: E * G, Hkv: G, D },
        ).o;
        const dense = new Float64Array(N * d);
        for (let t = 0; t < N; t++) {
          for (let col = 0; col < E * w; col++) {
            const a = o[t * E * w + col]! * g[t * E + Math.floor(col / w)]!;
            for (let j = 0; j < d; j++) dense[t * d + j]! += a * wo[col * d + j]!;
          }
        }
        assertClose(
          want,
          dense,
          { atol: 1e-12, rtol: 1e-12 },
          "reference: sparse with all experts = dense MoA",
        );
      }
      for (const t of Object.values(scratch)) t.buffer.destroy();
    }
    own.destroy();
  }
});

Deno.test("moaAttentionSparse decoding reads no weights of unrouted experts (they hold NaN) and fills the cache", async () => {
  const ctx = await testGpu(), own = new Owned(ctx);
  // d = 64 with E·G·D = 64, frozen: on cpu-simd moa_query1 and moa_out1 read Wq and Wo from texture copies.
  for (const [d, D, frozen] of [[16, 4, false], [64, 8, true]] as const) {
    const T = 6, E = 4, G = 2, w = G * D, P = 3;
    const x = f32(randomArray(d, 20)), k = f32(randomArray(w, 21)), v = f32(randomArray(w, 22));
    const kc0 = f32(randomArray(T * w, 23)), vc0 = f32(randomArray(T * w, 24));
    const wq = f32(randomArray(d * E * w, 25, -0.5, 0.5)), wo = f32(randomArray(E * w * d, 26, -0.5, 0.5));
    const routed = [1, 3], g = gates(1, E, 27, () => routed);
    // Unrouted experts 0 and 2: NaN in their query columns and output rows. Reading any of it poisons y.
    const wqNaN = Float64Array.from(wq), woNaN = Float64Array.from(wo);
    for (const e of [0, 2]) {
      for (let r = 0; r < d; r++) wqNaN.fill(NaN, r * E * w + e * w, r * E * w + (e + 1) * w);
      woNaN.fill(NaN, e * w * d, (e + 1) * w * d);
    }
    const [wqT, woT] = [own.f32([d, E * w], wqNaN), own.f32([E * w, d], woNaN)];
    if (frozen) [wqT, woT].forEach(freezeTensor);
    // The output projection (moa_out1) on both kernel profiles.
    for (const build of [ctx.withProfile("cpu-simd"), ctx.withProfile("gpu")]) {
      const kc = own.f32([T, w], kc0), vc = own.f32([T, w], vc0), y = own.f32([1, d]);
      const scratch = moeScratch(build, { N: 1, d, E, h: w });
      const calls = moaAttentionSparse(build, {
        x: own.f32([1, d], x),
        gate: own.f32([1, E], g),
        wq: wqT,
        wo: woT,
        k: own.f32([1, w], k),
        v: own.f32([1, w], v),
        y,
        E,
        G,
        D,
        cache: { kcache: kc, vcache: vc, pos: own.u32([P]) },
        scratch,
      });
      const what = `${build.profile} d ${d}`;
      const textured = calls.filter((c) => c.code.includes(WEIGHT_TEXTURE)).map((c) => c.label);
      assertEquals(textured, frozen && build.profile === "cpu-simd" ? ["moa_query1", "moa_out1"] : [], what);
      await run(ctx, calls, "moa decode");
      const kw = Float64Array.from(kc0), vw = Float64Array.from(vc0);
      kw.set(k, P * w), vw.set(v, P * w);
      const got = await readTensor(ctx, y);
      assert(got.every(Number.isFinite), `${what}: an unrouted expert's weights were read`);
      const want = moaAttentionRef(x, g, wq, kw, vw, wo, { N: 1, d, E, G, D }, cacheWindow(P));
      assertClose(got, want, TOL, `${what}: y`);
      assertClose(await readTensor(ctx, kc), kw, { atol: 0, rtol: 0 }, `${what}: kcache row 3`);
      for (const t of Object.values(scratch)) t.buffer.destroy();
    }
  }
  own.destroy();
});

Deno.test("moaAttentionSparse over sequence batches reads no weights of experts no token routes to (they hold NaN)", async () => {
  const ctx = await testGpu(), gpuCtx = ctx.withProfile("gpu");
  // The device taken for a cpu-simd one on Mesa 25, where weights that are not frozen are read through
  // texture copies made before each dispatch (matmul.ts matmulCopiesB).
  const m25 = Object.create(ctx.withProfile("cpu-simd"), { mesa: { value: "25.0.7" } }) as GpuContext;
  // Dead experts at both ends and side by side: a tile straying past its expert's query columns or output
  // rows into a neighbour's reads NaN; d = 13 takes the grouped matmuls' scalar loads.
  // `frozen`: Wq and Wo frozen (a decoder's weights); on cpu-simd the grouped matmuls read them from
  // texture copies (E·G·D and d multiples of 64), with the same results and no dead expert's texel.
  const cases: (MoaCase & { live: number[]; frozen?: boolean })[] = [
    { B: 2, T: 8, d: 64, E: 4, G: 2, D: 8, live: [1, 2], frozen: true },
    { B: 2, T: 8, d: 64, E: 4, G: 2, D: 8, live: [1, 2] },
    { B: 2, T: 8, d: 64, E: 4, G: 2, D: 32, live: [0, 3], frozen: true }, // heads of 64 wide: H's copy too
    { B: 2, T: 8, d: 48, E: 8, G: 2, D: 8, live: [0, 5] },
    { B: 2, T: 13, d: 12, E: 4, G: 2, D: 8, live: [1, 2] },
    { B: 3, T: 9, d: 13, E: 5, G: 2, D: 4, live: [2] },
    { B: 2, T: 16, d: 16, E: 6, G: 1, D: 8, live: [0, 3, 4] },
  ];
  for (const c of cases) {
    const own = new Owned(ctx), N = c.B * c.T, w = c.G * c.D, { d, E, G, D, live } = c;
    const dead = Array.from({ length: E }, (_, e) => e).filter((e) => !live.includes(e));
    // Token t runs one or more live experts (every live expert gets tokens), or none at every fifth token.
    const pattern = (t: number) =>
      t % 5 === 4 ? [] : live.filter((_, i) => (t >> i) & 1 || i === t % live.length);
    const g = gates(N, E, 31, pattern);
    const x = f32(randomArray(N * d, 32)), k = f32(randomArray(N * w, 33)), v = f32(randomArray(N * w, 34));
    const wq = f32(randomArray(d * E * w, 35, -0.5, 0.5)), wo = f32(randomArray(E * w * d, 36, -0.5, 0.5));
    const wqNaN = Float64Array.from(wq), woNaN = Float64Array.from(wo);
    for (const e of dead) {
      for (let r = 0; r < d; r++) wqNaN.fill(NaN, r * E * w + e * w, r * E * w + (e + 1) * w);
      woNaN.fill(NaN, e * w * d, (e + 1) * w * d);
    }
    for (const build of [ctx, gpuCtx, m25]) {
      const y = own.f32([N, d], new Float64Array(N * d).fill(NaN), "y");
      const scratch = moeScratch(build, { N, d, E, h: w });
      const [wqT, woT] = [own.f32([d, E * w], wqNaN), own.f32([E * w, d], woNaN)];
      if (c.frozen) [wqT, woT].forEach(freezeTensor);
      const calls = moaAttentionSparse(build, {
        x: own.f32([N, d], x),
        gate: own.f32([N, E], g),
        wq: wqT,
        wo: woT,
        k: own.f32([N, w], k),
        v: own.f32([N, w], v),
        y,
        E,
        G,
        D,
        T: c.T,
        scratch,
      });
      const textured = calls.filter((x) => x.code.includes(`var B: ${WEIGHT_TEXTURE}`)).map((x) => x.label);
      // A (x, then the heads' outputs) through a copy made before each dispatch: cpu-simd, k divisible by 64.
      const aTextured = calls.filter((x) => x.code.includes(`var A: ${WEIGHT_TEXTURE}`)).map((x) => x.label);
      const aFits = { moe_up: d % 64 === 0 && w % 4 === 0, moe_down: w % 64 === 0 && d % 4 === 0 };
      assertEquals(
        aTextured,
        build.profile === "cpu-simd" ? (["moe_up", "moe_down"] as const).filter((l) => aFits[l]) : [],
        `${build.profile} ${JSON.stringify(c)}: A copies`,
      );
      const what = `${build.profile} ${JSON.stringify(c)}`;
      // Wq (d, E·w) and Wo (E·w, d) as textures: frozen, or copied where matmulCopiesB says so.
      const viaTexture = build.profile === "cpu-simd" && (!!c.frozen || matmulCopiesB(build));
      const fits = { moe_up: (E * w) % 64 === 0, moe_down: d % 64 === 0 };
      const expected = viaTexture ? (["moe_up", "moe_down"] as const).filter((l) => fits[l]) : [];
      assertEquals(textured, expected, what);
      if (build === m25) assertEquals(textured.length, Number(fits.moe_up) + Number(fits.moe_down), what);
      await run(ctx, calls, "moa dead experts");
      const got = await readTensor(ctx, y);
      assert(got.every(Number.isFinite), `${what}: an unrouted expert's weights were read`);
      // The reference with the dead experts excluded: their gates are 0, so their (finite) weights add nothing.
      const want = moaAttentionRef(x, g, wq, k, v, wo, { N, d, E, G, D }, sequenceWindow(c.T));
      assertClose(got, want, TOL, `moa dead experts ${what}`);
      for (const t of Object.values(scratch)) t.buffer.destroy();
    }
    own.destroy();
  }
});

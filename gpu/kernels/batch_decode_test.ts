/**
 * The batched-decoding kernels (gpu/kernels/batch_decode.ts) against their float64 twins, on both kernel
 * profiles: sequences at different positions, each attending over its own cache only; MoA's unrouted
 * experts hold NaN weights and tokens routed to no expert get 0.
 */
import { ok as assert } from "node:assert/strict";
import { batchCacheWindow, kvWriteBatchRef } from "../../core/ref/batch_decode.ts";
import { cachedAttentionRef, cacheWindow, moaAttentionRef } from "../../core/ref/cached_attention.ts";
import { assertClose, Owned, randomArray, rng, runChecked as run, testGpu } from "../../tests/helpers/gpu.ts";
import { readTensor } from "../buffers.ts";
import { attentionCachedBatch, moaAttentionBatch } from "./batch_decode.ts";
import { moeScratch } from "./moe.ts";

// Softmax-weighted sums of f32 products over ≤ 9 keys of width ≤ 12, then a d-long projection: errors are
// ~1e-6; a wrong sequence, key row, head or expert is off by O(0.01–0.1).
const TOL = { atol: 2e-5, rtol: 2e-5 };

const f32 = (x: Float64Array) => Float64Array.from(Float32Array.from(x));

/** Rows b·T … b·T + T − 1 of a stacked (B·T, width) cache: sequence b's own cache. */
const own = (cache: Float64Array, b: number, T: number, width: number) =>
  cache.subarray(b * T * width, (b + 1) * T * width);

Deno.test("attentionCachedBatch: each sequence writes its row and attends over its own cache at its own position", async () => {
  const ctx = await testGpu();
  // D 12 does not divide the gpu profile's 64 threads: one thread per output column there.
  for (const { H, Hkv, D } of [{ H: 4, Hkv: 2, D: 8 }, { H: 2, Hkv: 1, D: 12 }]) {
    for (const build of [ctx, ctx.withProfile("gpu")]) {
      const o = new Owned(ctx), B = 4, T = 9, width = Hkv * D, pos = [0, 5, 8, 3];
      const q = f32(randomArray(B * H * D, 1)), k = f32(randomArray(B * width, 2));
      const v = f32(randomArray(B * width, 3));
      const kc0 = f32(randomArray(B * T * width, 4)), vc0 = f32(randomArray(B * T * width, 5));
      const kc = o.f32([B * T, width], kc0, "kc"), vc = o.f32([B * T, width], vc0, "vc");
      const out = o.f32([B, H * D], new Float64Array(B * H * D).fill(NaN), "o");
      const calls = attentionCachedBatch(build, {
        q: o.f32([B, H * D], q),
        k: o.f32([B, width], k),
        v: o.f32([B, width], v),
        kcache: kc,
        vcache: vc,
        pos: o.u32(pos),
        T,
        o: out,
        H,
        Hkv,
        D,
      });
      await run(ctx, calls, "attention_cached_batch");
      const kw = Float64Array.from(kc0), vw = Float64Array.from(vc0);
      kvWriteBatchRef(k, v, kw, vw, pos, T, width);
      const want = cachedAttentionRef(q, kw, vw, { N: B, H, Hkv, D }, batchCacheWindow(T, pos));
      const what = `${build.profile} H ${H} Hkv ${Hkv} D ${D}`;
      assertClose(await readTensor(ctx, out), want, TOL, `o ${what}`);
      assertClose(await readTensor(ctx, kc), kw, { atol: 0, rtol: 0 }, `kcache ${what}`);
      assertClose(await readTensor(ctx, vc), vw, { atol: 0, rtol: 0 }, `vcache ${what}`);
      // The batched reference is B batch-1 decoders, each over its own (T, width) cache.
      for (let b = 0; b < B; b++) {
        const one = cachedAttentionRef(
          q.subarray(b * H * D, (b + 1) * H * D),
          own(kw, b, T, width),
          own(vw, b, T, width),
          { N: 1, H, Hkv, D },
          cacheWindow(pos[b]!),
        );
        assertClose(want.subarray(b * H * D, (b + 1) * H * D), one, { atol: 1e-12, rtol: 1e-12 }, `ref ${b}`);
      }
      o.destroy();
    }
  }
});

Deno.test("moaAttentionBatch: routed heads attend over their own sequence's cache; unrouted experts (NaN weights) are never read", async () => {
  const ctx = await testGpu();
  const B = 6, T = 7, d = 13, E = 4, G = 2, D = 4, w = G * D, pos = [6, 0, 3, 5, 1, 2];
  const live = [1, 3], dead = [0, 2];
  // Token 4 routes to no expert; the others to one or both live experts.
  const pattern = (t: number) => (t === 4 ? [] : live.filter((_, i) => (t >> i) & 1 || i === t % 2));
  const r = rng(40), gate = new Float64Array(B * E);
  for (let t = 0; t < B; t++) for (const e of pattern(t)) gate[t * E + e] = 0.05 + 0.95 * r();
  const g = f32(gate);
  const x = f32(randomArray(B * d, 41)), k = f32(randomArray(B * w, 42)), v = f32(randomArray(B * w, 43));
  const kc0 = f32(randomArray(B * T * w, 44)), vc0 = f32(randomArray(B * T * w, 45));
  const wq = f32(randomArray(d * E * w, 46, -0.5, 0.5)), wo = f32(randomArray(E * w * d, 47, -0.5, 0.5));
  const wqNaN = Float64Array.from(wq), woNaN = Float64Array.from(wo);
  for (const e of dead) {
    for (let row = 0; row < d; row++) wqNaN.fill(NaN, row * E * w + e * w, row * E * w + (e + 1) * w);
    woNaN.fill(NaN, e * w * d, (e + 1) * w * d);
  }
  const kw = Float64Array.from(kc0), vw = Float64Array.from(vc0);
  kvWriteBatchRef(k, v, kw, vw, pos, T, w);
  const want = moaAttentionRef(x, g, wq, kw, vw, wo, { N: B, d, E, G, D }, batchCacheWindow(T, pos));
  assert(want.subarray(4 * d, 5 * d).every((y) => y === 0), "a token routed nowhere gets 0");
  // The batched reference is B batch-1 decoders, each over its own cache.
  for (let b = 0; b < B; b++) {
    const one = moaAttentionRef(
      x.subarray(b * d, (b + 1) * d),
      g.subarray(b * E, (b + 1) * E),
      wq,
      own(kw, b, T, w),
      own(vw, b, T, w),
      wo,
      { N: 1, d, E, G, D },
      cacheWindow(pos[b]!),
    );
    assertClose(want.subarray(b * d, (b + 1) * d), one, { atol: 1e-12, rtol: 1e-12 }, `ref ${b}`);
  }
  for (const build of [ctx, ctx.withProfile("gpu")]) {
    const o = new Owned(ctx);
    const kc = o.f32([B * T, w], kc0, "kc"), vc = o.f32([B * T, w], vc0, "vc");
    const y = o.f32([B, d], new Float64Array(B * d).fill(NaN), "y");
    const scratch = moeScratch(build, { N: B, d, E, h: w });
    const calls = moaAttentionBatch(build, {
      x: o.f32([B, d], x),
      gate: o.f32([B, E], g),
      wq: o.f32([d, E * w], wqNaN),
      wo: o.f32([E * w, d], woNaN),
      k: o.f32([B, w], k),
      v: o.f32([B, w], v),
      y,
      E,
      G,
      D,
      cache: { kcache: kc, vcache: vc, pos: o.u32(pos), T },
      scratch,
    });
    await run(ctx, calls, "moa_attention_batch");
    const got = await readTensor(ctx, y);
    assert(got.every(Number.isFinite), `${build.profile}: an unrouted expert's weights were read`);
    assertClose(got, want, TOL, `y ${build.profile}`);
    assertClose(await readTensor(ctx, kc), kw, { atol: 0, rtol: 0 }, `kcache ${build.profile}`);
    assertClose(await readTensor(ctx, vc), vw, { atol: 0, rtol: 0 }, `vcache ${build.profile}`);
    for (const t of Object.values(scratch)) t.buffer.destroy();
    o.destroy();
  }
});

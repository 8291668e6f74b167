import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { adamwStepRef } from "../../core/ref/adamw.ts";
import { assertClose, randomArray, testGpu } from "../../tests/helpers/gpu.ts";
import { createTensor, readTensor } from "../buffers.ts";
import { type KernelCall, runCalls } from "../dispatch.ts";
import { adamw, partialsFor, SQ_CHUNK, sumSquares, sumSquaresGroup } from "./optimizer.ts";

const H = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, lr: 3e-3, step: 3 };

for (const n of [1000, 999]) {
  Deno.test(`adamw() with clipping matches the float64 step at ${n} elements (${n % 4 ? "scalar" : "vec4"} kernel)`, async () => {
    const ctx = await testGpu();
    const f32 = (a: Float64Array) => Float32Array.from(a);
    const p = f32(randomArray(n, 1)), g = f32(randomArray(n, 2)), m = f32(randomArray(n, 3, -0.1, 0.1));
    const v = f32(randomArray(n, 4, 0, 0.01));
    const clip = 0.5, c1 = 1 - H.beta1 ** H.step, c2 = 1 - H.beta2 ** H.step;
    for (const finite of [1, 0]) {
      const t = [p, g, m, v].map((a, i) => createTensor(ctx, [n], "f32", a, `t${i}`));
      const stats = createTensor(ctx, [3], "f32", Float32Array.of(0, clip, finite), "stats");
      const hyper = createTensor(ctx, [3], "f32", Float32Array.of(H.lr, c1, c2), "hyper");
      const call = adamw(ctx, { param: t[0]!, grad: t[1]!, m: t[2]!, v: t[3]!, stats, hyper, ...H });
      await runCalls(ctx, [call]).done();
      const [gp, , gm, gv] = await Promise.all(t.map((x) => readTensor(ctx, x)));
      const ref = { param: Float64Array.from(p), m: Float64Array.from(m), v: Float64Array.from(v) };
      if (finite) {
        adamwStepRef({ ...ref, grad: Array.from(g, (x) => x * clip), ...H });
        const tol = { atol: 1e-6, rtol: 1e-5 };
        assertClose(gp!, ref.param, tol, "param");
        assertClose(gm!, ref.m, tol, "m");
        assertClose(gv!, ref.v, tol, "v");
      } else {
        // A non-finite step leaves everything as it was.
        assertEquals([gp, gm, gv], [p, m, v]);
      }
      for (const x of [...t, stats, hyper]) x.buffer.destroy();
    }
  });
}

Deno.test("sumSquares() over groups of gradients writes every chunk's float64 sum of squares in order", async () => {
  const ctx = await testGpu();
  // 20 gradients of odd sizes, more than one dispatch's bindings: grouped as the optimizer groups them.
  const sizes = Array.from({ length: 20 }, (_, i) => 1 + ((i * 977) % 700) + (i === 3 ? 256 : 0));
  const data = sizes.map((n, i) => Float64Array.from(Float32Array.from(randomArray(n, 40 + i))));
  const xs = data.map((d, i) => createTensor(ctx, [d.length], "f32", Float32Array.from(d), `g${i}`));
  const total = sizes.reduce((n, s) => n + partialsFor(s), 0);
  const partials = createTensor(ctx, [total], "f32", undefined, "partials");
  const group = sumSquaresGroup(ctx), calls: KernelCall[] = [];
  for (let first = 0, offset = 0; first < xs.length; first += group) {
    const part = xs.slice(first, first + group);
    calls.push(sumSquares(ctx, { xs: part, partials, offset }));
    offset += part.reduce((n, x) => n + partialsFor(x.size), 0);
  }
  assertEquals(calls.length, Math.ceil(20 / group));
  await ctx.scoped("sum_squares", () => runCalls(ctx, calls).done());
  const want = data.flatMap((d) =>
    Array.from(
      { length: partialsFor(d.length) },
      (_, c) => d.subarray(c * SQ_CHUNK, (c + 1) * SQ_CHUNK).reduce((a, v) => a + v * v, 0),
    )
  );
  assertClose(
    await readTensor(ctx, partials),
    Float64Array.from(want),
    { atol: 1e-5, rtol: 1e-5 },
    "partials",
  );
  for (const t of [...xs, partials]) t.buffer.destroy();
});

import { addNRef, addRef, mulRef, scaleRef } from "../../core/ref/elementwise.ts";
import { assertClose, randomArray, testGpu } from "../../tests/helpers/gpu.ts";
import { createTensor, readTensor } from "../buffers.ts";
import { runCalls } from "../dispatch.ts";
import { add, addN, fill, mul, scale } from "./elementwise.ts";

// f32 rounding of one or a few additions/multiplications of values in [-1, 1].
const TOL = { atol: 1e-6, rtol: 1e-6 };
const SIZES = [1, 7, 33, 1000, 65_537];

Deno.test("add, mul and scale match the float64 reference at odd sizes", async () => {
  const ctx = await testGpu();
  for (const n of SIZES) {
    const a64 = randomArray(n, n), b64 = randomArray(n, n + 1);
    const a = createTensor(ctx, [n], "f32", Float32Array.from(a64)),
      b = createTensor(ctx, [n], "f32", Float32Array.from(b64));
    const y1 = createTensor(ctx, [n]), y2 = createTensor(ctx, [n]), y3 = createTensor(ctx, [n]);
    const calls = [
      add(ctx, { a, b, y: y1 }),
      mul(ctx, { a, b, y: y2 }),
      scale(ctx, { x: a, y: y3, alpha: -2.5 }),
    ];
    for (const c of calls) await ctx.pipelines.check(c.code, c.label);
    await ctx.scoped("elementwise", () => runCalls(ctx, calls).done());
    const f = (x: Float64Array) => Float64Array.from(Float32Array.from(x));
    assertClose(await readTensor(ctx, y1), addRef(f(a64), f(b64)), TOL, `add n=${n}`);
    assertClose(await readTensor(ctx, y2), mulRef(f(a64), f(b64)), TOL, `mul n=${n}`);
    assertClose(await readTensor(ctx, y3), scaleRef(f(a64), -2.5), TOL, `scale n=${n}`);
  }
});

Deno.test("addN sums 1, 3, 8 and 19 inputs (chained dispatches) like the reference", async () => {
  const ctx = await testGpu();
  for (const k of [1, 3, 8, 19]) {
    const n = 33;
    const xs64 = Array.from(
      { length: k },
      (_, i) => Float64Array.from(Float32Array.from(randomArray(n, 100 + i))),
    );
    const xs = xs64.map((x) => createTensor(ctx, [n], "f32", Float32Array.from(x)));
    const y = createTensor(ctx, [n]);
    const calls = addN(ctx, { xs, y });
    for (const c of calls) await ctx.pipelines.check(c.code, c.label);
    await ctx.scoped("add_n", () => runCalls(ctx, calls).done());
    assertClose(await readTensor(ctx, y), addNRef(xs64), { atol: 1e-5, rtol: 1e-6 }, `add_n k=${k}`);
  }
});

Deno.test("fill writes the value everywhere", async () => {
  const ctx = await testGpu();
  const y = createTensor(ctx, [7]);
  const call = fill(ctx, { y, value: 1.5 });
  await ctx.pipelines.check(call.code, call.label);
  await runCalls(ctx, [call]).done();
  assertClose(await readTensor(ctx, y), new Float64Array(7).fill(1.5), { atol: 0, rtol: 0 }, "fill");
});

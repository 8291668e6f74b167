import type { ReduceOp } from "../../core/graph/op_types.ts";
import { reduceAllRef, reduceRowsRef } from "../../core/ref/reduce.ts";
import { assertClose, randomArray, testGpu } from "../../tests/helpers/gpu.ts";
import { createTensor, readTensor } from "../buffers.ts";
import { runCalls } from "../dispatch.ts";
import { REDUCE_CHUNK, reduceAll, reduceRows } from "./reduce.ts";

// f32 sums of ≤ 5000 values in [−3, 3): rounding grows like √n·2⁻²⁴·3 ≈ 1.3e-5 at worst here. Max is exact.
const TOL = { atol: 1e-4, rtol: 1e-5 };
const OPS: ReduceOp[] = ["sum", "mean", "max"];

Deno.test("reduceRows() matches the float64 reference for sum, mean and max at odd sizes, short last row", async () => {
  const ctx = await testGpu();
  for (const [n, cols] of [[1, 1], [7, 7], [33, 7], [1000, 33], [1000, 1000], [5000, 1]]) {
    const x64 = Float64Array.from(Float32Array.from(randomArray(n!, n! + cols!, -3, 3)));
    const x = createTensor(ctx, [n!], "f32", Float32Array.from(x64), "x");
    const rows = Math.ceil(n! / cols!);
    const out = createTensor(ctx, [rows], "f32", undefined, "out");
    for (const op of OPS) {
      const call = reduceRows(ctx, { x, out, op, cols: cols! });
      await ctx.pipelines.check(call.code, call.label);
      await ctx.scoped(call.label, () => runCalls(ctx, [call]).done());
      assertClose(
        await readTensor(ctx, out),
        reduceRowsRef(x64, cols!, op),
        TOL,
        `${op} n=${n} cols=${cols}`,
      );
    }
    x.buffer.destroy(), out.buffer.destroy();
  }
});

Deno.test("reduceAll() reduces a whole tensor in two passes, across chunk boundaries", async () => {
  const ctx = await testGpu();
  for (const n of [1, 7, 1000, REDUCE_CHUNK + 1, 5 * REDUCE_CHUNK - 3]) {
    const x64 = Float64Array.from(Float32Array.from(randomArray(n, 3 * n, -3, 3)));
    // The maximum in the last, short chunk: a pass that dropped the tail would miss it.
    x64[n - 1] = 7.5;
    const x = createTensor(ctx, [n], "f32", Float32Array.from(x64), "x");
    const out = createTensor(ctx, [1], "f32", undefined, "out");
    const partials = createTensor(ctx, [Math.ceil(n / REDUCE_CHUNK)], "f32", undefined, "partials");
    for (const op of OPS) {
      const calls = reduceAll(ctx, { x, out, op, partials });
      for (const c of calls) await ctx.pipelines.check(c.code, c.label);
      await ctx.scoped(op, () => runCalls(ctx, calls).done());
      assertClose(await readTensor(ctx, out), [reduceAllRef(x64, op)], TOL, `${op} over ${n}`);
    }
    for (const t of [x, out, partials]) t.buffer.destroy();
  }
});

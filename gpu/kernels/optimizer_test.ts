import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { adamwStepRef } from "../../core/ref/adamw.ts";
import { assertClose, randomArray, testGpu } from "../../tests/helpers/gpu.ts";
import { createTensor, readTensor } from "../buffers.ts";
import { runCalls } from "../dispatch.ts";
import { adamw } from "./optimizer.ts";

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

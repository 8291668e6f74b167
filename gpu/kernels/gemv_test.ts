import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { matmulRef } from "../../core/ref/matmul.ts";
import { assertClose, randomArray, testGpu } from "../../tests/helpers/gpu.ts";
import { createTensor, readTensor } from "../buffers.ts";
import { runCalls } from "../dispatch.ts";
import { gemv, gemvFits } from "./gemv.ts";
import { matmulPlan } from "./matmul.ts";

// As matmul_test.ts: f32 sums of k products of size ≤ 1 against float64 on the same f32-rounded inputs.
const TOL = { atol: 2e-5, rtol: 1e-5 };

for (const [k, n] of [[512, 4096], [4096, 512], [300, 33], [1, 1]] as const) {
  for (const transB of [false, true]) {
    Deno.test(`gemv 1×${k}×${n}${transB ? " (B transposed)" : ""} matches float64 in one dispatch`, async () => {
      const ctx = (await testGpu()).withProfile("gpu");
      const a = Float32Array.from(randomArray(k, 1)), b = Float32Array.from(randomArray(k * n, 2));
      const ta = createTensor(ctx, [1, k], "f32", a),
        tb = createTensor(ctx, transB ? [n, k] : [k, n], "f32", b);
      const tc = createTensor(ctx, [1, n], "f32");
      try {
        const step = runCalls(ctx, [gemv(ctx, { a: ta, b: tb, c: tc, k, n, transB })]);
        assertEquals(step.dispatches, 1);
        const want = matmulRef(Float64Array.from(a), Float64Array.from(b), { m: 1, k, n, transB });
        assertClose(await readTensor(ctx, tc), want, TOL, `gemv ${k}×${n}`);
      } finally {
        for (const t of [ta, tb, tc]) t.buffer.destroy();
      }
    });
  }
}

Deno.test("a one-row matmul runs as gemv exactly where the gpu profile would split K", async () => {
  const gpu = (await testGpu()).withProfile("gpu"), simd = (await testGpu()).withProfile("cpu-simd");
  // d512 decoding's MLP projections split K on the gpu profile (docs/performance.md).
  const split = matmulPlan(gpu, 1, 512, 4096).splits;
  assertEquals(split > 1, true);
  assertEquals(gemvFits(gpu, 1, false, split), true);
  assertEquals(gemvFits(gpu, 2, false, matmulPlan(gpu, 2, 512, 4096).splits), false, "two rows: the tiles");
  assertEquals(gemvFits(gpu, 1, true, split), false, "A transposed: the tiles");
  assertEquals(gemvFits(simd, 1, false, matmulPlan(simd, 1, 512, 4096).splits), false, "cpu-simd: unchanged");
});

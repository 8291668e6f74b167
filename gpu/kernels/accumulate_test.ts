import { ok as assert } from "node:assert/strict";
import { assertClose, randomArray, testGpu } from "../../tests/helpers/gpu.ts";
import { createTensor, readTensor } from "../buffers.ts";
import { runCalls } from "../dispatch.ts";
import { accumulateCalls, accumulateGroup } from "./accumulate.ts";

Deno.test("accumulateCalls() over 4 micro-steps leaves the mean of each tensor's 4 values (vec4 and scalar tensors, several groups)", async () => {
  const ctx = await testGpu();
  // Sizes with and without a multiple of 4, more tensors than one dispatch takes; accumulators start as NaN
  // (the first micro-step must not read them).
  const sizes = [1, 7, 16, 1000, 999, 4, 3, 12, 5, 64, 2];
  assert(sizes.length > accumulateGroup(ctx), `${sizes.length} tensors fit one dispatch`);
  const K = 4, xs = sizes.map((n, i) => createTensor(ctx, [n], "f32", undefined, `x${i}`));
  const ys = sizes.map((n, i) => createTensor(ctx, [n], "f32", new Float32Array(n).fill(NaN), `y${i}`));
  const pairs = xs.map((x, i) => ({ x, y: ys[i]! }));
  const sums = sizes.map((n) => new Float64Array(n));
  for (let k = 0; k < K; k++) {
    const values = sizes.map((n, i) => Float32Array.from(randomArray(n, 10 * k + i)));
    values.forEach((v, i) => {
      ctx.device.queue.writeBuffer(xs[i]!.buffer, 0, v);
      v.forEach((x, j) => sums[i]![j]! += x);
    });
    const calls = accumulateCalls(ctx, pairs, { first: k === 0, scale: k === K - 1 ? 1 / K : 1 });
    assert(calls.length === Math.ceil(sizes.length / accumulateGroup(ctx)));
    await runCalls(ctx, calls).done();
  }
  for (let i = 0; i < sizes.length; i++) {
    const want = sums[i]!.map((s) => s / K);
    // f32 sums of 4 values in [-1, 1].
    assertClose(await readTensor(ctx, ys[i]!), want, { atol: 1e-6, rtol: 1e-6 }, `tensor ${i} (${sizes[i]})`);
  }
  for (const t of [...xs, ...ys]) t.buffer.destroy();
});

import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { balanceBiasUpdateRef } from "../../core/ref/token_choice.ts";
import { Rng } from "../../core/util/rng.ts";
import { assertClose, testGpu } from "../../tests/helpers/gpu.ts";
import { createTensor, readTensor } from "../buffers.ts";
import { runCalls } from "../dispatch.ts";
import { balanceBiasUpdate } from "./balance.ts";

Deno.test("balanceBiasUpdate() moves each bias by ±rate (0 at the mean load) as the float64 sign rule, and not after a skipped step", async () => {
  const ctx = await testGpu(), rng = new Rng(17);
  for (const [E, k, tokens] of [[4, 2, 64], [8, 1, 224], [9, 3, 1000], [64, 6, 4096]] as const) {
    // Token counts per expert summing to k·tokens, one expert exactly at the mean (k·tokens / E when whole).
    const counts = Array.from({ length: E }, () => rng.int(2 * Math.floor((k * tokens) / E) + 1));
    if ((k * tokens) % E === 0) counts[0] = (k * tokens) / E;
    const load = Float32Array.from(counts, (c) => c / tokens);
    const bias0 = Float32Array.from({ length: E }, () => rng.next() * 0.2 - 0.1);
    for (const finite of [1, 0]) {
      const b = createTensor(ctx, [E], "f32", bias0, "bias");
      const l = createTensor(ctx, [E], "f32", load, "load");
      const stats = createTensor(ctx, [3], "f32", Float32Array.of(1.5, 1, finite), "stats");
      const call = balanceBiasUpdate(ctx, { bias: b, load: l, stats, rate: 0.01, k, tokens });
      await ctx.pipelines.check(call.code, call.label);
      await ctx.scoped(call.label, () => runCalls(ctx, [call]).done());
      const got = await readTensor(ctx, b);
      const want = finite ? balanceBiasUpdateRef(bias0, load, { rate: 0.01, k, tokens }) : bias0;
      assertClose(got, want, { atol: 1e-8, rtol: 0 }, `E ${E} k ${k} T ${tokens} finite ${finite}`);
      // The steps themselves, exactly: −rate above the mean load, +rate below, 0 at it.
      if (finite) {
        const steps = Array.from(got, (v, i) => Math.round((v - bias0[i]!) / 0.01));
        assertEquals(steps, counts.map((c) => Math.sign(k * tokens - E * c)), `E ${E}`);
      }
      for (const t of [b, l, stats]) t.buffer.destroy();
    }
  }
});

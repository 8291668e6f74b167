/**
 * Dynamic loss scaling and half precision training on the GPU (docs/performance.md "Half precision"), on
 * any adapter: the scale's update kernel against its reference; f32 training with the loss scaled by a power
 * of two is the unscaled training bit for bit; an injected non-finite gradient skips the step and halves the
 * scale, finite steps grow it; and f16 operands (packed words, which llvmpipe can run: the same bits and
 * sums as the shader-f16 kernel) train the micro model along the f32 loss curve, overflows of a too large
 * scale skipped until the scale fits.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { loadExperiment } from "../core/config/mod.ts";
import { loadDataset } from "../core/data/dataset.ts";
import {
  GpuTrainBackend,
  type GpuTrainOptions,
  parseFaultSteps,
  type TrainFaults,
} from "../core/train/gpu_backend.ts";
import { initialLossScale, type LossScaleSettings, nextLossScale } from "../core/train/loss_scale.ts";
import type { StepStats, TrainState } from "../core/train/backend.ts";
import { createTensor, readTensor, writeTensor } from "../gpu/buffers.ts";
import { runCalls } from "../gpu/dispatch.ts";
import { lossScaleUpdate } from "../gpu/kernels/optimizer.ts";
import { f16Test } from "./helpers/f16.ts";
import { testGpu } from "./helpers/gpu.ts";
import { type GpuContext, openGpu } from "../gpu/device.ts";

Deno.test("the loss scale's update kernel follows nextLossScale over overflows and runs of finite steps, within its bounds", async () => {
  const ctx = await testGpu();
  const settings = { init: 8, growthInterval: 3, factor: 2, min: 2, max: 32 };
  const state = createTensor(ctx, [3], "f32", Float32Array.of(8, 0, 8), "state");
  const stats = createTensor(ctx, [3], "f32", undefined, "stats");
  const call = lossScaleUpdate(ctx, { state, stats, settings });
  let ref = initialLossScale(settings);
  const flags = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1];
  for (const [i, f] of flags.entries()) {
    writeTensor(ctx, stats, Float32Array.of(1, 1, f));
    await ctx.scoped("loss scale", () => runCalls(ctx, [call]).done());
    const used = ref.scale;
    ref = nextLossScale(ref, f === 1, settings);
    assertEquals(
      Array.from(await readTensor(ctx, state)),
      [ref.scale, ref.good, used],
      `after step ${i + 1}`,
    );
  }
  for (const t of [state, stats]) t.buffer.destroy();
});

/**
 * `steps` steps of the micro model on a backend made with `options` (on `gpu`, else the tests' shared device);
 * its step statistics and final state.
 */
async function train(
  steps: number,
  options: GpuTrainOptions,
  faults: TrainFaults = {},
  sets: string[] = [],
  gpu?: GpuContext,
): Promise<{ stats: StepStats[]; state: TrainState }> {
  const ctx = gpu ?? await testGpu();
  const { config } = (await loadExperiment("tests/fixtures/micro.yaml", { sets })).points[0]!;
  const b = await GpuTrainBackend.create(config, ctx, faults, options);
  try {
    const ds = await loadDataset(config);
    const stats: StepStats[] = [];
    for (let t = 0; t < steps; t++) stats.push(await b.step(ds.trainBatch(t, config.train.batch), 1e-2));
    return { stats, state: await b.exportState() };
  } finally {
    b.destroy();
  }
}

Deno.test("f32 training with the loss scaled by 2¹⁶ is the unscaled training bit for bit (losses, norms, parameters, moments)", async () => {
  const scaled = { init: 2 ** 16, growthInterval: 2000, factor: 2, min: 1, max: 2 ** 24 };
  // With accumulation too: the micro-steps' scaled gradients are summed, then unscaled once.
  for (const sets of [[], ["train.micro_batch=4"]]) {
    const plain = await train(4, {}, {}, sets), withScale = await train(4, { lossScale: scaled }, {}, sets);
    assertEquals(
      withScale.stats.map((s) => [s.loss, s.gradNorm, s.finite]),
      plain.stats.map((s) => [s.loss, s.gradNorm, s.finite]),
    );
    assertEquals(plain.stats[0]!.lossScale, undefined);
    assertEquals(
      withScale.stats.map((s) => s.lossScale),
      plain.stats.map(() => ({ used: 2 ** 16, next: 2 ** 16 })),
    );
    for (const [name, p] of plain.state.params) {
      assertEquals(withScale.state.params.get(name)!.data, p.data, `parameter ${name} (${sets})`);
      assertEquals(withScale.state.adamM.get(name), plain.state.adamM.get(name), `first moment ${name}`);
      assertEquals(withScale.state.adamV.get(name), plain.state.adamV.get(name), `second moment ${name}`);
    }
    assertEquals(withScale.state.lossScale, { scale: 2 ** 16, good: 4 });
  }
});

Deno.test("an injected NaN gradient skips the step and halves the scale; finite steps grow it back (f32)", async () => {
  const settings: LossScaleSettings = { init: 1024, growthInterval: 2, factor: 2, min: 1, max: 2 ** 24 };
  const r = await train(6, { lossScale: settings }, { nanGradAt: parseFaultSteps("2,3") });
  assertEquals(r.stats.map((s) => s.finite), [true, false, false, true, true, true]);
  // Step 1 good (1 of 2); 2 and 3 overflow: 512, 256; 4, 5 good: 512 after 5; 6 good (1 of 2).
  assertEquals(r.stats.map((s) => s.lossScale), [
    { used: 1024, next: 1024 },
    { used: 1024, next: 512 },
    { used: 512, next: 256 },
    { used: 256, next: 256 },
    { used: 256, next: 512 },
    { used: 512, next: 512 },
  ]);
  assertEquals(r.state.lossScale, { scale: 512, good: 1 });
  // The skipped steps changed nothing: the same as training without them, scaled or not.
  const clean = await train(4, {}, { nanGradAt: parseFaultSteps("2,3") });
  assertEquals(r.stats.slice(0, 4).map((s) => s.loss), clean.stats.map((s) => s.loss));
});

Deno.test("f16 operands (packed, any adapter) train the micro model along the f32 loss curve; a scale too large for f16 overflows and is halved until it fits", async () => {
  const steps = 16;
  const f32 = await train(steps, {});
  // 2²⁴: the scaled gradients pass f16's 65504 and are cast to infinity, so the first steps are skipped.
  const big = { init: 2 ** 24, growthInterval: 2000, factor: 2, min: 1, max: 2 ** 24 };
  const f16 = await train(steps, { f16: "f16-packed", lossScale: big });
  const skipped = f16.stats.findIndex((s) => s.finite);
  assert(skipped >= 1, `the first step overflows at 2²⁴: ${JSON.stringify(f16.stats[0])}`);
  assert(f16.stats.slice(skipped).every((s) => s.finite), "once the scale fits, every step trains");
  for (let i = 0; i < skipped; i++) {
    assertEquals(f16.stats[i]!.lossScale, { used: 2 ** (24 - i), next: 2 ** (23 - i) });
    assert(Number.isFinite(f16.stats[i]!.loss), "the loss itself is finite: an overflow of the scale");
  }
  // The run that skipped k steps trained steps − k: compare it with f32 over its own batches instead.
  const f16Scaled = await train(steps, { f16: "f16-packed" });
  assert(f16Scaled.stats.every((s) => s.finite), "2¹⁶ fits this model's gradients");
  const a = f32.stats.map((s) => s.loss), h = f16Scaled.stats.map((s) => s.loss);
  const worst = Math.max(...a.map((x, i) => Math.abs(x - h[i]!)));
  console.log(`f16 (packed) vs f32 over ${steps} steps of the micro model: worst loss gap ${worst}`);
  assert(a.at(-1)! < a[0]! - 0.2, `f32 learns: ${a}`);
  assert(worst < 1e-3, `f16 losses ${h} vs f32 ${a}: worst gap ${worst}`);
  assert(worst > 0, "f16 operands change the numbers (else the f16 path did not run)");
});

// The shader-f16 kernel reads the same words as the packed one and sums them in the same order
// (gpu/kernels/f16_test.ts), so training with it must be the packed training bit for bit. Runs where an adapter
// has shader-f16: this process's, or Mesa's Vulkan driver in a child process (tests/helpers/f16.ts).
await f16Test(
  "native f16 operands (array<f16>, shader-f16) train the micro model exactly as the packed ones: losses, norms, scale, parameters",
  import.meta.url,
  async () => {
    const ctx = await openGpu({ require: { features: ["shader-f16"], why: "this test" } });
    try {
      const steps = 6;
      const native = await train(steps, { f16: "f16" }, {}, [], ctx);
      const packed = await train(steps, { f16: "f16-packed" }, {}, [], ctx);
      const f32 = await train(steps, {}, {}, [], ctx);
      const summary = (r: typeof f32) =>
        r.stats.map((s) => [s.loss, s.gradNorm, s.finite, s.lossScale?.used]);
      assertEquals(summary(native), summary(packed));
      for (const [name, p] of packed.state.params) {
        assertEquals(native.state.params.get(name)!.data, p.data, `parameter ${name}`);
      }
      assert(
        native.stats.some((s, i) => s.loss !== f32.stats[i]!.loss),
        "f16 operands change the numbers (else the f16 path did not run)",
      );
    } finally {
      ctx.destroy();
    }
  },
);

Deno.test("the loss scale is part of the training state: export, import into a new backend, continue = straight run (f16 packed)", async () => {
  const ctx = await testGpu();
  const { config } = (await loadExperiment("tests/fixtures/micro.yaml")).points[0]!;
  const ds = await loadDataset(config);
  const batch = (t: number) => ds.trainBatch(t, config.train.batch);
  const options: GpuTrainOptions = { f16: "f16-packed" }, faults = { nanGradAt: parseFaultSteps("2") };
  const run = async (b: GpuTrainBackend, from: number, to: number) => {
    const out: StepStats[] = [];
    for (let t = from; t < to; t++) out.push(await b.step(batch(t), 1e-2));
    return out;
  };
  const straight = await GpuTrainBackend.create(config, ctx, faults, options);
  const first = await GpuTrainBackend.create(config, ctx, faults, options);
  const second = await GpuTrainBackend.create(config, ctx, {}, options);
  try {
    const all = await run(straight, 0, 6);
    await run(first, 0, 3);
    const state = await first.exportState();
    assertEquals(state.lossScale, { scale: 2 ** 15, good: 1 }); // step 2's NaN halved it; step 3 was good
    await second.importState(state);
    const rest = await run(second, 3, 6);
    assertEquals(rest.map((s) => [s.loss, s.lossScale]), all.slice(3).map((s) => [s.loss, s.lossScale]));
    assertEquals(rest[0]!.lossScale, { used: 2 ** 15, next: 2 ** 15 });
  } finally {
    for (const b of [straight, first, second]) b.destroy();
  }
});

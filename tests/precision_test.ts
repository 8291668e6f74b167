/**
 * `hardware.precision` (docs/performance.md "Half precision"): optional, absent reading f32 so that existing
 * configs resolve to the same YAML; bad values are located config errors; and f16 on an adapter (or a
 * device) without `shader-f16` is refused with exit 2 before anything is allocated or written, the message
 * naming the feature and the adapter. The f16 copies of matmul operands count in the memory `run` checks.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { ConfigError, experimentToYaml, parseExperimentText, precisionOf } from "../core/config/mod.ts";
import { GpuTrainBackend } from "../core/train/gpu_backend.ts";
import { f16CopyBytes, plan, trainMemoryEstimate, trainPlanBytes } from "../core/plan/plan.ts";
import { GpuFeatureError, GpuLimitError } from "../gpu/errors.ts";
import { cli } from "./helpers/cli.ts";
import { allocationGuard, interceptBuffers, testGpu } from "./helpers/gpu.ts";

const MICRO = await Deno.readTextFile("tests/fixtures/micro.yaml");

Deno.test("hardware.precision is optional: absent, a config resolves to the same YAML as before and reads f32", () => {
  const plain = parseExperimentText(MICRO, "micro.yaml").points[0]!.config;
  assertEquals(plain.hardware.precision, undefined);
  assertEquals(precisionOf(plain), "f32");
  assert(!experimentToYaml(plain).includes("precision"), experimentToYaml(plain));
  const f16 =
    parseExperimentText(MICRO, "micro.yaml", { sets: ["hardware.precision=f16"] }).points[0]!.config;
  assertEquals(precisionOf(f16), "f16");
  assert(experimentToYaml(f16).includes("\n  precision: f16\n"), experimentToYaml(f16));
  // The saved YAML reads back to the same config.
  assertEquals(parseExperimentText(experimentToYaml(f16), "again.yaml").points[0]!.config, f16);
});

Deno.test("a bad hardware.precision is a located config error; f16 needs the webgpu backend", () => {
  const bad = (yaml: string, sets: string[] = []) => {
    try {
      parseExperimentText(yaml, "t.yaml", { sets });
    } catch (e) {
      if (e instanceof ConfigError) return e.message;
      throw e;
    }
    throw new Error("accepted");
  };
  const a = bad("hardware:\n  precision: f8\n");
  assert(/^t\.yaml:2:14: hardware\.precision: .*"f32".*"f16"/m.test(a), a);
  const b = bad("name: x\n", ["hardware.precision=bf16"]);
  assert(/--set:1:\d+: hardware\.precision/.test(b), b);
  const c = bad("hardware:\n  backend: cpu\n  precision: f16\n");
  assert(/^t\.yaml:3:14: hardware\.precision: .*webgpu backend/m.test(c), c);
});

Deno.test("f16 training on a device without shader-f16 is refused (GpuFeatureError, a GpuLimitError) before any buffer exists", async () => {
  const ctx = await testGpu(); // opened without asking for shader-f16, on any adapter
  assert(!ctx.features.has("shader-f16"));
  const guard = allocationGuard(ctx);
  const guarded = guard.ctx;
  const { config } = parseExperimentText(MICRO, "micro.yaml", { sets: ["hardware.precision=f16"] })
    .points[0]!;
  const e = await GpuTrainBackend.create(config, guarded).then(() => null, (e) => e);
  assert(e instanceof GpuFeatureError && e instanceof GpuLimitError, String(e));
  assert(e.message.includes("shader-f16") && e.message.includes(ctx.adapter.description), e.message);
  assertEquals(guard.allocations(), 0);
});

Deno.test("f16 training's copies of matmul operands: counted as the bytes its executors allocate, and in the memory run checks", async () => {
  const config = (sets: string[]) => parseExperimentText(MICRO, "micro.yaml", { sets }).points[0]!.config;
  const f16 = config(["hardware.precision=f16"]), f32 = config([]);
  const p = plan(f16, "train-dense", { lossScale: true }), copies = f16CopyBytes(p);
  assert(copies > 0);
  assertEquals(trainPlanBytes(p, "f16") - trainPlanBytes(p), copies);
  const need32 = trainPlanBytes(plan(f32, "train-dense"));
  assertEquals([trainMemoryEstimate(f32).bytes, trainMemoryEstimate(f32).planned?.f16Copies], [need32, 0]);
  assertEquals(trainMemoryEstimate(f16).bytes, trainPlanBytes(p, "f16"));
  assertEquals(trainMemoryEstimate(f16).planned?.f16Copies, copies);
  // What the training and evaluation executors allocate for f16 copies (one buffer per value, shared).
  let allocated = 0;
  const counted = interceptBuffers(await testGpu(), (d, real) => {
    if (d.label?.startsWith("f16_copy")) allocated += d.size;
    return real(d);
  });
  const b = await GpuTrainBackend.create(f16, counted, {}, { f16: "f16-packed" });
  b.destroy();
  assertEquals(allocated, copies);
  // A budget between the f32 and the f16 needs: the dry run fits f32 and refuses f16 (exit 2).
  const budget = `hardware.memory_budget=${need32 + Math.floor(copies / 2)}`;
  const dry = (sets: string[]) =>
    cli("run", "tests/fixtures/micro.yaml", "--dry-run", "--json", ...sets.flatMap((x) => ["--set", x]));
  const ok32 = await dry([budget]), no16 = await dry([budget, "hardware.precision=f16"]);
  assertEquals(ok32.code, 0, ok32.err.join("\n"));
  assertEquals(no16.code, 2, no16.err.join("\n"));
  const point = no16.json().points[0];
  assertEquals([point.memory_f16_copies_bytes, point.fits_budget], [copies, false]);
  assert(no16.out.some((l) => l.includes("f16 copies of matmul operands")), no16.out.join("\n"));
  assert(
    /needs more memory than hardware\.memory_budget allows/.test(no16.err.join("\n")),
    no16.err.join("\n"),
  );
});

// The command-level refusal needs an adapter without shader-f16 (llvmpipe); on one with it, f16 would train.
const adapter = await (globalThis.navigator as Navigator | undefined)?.gpu?.requestAdapter();
const adapterHasF16 = adapter?.features.has("shader-f16") ?? false;
if (adapterHasF16) {
  console.log(
    `SKIP "run with hardware.precision f16 exits 2": the adapter ${
      adapter!.info.description
    } has shader-f16, ` +
      "so f16 trains there instead of being refused",
  );
}

Deno.test({
  name:
    "run --set hardware.precision=f16 on an adapter without shader-f16 exits 2, naming the feature and the adapter, and writes nothing",
  ignore: adapterHasF16,
  async fn() {
    const dir = await Deno.makeTempDir();
    try {
      const runs = `${dir}/runs`;
      const r = await cli(
        "run",
        "tests/fixtures/micro.yaml",
        "--set",
        "hardware.precision=f16",
        "--runs-dir",
        runs,
        "--no-dashboard",
      );
      assertEquals(r.code, 2, r.err.join("\n"));
      const text = r.err.join("\n");
      assert(
        /^Plan refused: hardware\.precision f16 .*needs the WebGPU feature shader-f16, which the adapter .+ does not have: train with hardware\.precision f32/
          .test(text),
        text,
      );
      assert(text.includes(adapter!.info.description), text);
      assert(!/\n\s+at /.test(text), "no stack trace");
      // No store, run directory or data cache: the runs directory was never created.
      assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), []);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

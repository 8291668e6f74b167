/**
 * The decode suite's sizes (core/bench/decode.ts): 125m and 1b pair a DS-MoE and a dense model of equal
 * totals under the top-k nearest threshold@0.5's measured share; a software adapter skips them unless named;
 * their cases check the first tokens of the timed model against float64 (run here on one layer of each shape);
 * a tensor past the adapter's limits is refused before any weight is made.
 */
import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import {
  type BenchCase,
  benchTensor,
  DECODE_LARGE_RULE,
  DECODE_SIZES,
  type DecodeBenchSize,
  decodeCases,
  decodeShare,
  decodeSizesFor,
  quickDecodeSize,
  runCases,
  skippedDecodeLine,
} from "../core/bench/mod.ts";
import { loadExperiment } from "../core/config/mod.ts";
import { countParams } from "../core/plan/counts.ts";
import type { ParamSpec } from "../core/plan/model.ts";
import type { GpuContext } from "../gpu/device.ts";
import { testGpu } from "./helpers/gpu.ts";

const size = (name: string) => DECODE_SIZES.find((s) => s.name === name)!;

async function models(s: DecodeBenchSize) {
  const load = async (file: string, sets: readonly string[]) =>
    (await loadExperiment(`configs/${file}`, { sets })).config;
  return {
    sparse: await load(s.config ?? "dsmoe-tiny.yaml", s.sets),
    dense: await load(s.denseConfig ?? "dense-tiny.yaml", s.denseSets),
  };
}

Deno.test("decode sizes 125m and 1b: GPT-style shapes, equal totals within 0.1%, hidden % near threshold@0.5's 36.0%", async () => {
  const want = {
    // configs/real/*-125m.yaml as they are: 123,287,808 vs 123,177,216 parameters.
    "125m": {
      d: 768,
      layers: 12,
      sparse: 123_287_808,
      dense: 123_177_216,
      share: "hidden 36.6%, 56.9% of all",
    },
    "1b": {
      d: 2048,
      layers: 16,
      sparse: 944_412_672,
      dense: 944_019_456,
      share: "hidden 36.0%, 43.2% of all",
    },
  } as const;
  for (const [name, w] of Object.entries(want)) {
    const s = size(name), m = await models(s);
    assertEquals([s.large, s.rule], [true, DECODE_LARGE_RULE], name);
    for (const c of [m.sparse, m.dense]) {
      assertEquals([c.model.d_model, c.model.layers, c.data.tokenizer], [w.d, w.layers, "gpt2"], name);
    }
    const [a, b] = [countParams(m.sparse).total, countParams(m.dense).total];
    assertEquals([a, b], [w.sparse, w.dense], name);
    assert(Math.abs(a - b) / b < 0.001, `${name}: ${a} vs ${b}`);
    assertEquals(decodeShare(m.sparse, DECODE_LARGE_RULE), w.share, name);
  }
  // The small sizes keep their rule: top-2 of 4 attention and of 8 MLP experts.
  assertEquals(decodeShare((await models(size("tiny"))).sparse), "hidden 33.3%, 37.8% of all");
});

Deno.test("decodeSizesFor(): a software adapter skips 125m and 1b unless they are named; a GPU runs all", () => {
  const soft = {
    description: "llvmpipe (LLVM 15.0.6, 256 bits)",
    vendor: "",
    architecture: "",
    isFallbackAdapter: false,
  };
  const gpu = {
    description: "NVIDIA H100 80GB HBM3",
    vendor: "nvidia",
    architecture: "",
    isFallbackAdapter: false,
  };
  const names = (x: readonly DecodeBenchSize[]) => x.map((s) => s.name);
  const onSoft = decodeSizesFor(soft);
  assertEquals([names(onSoft.sizes), names(onSoft.skipped)], [["tiny", "d512"], ["125m", "1b"]]);
  assertEquals(names(decodeSizesFor({ ...soft, description: "x", isFallbackAdapter: true }).skipped), [
    "125m",
    "1b",
  ]);
  const onGpu = decodeSizesFor(gpu);
  assertEquals([names(onGpu.sizes), names(onGpu.skipped)], [["tiny", "d512", "125m", "1b"], []]);
  assertEquals(names(decodeSizesFor(soft, ["1b", "tiny"]).sizes), ["1b", "tiny"]);
  assertThrows(() => decodeSizesFor(soft, ["7b"]), /no decode size "7b"/);
  const line = skippedDecodeLine(names(onSoft.skipped), soft.description);
  assert(line.includes("125m, 1b skipped on llvmpipe") && line.includes("--decode-sizes 125m,1b"), line);
  // One layer of the same shape, the byte vocabulary: small enough for llvmpipe and a test.
  const q = quickDecodeSize(size("1b"));
  assertEquals([q.name, q.tokens, q.checkTokens], ["1b-quick", 4, 2]);
  assert(q.sets.includes("model.d_model=2048") && q.sets.includes("model.layers=1"));
});

Deno.test("benchTensor(): per tensor, seeded by name, the init's std; ones and zeros as the init says", () => {
  const spec = (name: string, shape: number[], init: ParamSpec["init"], std = 0.02) =>
    ({ value: { name, shape }, init, std, decay: true }) as unknown as ParamSpec;
  const a = benchTensor(spec("h0.w", [256, 512], "normal"), 7);
  assertEquals(a, benchTensor(spec("h0.w", [256, 512], "normal"), 7));
  assert(a.some((v, i) => v !== benchTensor(spec("h1.w", [256, 512], "normal"), 7)[i]), "another stream");
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  const std = Math.sqrt(a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length);
  assert(Math.abs(mean) < 2e-4 && Math.abs(std - 0.02) < 2e-4, `mean ${mean}, std ${std}`);
  assert(a.every((v) => Math.abs(v) <= Math.sqrt(3) * 0.02), "uniform within ±√3·std");
  assertEquals([...benchTensor(spec("g", [3], "ones"), 7)], [1, 1, 1]);
  assertEquals([...benchTensor(spec("b", [3], "zeros"), 7)], [0, 0, 0]);
});

/** The test device seen through other limits (the decode cases read them from the context). */
function limited(
  ctx: GpuContext,
  limits: Partial<Record<"maxStorageBufferBindingSize" | "maxBufferSize", number>>,
) {
  const plain = {
    maxStorageBufferBindingSize: ctx.limits.maxStorageBufferBindingSize,
    maxBufferSize: ctx.limits.maxBufferSize,
  };
  const view = Object.create(
    ctx.limits,
    Object.fromEntries(
      Object.entries({ ...plain, ...limits }).map(([k, v]) => [k, { value: v }]),
    ),
  );
  return Object.create(ctx, { limits: { value: view } }) as GpuContext;
}

Deno.test("decode 125m: an embedding past maxStorageBufferBindingSize is an error row naming it, before any weight is made", async () => {
  const ctx = limited(await testGpu(), { maxStorageBufferBindingSize: 128 * 2 ** 20 });
  const progress: string[] = [];
  const [queued] = await decodeCases(ctx, [size("125m")], { progress: (l) => progress.push(l) });
  const rows = await runCases([queued!], { warmup: 0, reps: 1, perSync: 1 });
  assertEquals(rows.map((r) => r.impl), ["dense", "sparse"]);
  for (const r of rows) {
    assertEquals(r.ms, null);
    assert(
      /decode 125m .*tensor "wte" \[50257, 768\] takes 154389504 bytes .*maxStorageBufferBindingSize \(134217728/
        .test(r.error ?? ""),
      r.error,
    );
  }
  // Refused by the shapes alone: the float64 reference (announced before it starts) never began.
  assertEquals(progress, []);
});

/** Checks then times the cases once (the bench's check is the assertion: an error row fails the test). */
async function runChecked(cases: BenchCase[]) {
  const rows = await runCases(cases, { warmup: 0, reps: 1, perSync: 1 });
  for (const r of rows) {
    assert(r.error === undefined, `${r.case} ${r.impl}: ${r.error}`);
    assert(typeof r.max_err === "number" && Number.isFinite(r.max_err) && r.ms! > 0, `${r.case} ${r.impl}`);
  }
  return rows;
}

Deno.test("decode 125m, one layer of its shape: both cases check the first 2 of 4 tokens against float64, then time", async () => {
  const ctx = await testGpu();
  const quick = quickDecodeSize(size("125m"));
  const cases = await decodeCases(ctx, [quick]);
  assertEquals(cases.map((c) => c.name), [
    "125m-quick (7.2M vs 7.19M params, hidden 36.6%, 38.6% of all) 4 tokens queued (first 2 checked)",
    "125m-quick (7.2M vs 7.19M params, hidden 36.6%, 38.6% of all) 4 tokens read each (first 2 checked)",
  ]);
  const rows = await runChecked(cases);
  assertEquals(rows.map((r) => `${r.impl} ${r.tokens}`), ["dense 4", "sparse 4", "dense 4", "sparse 4"]);
  // The check compares the logits after token 2 of the timed model: with the reference of all 4 tokens
  // (the same size checked in full) in its place, every row fails.
  const [full] = await decodeCases(ctx, [{ ...quick, checkTokens: 4 }]);
  const [early] = cases;
  const swapped: BenchCase = {
    ...early!,
    setup() {
      const s = early!.setup(), f = full!.setup();
      return { ...s, reference: f.reference };
    },
  };
  const bad = await runCases([swapped], { warmup: 0, reps: 1, perSync: 1 });
  for (const r of bad) assert(r.error?.includes("float64 reference"), `${r.impl}: ${r.error}`);
});

Deno.test("decode 1b, one layer of its shape (d 2048, 16 heads of 128, MLP 8 × 1280 / 10,240): checked and timed", async () => {
  const ctx = await testGpu();
  const [queued] = await decodeCases(ctx, [quickDecodeSize(size("1b"))]);
  assert(queued!.name.startsWith("1b-quick (53M vs 53M params, hidden 36.0%"), queued!.name);
  await runChecked([queued!]);
});

Deno.test("decode 125m, one layer, with the real-GPU kernel templates: checked against float64", async () => {
  // A real GPU runs the `gpu` profile's kernels (GEMV, a workgroup per decode-attention head): here at
  // 125m's widths (d 768, heads of 64), on llvmpipe. (1b's one layer passes too, but takes over a minute
  // with these templates on llvmpipe.)
  const ctx = (await testGpu()).withProfile("gpu");
  const cases = await decodeCases(ctx, [quickDecodeSize(size("125m"))]);
  await runChecked(cases.filter((c) => c.name.includes("queued")));
});

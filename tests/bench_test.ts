/**
 * `deno task bench`: the quick run through the CLI yields a checked, timed row for ours and for
 * tfjs-webgpu in every case, and the correctness gate turns a wrong kernel into an error row.
 */
import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import {
  BenchCheckError,
  type BenchRow,
  checkClose,
  formatTable,
  MATMUL_LARGE,
  MATMUL_SHAPES_QUICK,
  matmulCases,
  matmulShapes,
  runCases,
  withPeakShare,
} from "../core/bench/mod.ts";
import { openTfjs } from "../core/bench/tfjs.ts";
import { cli } from "./helpers/cli.ts";
import { testGpu } from "./helpers/gpu.ts";

Deno.test("bench --quick --json checks and times both implementations of every case, summary last", async () => {
  await testGpu(); // fails with "no WebGPU adapter: …" rather than skipping
  // In its own process: the train suite starts jax-js (a second GPU device and WebAssembly worker
  // threads), which this test process should not carry until it exits.
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "mod.ts", "bench", "--quick", "--json"],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const lines = (b: Uint8Array) => new TextDecoder().decode(b).split("\n").filter((l) => l !== "");
  const code = r.code, out = lines(r.stdout), err = lines(r.stderr);
  assertEquals(code, 0, err.join("\n"));
  const objects = out.map((l) => JSON.parse(l));
  const summary = objects.at(-1), rows: BenchRow[] = objects.slice(0, -1);
  assertEquals(summary.suite, "all");
  assertEquals(summary.rows, rows.length);
  assertEquals(summary.errors, 0);
  assertEquals(summary.per_sync, 2);
  assert(/\S/.test(summary.adapter), "the adapter is recorded");
  // The host beside it: the CPU model and threads, and on llvmpipe the threads it computes with.
  assert(typeof summary.cpu === "string" && summary.cpu.length > 0, `cpu ${summary.cpu}`);
  assert(summary.cpu_threads === null || summary.cpu_threads > 0, `cpu_threads ${summary.cpu_threads}`);
  if (/llvmpipe/i.test(summary.adapter)) {
    assert(
      ["LP_NUM_THREADS", "cpu count"].includes(summary.llvmpipe_threads_from),
      summary.llvmpipe_threads_from,
    );
  } else assertEquals(summary.llvmpipe_threads, null);
  const byCase = new Map<string, Set<string>>();
  for (const r of rows) {
    assert(r.error === undefined, `${r.case} ${r.impl}: ${r.error}`);
    assert(typeof r.ms === "number" && r.ms > 0 && Number.isFinite(r.ms), `${r.case} ${r.impl} ms ${r.ms}`);
    assert(typeof r.max_err === "number" && Number.isFinite(r.max_err), `${r.case} ${r.impl} was checked`);
    // jax-js on WebAssembly computes on the CPUs: it is timed without a queue.
    const p = r.impl === "jax-js-wasm" ? 1 : 2;
    assertEquals(r.per_sync, p, `${r.case} ${r.impl}: --quick queues ${p} runs per host wait`);
    if (r.suite === "matmul") {
      const [m, k, n] = r.case.split("x").map(Number) as [number, number, number];
      assertEquals(r.flops, 2 * m * k * n);
    }
    if (r.flops === null) assertEquals(r.gflops, null);
    else assert(Math.abs(r.gflops! - r.flops / r.ms! / 1e6) <= 1e-9 * r.gflops!, `${r.case} gflops`);
    const key = `${r.suite}/${r.case}`;
    byCase.set(key, (byCase.get(key) ?? new Set()).add(r.impl));
  }
  assertEquals(
    new Set(rows.map((r) => r.suite)),
    new Set(["matmul", "kernels", "moe", "decode", "serve", "train"]),
  );
  assert(byCase.size >= 2 + 9 + 2 + 2 + 1 + 1, `cases: ${[...byCase.keys()]}`);
  for (const r of rows.filter((r) => r.suite === "serve")) {
    // --quick: 3 sequences × 4 steps per run; tokens/s is the batch's total.
    assertEquals([r.batch, r.tokens], [3, 12], r.case);
    assert(Math.abs(r.tokens_per_s! - (1000 * r.tokens!) / r.ms!) < 1e-9 * r.tokens_per_s!, r.case);
  }
  for (const r of rows.filter((r) => r.suite === "decode" || r.suite === "serve")) {
    assert(r.tokens! > 0 && Math.abs(r.tokens_per_s! - (1000 * r.tokens!) / r.ms!) < 1e-9 * r.tokens_per_s!);
    // Two layers (--quick) and the embeddings, final norm and logits outside them.
    assert(r.dispatches_per_token! > 2 * r.dispatches_per_layer! && r.dispatches_per_layer! > 0, `${r.case}`);
  }
  for (const [key, impls] of byCase) {
    // The moe suite compares our dense and sparse execution of one layer, the decode suite a dense and a
    // DS-MoE model; the others ours and tfjs.
    // The train suite also runs jax-js on its WebGPU and WebAssembly backends.
    const ours = key.startsWith("moe/") || key.startsWith("decode/") || key.startsWith("serve/");
    const want = ours
      ? ["dense", "sparse"]
      : key.startsWith("train/")
      ? ["dsmoe", "jax-js-wasm", "jax-js-webgpu", "tfjs-webgpu"]
      : ["dsmoe", "tfjs-webgpu"];
    assertEquals([...impls].sort(), want, key);
  }
  assert(err.some((l) => l.startsWith("bench: ")), "progress goes to stderr");
});

Deno.test("bench: a wrong kernel fails the float64 check and gets an error row, not a time", async () => {
  const ctx = await testGpu();
  const tfjs = await openTfjs(ctx);
  const [real] = matmulCases(ctx, tfjs, [[64, 32, 48]]);
  // The same case, with our output corrupted in one element after a correct run.
  const broken = {
    ...real!,
    setup() {
      const s = real!.setup();
      return {
        ...s,
        impls: {
          ...s.impls,
          dsmoe: async () => {
            const r = await s.impls.dsmoe!();
            return {
              ...r,
              output: async () => Float32Array.from(await r.output(), (v, i) => (i === 5 ? v + 0.5 : v)),
            };
          },
        },
      };
    },
  };
  const rows = await runCases([real!, broken], { warmup: 0, reps: 1 });
  assert(rows.slice(0, 2).every((r) => !r.error && r.ms! > 0), "the real kernel passes");
  const [ours, theirs] = rows.slice(2);
  assertEquals(ours!.impl, "dsmoe");
  assert(ours!.error?.includes("float64 reference"), ours!.error);
  assertEquals([ours!.ms, ours!.gflops], [null, null]);
  assert(!theirs!.error && theirs!.ms! > 0, "tfjs still runs");
  assert(formatTable(rows.slice(2), ctx.adapter.description).includes("ERROR"));
  assertThrows(() => checkClose([NaN], [1], { atol: 1, rtol: 1 }, "nan"), BenchCheckError);
});

Deno.test("bench rows show their GFLOP/s as a % of the fp32 peak when it is known; 4096³ joins the matmul suite with --large", () => {
  assertEquals(matmulShapes(false, true).at(-1), MATMUL_LARGE);
  assertEquals(MATMUL_LARGE, [4096, 4096, 4096]);
  assert(!matmulShapes(false, false).some(([m, k, n]) => m === 4096 && k === 4096 && n === 4096));
  assertEquals(matmulShapes(true, false), [...MATMUL_SHAPES_QUICK]);
  const row = { suite: "matmul", case: "8x8x8", ms: 2, gflops: 670, flops: 1340e6, max_err: 0 } as const;
  const rows: BenchRow[] = [{ ...row, impl: "dsmoe" }, { ...row, impl: "tfjs-webgpu", ms: 4, gflops: 335 }];
  const shared = withPeakShare(rows, { flops: 67e12, source: "test" });
  assertEquals(shared.map((r) => r.peak_pct), [1, 0.5]);
  assertEquals(withPeakShare(rows, null), rows);
  const text = formatTable(shared, "an adapter", { peak: "fp32 peak: 67 TFLOP/s (test)" });
  assert(/dsmoe % of peak/.test(text) && /670\.00 +1\.0%/.test(text) && text.includes("fp32 peak: 67"), text);
  assert(!formatTable(rows, "an adapter").includes("% of peak"));
});

Deno.test("bench rejects an unknown suite and stray arguments with exit code 2", async () => {
  assertEquals((await cli("bench", "--suite", "nope")).code, 2);
  assertEquals((await cli("bench", "extra")).code, 2);
  for (
    const bad of [["--peak-tflops", "0"], ["--peak-tflops", "fast"], ["--large", "--quick"], ["--reps", "0"]]
  ) {
    const r = await cli("bench", ...bad);
    assertEquals(r.code, 2, bad.join(" "));
    assert(r.err.join("\n").includes(bad[0]!), r.err.join("\n"));
  }
  const size = await cli("bench", "--suite", "decode", "--decode-sizes", "tiny,7b");
  assertEquals(size.code, 2);
  assert(
    size.err.join("\n").includes('--decode-sizes expects names from tiny, d512, 125m, 1b, got "7b"'),
    size.err.join("\n"),
  );
  const suite = await cli("bench", "--suite", "matmul", "--decode-sizes", "1b");
  assertEquals(suite.code, 2);
  assert(
    suite.err.join("\n").includes("--decode-sizes sizes the decode and serve suites"),
    suite.err.join("\n"),
  );
  const help = await cli("bench", "--help");
  assertEquals(help.code, 0);
  assert(help.out.join("\n").includes("--suite"));
});

Deno.test("bench times the difference of queues of p and 2p runs, p sized once per case, implementations in turn", async () => {
  const calls: Record<string, number[]> = { dsmoe: [], "tfjs-webgpu": [] }, order: string[] = [];
  // A virtual clock: a queue of runs takes an 11 ms wait plus ms per run, whatever the machine's load.
  let clock = 0;
  const fake = (impl: string, ms: number) => () => ({
    run(times = 1) {
      calls[impl]!.push(times);
      order.push(`${impl === "dsmoe" ? "ours" : "peer"}×${times}`);
      clock += 11 + ms * times;
      return Promise.resolve();
    },
    output: () => Promise.resolve([1]),
    dispose() {},
  });
  const rows = await runCases([{
    suite: "demo",
    name: "queue",
    flops: null,
    setup: () => ({
      tolerance: { atol: 0, rtol: 0 },
      reference: () => [1],
      impls: { dsmoe: fake("dsmoe", 20), "tfjs-webgpu": fake("tfjs-webgpu", 2) },
    }),
  }], { warmup: 1, reps: 2, now: () => clock });
  // The first implementation sizes p: a queue of 2 runs of 20 ms takes 20 ms longer than 1 run (< 25),
  // 4 takes 40 ms longer than 2, so p = 2; each sample times queues of 2 and 4.
  assertEquals(rows.map((r) => r.per_sync), [2, 2], "the peer is timed with the same p");
  assertEquals(
    calls.dsmoe,
    [1, 1, 2, 2, 4, 2, 2, 4, 2, 4],
    "check, sizing (1 vs 2, 2 vs 4), warm-up, 2 samples",
  );
  assertEquals(calls["tfjs-webgpu"], [1, 2, 2, 4, 2, 4], "check, warm-up, 2 samples");
  // Both are checked first; then warm-ups and samples take turns, so a slow spell hits both rows.
  assertEquals(order.slice(6), [
    "ours×2",
    "peer×2",
    "ours×2",
    "ours×4",
    "peer×2",
    "peer×4",
    "ours×2",
    "ours×4",
    "peer×2",
    "peer×4",
  ]);
  assertEquals(order.slice(0, 6), ["ours×1", "ours×1", "ours×2", "ours×2", "ours×4", "peer×1"]);
  assertEquals(rows.map((r) => r.ms), [20, 2], "one run's time, the wait excluded");
  assertEquals((await cli("bench", "--per-sync", "0")).code, 2);
});

Deno.test("bench --suite serve --quick: each model's batched decoding is checked against float64 and timed; the table gives DS-MoE's tokens/s over the dense model's", async () => {
  await testGpu(); // fails with "no WebGPU adapter: …" rather than skipping
  const r = await cli("bench", "--suite", "serve", "--quick", "--reps", "3", "--json");
  assertEquals(r.code, 0, r.err.join("\n"));
  const objects = r.out.map((l) => JSON.parse(l)), rows: BenchRow[] = objects.slice(0, -1);
  assertEquals([objects.at(-1).suite, objects.at(-1).reps], ["serve", 3]);
  assertEquals(rows.map((x) => x.impl), ["dense", "sparse"]);
  for (const x of rows) {
    assert(x.error === undefined && x.ms! > 0 && Number.isFinite(x.max_err!), `${x.impl}: ${x.error}`);
    // 3 sequences × 4 steps; tokens/s is the batch's total.
    assertEquals([x.suite, x.batch, x.tokens], ["serve", 3, 12]);
    assert(Math.abs(x.tokens_per_s! - (1000 * 12) / x.ms!) < 1e-9 * x.tokens_per_s!);
  }
  // The ratio column is the speed-up: dense ms / DS-MoE ms (DS-MoE's tokens/s over the dense model's).
  const row = { suite: "serve", case: "B=3", gflops: null, flops: null, max_err: 0, tokens: 12, batch: 3 };
  const text = formatTable([{ ...row, impl: "dense", ms: 4 }, { ...row, impl: "sparse", ms: 2 }], "x");
  assert(text.includes("DS-MoE/dense (tokens/s)") && /B=3 .* 2\.00 /.test(text), text);
  assert(!text.includes("DS-MoE/dense (ms)"), "serve rows are not in the decode table");
  // --decode-sizes picks the serve suite's sizes too: one layer of the named shape with --quick.
  const named = await cli(
    "bench",
    "--suite",
    "serve",
    "--quick",
    "--reps",
    "1",
    "--decode-sizes",
    "tiny",
    "--json",
  );
  assertEquals(named.code, 0, named.err.join("\n"));
  const cases = named.out.slice(0, -1).map((l) => (JSON.parse(l) as BenchRow).case);
  assert(cases.length === 2 && cases.every((c) => c.startsWith("tiny-quick ")), cases.join("; "));
});

/**
 * `deno task generate --batch B` (core/infer/batch_generate.ts, docs/design.md §10 "Batched decoding"): at
 * temperature 0 each sequence of a batch continues exactly as a batch-1 `generate` of its prompt does —
 * prompts of different lengths, past the context (shifts at different steps), on the GPU sampler and on the
 * host; the batched GPU sampler draws the host reference's token per row with seed + row; usage errors exit 2.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { parseExperimentText } from "../core/config/mod.ts";
import { buildDecoder } from "../core/plan/model.ts";
import { configRules, trainMemoryEstimate } from "../core/plan/plan.ts";
import { batchDecoderBytes } from "../core/infer/batch_generate.ts";
import { sampleToken, samplingUniform } from "../core/infer/generate.ts";
import { f32Tensor, writeSafeTensors } from "../core/runs/safetensors.ts";
import { Rng } from "../core/util/rng.ts";
import { createTensor, readTensor, writeTensor } from "../gpu/buffers.ts";
import { runCalls } from "../gpu/dispatch.ts";
import { sampleTokensGpu } from "../gpu/kernels/sampling.ts";
import { cli } from "./helpers/cli.ts";
import { testGpu } from "./helpers/gpu.ts";

/** Runs `f` with the environment variables `vars` set, then restores what they were (or unsets them). */
async function withEnv<T>(vars: Record<string, string>, f: () => Promise<T>): Promise<T> {
  const before = Object.keys(vars).map((k) => [k, Deno.env.get(k)] as const);
  for (const [k, v] of Object.entries(vars)) Deno.env.set(k, v);
  try {
    return await f();
  } finally {
    for (const [k, v] of before) v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
  }
}

/** A DS-MoE (MoA, 4 MLP experts) of seq_len 16 with byte tokens; `budget` its memory_budget. */
const yaml = (budget: string) =>
  `name: batch-micro
seed: 1
data: { source: synthetic:multidomain, seq_len: 16, synthetic_bytes: 20000 }
model:
  kind: dsmoe
  d_model: 32
  layers: 2
  attention: { kind: moa, experts: 2, heads_per_expert: 2, head_dim: 8 }
  mlp: { experts: 4, hidden: 32 }
router: { infer: { kind: topk, k: 2 } }
hardware: { memory_budget: ${budget} }
`;

/**
 * A checkpoint file of the model with seeded weights of ±0.3 (logits far enough apart that f32 rounding
 * of the batched kernels does not reorder the most likely tokens).
 */
async function checkpoint(dir: string, budget = "256MiB"): Promise<string> {
  const text = yaml(budget), { config } = parseExperimentText(text, "batch.yaml").points[0]!;
  const rng = new Rng(9), tensors = new Map();
  for (const p of buildDecoder(config, configRules(config)).params) {
    const n = p.value.shape.reduce((a, b) => a * b, 1);
    const v = Float32Array.from(
      { length: n },
      () => (p.init === "ones" ? 1 : 0) + 0.3 * (2 * rng.next() - 1),
    );
    tensors.set(`param/${p.value.name}`, f32Tensor(p.value.shape, v));
  }
  const file = `${dir}/model-${budget}.safetensors`;
  await Deno.writeFile(file, writeSafeTensors(tensors, { config: text, step: "0" }));
  return file;
}

Deno.test("generate --batch: at temperature 0 every sequence continues as a batch-1 generate of its prompt does, past the context", async () => {
  await testGpu(); // fails with "no WebGPU adapter: …" rather than skipping
  const dir = await Deno.makeTempDir();
  try {
    const file = await checkpoint(dir);
    // Different lengths; 24 new tokens overflow the 16 positions, so each row shifts at its own step.
    const prompts = ["a", "the cat", "fn f(x) {"];
    const greedy = ["--max-tokens", "24", "--temperature", "0", "--json"];
    const alone: { tokens: number[]; text: string }[] = [];
    for (const p of prompts) {
      const r = await cli("generate", file, "--prompt", p, ...greedy);
      assertEquals(r.code, 0, r.err.join("\n"));
      assertEquals(r.json().batch, 1);
      alone.push(r.json());
    }
    for (const host of [false, true]) {
      const args = prompts.flatMap((p) => ["--prompt", p]);
      const r = await cli("generate", file, ...args, ...greedy, ...(host ? ["--host-sampling"] : []));
      assertEquals(r.code, 0, r.err.join("\n"));
      const j = r.json();
      assertEquals([j.batch, j.new_tokens, j.sequences.length], [3, 24, 3]);
      j.sequences.forEach(
        (s: { prompt: string; tokens: number[]; text: string; seed: number }, b: number) => {
          assertEquals(s.prompt, prompts[b]);
          assertEquals(s.tokens, alone[b]!.tokens, `sequence ${b} (${host ? "host" : "GPU"} sampling)`);
          assertEquals(s.text, alone[b]!.text);
          assertEquals(s.seed, 1 + b);
        },
      );
      assert(j.context_shifts >= 3, `every row shifted: ${j.context_shifts}`);
      assert(
        j.tokens_per_s > 0 &&
          Math.abs(j.tokens_per_s_per_sequence * 3 - j.tokens_per_s) < 1e-9 * j.tokens_per_s,
      );
      assert(j.hidden_pct > 0 && j.hidden_pct < 100, `top-2 of 4 runs part of the weights: ${j.hidden_pct}`);
      // The texts, labelled, before the JSON line; the total and per-sequence tokens/s on stderr.
      assertEquals(r.out[0], "--- sequence 1 of 3 (seed 1) ---");
      assertEquals(r.out[5], prompts[2] + alone[2]!.text);
      assert(
        r.err.some((l) =>
          /3 sequences × 24 tokens: [\d.]+ tokens\/s in total \([\d.]+ per sequence\)/.test(l)
        ),
      );
    }

    // One prompt, --batch 2: the same prompt twice, seeds 5 and 6; a prompts file gives the same sequences.
    const sampled = ["--max-tokens", "8", "--temperature", "1", "--top-k", "0", "--seed", "5", "--json"];
    const twice = await cli("generate", file, "--prompt", "x", "--batch", "2", ...sampled);
    assertEquals(twice.code, 0, twice.err.join("\n"));
    await Deno.writeTextFile(`${dir}/prompts.txt`, "x\n\nx\n");
    const listed = await cli("generate", file, "--prompts-file", `${dir}/prompts.txt`, ...sampled);
    assertEquals(listed.code, 0, listed.err.join("\n"));
    assertEquals(
      twice.json().sequences.map((s: { seed: number }) => s.seed),
      [5, 6],
    );
    assertEquals(listed.json().sequences, twice.json().sequences, "seeded: the same draws");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("generate --batch refuses bad batches, prompts and sizes with exit code 2", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = await checkpoint(dir);
    const refused = async (want: RegExp, ...args: string[]) => {
      const r = await cli("generate", file, ...args);
      assertEquals(r.code, 2, `${args.join(" ")}: ${r.err.join("\n")}`);
      assert(want.test(r.err.join("\n")), `${args.join(" ")}: ${r.err.join("\n")}`);
    };
    await refused(/--batch expects a whole number from 1 to 1024, got "0"/, "--prompt", "a", "--batch", "0");
    await refused(/--batch expects a whole number from 1 to 1024/, "--prompt", "a", "--batch", "5000");
    await refused(
      /--batch 2 with 3 prompts/,
      "--prompt",
      "a",
      "--prompt",
      "b",
      "--prompt",
      "c",
      "--batch",
      "2",
    );
    await refused(/not both/, "--prompt", "a", "--prompts-file", `${dir}/none.txt`);
    await refused(/--prompts-file .*none\.txt: cannot read it/, "--prompts-file", `${dir}/none.txt`);
    await Deno.writeTextFile(`${dir}/blank.txt`, "\n  \n");
    await refused(/holds no prompt/, "--prompts-file", `${dir}/blank.txt`);
    await refused(
      /prompt 2 encodes to 20 tokens, more than the model's context \(data\.seq_len 16\)/,
      "--prompt",
      "a",
      "--prompt",
      "x".repeat(20),
    );
    await refused(/threshold_topk/, "--prompt", "a", "--batch", "2", "--rule", "threshold_topk:0.5");
    // A budget that the training estimate fits but 1024 sequences' caches do not.
    const { config } = parseExperimentText(yaml("1GiB"), "b.yaml").points[0]!;
    const train = trainMemoryEstimate(config).bytes,
      big = batchDecoderBytes(config, configRules(config), 1024);
    assert(big > train, `${big} vs ${train}`);
    const small = await checkpoint(dir, String(Math.ceil((train + big) / 2)));
    const r = await cli("generate", small, "--prompt", "a", "--batch", "1024");
    assertEquals(r.code, 2, r.err.join("\n"));
    assert(
      /--batch 1024 needs an estimated .* more than hardware\.memory_budget/.test(r.err.join("\n")),
      r.err.join("\n"),
    );
    // A budget that fits the decoder but not the texture copies of its weights that the cpu-simd kernels
    // read: refused once the adapter is known (forced here, so a real GPU checks the same path).
    // (The checkpoint's budget must fit training, so take a batch whose decoder alone needs more.)
    const B = [8, 16, 32, 64, 128, 256, 512].find((b) =>
      batchDecoderBytes(config, configRules(config), b) > train
    )!;
    const need = batchDecoderBytes(config, configRules(config), B);
    const copies = batchDecoderBytes(config, configRules(config), B, { textureCopies: true });
    assert(copies > need + 1, `${copies} vs ${need}`);
    const tight = await checkpoint(dir, String(need + 1));
    const t = await withEnv(
      { DSMOE_KERNELS: "cpu-simd" },
      () => cli("generate", tight, "--prompt", "a", "--batch", String(B)),
    );
    assertEquals(t.code, 2, t.err.join("\n"));
    assert(
      /weights and the texture copies the cpu-simd kernels read/.test(t.err.join("\n")),
      t.err.join("\n"),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("generate --batch: a texture copy the device refuses (out of memory) exits 1 naming it, no stack trace", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = await checkpoint(dir);
    // h1.mlp.w1 [32, 128] is read by the grouped matmul from a texture copy on cpu-simd (forced here).
    const r = await withEnv(
      { DSMOE_KERNELS: "cpu-simd", DSMOE_FAULT_OOM: "h1.mlp.w1.texture" },
      () => cli("generate", file, "--prompt", "ab", "--prompt", "c", "--max-tokens", "2"),
    );
    const err = r.err.join("\n");
    assertEquals(r.code, 1, err);
    assert(err.includes('could not allocate texture copy of "h1.mlp.w1" [32, 128] f32 (16.00 KiB)'), err);
    assert(!/\n\s+at /.test(err), `a stack trace: ${err}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the batched GPU sampler draws each row's host reference token with seed + row", async () => {
  const ctx = await testGpu();
  const rng = new Rng(12), B = 3, V = 200;
  const logits = createTensor(ctx, [B, V], "f32", undefined, "logits");
  const ids = createTensor(ctx, [B], "u32", new Uint32Array(B), "ids");
  const out = createTensor(ctx, [16 * B], "u32", undefined, "out");
  const state = createTensor(ctx, [B], "u32", new Uint32Array(B), "state");
  let boundary = 0;
  // The rank scan, then the search (the method of large vocabularies) on each row's own logits.
  const cases = [
    [0, 0, 1, "scan"],
    [1, 0, 1, "scan"],
    [0.7, 5, 1, "scan"],
    [1.2, 0, 0.8, "scan"],
    [50, 20, 1, "search"],
    [1.2, 7, 0.8, "search"],
  ] as const;
  for (const [temperature, topK, topP, method] of cases) {
    const seed = 2 ** 32 - 2; // rows 1 and 2 carry into the seed's high word
    const call = sampleTokensGpu(ctx, {
      logits,
      ids,
      out,
      state,
      temperature,
      topK,
      topP,
      seed,
      rows: B,
      method,
    });
    writeTensor(ctx, state, new Uint32Array(B));
    const want: number[][] = [];
    for (let n = 0; n < 8; n++) {
      const l = Float32Array.from({ length: B * V }, () => Math.round(rng.next() * 40) / 8);
      writeTensor(ctx, logits, l);
      await runCalls(ctx, [call]).done();
      const got = await readTensor(ctx, ids);
      const row: number[] = [];
      for (let b = 0; b < B; b++) {
        const host = sampleToken(
          l.subarray(b * V, (b + 1) * V),
          { temperature, topK, topP },
          samplingUniform(seed + b, n),
        );
        row.push(host);
        // f32 sums on the GPU and float64 on the host may straddle u · Σw at a token boundary (rarely).
        if (got[b] !== host) boundary++;
      }
      want.push(row);
    }
    const list = Array.from(await readTensor(ctx, out));
    const mismatched = want.flat().filter((t, i) => list[i] !== t).length;
    assert(mismatched <= boundary, `the token list holds each row's draw (n · B + b): ${mismatched}`);
    assertEquals(Array.from(await readTensor(ctx, state)), [8, 8, 8], "each row's counter advanced per draw");
  }
  assert(boundary <= 2, `${boundary} draws differ at a rounding boundary`);
  for (const t of [logits, ids, out, state]) t.buffer.destroy();
});

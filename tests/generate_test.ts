import { deepStrictEqual as assertEquals, notDeepStrictEqual, ok as assert } from "node:assert/strict";
import { tokenizerFromJson } from "../core/data/tokenizers.ts";
import { cli, trainMicro } from "./helpers/cli.ts";
import { closeRunStores } from "../core/runs/open_store.ts";
import { parseExperimentText } from "../core/config/mod.ts";
import { evaluateGraph, type HostValue } from "../core/graph/cpu_executor.ts";
import { CPU_OPS } from "../core/graph/cpu_ops.ts";
import { schedule } from "../core/graph/schedule.ts";
import { buildModel } from "../core/plan/model.ts";
import { activeOfLayers } from "../core/plan/counts.ts";
import { RunDir } from "../core/runs/run_dir.ts";
import { latestCheckpoint } from "../core/runs/checkpoints.ts";
import { paramsFromTensors } from "../core/train/trainer.ts";
import { chainedReads, Decoder, generate, sampleToken, samplingUniform } from "../core/infer/generate.ts";
import { createTensor, readTensor, writeTensor } from "../gpu/buffers.ts";
import { runCalls } from "../gpu/dispatch.ts";
import {
  countExpertsCalls,
  countExpertsPerCall,
  gpuSamplingMethod,
  type SamplerSearch,
  sampleTokenGpu,
} from "../gpu/kernels/sampling.ts";
import { testGpu } from "./helpers/gpu.ts";
import { Rng } from "../core/util/rng.ts";
import { encodeText } from "../core/data/tokenizer.ts";

Deno.test("chainedReads: hands reads over in the order started, waits only in flush, and a failure surfaces there", async () => {
  // Reads that settle in reverse order of their start are still delivered first to last.
  const settle: (() => void)[] = [], seen: string[] = [];
  const reads = chainedReads(
    (n) => new Promise<number>((resolve) => settle.push(() => resolve(10 * n))),
    (got, upTo) => seen.push(`${upTo}:${got}`),
  );
  reads.start(2);
  reads.start(5);
  assertEquals(settle.length, 2, "start reads at once, without waiting");
  settle[1]!();
  await new Promise((r) => setTimeout(r, 0));
  assertEquals(seen, [], "the later read waits for the earlier one");
  const flushed = reads.flush(5); // nothing new drawn: no third read
  settle[0]!();
  await flushed;
  assertEquals(seen, ["2:20", "5:50"]);
  assertEquals(settle.length, 2);
  const more = reads.flush(7); // reads what was drawn since, then waits for it
  assertEquals(settle.length, 3);
  settle[2]!();
  await more;
  assertEquals(seen, ["2:20", "5:50", "7:70"]);

  // A failed read rejects the next flush (no unhandled rejection while nobody waits), as does a failed delivery.
  let fail = true;
  const failing = chainedReads(
    (n) => fail ? Promise.reject(new Error(`read of ${n} failed`)) : Promise.resolve(n),
    () => {},
  );
  failing.start(16);
  await new Promise((r) => setTimeout(r, 5));
  await assertRejects(() => failing.flush(16), "read of 16 failed");
  fail = false;
  const throwing = chainedReads((n) => Promise.resolve(n), (got) => {
    throw new Error(`delivery of ${got} failed`);
  });
  throwing.start(3);
  await new Promise((r) => setTimeout(r, 5));
  await assertRejects(() => throwing.flush(3), "delivery of 3 failed");
});

async function assertRejects(f: () => Promise<unknown>, message: string): Promise<void> {
  let error: unknown = null;
  try {
    await f();
  } catch (e) {
    error = e;
  }
  assert(error instanceof Error && error.message === message, `expected "${message}", got ${error}`);
}

Deno.test("countExpertsCalls: each mask's sum added to its own count, in as few dispatches as the bindings allow", async () => {
  const ctx = await testGpu();
  const per = countExpertsPerCall(ctx), n = per + 3; // more masks than one dispatch binds
  const rng = new Rng(5);
  // Masks of several shapes (one token of 4 or 8 experts, 3 rows of 8), 0/1 values.
  const values = Array.from({ length: n }, (_, i) => {
    const size = [4, 8, 24][i % 3]!;
    return Float32Array.from({ length: size }, () => rng.int(2));
  });
  const masks = values.map((v) => createTensor(ctx, [v.length], "f32", v));
  const counts = createTensor(ctx, [n + 1], "f32", Float32Array.from({ length: n + 1 }, (_, i) => 100 * i));
  try {
    const calls = countExpertsCalls(ctx, masks, counts);
    assertEquals(calls.length, 2);
    await runCalls(ctx, calls).done();
    await runCalls(ctx, calls).done(); // counts accumulate over draws
    const got = Array.from(await readTensor(ctx, counts) as Float32Array);
    const want = values.map((v, i) => 100 * i + 2 * v.reduce((a, b) => a + b, 0));
    assertEquals(got, [...want, 100 * n], "every count its own mask's sum, twice; the spare count untouched");
  } finally {
    for (const t of [...masks, counts]) t.buffer.destroy();
  }
});

Deno.test("sampleToken: greedy is the argmax, top-k 1 is greedy at any temperature, draws follow the softmax", () => {
  const logits = Float32Array.of(0.5, 2, -1, 1.9, 0);
  assertEquals(sampleToken(logits, { temperature: 0, topK: 0 }, 0.99), 1);
  for (let i = 0; i < 20; i++) {
    assertEquals(sampleToken(logits, { temperature: 5, topK: 1 }, samplingUniform(1, i)), 1);
  }
  // top-k 2 at temperature 1: only tokens 1 and 3, with odds e^2 : e^1.9.
  const counts = new Map<number, number>();
  for (let i = 0; i < 20000; i++) {
    const t = sampleToken(logits, { temperature: 1, topK: 2 }, samplingUniform(1, i));
    counts.set(t, (counts.get(t) ?? 0) + 1);
  }
  assertEquals([...counts.keys()].sort(), [1, 3]);
  const want = 1 / (1 + Math.exp(-0.1)); // P(token 1)
  assert(Math.abs(counts.get(1)! / 20000 - want) < 0.015, `P(1) = ${counts.get(1)! / 20000}, want ${want}`);
  // Tokens are walked in id order: u just below P(token 1) picks 1, just above picks 3.
  assertEquals(sampleToken(logits, { temperature: 1, topK: 2 }, want - 1e-6), 1);
  assertEquals(sampleToken(logits, { temperature: 1, topK: 2 }, want + 1e-6), 3);
  // Weights are taken against the largest logit: far-apart logits neither overflow nor vanish.
  const wide = Float32Array.of(-300, 400, 399);
  const p1 = 1 / (1 + Math.exp(-1)); // P(token 1) against token 2
  assertEquals(sampleToken(wide, { temperature: 1, topK: 0 }, p1 - 1e-6), 1);
  assertEquals(sampleToken(wide, { temperature: 1, topK: 0 }, p1 + 1e-6), 2);
  // The same seed gives the same draws.
  const draw = (seed: number) =>
    Array.from(
      { length: 30 },
      (_, i) => sampleToken(logits, { temperature: 2, topK: 0 }, samplingUniform(seed, i)),
    );
  assertEquals(draw(7), draw(7));
  notDeepStrictEqual(draw(7), draw(8));
});

Deno.test("the GPU sampler draws the host reference's token from the same logits, seed and index", async () => {
  const ctx = await testGpu();
  const rng = new Rng(11), V = 300;
  const logits = createTensor(ctx, [V], "f32", undefined, "logits");
  const ids = createTensor(ctx, [1], "u32", new Uint32Array(1), "ids");
  const out = createTensor(ctx, [64], "u32", undefined, "out");
  const state = createTensor(ctx, [1], "u32", new Uint32Array(1), "state");
  let boundary = 0, checked = 0;
  for (const [temperature, topK] of [[0, 0], [1, 0], [0.7, 5], [2, 1], [1.3, 299], [0.5, 400]] as const) {
    const seed = 1000 + 17 * topK;
    const call = sampleTokenGpu(ctx, { logits, ids, out, state, temperature, topK, seed });
    writeTensor(ctx, state, new Uint32Array(1));
    const want: number[] = [];
    for (let n = 0; n < 24; n++) {
      // Fresh logits per draw, with ties to exercise the id order; f32 on both sides.
      const l = Float32Array.from({ length: V }, () => Math.round(rng.next() * 40) / 8);
      writeTensor(ctx, logits, l);
      await runCalls(ctx, [call]).done();
      const u = samplingUniform(seed, n);
      const host = sampleToken(l, { temperature, topK }, u);
      const got = (await readTensor(ctx, ids))[0]!;
      checked++;
      if (got !== host) {
        // Only where f32 sums on the GPU and float64 on the host straddle u · Σw.
        const keep = [...l.keys()].sort((a, b) => l[b]! - l[a]! || a - b).slice(0, topK || V).sort((a, b) =>
          a - b
        );
        const w = keep.map((i) => Math.exp((l[i]! - Math.max(...l)) / temperature)),
          total = w.reduce((a, b) => a + b);
        let c = 0, near = false;
        for (const x of w) near ||= Math.abs((c += x) - u * total) < 1e-4 * total;
        assert(near, `temperature ${temperature} top-k ${topK} draw ${n}: GPU ${got}, host ${host}`);
        boundary++;
      }
      want.push(host);
    }
    const list = Array.from(await readTensor(ctx, out)).slice(0, 24);
    assertEquals(
      list.filter((t, n) => t !== want[n]).length <= boundary,
      true,
      "the token list holds each draw",
    );
    assertEquals((await readTensor(ctx, state))[0], 24, "the counter advanced once per draw");
  }
  assert(boundary <= 2, `${boundary} of ${checked} draws differ at a rounding boundary`);
  for (const t of [logits, ids, out, state]) t.buffer.destroy();
});

Deno.test("generate streams greedy text whose tokens are the float64 model's argmax, reports tokens/s and active params", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sets = ["--set", "train.steps=30", "--set", "train.checkpoint_every=30"];
    const trained = await cli("run", "tests/fixtures/micro.yaml", ...sets, "--runs-dir", dir, "--json");
    assertEquals(trained.code, 0, trained.err.join("\n"));
    const id = trained.json().run_id;
    const prompt = "def f(x):";
    const r = await cli(
      "generate",
      id,
      "--prompt",
      prompt,
      "--max-tokens",
      "20",
      "--temperature",
      "0",
      "--rule",
      "threshold:0.5",
      "--runs-dir",
      dir,
      "--json",
    );
    assertEquals(r.code, 0, r.err.join("\n"));
    const j = r.json();
    assertEquals(j.new_tokens, 20);
    assertEquals(j.prompt_tokens, prompt.length);
    assertEquals(j.rule, "threshold@0.5");
    assertEquals(j.context_shifts, 0);
    assert(j.tokens_per_s > 0, "tokens/s measured");
    // The decoder graph's dispatches plus the GPU sampler's (tests/dispatch_count_test.ts pins the graph's).
    assert(Number.isInteger(j.dispatches_per_token) && j.dispatches_per_token > 2, JSON.stringify(j));
    assert(j.active_pct > 0 && j.active_pct <= 100 && j.hidden_pct <= 100, JSON.stringify(j));
    // Streamed output: the prompt, then the new text, before the JSON line.
    assertEquals(r.out.slice(0, -1).join("\n"), prompt + j.text);
    const stored = await (await RunDir.open(dir, id)).readMetrics();
    const speed = stored.find((m) => m.key === "generate/threshold@0.5/tokens_per_s");
    assertEquals(speed?.value, j.tokens_per_s, "tokens/s recorded in the run store");

    // The float64 sequence forward of prompt + new tokens under the same rule: each new token is the argmax
    // (up to a near-tie) of the logits before it.
    const { config } = parseExperimentText(
      await Deno.readTextFile(`${dir}/${id}/config.yaml`),
      "config.yaml",
    ).points[0]!;
    // The shares follow the one definition of docs/design.md §5 from the experts measured per layer.
    const share = activeOfLayers(config, j.layers);
    assertEquals([j.active_pct, j.hidden_pct, j.active_pct_all], [
      share.activePct,
      share.hiddenPct,
      share.activePctAll,
    ]);
    assert(
      j.active_pct_all > j.active_pct,
      "embeddings always run, so the share of all parameters is larger",
    );
    const storedAll = stored.find((m) => m.key === "generate/threshold@0.5/active_pct_all");
    assertEquals(storedAll?.value, j.active_pct_all);
    const ck = (await latestCheckpoint(`${dir}/${id}`))!;
    const params = paramsFromTensors(ck.file.tensors);
    const T = config.data.seq_len, all = [...encodeText(prompt), ...j.tokens as number[]];
    const ids = Uint32Array.from({ length: T }, (_, i) => all[i] ?? 0);
    const m = buildModel(config, 1, { mlp: config.router.infer, attention: config.router.infer });
    const feeds = new Map<number, HostValue>([[m.ids.id, ids], [m.targets.id, ids]]);
    for (const p of m.params) feeds.set(p.value.id, Float64Array.from(params.get(p.value.name)!.data));
    const [logits] = evaluateGraph(schedule(m.graph, [m.logits]).nodes, feeds, [m.logits], CPU_OPS);
    const V = logits!.length / T;
    for (let t = prompt.length - 1; t < all.length - 1; t++) {
      const row = logits!.subarray(t * V, (t + 1) * V);
      const max = Math.max(...row);
      assert(
        max - row[all[t + 1]!]! < 1e-3,
        `token ${t + 1}: chose ${all[t + 1]} at ${row[all[t + 1]!]}, max ${max}`,
      );
    }

    // Past the context: shifts happen, and a seed makes sampling repeatable.
    const sampled = async (seed: string) => {
      const s = await cli(
        "generate",
        id,
        "--prompt",
        "x",
        "--max-tokens",
        "50",
        "--seed",
        seed,
        "--runs-dir",
        dir,
        "--json",
      );
      assertEquals(s.code, 0, s.err.join("\n"));
      return s.json();
    };
    const [a, b, c] = [await sampled("3"), await sampled("3"), await sampled("4")];
    assert(a.context_shifts >= 1, `shifts ${a.context_shifts}`);
    assertEquals(a.tokens, b.tokens);
    notDeepStrictEqual(a.tokens, c.tokens);

    // Drawing on the GPU (tokens fed straight back, read in chunks) and on the host (one read-back per
    // token) give the same tokens and expert counts, across context shifts, at temperature 1 and top-k 5.
    const ctx = await testGpu();
    const weights = new Map([...params].map(([name, t]) => [name, Float32Array.from(t.data)]));
    const rules = { mlp: config.router.infer, attention: config.router.infer };
    const dec = await Decoder.create(ctx, config, weights, rules);
    try {
      const opts = { maxTokens: 2 * T + 5, temperature: 1, topK: 5, seed: 9 };
      const streamed: number[] = [];
      const onGpu = await generate(dec, [...encodeText("x = ")], {
        ...opts,
        onToken: (t) => streamed.push(t),
      });
      const onHost = await generate(dec, [...encodeText("x = ")], { ...opts, hostSampling: true });
      assert(onGpu.contextShifts >= 2, `shifts ${onGpu.contextShifts}`);
      assertEquals(onGpu.tokens, onHost.tokens);
      assertEquals(streamed, onGpu.tokens, "every token streamed once, in order");
      assertEquals(onGpu.layers.map((l) => l.experts), onHost.layers.map((l) => l.experts));
    } finally {
      dec.destroy();
    }
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("generate with a BPE model encodes the prompt with the run's tokenizer and streams whole characters", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // A micro model on Moby-Dick through a 300-token BPE trained on it (the run records the tokenizer).
    const sets = [
      ...[
        "--set",
        "data.source=corpus:moby-dick",
        "--set",
        "data.tokenizer=bpe",
        "--set",
        "data.vocab_size=300",
      ],
      ...["--set", "train.steps=10", "--set", "train.eval_every=10", "--set", "train.checkpoint_every=10"],
    ];
    const { id, result: trained } = await trainMicro(dir, ...sets);
    assert(Number.isFinite(trained.json().final["val/bpb"]), "val bpb reported");
    const tok = tokenizerFromJson(await Deno.readTextFile(`${dir}/${id}/tokenizer.json`));
    assertEquals([tok.kind, tok.vocabSize], ["bpe", 300]);
    // "é" and "—" are 2 and 3 bytes: their bytes are separate tokens of this small vocabulary.
    const prompt = "Call me Ishmael — café ";
    const r = await cli(
      ...["generate", id, "--prompt", prompt, "--max-tokens", "40", "--temperature", "1", "--top-k", "0"],
      ...["--seed", "5", "--runs-dir", dir, "--json"],
    );
    assertEquals(r.code, 0, r.err.join("\n"));
    const j = r.json();
    assertEquals(j.prompt_tokens, tok.encode(prompt).length);
    assert(j.prompt_tokens < new TextEncoder().encode(prompt).length, "the prompt was merged by the BPE");
    assertEquals(j.text, tok.decode(j.tokens));
    // What was streamed, token by token, is the prompt and the decoded continuation, each character once.
    assertEquals(r.out.slice(0, -1).join("\n"), prompt + j.text);
    const splitChars = (j.tokens as number[]).filter((t) => {
      const b = tok.tokenBytes!(t);
      return b.length === 1 && b[0]! >= 0x80;
    });
    assert(splitChars.length > 0, "the sample holds tokens that are parts of a character");
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("generate refuses bad input with usage errors", async () => {
  const cases: [string[], RegExp][] = [
    [["generate"], /one run id/],
    [["generate", "nope", "--prompt", ""], /non-empty --prompt/],
    [["generate", "nope", "--prompt", "a", "--temperature=-1"], /--temperature expects a number ≥ 0/],
    [["generate", "nope", "--prompt", "a", "--top-k", "1.5"], /--top-k expects an integer ≥ 0/],
    [["generate", "nope", "--prompt", "a", "--rule", "topk:2", "--rule", "dense"], /one --rule/],
    [["generate", "nope", "--prompt", "a", "--top-p", "0"], /--top-p expects a number in \(0, 1\]/],
    [["generate", "nope", "--prompt", "a", "--top-p", "1.5"], /--top-p expects a number in \(0, 1\]/],
    // --p is the top_p routing rule's expert mass: alone, or after another rule, it is refused, pointing to
    // --top-p for sampling.
    [["generate", "nope", "--prompt", "a", "--p", "0.9"], /--p must follow the --rule top_p.*--top-p 0\.9/],
    [
      ["generate", "nope", "--prompt", "a", "--rule", "threshold", "--p", "0.9"],
      /--p 0\.9 does not qualify the routing rule threshold before it: write --rule top_p --p 0\.9; for nucleus sampling of tokens use generate's --top-p 0\.9/,
    ],
    [["eval", "nope", "--rule", "topk", "--epsilon", "0.5"], /write --rule threshold --epsilon 0\.5/],
    [["generate", "no-such-run", "--prompt", "a", "--runs-dir", "/nonexistent-dir"], /./],
  ];
  for (const [argv, msg] of cases) {
    const r = await cli(...argv);
    assertEquals(r.code, 2, `${argv.join(" ")}: ${r.err.join("\n")}`);
    assert(msg.test(r.err.join("\n")), `${argv.join(" ")}: ${r.err.join("\n")}`);
  }
});

Deno.test("sampleToken with topP keeps the fewest most likely tokens reaching P of the top-k tokens' mass", () => {
  // At temperature 1: P(1) 0.432, P(3) 0.391, P(0) 0.096, P(4) 0.059, P(2) 0.022.
  const logits = Float32Array.of(0.5, 2, -1, 1.9, 0);
  const draws = (s: { temperature: number; topK: number; topP?: number }) =>
    Array.from({ length: 400 }, (_, i) => sampleToken(logits, s, samplingUniform(3, i)));
  const set = (d: number[]) => [...new Set(d)].sort();
  assertEquals(set(draws({ temperature: 1, topK: 0, topP: 0.4 })), [1]); // 0.432 reaches 0.4
  assertEquals(set(draws({ temperature: 1, topK: 0, topP: 0.85 })), [0, 1, 3]); // 0.823 does not reach 0.85
  // Renormalised: P = 0.5 keeps tokens 1 and 3, drawn exactly as top-k 2 draws them.
  assertEquals(draws({ temperature: 1, topK: 0, topP: 0.5 }), draws({ temperature: 1, topK: 2 }));
  assertEquals(draws({ temperature: 1, topK: 0, topP: 1 }), draws({ temperature: 1, topK: 0 }));
  // After top-k: P is of the kept tokens' mass (token 1 is 0.525 of tokens 1 and 3), as HF applies them.
  assertEquals(set(draws({ temperature: 1, topK: 2, topP: 0.5 })), [1]);
  // A higher temperature flattens the distribution, so more tokens are needed to reach P.
  assertEquals(set(draws({ temperature: 5, topK: 0, topP: 0.85 })), [0, 1, 3, 4]);
});

/**
 * Draws `draws` tokens with the sampler `call`, each from fresh logits written to `t.logits`, and counts those
 * that differ from the host's `sampleToken` at the same seed and index.
 */
async function _drawsDiffering(
  ctx: Awaited<ReturnType<typeof testGpu>>,
  call: ReturnType<typeof sampleTokenGpu>,
  t: { logits: ReturnType<typeof createTensor>; ids: ReturnType<typeof createTensor> },
  logitsOf: () => Float32Array,
  s: { temperature: number; topK: number; topP: number },
  seed: number,
  draws: number,
): Promise<number> {
  let differ = 0;
  for (let n = 0; n < draws; n++) {
    const l = logitsOf();
    writeTensor(ctx, t.logits, l);
    await runCalls(ctx, [call]).done();
    if ((await readTensor(ctx, t.ids))[0] !== sampleToken(l, s, samplingUniform(seed, n))) differ++;
  }
  return differ;
}

Deno.test("the GPU sampler with top-p draws the host reference's token from the same logits, seed and index", async () => {
  const ctx = await testGpu();
  const rng = new Rng(5), V = 300;
  const logits = createTensor(ctx, [V], "f32", undefined, "logits");
  const ids = createTensor(ctx, [1], "u32", new Uint32Array(1), "ids");
  const out = createTensor(ctx, [64], "u32", undefined, "out");
  const state = createTensor(ctx, [1], "u32", new Uint32Array(1), "state");
  let differ = 0, checked = 0;
  for (const [temperature, topK, topP] of [[1, 0, 0.5], [0.7, 20, 0.8], [2, 0, 0.95], [1, 3, 0.3]] as const) {
    const seed = 77 + topK;
    const call = sampleTokenGpu(ctx, { logits, ids, out, state, temperature, topK, topP, seed });
    writeTensor(ctx, state, new Uint32Array(1));
    const logitsOf = () => Float32Array.from({ length: V }, () => Math.round(rng.next() * 40) / 8);
    differ += await _drawsDiffering(
      ctx,
      call,
      { logits, ids },
      logitsOf,
      { temperature, topK, topP },
      seed,
      24,
    );
    checked += 24;
  }
  // f32 sums on the GPU against float64 on the host may straddle a boundary; nothing more.
  assert(differ <= 2, `${differ} of ${checked} draws differ`);
  for (const t of [logits, ids, out, state]) t.buffer.destroy();
});

Deno.test("the GPU sampler's search method keeps the host's top-k and top-p tokens, ties included, up to GPT-2's vocabulary", async () => {
  const ctx = await testGpu();
  // Which method a vocabulary gets: the rank scan while V²/256 fits llvmpipe's loop budget, then the search.
  assertEquals(gpuSamplingMethod(300, { temperature: 1, topK: 5 }), "scan");
  assertEquals(gpuSamplingMethod(50257, { temperature: 0.8, topK: 40 }), "search");
  assertEquals(gpuSamplingMethod(50257, { temperature: 1, topK: 0, topP: 0.9 }), "search");
  assertEquals(gpuSamplingMethod(50257, { temperature: 1, topK: 0 }), "simple");
  assertEquals(gpuSamplingMethod(2_000_000, { temperature: 1, topK: 40 }), null);
  const rng = new Rng(23);
  // [V, method, temperature, top-k, top-p, draws, logit levels]. At temperature 50 the weights are nearly
  // equal, so a kept set one token too large or too small moves many draws; with 4 logit levels the k-th
  // token and the top-p boundary fall inside large groups of ties, where only the id decides.
  const cases: [number, SamplerSearch, number, number, number, number, number][] = [
    [300, "search", 1, 5, 1, 16, 41],
    [300, "search", 50, 40, 1, 32, 4],
    [300, "search", 50, 100, 1, 24, 4],
    [300, "search", 0.7, 20, 0.8, 16, 41],
    [300, "search", 50, 0, 0.3, 16, 4],
    [300, "search", 50, 60, 0.5, 16, 4],
    [300, "search", 1, 3, 0.3, 16, 41],
    [300, "search", 2, 299, 1, 8, 41],
    [300, "scan", 50, 40, 1, 16, 4], // the same draws as the search
    [5000, "search", 50, 40, 0.9, 8, 4],
    [50257, "search", 50, 40, 1, 4, 41],
    [50257, "search", 1, 0, 0.9, 4, 41],
  ];
  let differ = 0, checked = 0;
  for (const [V, method, temperature, topK, topP, draws, levels] of cases) {
    const logits = createTensor(ctx, [V], "f32", undefined, "logits");
    const ids = createTensor(ctx, [1], "u32", new Uint32Array(1), "ids");
    const out = createTensor(ctx, [16], "u32", undefined, "out");
    const state = createTensor(ctx, [1], "u32", new Uint32Array(1), "state");
    const seed = 31 + topK + V;
    const call = sampleTokenGpu(ctx, { logits, ids, out, state, temperature, topK, topP, seed, method });
    const logitsOf = () =>
      Float32Array.from({ length: V }, () => Math.round(rng.next() * (levels - 1)) / 8 - 2);
    differ += await _drawsDiffering(
      ctx,
      call,
      { logits, ids },
      logitsOf,
      { temperature, topK, topP },
      seed,
      draws,
    );
    checked += draws;
    assertEquals((await readTensor(ctx, state))[0], draws, "the counter advanced once per draw");
    for (const t of [logits, ids, out, state]) t.buffer.destroy();
  }
  // f32 sums on the GPU against float64 on the host may straddle a boundary; nothing more.
  assert(differ <= 2, `${differ} of ${checked} draws differ`);
});

Deno.test("generate --top-p: the same tokens on the GPU and with --host-sampling, and shader setup timed apart (compile_s)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sets = [
      "--set",
      "train.steps=8",
      "--set",
      "train.eval_every=8",
      "--set",
      "train.checkpoint_every=8",
    ];
    const { id } = await trainMicro(dir, ...sets);
    const gen = async (...more: string[]) => {
      const r = await cli(
        ...["generate", id, "--prompt", "x = ", "--max-tokens", "40", "--temperature", "1.2", "--top-k", "0"],
        ...["--seed", "4", "--runs-dir", dir, "--json", ...more],
      );
      assertEquals(r.code, 0, r.err.join("\n"));
      return { json: r.json(), err: r.err.join("\n") };
    };
    const [gpu, host, all] = [
      await gen("--top-p", "0.6"),
      await gen("--top-p", "0.6", "--host-sampling"),
      await gen(),
    ];
    assertEquals(gpu.json.tokens, host.json.tokens);
    notDeepStrictEqual(gpu.json.tokens, all.json.tokens);
    assert(gpu.err.includes("top-p 0.6"), gpu.err);
    // Setup (building and compiling the decoder's and sampler's shaders) is reported apart from decoding.
    assert(gpu.json.compile_s > 0 && gpu.json.tokens_per_s > 0, JSON.stringify(gpu.json));
    assert(/setup \(shader compilation, first step\) \d+\.\d\d s/.test(gpu.err), gpu.err);
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

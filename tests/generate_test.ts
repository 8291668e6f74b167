import { deepStrictEqual as assertEquals, notDeepStrictEqual, ok as assert } from "node:assert/strict";
import { cli } from "./helpers/cli.ts";
import { closeRunStores } from "../core/runs/open_store.ts";
import { parseExperimentText } from "../core/config/mod.ts";
import { evaluateGraph, type HostValue } from "../core/graph/cpu_executor.ts";
import { CPU_OPS } from "../core/graph/cpu_ops.ts";
import { schedule } from "../core/graph/schedule.ts";
import { buildModel } from "../core/plan/model.ts";
import { RunDir } from "../core/runs/run_dir.ts";
import { latestCheckpoint } from "../core/runs/checkpoints.ts";
import { paramsFromTensors } from "../core/train/trainer.ts";
import { sampleToken } from "../core/infer/generate.ts";
import { Rng } from "../core/util/rng.ts";
import { encodeText } from "../core/data/tokenizer.ts";

Deno.test("sampleToken: greedy is the argmax, top-k 1 is greedy at any temperature, draws follow the softmax", () => {
  const logits = Float32Array.of(0.5, 2, -1, 1.9, 0);
  const r = new Rng(1);
  assertEquals(sampleToken(logits, { temperature: 0, topK: 0 }, r), 1);
  for (let i = 0; i < 20; i++) assertEquals(sampleToken(logits, { temperature: 5, topK: 1 }, r), 1);
  // top-k 2 at temperature 1: only tokens 1 and 3, with odds e^2 : e^1.9.
  const counts = new Map<number, number>();
  for (let i = 0; i < 20000; i++) {
    const t = sampleToken(logits, { temperature: 1, topK: 2 }, r);
    counts.set(t, (counts.get(t) ?? 0) + 1);
  }
  assertEquals([...counts.keys()].sort(), [1, 3]);
  const want = 1 / (1 + Math.exp(-0.1)); // P(token 1)
  assert(Math.abs(counts.get(1)! / 20000 - want) < 0.015, `P(1) = ${counts.get(1)! / 20000}, want ${want}`);
  // The same seed gives the same draws.
  const draw = (seed: number) => {
    const g = new Rng(seed);
    return Array.from({ length: 30 }, () => sampleToken(logits, { temperature: 2, topK: 0 }, g));
  };
  assertEquals(draw(7), draw(7));
  notDeepStrictEqual(draw(7), draw(8));
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
    [["generate", "no-such-run", "--prompt", "a", "--runs-dir", "/nonexistent-dir"], /./],
  ];
  for (const [argv, msg] of cases) {
    const r = await cli(...argv);
    assertEquals(r.code, 2, `${argv.join(" ")}: ${r.err.join("\n")}`);
    assert(msg.test(r.err.join("\n")), `${argv.join(" ")}: ${r.err.join("\n")}`);
  }
});

/**
 * Each router of the literature (docs/design.md §16) trains the micro fixture on WebGPU (llvmpipe) through
 * the CLI: the loss is finite and falls, its training-rule metrics are logged with the values the rule
 * implies, and the trained model evaluates under router.infer.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { cli } from "./helpers/cli.ts";
import { RunDir } from "../core/runs/run_dir.ts";
import { closeRunStores } from "../core/runs/open_store.ts";
import type { MetricPoint } from "../core/runs/run_types.ts";

/** Trains the micro fixture with `sets` for 40 steps; returns its `--json` result and metrics. */
async function trainWith(dir: string, ...sets: string[]) {
  const args = [
    "model.kind=smoe",
    "loss.mi.attention=0",
    "loss.mi.mlp=0",
    "train.steps=40",
    "train.eval_every=20",
    "train.checkpoint_every=40",
    ...sets,
  ].flatMap((s) => ["--set", s]);
  const r = await cli(
    "run",
    "tests/fixtures/micro.yaml",
    ...args,
    "--runs-dir",
    dir,
    "--no-dashboard",
    "--json",
  );
  assertEquals(r.code, 0, r.err.join("\n"));
  const j = r.json(), run = await RunDir.open(dir, j.run_id);
  const metrics = await run.readMetrics();
  const losses = metrics.filter((p) => p.key === "train/loss").map((p) => p.value);
  assert(losses.length >= 4 && losses.every(Number.isFinite), `train/loss ${losses}`);
  assert(losses.at(-1)! < losses[0]!, `train/loss falls: ${losses}`);
  // Margin: 1.75 nats below the uniform prediction ln 256 = 5.55 the model starts at.
  assert(j.final["val/loss"] < 3.8, `val loss ${j.final["val/loss"]}`);
  return { id: j.run_id as string, metrics };
}

/** The last logged value of `key`. */
function last(metrics: MetricPoint[], key: string): number {
  const v = metrics.filter((p) => p.key === key).at(-1)?.value;
  assert(v !== undefined, `metric ${key} logged`);
  return v;
}

Deno.test("router.train expert_choice trains on WebGPU; every expert takes C tokens; eval runs router.infer", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const { id, metrics } = await trainWith(
      dir,
      "router.train=expert_choice",
      "router.capacity=1.5",
      "router.infer.kind=topk",
    );
    // 256 tokens a micro-batch. MLP: C = ceil(256·1.5/4) = 96 per expert, so 4·96/256 = 1.5 experts per
    // token and a quarter of the assignments each. Attention: C = ceil(256·1.5/2) = 192 of 2 experts.
    for (const l of [0, 1]) {
      const mlp = `router/${l}/mlp`, att = `router/${l}/attention`;
      assertEquals(last(metrics, `${mlp}/experts_per_token`), 1.5);
      for (let e = 0; e < 4; e++) assertEquals(last(metrics, `${mlp}/train_load/${e}`), 0.25);
      assertEquals(last(metrics, `${att}/experts_per_token`), 1.5);
      const dropped = last(metrics, `${mlp}/dropped`);
      assert(dropped >= 0 && dropped < 0.5, `dropped share ${dropped}`);
      assertEquals(last(metrics, `${mlp}/sparsity`), 1 - 1.5 / 4);
    }
    const ev = await cli("eval", id, "--batches", "2", "--runs-dir", dir, "--json");
    assertEquals(ev.code, 0, ev.err.join("\n"));
    const rules = ev.json().rules;
    assertEquals(rules.map((r: { rule: string }) => r.rule), ["dense", "topk@2"]);
    // topk@2 of 4 MLP experts and of 2 attention experts: 2 each, per token.
    assertEquals(rules[1].layers.map((l: { experts: number }) => l.experts), [2, 2, 2, 2]);
    assert(Number.isFinite(rules[1].ppl) && rules[1].ppl < 60, `topk@2 ppl ${rules[1].ppl}`);
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("router.train top_p trains on WebGPU with the dynamic and Switch losses; no token is left out", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const { id, metrics } = await trainWith(
      dir,
      "router.train=top_p",
      "router.p=0.5",
      "loss.dynamic=0.01",
      "loss.load_balance=0.01",
      "router.infer.kind=top_p",
      "router.infer.p=0.5",
    );
    // The step's dynamic loss: the summed mean entropy of 4 routers, each within (0, ln 4].
    const dyn = last(metrics, "train/dynamic_loss");
    assert(dyn > 0 && dyn <= 2 * Math.log(4) + 2 * Math.log(2), `dynamic loss ${dyn}`);
    for (const l of [0, 1]) {
      const mlp = `router/${l}/mlp`;
      // Top-p keeps at least one expert for every token.
      assertEquals(last(metrics, `${mlp}/dropped`), 0);
      const perToken = last(metrics, `${mlp}/experts_per_token`);
      assert(perToken >= 1 && perToken <= 4, `experts per token ${perToken}`);
      const shares = [0, 1, 2, 3].map((e) => last(metrics, `${mlp}/train_load/${e}`));
      assert(Math.abs(shares.reduce((a, b) => a + b, 0) - 1) < 1e-9, `shares ${shares}`);
      assert(Math.abs(last(metrics, `${mlp}/sparsity`) - (1 - perToken / 4)) < 1e-9);
    }
    const ev = await cli("eval", id, "--batches", "2", "--runs-dir", dir, "--json");
    assertEquals(ev.code, 0, ev.err.join("\n"));
    const rule = ev.json().rules[1];
    assertEquals(rule.rule, "top_p@0.5");
    for (const l of rule.layers) assert(l.experts >= 1 && l.experts <= l.of, JSON.stringify(l));
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

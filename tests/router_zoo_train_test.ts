/**
 * Each router of the literature (docs/design.md §16) trains the micro fixture on WebGPU (llvmpipe) through
 * the CLI: the loss is finite and falls, its training-rule metrics are logged with the values the rule
 * implies, and the trained model evaluates under router.infer.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { cli } from "./helpers/cli.ts";
import { RunDir } from "../core/runs/run_dir.ts";
import type { MetricPoint } from "../core/runs/run_types.ts";
import { latestCheckpoint } from "../core/runs/checkpoints.ts";
import { tensorToF32 } from "../core/runs/safetensors.ts";
import { withRunsDir } from "./helpers/router_configs.ts";

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
  await withRunsDir(async (dir) => {
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
  });
});

Deno.test("router.train top_p trains on WebGPU with the dynamic and Switch losses; no token is left out", async () => {
  await withRunsDir(async (dir) => {
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
  });
});

/** Every logged value of `key` by step, in step order. */
function seriesOf(metrics: MetricPoint[], key: string): [number, number][] {
  return metrics.filter((p) => p.key === key).map((p): [number, number] => [p.step, p.value])
    .sort((a, b) => a[0] - b[0]);
}

Deno.test("router.train relu trains on WebGPU; λ follows its rule, is checkpointed and resumes exactly; eval and generate run the g > 0 experts", async () => {
  await withRunsDir(async (dir) => {
    const sets = [
      "router.train=relu",
      "loss.l1=0.001",
      "router.target_sparsity=0.5",
      "router.l1_rate=1.05",
      "router.infer.kind=dense",
      "train.log_every=1",
    ];
    const { id, metrics } = await trainWith(dir, ...sets);
    // λ_t = λ_{t−1} · 1.05^sign(0.5 − sparsity_t), λ_0 = loss.l1, sparsity_t measured in step t.
    const lambda = seriesOf(metrics, "train/l1_lambda"), sparsity = seriesOf(metrics, "train/relu_sparsity");
    assertEquals(lambda.length, 40);
    let want = 0.001, up = 0, down = 0;
    lambda.forEach(([step, got], i) => {
      const [s, measured] = sparsity[i]!;
      assertEquals(s, step);
      assert(measured >= 0 && measured <= 1, `sparsity ${measured}`);
      want = measured < 0.5 ? (up++, want * 1.05) : measured > 0.5 ? (down++, want / 1.05) : want;
      assert(Math.abs(got - want) <= 1e-5 * want, `λ at step ${step}: ${got}, rule ${want}`);
    });
    assert(up > 0 && down > 0, `λ rose (${up} steps) and fell (${down} steps) around the target`);
    // Evaluation: each router's share of zero gates and experts per token agree; some gates are zero.
    const routers = [0, 1].flatMap((l) => [[`router/${l}/mlp`, 4], [`router/${l}/attention`, 2]] as const);
    let zeros = 0;
    for (const [key, n] of routers) {
      const s = last(metrics, `${key}/sparsity`), perToken = last(metrics, `${key}/experts_per_token`);
      assert(Math.abs(s - (1 - perToken / n)) < 1e-9, `${key}: sparsity ${s}, ${perToken} experts per token`);
      zeros += s / routers.length;
    }
    assert(zeros > 0 && zeros < 1, `mean sparsity ${zeros}`);
    // The checkpoint holds λ after the last step; a run stopped at step 20 and resumed logs the same λ and
    // losses, bit for bit.
    const ck = (await latestCheckpoint(`${dir}/${id}`))!;
    const saved = tensorToF32(ck.file.tensors.get("router_state/l1_lambda")!)[0]!;
    assertEquals(saved, Math.fround(lambda.at(-1)![1]));
    const args = [
      ...["model.kind=smoe", "loss.mi.attention=0", "loss.mi.mlp=0", "train.steps=40"],
      ...["train.eval_every=20", "train.checkpoint_every=40", ...sets],
    ].flatMap((s) => ["--set", s]);
    const first = await cli(
      "run",
      "tests/fixtures/micro.yaml",
      ...args,
      "--stop-after",
      "20",
      "--runs-dir",
      dir,
      "--no-dashboard",
      "--json",
    );
    assertEquals(first.json().status, "interrupted", first.err.join("\n"));
    const resumedId = first.json().run_id;
    const resumed = await cli("run", "--resume", resumedId, "--runs-dir", dir, "--no-dashboard", "--json");
    assertEquals(resumed.code, 0, resumed.err.join("\n"));
    const again = await (await RunDir.open(dir, resumedId)).readMetrics();
    for (const key of ["train/l1_lambda", "train/loss"]) {
      assertEquals(seriesOf(again, key), seriesOf(metrics, key), key);
    }
    // Inference: the dense rule runs every expert whose gate is above 0 (fewer than all), topk:1 one at most.
    const ev = await cli("eval", id, "--rule", "topk:1", "--batches", "4", "--runs-dir", dir, "--json");
    assertEquals(ev.code, 0, ev.err.join("\n"));
    const [dense, top1] = ev.json().rules;
    // The sparse forward of the g > 0 experts is the trained model: on the training's own validation
    // batches (eval_batches 4) it gives the training's last validation perplexity.
    const val = last(metrics, "val/ppl");
    assert(Math.abs(dense.ppl - val) < 1e-4 * val, `dense rule ppl ${dense.ppl}, training's ${val}`);
    for (const l of dense.layers) assert(l.experts >= 0 && l.experts <= l.of, JSON.stringify(l));
    assert(dense.layers.some((l: { experts: number; of: number }) => l.experts < l.of), "some experts idle");
    for (const [i, l] of top1.layers.entries()) {
      assert(l.experts <= Math.min(1, dense.layers[i].experts) + 1e-12, JSON.stringify(l));
    }
    assert(dense.hidden_pct < 100 && Number.isFinite(dense.ppl), JSON.stringify(dense));
    const gen = await cli(
      "generate",
      id,
      "--prompt",
      "The ",
      "--max-tokens",
      "8",
      "--temperature",
      "0",
      "--runs-dir",
      dir,
      "--json",
    );
    assertEquals(gen.code, 0, gen.err.join("\n"));
    assertEquals(gen.json().new_tokens, 8);
  });
});

Deno.test("DS-MoE with shared and fine-grained experts trains on WebGPU; top-k inference runs m·k segments and the shared experts", async () => {
  await withRunsDir(async (dir) => {
    const sets = [
      "model.mlp.segments=2",
      "model.mlp.shared=1",
      "train.steps=40",
      "train.eval_every=20",
      "train.log_every=1",
    ];
    const r = await cli(
      "run",
      "tests/fixtures/micro.yaml",
      ...sets.flatMap((s) => ["--set", s]),
      "--runs-dir",
      dir,
      "--no-dashboard",
      "--json",
    );
    assertEquals(r.code, 0, r.err.join("\n"));
    const id = r.json().run_id, metrics = await (await RunDir.open(dir, id)).readMetrics();
    const losses = seriesOf(metrics, "train/loss").map(([, v]) => v);
    assert(losses.every(Number.isFinite) && losses.at(-1)! < losses[0]!, `train/loss ${losses}`);
    assert(r.json().final["val/loss"] < 3.8, `val loss ${r.json().final["val/loss"]}`);
    // Per-expert load of each of the 8 segments of an MLP router.
    const load = [...Array(8).keys()].map((e) => last(metrics, `router/0/mlp/load/${e}`));
    assert(Math.abs(load.reduce((a, b) => a + b, 0) - 1) < 1e-9, `loads ${load}`);
    const ev = await cli("eval", id, "--rule", "topk:1", "--batches", "4", "--runs-dir", dir, "--json");
    assertEquals(ev.code, 0, ev.err.join("\n"));
    const [dense, top1] = ev.json().rules;
    // The dense rule is the trained model (the shared experts included): the training's validation ppl.
    const val = last(metrics, "val/ppl");
    assert(Math.abs(dense.ppl - val) < 1e-4 * val, `dense ${dense.ppl} vs ${val}`);
    // topk:1 runs 1 × 2 of 8 MLP segments and 1 of 2 attention experts; the shared expert always. Per block:
    // Q/O 2·32·16 of an attention expert, K/V 2·32·16, 2 segments 2 · 2·32·16, the shared 2·32·32, routers
    // 32·2 + 32·8.
    const perBlock = 2 * 32 * 16 + 2 * 32 * 16 + 2 * (2 * 32 * 16) + 2 * 32 * 32 + 32 * 2 + 32 * 8;
    assertEquals(top1.active_params, 2 * perBlock);
    assertEquals(top1.layers.map((l: { experts: number }) => l.experts), [1, 2, 1, 2]);
  });
});

/**
 * Auxiliary-loss-free balancing (router.balance: aux_free, docs/design.md §16): its config errors, the bias
 * in the selection but not in the gates (float64), top-k inference with the bias, the WebGPU step and bias
 * update against float64 under gradient accumulation, and a tiny SMoE trained through the CLI on this
 * adapter (bias logged, loads more balanced than without it, `eval` reading the bias from the checkpoint).
 * Exact resume with the bias is in tests/resume_test.ts.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import type { Experiment } from "../core/config/schema.ts";
import { evaluateGraph } from "../core/graph/cpu_executor.ts";
import { CPU_OPS } from "../core/graph/cpu_ops.ts";
import { schedule } from "../core/graph/schedule.ts";
import { buildModel } from "../core/plan/model.ts";
import { plan } from "../core/plan/plan.ts";
import { topkMaskRef } from "../core/ref/router.ts";
import { CpuTrainBackend } from "../core/train/cpu_backend.ts";
import { Rng } from "../core/util/rng.ts";
import { cli } from "./helpers/cli.ts";
import { assertClose } from "./helpers/gpu.ts";
import {
  assertBiasesClose,
  assertParamsClose,
  compareSteps,
  errorLines,
  microSmoeYaml,
  randomBatch,
  randomModelFeeds,
  SMOE_YAML as SMOE,
  tinySmoe,
  trainedFeeds,
  trainYaml,
  withBackends,
  withRunsDir,
} from "./helpers/router_configs.ts";

Deno.test("router.balance aux_free needs router.train: topk, and router.bias_rate needs aux_free: located errors", () => {
  assertEquals(errorLines("router:\n  balance: aux_free\n"), [
    "t.yaml:2:12: router.balance: router.balance (aux_free) applies to top-k token choice (router.train: " +
    "topk); router.train dense selects no experts in training",
  ]);
  assertEquals(errorLines(`${SMOE}router: { train: topk, bias_rate: 0.01 }\n`), [
    "t.yaml:5:35: router.bias_rate: router.bias_rate (0.01) is the step of the aux_free bias: set " +
    "router.balance: aux_free",
  ]);
  assertEquals(errorLines(`${SMOE}router: { train: topk, balance: aux_free, bias_rate: 0 }\n`), [
    "t.yaml:5:54: router.bias_rate: must be > 0, got 0",
  ]);
  assertEquals(errorLines(`${SMOE}router: { train: topk, balance: aux_free, bias_rate: 0.01 }\n`), []);
});

/** A tiny SMoE (top-2 of 4) with aux-free balancing and routers far from uniform. */
function smoe(over: Record<string, unknown> = {}, microBatch?: number): Experiment {
  const router = { train: "topk", k: 2, balance: "aux_free", bias_rate: 0.01, ...over };
  return tinySmoe({ seqLen: 6, initStd: 0.3, router, microBatch });
}

Deno.test("float64: the bias selects (top-k of S + b) but the gates are the unbiased S of the selected experts; a bias equal for all experts changes nothing", () => {
  const c = smoe(), m = buildModel(c, 4), feeds = randomModelFeeds(m, new Rng(2), 0.3);
  const [bias0, bias1] = m.routerState.map((s) => s.value);
  const mask = m.graph.nodes.find((n) => n.op === "topk_mask")!.outputs[0]!;
  const gate = m.graph.nodes.find((n) => n.op === "mul" && n.inputs[1] === mask)!.outputs[0]!;
  const probs = m.routers[0]!.probs;
  const run = (b: number[]) => {
    feeds.set(bias0!.id, Float64Array.from(b));
    feeds.set(bias1!.id, Float64Array.from(b));
    const outs = [probs, mask, gate, m.loss];
    return evaluateGraph(schedule(m.graph, outs).nodes, feeds, outs, CPU_OPS);
  };
  const bias = [0.3, -0.2, 0, 0.15];
  const [p, k, gt] = run(bias);
  assertEquals(Array.from(k!), Array.from(topkMaskRef(p!.map((v, i) => v + bias[i % 4]!), 4, 2)));
  assertEquals(Array.from(gt!), Array.from(p!, (v, i) => v * k![i]!));
  const unbiased = topkMaskRef(p!, 4, 2);
  assert(k!.some((v, i) => v !== unbiased[i]), "this bias changes some selections");
  // Adding the same constant to every expert's score selects the same experts: the same loss, bit for bit.
  const [, , , l0] = run([0, 0, 0, 0]), [, , , l1] = run([0.25, 0.25, 0.25, 0.25]);
  assertEquals(l1, l0);
});

Deno.test("float64: top-k inference reads the balancing bias from the checkpoint's state and gives the training graph's loss; threshold inference has no bias", async () => {
  const batch = randomBatch(3, 4 * 6);
  const c = smoe({ infer: { kind: "topk", k: 2 } }), train = new CpuTrainBackend(c);
  const st = await train.exportState();
  // A bias that moves selections: the last expert strongly favoured, the first disfavoured.
  for (const [name] of st.routerState!) st.routerState!.set(name, Float32Array.of(-0.3, 0.05, 0, 0.3));
  await train.importState(st);
  const want = (await train.evaluate(batch)).lmLoss;
  const p = plan(c, "infer-sparse"), m = p.model;
  const biasParams = m.params.filter((s) => s.value.name.endsWith(".balance_bias"));
  assertEquals(biasParams.map((s) => s.value.name), [
    "h0.mlp.router.balance_bias",
    "h1.mlp.router.balance_bias",
  ]);
  const feeds = trainedFeeds(m, batch, train, st.routerState!);
  const got = evaluateGraph(p.schedule.nodes, feeds, [m.lmLoss], CPU_OPS)[0]![0]!;
  assert(Math.abs(got - want) < 1e-12, `${got} vs ${want}`);
  // Without the bias the same rule selects otherwise: a different loss.
  for (const s of biasParams) feeds.set(s.value.id, new Float64Array(4));
  const plain = evaluateGraph(p.schedule.nodes, feeds, [m.lmLoss], CPU_OPS)[0]![0]!;
  assert(Math.abs(plain - want) > 1e-4, `the bias changed top-k inference: ${plain} vs ${want}`);
  const threshold = plan(smoe({ infer: { kind: "threshold", epsilon: 0.5 } }), "infer-sparse");
  assert(!threshold.model.params.some((s) => s.value.name.endsWith(".balance_bias")));
});

Deno.test("WebGPU steps with aux-free balancing in 4 micro-batches match the float64 steps: losses, loads and the biases' updates", async () => {
  await withBackends(smoe({}, 1), async (cpu, gpu) => {
    await compareSteps(cpu, gpu, 4, (t) => randomBatch(t + 1, 4 * 6), (got, want, t) => {
      got.routers!.forEach((r, i) => {
        const w = want.routers![i]!;
        assertClose(r.load, w.load, { atol: 1e-7, rtol: 0 }, `step ${t + 1} router ${i} load`);
        // Multiples of the rate 0.01 after each step's ±0.01 or 0 (f32 sums of 0.01).
        assertClose(r.bias!, w.bias!, { atol: 1e-7, rtol: 0 }, `step ${t + 1} router ${i} bias`);
        assert(w.bias!.some((b) => b !== 0), "the bias moved");
      });
    });
    await assertBiasesClose(cpu, gpu);
    await assertParamsClose(cpu, gpu, 2e-4);
  });
});

// The micro fixture as an SMoE without any auxiliary loss, at a learning rate where its routers collapse
// onto one expert within 30 steps without balancing.
const TINY = (balance: string) =>
  microSmoeYaml(
    "aux-free",
    `router: { train: topk, k: 2, ${balance} infer: { kind: topk, k: 2 } }
loss: { mi: { attention: 0, mlp: 0 } }
train:
  steps: 60
  optimizer: { lr: 3.0e-3 }
  log_every: 1
  eval_every: 60
  eval_batches: 2
  checkpoint_every: 60
  schedule: { warmup: 2 }
`,
  );

Deno.test("an SMoE with aux-free balancing trains on WebGPU: loss falls, biases logged, loads more balanced than without it, eval reads the bias", async () => {
  await withRunsDir(async (dir) => {
    const train = async (balance: string) => {
      const { r, at } = await trainYaml(dir, "c.yaml", TINY(balance));
      // The most loaded expert's share, averaged over steps 31–60 and both layers.
      let worst = 0;
      for (const layer of [0, 1]) {
        const loads = [0, 1, 2, 3].map((e) => at(`train/router/${layer}/mlp/load/${e}`));
        for (let s = 30; s < 60; s++) worst += Math.max(...loads.map((l) => l[s]!)) / 60;
      }
      return { r, at, worst };
    };
    const free = await train("balance: aux_free, bias_rate: 0.01,"), none = await train("");
    const loss = free.at("train/loss");
    assert(loss.length === 60 && loss.at(-1)! < loss[0]! - 1.5, `train/loss ${loss[0]} → ${loss.at(-1)}`);
    const bias = [0, 1, 2, 3].map((e) => free.at(`train/router/0/mlp/bias/${e}`));
    assert(bias.every((b) => b.length === 60), "the bias is logged every step");
    // Each step moves each bias by −0.01, 0 or +0.01.
    for (const b of bias) {
      b.slice(1).forEach((v, s) =>
        assert([-1, 0, 1].includes(Math.round((v - b[s]!) / 0.01)), `${b[s]} → ${v}`)
      );
      assert(Math.abs(b[0]!) <= 0.01 + 1e-6);
    }
    // Measured: the largest load share averages 0.41 with the bias, 0.49 without (0.25 is balanced).
    assert(
      free.worst < none.worst - 0.03,
      `largest load share ${free.worst} with the bias, ${none.worst} without`,
    );
    assertEquals(none.at("train/router/0/mlp/bias/0"), [], "no bias without aux_free");
    // eval: the sparse top-2 path reads the bias (router_state/… of the checkpoint) with the parameters.
    const ev = await cli("eval", free.r.json().run_id, "--runs-dir", dir, "--json", "--rule", "topk:2");
    assertEquals(ev.code, 0, ev.err.join("\n"));
    const rule = ev.json().rules[0];
    assert(Math.abs(rule.loss - free.r.json().final["val/loss"]) < 0.2, `${rule.loss}`);
  });
});

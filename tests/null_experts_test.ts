/**
 * Null experts (AdaMoE; router.null_experts, docs/design.md §16): config errors, the router's N + N_null
 * scores with top-k over all and gates for the real experts only (float64), sparse inference skipping the
 * null experts (float64 and through `eval` / `generate`; `eval --diagnostics` over all N + N_null), parameter and active counts, the WebGPU step
 * against float64, and a tiny SMoE trained through the CLI on this adapter with the null share logged.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { type Experiment, ExperimentSchema } from "../core/config/schema.ts";
import { evaluateGraph } from "../core/graph/cpu_executor.ts";
import { CPU_OPS } from "../core/graph/cpu_ops.ts";
import { schedule } from "../core/graph/schedule.ts";
import { activeParams, countParams, expectedActiveReal } from "../core/plan/counts.ts";
import { buildModel } from "../core/plan/model.ts";
import { plan } from "../core/plan/plan.ts";
import { topkMaskRef } from "../core/ref/router.ts";
import { CpuTrainBackend } from "../core/train/cpu_backend.ts";
import { Rng } from "../core/util/rng.ts";
import { cli } from "./helpers/cli.ts";
import { assertClose } from "./helpers/gpu.ts";
import {
  assertParamsClose,
  compareSteps,
  errorLines,
  microSmoeYaml,
  randomBatch,
  randomModelFeeds,
  SMOE_YAML as SMOE,
  tinySmoe,
  trainedFeeds,
  trainFalls,
  withBackends,
  withRunsDir,
} from "./helpers/router_configs.ts";

Deno.test("router.null_experts needs router.train: topk, and router.k may reach N + N_null but not past it: located errors", () => {
  assertEquals(errorLines("router:\n  null_experts: 2\n"), [
    "t.yaml:2:17: router.null_experts: router.null_experts (2) applies to top-k token choice " +
    "(router.train: topk); router.train dense selects no experts in training",
  ]);
  assertEquals(errorLines(`${SMOE}router: { train: topk, k: 7, null_experts: 2 }\n`), [
    "t.yaml:5:27: router.k: k (7) exceeds experts (4 + 2 null experts) at model.mlp",
  ]);
  assertEquals(errorLines(`${SMOE}router: { train: topk, k: 6, null_experts: 2 }\n`), []);
  assertEquals(errorLines(`${SMOE}router: { train: topk, null_experts: -1 }\n`), [
    "t.yaml:5:38: router.null_experts: must be ≥ 0, got -1",
  ]);
});

/** A tiny SMoE: top-3 of 4 real + 2 null experts, routers far from uniform. */
function smoe(over: Record<string, unknown> = {}, microBatch?: number): Experiment {
  const router = { train: "topk", k: 3, null_experts: 2, infer: { kind: "topk", k: 3 }, ...over };
  return tinySmoe({ seqLen: 6, initStd: 0.5, router, loss: { load_balance: 0.1 }, microBatch });
}

Deno.test("float64: the router scores N + N_null experts, top-k picks among all, and only the real experts are gated; the Switch loss and loads cover all", () => {
  const c = smoe(), m = buildModel(c, 4), feeds = randomModelFeeds(m, new Rng(4), 0.5);
  assertEquals(m.params.find((p) => p.value.name === "h0.mlp.router.w")!.value.shape, [16, 6]);
  const probs = m.routers[0]!.probs, mask = m.graph.nodes.find((n) => n.op === "topk_mask")!.outputs[0]!;
  const gated = m.graph.nodes.find((n) => n.op === "gated_activation")!;
  const gate = gated.inputs[1]!;
  const sw = m.graph.nodes.find((n) => n.op === "switch_loss")!;
  const outs = [probs, mask, gate, m.loads[0]!.selected];
  const [p, k, gt, selected] = evaluateGraph(schedule(m.graph, outs).nodes, feeds, outs, CPU_OPS);
  assertEquals(Array.from(k!), Array.from(topkMaskRef(p!, 6, 3)));
  assertEquals(gate.shape, [m.tokens, 4]);
  assertEquals(
    Array.from(gt!),
    Array.from({ length: m.tokens * 4 }, (_, i) => {
      const t = Math.floor(i / 4), e = i % 4;
      return p![t * 6 + e]! * k![t * 6 + e]!;
    }),
  );
  assertEquals(sw.inputs.map((v) => v.shape), [[m.tokens, 6], [m.tokens, 6]], "the Switch loss over all 6");
  const nullPicks = Array.from(k!).filter((v, i) => v > 0 && i % 6 >= 4).length;
  assert(nullPicks > 0 && nullPicks < m.tokens * 3, `${nullPicks} null picks: some tokens skip experts`);
  assert(Math.abs(selected![4]! + selected![5]! - nullPicks / m.tokens) < 1e-12, "null loads");
});

Deno.test("float64: sparse top-k inference with null experts gives the training graph's loss, and its masks count real experts only", async () => {
  const batch = randomBatch(3, 4 * 6);
  for (const over of [{}, { renormalize: true }]) {
    const c = smoe(over), train = new CpuTrainBackend(c);
    const want = (await train.evaluate(batch)).lmLoss;
    const p = plan(c, "infer-sparse"), m = p.model;
    const feeds = trainedFeeds(m, batch, train);
    const masks = m.routers.map((r) => r.mask!);
    const [loss, ...maskValues] = evaluateGraph(p.schedule.nodes, feeds, [m.lmLoss, ...masks], CPU_OPS);
    assert(Math.abs(loss![0]! - want) < 1e-12, `${JSON.stringify(over)}: ${loss![0]} vs ${want}`);
    assertEquals(masks.map((v) => v.shape), [[24, 4], [24, 4]]);
    assertEquals(m.routers.map((r) => [r.probs.shape[1], r.experts]), [[6, 4], [6, 4]]);
    // Each token runs 3 − (its null picks) real experts: at most 3, and fewer for some.
    const perToken = Array.from(
      { length: 24 },
      (_, t) => [0, 1, 2, 3].reduce((a, e) => a + maskValues[0]![t * 4 + e]!, 0),
    );
    assert(perToken.every((n) => n <= 3) && perToken.some((n) => n < 3), `${perToken}`);
  }
});

Deno.test("float64: routed attention experts (MoA) with a null expert, aux-free bias and renormalised gates, after 3 steps: sparse top-k inference = the training graph's loss", async () => {
  const c = ExperimentSchema.parse({
    data: { seq_len: 6 },
    model: {
      kind: "smoe",
      d_model: 16,
      layers: 2,
      init_std: 0.5,
      attention: { kind: "moa", experts: 3, heads_per_expert: 2, head_dim: 4 },
      mlp: { experts: 4, hidden: 8 },
    },
    router: {
      train: "topk",
      k: 2,
      null_experts: 1,
      balance: "aux_free",
      renormalize: true,
      infer: { kind: "topk", k: 2 },
    },
    train: { batch: 4 },
  });
  const batch = randomBatch(5, 24), train = new CpuTrainBackend(c);
  for (let t = 0; t < 3; t++) await train.step(randomBatch(10 + t, 24), 1e-2);
  const want = (await train.evaluate(batch)).lmLoss, state = (await train.exportState()).routerState!;
  assert([...state.values()].some((b) => b.some((v) => v !== 0)), "the biases moved");
  const p = plan(c, "infer-sparse"), m = p.model;
  assertEquals(m.routers.map((r) => [r.kind, r.probs.shape[1], r.mask!.shape[1]]), [
    ["attention", 4, 3],
    ["mlp", 5, 4],
    ["attention", 4, 3],
    ["mlp", 5, 4],
  ]);
  const feeds = trainedFeeds(m, batch, train, state);
  const got = evaluateGraph(p.schedule.nodes, feeds, [m.lmLoss], CPU_OPS)[0]![0]!;
  assert(Math.abs(got - want) < 1e-12, `${got} vs ${want}`);
});

Deno.test("null experts add router columns, not expert parameters; active counts before training are upper bounds on the real experts", () => {
  const [plain, nulls] = [smoe({ null_experts: 0 }), smoe()];
  const [a, b] = [countParams(plain), countParams(nulls)];
  assertEquals(b.mlp_router - a.mlp_router, 2 * 16 * 2, "2 layers × d 16 × 2 null experts");
  assertEquals([b.mlp_experts, b.experts], [a.mlp_experts, a.experts]);
  const rule = (kind: string, extra = {}) => ({ kind, epsilon: 0.5, k: 3, p: 0.9, ...extra }) as never;
  assertEquals(expectedActiveReal(rule("topk"), 4, 2), { experts: 3, exact: false });
  assertEquals(expectedActiveReal(rule("topk", { k: 6 }), 4, 2), { experts: 4, exact: false });
  assertEquals(expectedActiveReal(rule("dense"), 4, 2), { experts: 4, exact: true });
  assertEquals(expectedActiveReal(rule("threshold", { epsilon: 3 }), 4, 2), { experts: 1, exact: false });
  assertEquals(expectedActiveReal(rule("topk"), 4, 0), { experts: 3, exact: true });
  const act = activeParams(nulls);
  assertEquals([act.mlpExperts, act.exact], [3, false]);
});

Deno.test("WebGPU steps with null experts (capacity 1.25, renormalised) in 4 micro-batches match the float64 steps, null share too", async () => {
  const over = { capacity_factor: 1.25, renormalize: true };
  await withBackends(smoe(over, 1), async (cpu, gpu) => {
    await compareSteps(cpu, gpu, 3, (t) => randomBatch(t + 1, 4 * 6), (got, want) => {
      got.routers!.forEach((r, i) => {
        const w = want.routers![i]!;
        assertEquals(r.load.length, 6);
        assertClose(
          [r.nullShare!, r.dropped!],
          [w.nullShare!, w.dropped!],
          { atol: 1e-7, rtol: 0 },
          `router ${i}`,
        );
        const sum = r.load.slice(4).reduce((a, b) => a + b, 0);
        assert(Math.abs(sum - r.nullShare!) < 1e-6, "the null share is the null experts' loads");
      });
    });
    await assertParamsClose(cpu, gpu, 2e-4);
  });
});

const TINY = microSmoeYaml(
  "null-experts",
  `router: { train: topk, k: 3, null_experts: 2, infer: { kind: topk, k: 3 } }
loss: { mi: { attention: 0, mlp: 0 }, load_balance: 0.01 }
train: { steps: 24, log_every: 2, eval_every: 24, eval_batches: 2, checkpoint_every: 24, schedule: { warmup: 2 } }
`,
);

Deno.test("an SMoE with null experts trains on WebGPU: loss falls, null share logged; eval and generate run only real experts", async () => {
  await withRunsDir(async (dir) => {
    const { r, at } = await trainFalls(dir, "nx.yaml", TINY, 12), j = r.json();
    for (const layer of [0, 1]) {
      const share = at(`train/router/${layer}/mlp/null_share`);
      assertEquals(share.length, 12);
      assert(share.every((v) => v >= 0 && v <= 1) && share.some((v) => v > 0), `null share ${share}`);
      const loads = [0, 1, 2, 3, 4, 5].map((e) => at(`train/router/${layer}/mlp/load/${e}`));
      share.forEach((v, i) => assert(Math.abs(loads[4]![i]! + loads[5]![i]! - v) < 1e-6, "null loads"));
    }
    // eval: the sparse path measures real experts per token, fewer than k = 3 where nulls are picked.
    const ev = await cli(
      "eval",
      j.run_id,
      "--runs-dir",
      dir,
      "--json",
      "--rule",
      "topk:3",
      "--rule",
      "dense",
      "--diagnostics",
    );
    assertEquals(ev.code, 0, ev.err.join("\n"));
    const rules = ev.json().rules as {
      rule: string;
      active_pct: number;
      layers: { experts: number; of: number }[];
      diagnostics: { routers: { experts: number; load_top1: number[]; load_active: number[] }[] };
    }[];
    // Diagnostics see all 6 experts; the null ones never run (load_active 0), the real ones as measured.
    for (const r of rules) {
      for (const [i, d] of r.diagnostics.routers.entries()) {
        assertEquals([d.experts, d.load_top1.length, d.load_active.slice(4)], [6, 6, [0, 0]]);
        const real = d.load_active.slice(0, 4).reduce((a, b) => a + b, 0);
        assert(Math.abs(real - r.layers[i]!.experts) < 1e-6, `${r.rule} router ${i}: ${real}`);
      }
    }
    const rule = (name: string) => rules.find((x) => x.rule === name)!;
    const topk = rule("topk@3"), dense = rule("dense");
    for (const l of topk.layers) assert(l.of === 4 && l.experts > 0 && l.experts < 3, JSON.stringify(l));
    for (const l of dense.layers) assertEquals([l.experts, l.of], [4, 4]);
    assert(topk.active_pct < dense.active_pct);
    const gen = await cli(
      "generate",
      j.run_id,
      "--runs-dir",
      dir,
      "--json",
      "--prompt",
      "The ",
      "--max-tokens",
      "8",
    );
    assertEquals(gen.code, 0, gen.err.join("\n"));
    for (const l of gen.json().layers) assert(l.of === 4 && l.experts <= 3, JSON.stringify(l));
  });
});

/**
 * The routers of docs/design.md §16 combined: top-k's options against the other training rules (located config
 * errors where they do not apply; jitter and the load-balance scope where they do), null experts with
 * fine-grained and shared experts and the aux-free bias (graph, counts, router state, sparse inference =
 * training, WebGPU = float64), one router-state mechanism for the aux-free biases and ReLU's λ, and the
 * diagnostics' view of null experts.
 */
import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import type { Experiment } from "../core/config/schema.ts";
import { evaluateGraph } from "../core/graph/cpu_executor.ts";
import { CPU_OPS } from "../core/graph/cpu_ops.ts";
import { routerMaskOfAll } from "../core/infer/evaluate.ts";
import { routerSummary } from "../core/cli/dry_run.ts";
import { activeParams, countParams, hasBatchRouterLoss } from "../core/plan/counts.ts";
import { buildModel } from "../core/plan/model.ts";
import { plan } from "../core/plan/plan.ts";
import { expectedRouterState } from "../core/runs/stored_run.ts";
import { CpuTrainBackend } from "../core/train/cpu_backend.ts";
import { assertClose } from "./helpers/gpu.ts";
import {
  assertBiasesClose,
  compareSteps,
  errorLines,
  randomBatch,
  STEP_TOL,
  tinySmoe,
  trainedFeeds,
  withBackends,
} from "./helpers/router_configs.ts";

const SMOE = "model:\n  kind: smoe\n  attention: { kind: mha }\n  mlp: { experts: 4, hidden: 64 }\n";

Deno.test("top-k options under expert_choice, top_p and relu are located errors naming the key; jitter and the top-p load-balance scope are accepted", () => {
  const own = "selects experts by its own rule (docs/design.md §16)";
  assertEquals(errorLines(`${SMOE}router: { train: expert_choice, capacity_factor: 1.25 }\n`), [
    "t.yaml:5:50: router.capacity_factor: router.capacity_factor (1.25) applies to top-k token choice " +
    `(router.train: topk); router.train expert_choice ${own}; expert choice's capacity is router.capacity`,
  ]);
  assertEquals(errorLines(`${SMOE}router: { train: top_p, balance: aux_free }\n`), [
    "t.yaml:5:34: router.balance: router.balance (aux_free) applies to top-k token choice (router.train: " +
    `topk); router.train top_p ${own}`,
  ]);
  assertEquals(errorLines(`${SMOE}router: { train: relu, null_experts: 2 }\nloss: { l1: 0.001 }\n`), [
    "t.yaml:5:38: router.null_experts: router.null_experts (2) applies to top-k token choice (router.train: " +
    `topk); router.train relu ${own}`,
  ]);
  assertEquals(errorLines(`${SMOE}router: { train: top_p, softmax_order: after, bias_rate: 0.01 }\n`), [
    "t.yaml:5:40: router.softmax_order: router.softmax_order (after) applies to top-k token choice " +
    `(router.train: topk); router.train top_p ${own}`,
    "t.yaml:5:58: router.bias_rate: router.bias_rate (0.01) is the step of the aux_free bias: set " +
    "router.balance: aux_free",
  ]);
  const scope = (s: string) =>
    errorLines(`${SMOE}router: { train: top_p }\nloss: { load_balance: 0.01, load_balance_scope: ${s} }\n`);
  assertEquals(scope("sequence"), [
    "t.yaml:6:49: loss.load_balance_scope: loss.load_balance_scope sequence takes each sequence's shares of " +
    "k selections per token; router.train top_p keeps a varying number per token: use global or micro_batch",
  ]);
  assertEquals([scope("micro_batch"), scope("global")], [[], []]);
  assertEquals(
    errorLines(`${SMOE}router: { train: expert_choice }\nloss: { load_balance_scope: global }\n`),
    [
      "t.yaml:6:29: loss.load_balance_scope: loss.load_balance_scope (global) applies to the Switch " +
      "load-balance loss, which is off: set loss.load_balance > 0",
    ],
  );
  for (const train of ["expert_choice", "top_p", "relu"]) {
    const l1 = train === "relu" ? "loss: { l1: 0.001 }\n" : "";
    assertEquals(errorLines(`${SMOE}router: { train: ${train}, jitter: 0.1 }\n${l1}`), [], train);
  }
});

Deno.test("null experts with segments: router.k · m may reach N·m + N_null but not past it, located", () => {
  const cfg = (k: number) =>
    errorLines(
      "model:\n  kind: smoe\n  attention: { kind: mha }\n  mlp: { experts: 4, hidden: 64, segments: 2 }\n" +
        `router: { train: topk, k: ${k}, null_experts: 2 }\n`,
    );
  assertEquals(cfg(5), []);
  assertEquals(cfg(6), [
    "t.yaml:5:27: router.k: k (6) × 2 segments exceeds experts (4 × 2 segments + 2 null experts) at model.mlp",
  ]);
});

/** A tiny SMoE: 4 experts × 2 segments + 2 null experts, 1 shared expert, top-2 (4 segments), aux-free. */
function combined(over: Record<string, unknown> = {}, microBatch?: number): Experiment {
  return tinySmoe({
    seqLen: 6,
    initStd: 0.5,
    mlp: { segments: 2, shared: 1 },
    router: {
      train: "topk",
      k: 2,
      null_experts: 2,
      balance: "aux_free",
      bias_rate: 0.01,
      infer: { kind: "topk", k: 2 },
      ...over,
    },
    loss: { load_balance: 0.1 },
    microBatch,
  });
}

Deno.test("null experts + segments + a shared expert + aux-free: the router scores N·m + N_null, top-(k·m) over all, the bias is router state, counts through activeWith", () => {
  const c = combined(), m = buildModel(c, 4);
  assertEquals(m.params.find((p) => p.value.name === "h0.mlp.router.w")!.value.shape, [16, 10]);
  assertEquals(m.graph.nodes.filter((n) => n.op === "topk_mask").map((n) => n.attrs), [{ k: 4 }, { k: 4 }]);
  const gated = m.graph.nodes.filter((n) => n.op === "gated_activation");
  assertEquals(gated.map((n) => n.inputs[1]!.shape), [[24, 8], [24, 8]], "the 8 real segments' gates");
  assert(m.params.some((p) => p.value.name === "h1.mlp.shared.w1"));
  assertEquals(
    m.routerState.map((s) => [s.name, s.value.shape, s.init, s.update.kind]),
    [
      ["h0.mlp.router.balance_bias", [10], 0, "balance_bias"],
      ["h1.mlp.router.balance_bias", [10], 0, "balance_bias"],
    ],
  );
  assertEquals(m.routerState.map((s) => s.update.kind === "balance_bias" && [s.update.k, s.update.rate]), [
    [4, 0.01],
    [4, 0.01],
  ]);
  assertEquals([...expectedRouterState(c)], [
    ["h0.mlp.router.balance_bias", { shape: [10], nonNegative: false, inference: true }],
    ["h1.mlp.router.balance_bias", { shape: [10], nonNegative: false, inference: true }],
  ]);
  const p = countParams(c), plain = countParams(combined({ null_experts: 0 }));
  assertEquals(p.mlp_router - plain.mlp_router, 2 * 16 * 2, "2 layers × d 16 × 2 null columns");
  assertEquals([p.mlp_experts, p.mlp_shared, p.experts], [
    plain.mlp_experts,
    plain.mlp_shared,
    plain.experts,
  ]);
  // Top-2 full-size experts = 4 of the 8 segments at most (null picks make fewer): an upper bound.
  const a = activeParams(c);
  assertEquals([a.mlpExperts, a.exact], [4, false]);
  assertEquals(a.hidden, activeParams(combined({ null_experts: 0 })).hidden, "null experts add no hidden");
  assertEquals(a.all - activeParams(combined({ null_experts: 0 })).all, 2 * 16 * 2, "router columns count");
});

Deno.test("float64: after 3 steps with null experts, segments, a shared expert and the aux-free bias, sparse top-k inference gives the training graph's loss", async () => {
  const c = combined(), batch = randomBatch(5, 24), train = new CpuTrainBackend(c);
  for (let t = 0; t < 3; t++) await train.step(randomBatch(10 + t, 24), 1e-2);
  const want = (await train.evaluate(batch)).lmLoss, state = (await train.exportState()).routerState!;
  assert([...state.values()].every((b) => b.length === 10 && b.some((v) => v !== 0)), "the biases moved");
  const ip = plan(c, "infer-sparse"), m = ip.model;
  assertEquals(m.routers.map((r) => [r.probs.shape[1], r.experts, r.mask!.shape[1]]), [[10, 8, 8], [
    10,
    8,
    8,
  ]]);
  const feeds = trainedFeeds(m, batch, train, state);
  const [loss, ...masks] = evaluateGraph(ip.schedule.nodes, feeds, [
    m.lmLoss,
    ...m.routers.map((r) => r.mask!),
  ], CPU_OPS);
  assert(Math.abs(loss![0]! - want) < 1e-12, `${loss![0]} vs ${want}`);
  const perToken = Array.from(
    { length: 24 },
    (_, t) => Array.from(masks[0]!.slice(t * 8, t * 8 + 8) as Float64Array).reduce((a, b) => a + b, 0),
  );
  assert(perToken.every((n) => n <= 4) && perToken.some((n) => n < 4), `real segments per token ${perToken}`);
});

Deno.test("WebGPU steps with null experts, segments, a shared expert and the aux-free bias in 2 micro-batches match the float64 steps, biases included", async () => {
  await withBackends(combined({}, 2), async (cpu, gpu) => {
    await compareSteps(cpu, gpu, 3, (t) => randomBatch(t + 1, 24), (got, want, t) => {
      got.routers!.forEach((r, i) => {
        const w = want.routers![i]!;
        assertEquals(r.load.length, 10);
        assertClose(
          [r.nullShare!],
          [w.nullShare!],
          { atol: 1e-7, rtol: 0 },
          `step ${t} router ${i} null share`,
        );
        assertClose(r.bias!, w.bias!, { atol: 1e-7, rtol: 0 }, `step ${t} router ${i} bias`);
      });
    });
    await assertBiasesClose(cpu, gpu);
  });
});

/** A tiny SMoE trained by `train` with router jitter ε. */
function zoo(train: string, jitter: number, microBatch?: number): Experiment {
  const top = train === "top_p";
  return tinySmoe({
    seqLen: 6,
    initStd: 0.5,
    router: {
      train,
      jitter,
      ...(top ? { p: 0.6 } : {}),
      ...(train === "expert_choice" ? { capacity: 1.5 } : {}),
    },
    loss: {
      l1: train === "relu" ? 1e-3 : 0,
      load_balance: top ? 0.1 : 0,
      ...(top ? { load_balance_scope: "micro_batch", dynamic: 0.01 } : {}),
    },
    microBatch,
  });
}

Deno.test("float64: jitter with expert_choice, top_p and relu perturbs the router input in training only, and the model trains", async () => {
  const batch = randomBatch(7, 24);
  for (const train of ["expert_choice", "top_p", "relu"]) {
    const [on, off] = [new CpuTrainBackend(zoo(train, 0.3)), new CpuTrainBackend(zoo(train, 0))];
    assertEquals([on.model.jitter.length, off.model.jitter.length], [2, 0], train);
    const [a, b] = [on.lossAndGrads(batch), off.lossAndGrads(batch)];
    assert(a.loss !== b.loss && Number.isFinite(a.loss), `${train}: jitter changes the training loss`);
    // Evaluation feeds ones: the same parameters give the same loss as without jitter.
    assertEquals((await on.evaluate(batch)).lmLoss, (await off.evaluate(batch)).lmLoss, train);
    const losses: number[] = [];
    for (let t = 0; t < 6; t++) losses.push((await on.step(batch, 1e-2)).lmLoss);
    assert(losses.every(Number.isFinite) && losses.at(-1)! < losses[0]!, `${train}: ${losses}`);
  }
});

Deno.test("top_p with the Switch loss per micro-batch: no statistics pass, switch_loss of shares (k 0) in each micro-batch; WebGPU with jitter = float64", async () => {
  const c = zoo("top_p", 0.2, 2);
  assertEquals(hasBatchRouterLoss(c), false);
  const m = buildModel(c, 2, undefined, { batchStats: false });
  assertEquals(m.graph.nodes.filter((n) => n.op === "switch_loss").map((n) => n.attrs), [{ k: 0 }, { k: 0 }]);
  assertEquals(m.graph.nodes.filter((n) => n.op === "switch_loss_global").length, 0);
  await withBackends(c, async (cpu, gpu) => {
    for (let t = 0; t < 3; t++) {
      const batch = randomBatch(20 + t, 24);
      const [want, got] = [await cpu.step(batch, 1e-2), await gpu.step(batch, 1e-2)];
      assertClose(
        [got.loss, got.gradNorm, got.scalars!.dynamic_loss!],
        [want.loss, want.gradNorm, want.scalars!.dynamic_loss!],
        STEP_TOL,
        `step ${t}`,
      );
    }
  });
});

Deno.test("one router-state mechanism: ReLU's λ and the aux-free biases share ModelGraph.routerState, router_state/<name> and the checkpoint rules", async () => {
  const relu = zoo("relu", 0);
  assertEquals(
    buildModel(relu, 4).routerState.map((s) => [s.name, s.value.shape, s.init, s.update.kind]),
    [["l1_lambda", [1], 1e-3, "l1_lambda"]],
  );
  assertEquals([...expectedRouterState(relu)], [["l1_lambda", {
    shape: [1],
    nonNegative: true,
    inference: false,
  }]]);
  const cpu = new CpuTrainBackend(relu);
  const s = await cpu.step(randomBatch(1, 24), 1e-2);
  const st = await cpu.exportState();
  assertEquals([...st.routerState!.keys()], ["l1_lambda"]);
  assertEquals(st.routerState!.get("l1_lambda")![0], Math.fround(s.scalars!.l1_lambda!));
  assert(s.scalars!.l1_lambda !== 1e-3, "λ moved after the step");
  // A state without it is refused by name; the default SMoE has none.
  const fresh = new CpuTrainBackend(relu);
  throws(() => fresh.importState({ ...st, routerState: new Map() }), /no router state "l1_lambda"/);
  assertEquals(buildModel(combined({ balance: "none", bias_rate: undefined }), 4).routerState, []);
});

Deno.test("diagnostics see a router's null experts as experts that never run", () => {
  const probs = { shape: [2, 3] } as never;
  assertEquals(Array.from(routerMaskOfAll({ probs, experts: 2 }, [1, 0, 0, 1])!), [1, 0, 0, 0, 1, 0]);
  assertEquals(Array.from(routerMaskOfAll({ probs, experts: 2 }, null)!), [1, 1, 0, 1, 1, 0]);
  const mask = [1, 0, 1, 0, 1, 1];
  assertEquals(routerMaskOfAll({ probs }, mask), mask);
  assertEquals(routerMaskOfAll({ probs }, null), null);
});

Deno.test("the dry run's router line names the top-k options that are set, and the jitter of every rule", () => {
  assertEquals(
    routerSummary(combined({ capacity_factor: 1.25, renormalize: true })),
    "train topk (k 2; capacity factor 1.25; renormalised gates; 2 null experts; aux-free bias γ 0.01); " +
      "inference topk@2",
  );
  assertEquals(
    routerSummary(combined({ balance: "none", bias_rate: undefined, null_experts: 0 })),
    "train topk (k 2); inference topk@2",
  );
  for (const train of ["expert_choice", "top_p", "relu"]) {
    assert(routerSummary(zoo(train, 0.2))!.includes("; jitter 0.2)"), train);
    assert(!routerSummary(zoo(train, 0))!.includes("jitter"), train);
  }
});

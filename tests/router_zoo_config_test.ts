/**
 * Config keys of the routers of the literature (docs/design.md §16): each mistake is a located error at the
 * key to change, and `run --dry-run` says how the routers train and that inference uses router.infer.
 */
import assert, { deepStrictEqual as assertEquals } from "node:assert/strict";
import { parseExperimentText } from "../core/config/mod.ts";
import { cli } from "./helpers/cli.ts";
import { rejectedLines as linesOf } from "./helpers/router_configs.ts";
import { forwardFlops, trainExpertsPerToken } from "../core/plan/counts.ts";
import { checkCheckpointContent, expectedParams } from "../core/runs/stored_run.ts";
import { f32Tensor, type SafeTensor } from "../core/runs/safetensors.ts";

const SMOE = "model:\n  kind: smoe\n  attention: { kind: mha }\n";

Deno.test("expert_choice: capacity must be positive, the Switch loss is refused, smoe needs a sparse rule", () => {
  assertEquals(linesOf(`${SMOE}router:\n  train: expert_choice\n  capacity: 0\n`), [
    "t.yaml:6:13: router.capacity: must be > 0, got 0",
  ]);
  assertEquals(linesOf(`${SMOE}router:\n  train: expert_choice\nloss:\n  load_balance: 0.01\n`), [
    "t.yaml:7:17: loss.load_balance: router.train expert_choice is balanced by construction (every expert " +
    "takes C tokens): set loss.load_balance to 0",
  ]);
  assertEquals(linesOf(`${SMOE}router:\n  train: dense\n`), [
    "t.yaml:5:10: router.train: model.kind smoe needs a sparse router.train: topk, expert_choice, top_p, relu",
  ]);
  assertEquals(linesOf("router:\n  train: expert_choice\n"), [
    "t.yaml:2:10: router.train: model.kind dsmoe needs router.train: dense",
  ]);
});

Deno.test("run --dry-run says expert choice is training only, with C per expert, and names router.infer", async () => {
  const sets = [
    "model.kind=smoe",
    "router.train=expert_choice",
    "router.capacity=1.5",
    "router.infer.kind=topk",
  ];
  const r = await cli("run", "tests/fixtures/micro.yaml", ...sets.flatMap((s) => ["--set", s]), "--dry-run");
  assertEquals(r.code, 0, r.err.join("\n"));
  const line = r.out.find((l) => l.startsWith("  router "));
  assertEquals(
    line,
    "  router        train expert_choice (capacity 1.5; MLP: each of 4 experts takes C = 96, attention: " +
      "each of 2 experts takes C = 192 of the 256 tokens of a micro-batch) — training only (it sees the " +
      "whole batch); inference uses router.infer: topk@2",
  );
  const j = await cli(
    "run",
    "tests/fixtures/micro.yaml",
    ...sets.flatMap((s) => ["--set", s]),
    "--dry-run",
    "--json",
  );
  const p = j.json().points[0];
  assert(p.router.includes("training only"), p.router);
  // Training computes 1.5 MLP experts per token (4 · 96 / 256) and both attention experts.
  const c = parseExperimentText(await Deno.readTextFile("tests/fixtures/micro.yaml"), "micro.yaml", { sets })
    .points[0]!.config;
  assertEquals(trainExpertsPerToken(c, 4), 1.5);
  assertEquals(p.flops_per_token_train, 3 * forwardFlops(c, 2, 1.5));
});

Deno.test("top_p: router.p within (0, 1], loss.dynamic only with router.train top_p", () => {
  assertEquals(linesOf(`${SMOE}router:\n  train: top_p\n  p: 1.5\n`), [
    "t.yaml:6:6: router.p: must be ≤ 1, got 1.5",
  ]);
  assertEquals(linesOf(`${SMOE}router:\n  train: topk\nloss:\n  dynamic: 0.01\n`), [
    "t.yaml:7:12: loss.dynamic: loss.dynamic is the dynamic loss of router.train top_p, not topk",
  ]);
});

Deno.test("run --dry-run names top-p's threshold, its dynamic loss and the inference rule", async () => {
  const sets = ["model.kind=smoe", "router.train=top_p", "router.p=0.5", "loss.dynamic=0.001"];
  const r = await cli("run", "tests/fixtures/micro.yaml", ...sets.flatMap((s) => ["--set", s]), "--dry-run");
  assertEquals(r.code, 0, r.err.join("\n"));
  assertEquals(
    r.out.find((l) => l.startsWith("  router ")),
    "  router        train top_p (each token keeps its fewest experts whose probability mass reaches 0.5; " +
      "dynamic loss 0.001); inference uses router.infer: threshold@0.5",
  );
});

Deno.test("relu: loss.l1 is λ_0 (needed, and only for relu), the softmax losses are refused, target and rate bounded", () => {
  const relu = `${SMOE}router:\n  train: relu\n`;
  assertEquals(linesOf(relu), [
    "t.yaml:1:1: loss.l1: router.train relu needs loss.l1 > 0: it is λ_0, the first L1 weight, which each " +
    "step multiplies or divides by router.l1_rate (e.g. loss.l1: 1e-3)",
  ]);
  assertEquals(linesOf(`${SMOE}router:\n  train: topk\nloss:\n  l1: 0.01\n`), [
    "t.yaml:7:7: loss.l1: loss.l1 is λ_0 of router.train relu, not topk",
  ]);
  assertEquals(linesOf(`${relu}loss:\n  l1: 0.01\n  load_balance: 0.01\n  mi: { mlp: 0.1 }\n`), [
    "t.yaml:8:17: loss.load_balance: loss.load_balance acts on the softmax of the router, which router.train " +
    "relu does not gate with (its sparsity comes from the L1 term): set it to 0",
    "t.yaml:9:14: loss.mi.mlp: loss.mi.mlp acts on the softmax of the router, which router.train relu does " +
    "not gate with (its sparsity comes from the L1 term): set it to 0",
  ]);
  assertEquals(
    linesOf(`${SMOE}router:\n  train: relu\n  target_sparsity: 1\n  l1_rate: 1\nloss:\n  l1: 0.01\n`),
    [
      "t.yaml:6:20: router.target_sparsity: must be < 1, got 1",
      "t.yaml:7:12: router.l1_rate: must be > 1, got 1",
    ],
  );
});

Deno.test("run --dry-run names ReLU routing's λ schedule and that inference runs the experts with a gate above 0", async () => {
  const sets = [
    "model.kind=smoe",
    "router.train=relu",
    "loss.l1=0.001",
    "loss.mi.mlp=0",
    "loss.mi.attention=0",
  ];
  const r = await cli("run", "tests/fixtures/micro.yaml", ...sets.flatMap((s) => ["--set", s]), "--dry-run");
  assertEquals(r.code, 0, r.err.join("\n"));
  assertEquals(
    r.out.find((l) => l.startsWith("  router ")),
    "  router        train relu (gates ReLU(s), L1 weight λ from 0.001 adapted ×/÷ 1.2 per step toward 0.75 " +
      "zero gates); inference runs the experts with a gate above 0 that router.infer selects: threshold@0.5",
  );
  // Every count of a ReLU-routed model is an upper bound.
  assert(r.out.some((l) => l.includes("upper bound; deno task eval measures it")), r.out.join("\n"));
});

Deno.test("a checkpoint of a ReLU-routed run resumes only with its λ (router_state/l1_lambda), finite and ≥ 0", () => {
  const c = parseExperimentText(
    `${SMOE}router:\n  train: relu\nloss:\n  l1: 0.01\n`,
    "t.yaml",
  ).points[0]!.config;
  const tensors = new Map<string, SafeTensor>();
  for (const [name, shape] of expectedParams(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    for (const p of ["param/", "adam_m/", "adam_v/"]) {
      tensors.set(`${p}${name}`, f32Tensor(shape, new Float32Array(n)));
    }
  }
  tensors.set("optimizer_step", f32Tensor([1], Float32Array.of(5)));
  const file = { tensors, metadata: {} };
  const check = (purpose: "resume" | "infer") => checkCheckpointContent(file, c, { step: 5, purpose });
  check("infer"); // inference reads no router state
  assert.throws(() => check("resume"), /tensor "router_state\/l1_lambda" is missing/);
  tensors.set("router_state/l1_lambda", f32Tensor([1], Float32Array.of(-1)));
  assert.throws(
    () => check("resume"),
    /router_state\/l1_lambda" holds -1 at index 0 \(must be finite and ≥ 0\)/,
  );
  tensors.set("router_state/l1_lambda", f32Tensor([1], Float32Array.of(0.02)));
  check("resume");
});

Deno.test("shared and fine-grained experts: segments divide hidden, both need routed experts", () => {
  assertEquals(linesOf("model:\n  mlp:\n    hidden: 30\n    segments: 4\n"), [
    "t.yaml:4:15: model.mlp.segments: segments (4) must divide model.mlp.hidden (30): each segment is hidden/m wide",
  ]);
  const dense = "model:\n  kind: dense\n  attention: { kind: mha }\n  mlp:\n    experts: 1\n";
  assertEquals(linesOf(`${dense}    shared: 1\n    segments: 2\n`), [
    "t.yaml:6:13: model.mlp.shared: model.mlp.shared needs routed experts (model.mlp.experts > 1)",
    "t.yaml:7:15: model.mlp.segments: model.mlp.segments needs routed experts (model.mlp.experts > 1)",
  ]);
  assertEquals(linesOf("model:\n  mlp:\n    shared: -1\n"), [
    "t.yaml:3:13: model.mlp.shared: must be ≥ 0, got -1",
  ]);
});

Deno.test("run --dry-run lists segments, m·k active and the shared experts, and counts them", async () => {
  const sets = ["model.kind=smoe", "router.train=topk", "model.mlp.segments=4", "model.mlp.shared=1"];
  const r = await cli("run", "tests/fixtures/micro.yaml", ...sets.flatMap((s) => ["--set", s]), "--dry-run");
  assertEquals(r.code, 0, r.err.join("\n"));
  assertEquals(
    r.out.find((l) => l.startsWith("  experts ")),
    "  experts       MLP 4 experts × 4 segments = 16 routed of width 8, 2 × 4 = 8 active; 1 shared of width " +
      "32, always on (gate 1, at inference too)",
  );
  const params = r.out.find((l) => l.startsWith("  params "))!;
  // 2 blocks × 2 · 32 · 32 shared; 2 blocks × 32 · 16 router.
  assert(params.includes("mlp_shared 4096") && params.includes("mlp_router 1024"), params);
});

Deno.test("a router setting of one training mode set under another is refused at its key, not ignored", () => {
  assertEquals(linesOf(`${SMOE}router:\n  train: topk\n  capacity: 2\n`), [
    "t.yaml:6:13: router.capacity: router.capacity (2) is a setting of router.train expert_choice, not topk; " +
    "top-k's expert capacity is router.capacity_factor",
  ]);
  assertEquals(linesOf(`${SMOE}router:\n  train: relu\n  p: 0.5\nloss:\n  l1: 0.001\n`), [
    "t.yaml:6:6: router.p: router.p (0.5) is a setting of router.train top_p, not relu",
  ]);
  assertEquals(linesOf(`router:\n  target_sparsity: 0.5\n  l1_rate: 1.1\n`), [
    "t.yaml:2:20: router.target_sparsity: router.target_sparsity (0.5) is a setting of router.train relu, not dense",
    "t.yaml:3:12: router.l1_rate: router.l1_rate (1.1) is a setting of router.train relu, not dense",
  ]);
  // Under its own mode, unset, each takes its default (docs/design.md §16).
  const c = parseExperimentText(`${SMOE}router:\n  train: expert_choice\n`, "t.yaml").points[0]!.config;
  assertEquals(c.router.capacity, undefined);
});

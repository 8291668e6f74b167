/**
 * Counts of shared and fine-grained MLP experts (docs/design.md §16), by hand on the SMoE tiny config of
 * core/plan/counts_test.ts (d 128, 4 blocks, 8 experts of 128, top-2, GQA attention): parameters, active
 * parameters, FLOPs and memory.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { type Experiment, ExperimentSchema } from "../config/schema.ts";
import { activeParams, countParams, estimateMemory, flopsPerToken, layerShape } from "./counts.ts";
import { buildModel } from "./model.ts";
import { isOp } from "../graph/ir.ts";

function smoe(mlp: Record<string, unknown>, router: Record<string, unknown> = {}): Experiment {
  return ExperimentSchema.parse({
    data: { seq_len: 128 },
    model: {
      kind: "smoe",
      d_model: 128,
      layers: 4,
      attention: { kind: "mha", heads: 8, kv_heads: 2, head_dim: 16 },
      mlp: { experts: 8, hidden: 128, ...mlp },
    },
    router: { train: "topk", k: 2, infer: { kind: "topk", k: 2 }, ...router },
    train: { batch: 16 },
  });
}

const base = smoe({}),
  fine = smoe({ segments: 4 }),
  shared = smoe({ shared: 2 }),
  both = smoe({ segments: 4, shared: 2 });

Deno.test("segments split each expert without changing the expert parameters; only the router grows", () => {
  assertEquals(layerShape(fine).mlpExperts, 32);
  assertEquals(layerShape(fine).hidden, 32);
  const a = countParams(base), b = countParams(fine);
  assertEquals(b.mlp_experts, a.mlp_experts);
  assertEquals(b.mlp_experts, 4 * 8 * 2 * 128 * 128);
  // The router is d × N·m: 128 · 32 per block instead of 128 · 8.
  assertEquals(b.mlp_router - a.mlp_router, 4 * 128 * (32 - 8));
  assertEquals(b.total - a.total, b.mlp_router - a.mlp_router);
  // The model's own parameters agree with the count.
  const built = buildModel(fine, 1).params.reduce((n, p) => n + p.value.shape.reduce((x, y) => x * y, 1), 0);
  assertEquals(built, b.total);
});

Deno.test("shared experts add 2·d·hidden each per block, always active; top-k of m·k segments", () => {
  const p = countParams(both), sharedParams = 4 * 2 * 2 * 128 * 128;
  assertEquals(p.mlp_shared, sharedParams);
  assertEquals(p.total, countParams(fine).total + sharedParams);
  assertEquals(p.experts, p.mlp_experts + sharedParams); // attention is not routed
  const built = buildModel(both, 1).params.reduce((n, q) => n + q.value.shape.reduce((x, y) => x * y, 1), 0);
  assertEquals(built, p.total);
  // Active: K/V and all Q/O (not routed) + top-2 × 4 = 8 of 32 segments + both shared + routers.
  const a = activeParams(both);
  const qkvo = 4 * (2 * 128 * 128 + 2 * 128 * 32), routed = p.mlp_experts / 4;
  assertEquals(a.active, qkvo + routed + sharedParams + p.mlp_router);
  assertEquals(a.mlpExperts, 8);
  assertEquals(a.exact, true);
  // Hidden % (docs/design.md §5): the attention and MLP weights that run over all of them, shared experts in.
  const hidden = qkvo + p.mlp_experts + sharedParams;
  assertEquals(hidden, p.attention_qo + p.attention_kv + p.mlp_experts + p.mlp_shared);
  const want = (100 * (qkvo + routed + sharedParams)) / hidden;
  assert(Math.abs(a.hiddenPct - want) < 1e-9, `hidden % ${a.hiddenPct} vs ${want}`);
  // The same as without segments, but for the router: equal compute at equal size.
  assertEquals(activeParams(shared).active + (p.mlp_router - countParams(shared).mlp_router), a.active);
});

Deno.test("FLOPs and memory count the shared experts; segments keep the MLP FLOPs of top-k", () => {
  const f = flopsPerToken(both), f0 = flopsPerToken(base);
  // Per block: shared 2·2·128·(2·128) FLOPs more; the router 2·128·(32 − 8) more.
  const extra = 4 * (2 * 2 * 128 * 256 + 2 * 128 * 24);
  assertEquals(f.infer - f0.infer, extra);
  assertEquals(f.train - f0.train, 3 * extra);
  // Saved activations: 3 · 2 · 128 shared hidden units and 32 − 8 more router probabilities per token per
  // block, f32, over the 16 · 128 tokens of a step.
  const m = estimateMemory(both), m0 = estimateMemory(base);
  assertEquals(m.parts.activations - m0.parts.activations, 4 * 16 * 128 * 4 * (3 * 256 + 24));
});

Deno.test("a threshold rule over segments counts N·m experts; top-k's k and expert choice's capacity count full experts", () => {
  const t = activeParams(smoe({ segments: 2 }, { infer: { kind: "threshold", epsilon: 4 } }));
  // ε = 4 over 16 segments: at most ⌈16/4⌉ − 1 = 3.
  assertEquals([t.mlpExperts, t.exact], [3, false]);
  const ec = smoe({ segments: 2 }, { train: "expert_choice", capacity: 1 });
  // T = 16·128 tokens; 16 segments each take ⌈2048 · 2/16⌉ = 256: 2 segments per token.
  const perBlock = flopsPerToken(ec).train / 3,
    dense = flopsPerToken(smoe({ segments: 2 }, { k: 2 })).train / 3;
  assertEquals(perBlock, dense - 4 * 2 * 2 * 128 * 64 * 2);
});

Deno.test("the graph routes m·k segments: top-k masks in training, the top-k rule at inference (MLP only)", () => {
  const c = ExperimentSchema.parse({
    model: {
      kind: "smoe",
      d_model: 16,
      layers: 1,
      attention: { kind: "moa", experts: 3, heads_per_expert: 1, head_dim: 4 },
      mlp: { experts: 4, hidden: 12, segments: 3, shared: 1 },
    },
    router: { train: "topk", k: 2 },
    data: { seq_len: 4 },
  });
  // [experts, k] of each router's top-k: attention 3 experts, top-2; MLP 12 segments, top-2 × 3.
  const masks = buildModel(c, 1).graph.nodes.flatMap((n) =>
    isOp(n, "topk_mask") ? [[n.inputs[0]!.shape[1], n.attrs.k]] : []
  );
  assertEquals(masks, [[3, 2], [12, 6]]);
  const rule = { kind: "topk" as const, epsilon: 0.5, k: 2, p: 0.9 };
  const gates = buildModel(c, 1, { mlp: rule, attention: rule }).graph.nodes.flatMap((n) =>
    isOp(n, "route_gate") ? [[n.inputs[0]!.shape[1], n.attrs.k]] : []
  );
  assertEquals(gates, [[3, 2], [12, 6]]);
});

import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { type Experiment, ExperimentSchema } from "../config/schema.ts";
import {
  accumulationOf,
  activeOfLayers,
  activeOfSkipped,
  activeParams,
  activeWith,
  countParams,
  estimateMemory,
  expectedActive,
  flopsPerToken,
  hasBatchRouterLoss,
} from "./counts.ts";

// The three tiny configs of configs/, written out so these numbers are checked by hand, not by the loader.
const base = {
  data: { seq_len: 128 },
  model: { d_model: 128, layers: 4, norm: "layernorm", position: "learned" },
  train: { batch: 16 },
};
const gqa = { kind: "mha", heads: 8, kv_heads: 2, head_dim: 16 };

function cfg(over: Record<string, unknown>): Experiment {
  const model = { ...base.model, ...(over.model as object) };
  return ExperimentSchema.parse({ ...base, ...over, model });
}

const dsmoe = cfg({
  model: {
    kind: "dsmoe",
    attention: { kind: "moa", experts: 4, heads_per_expert: 2, head_dim: 16 },
    mlp: { experts: 8, hidden: 128 },
  },
  router: { train: "dense", infer: { kind: "threshold", epsilon: 0.5 } },
});
const dense = cfg({ model: { kind: "dense", attention: gqa, mlp: { experts: 1, hidden: 1024 } } });
const smoe = cfg({
  model: { kind: "smoe", attention: gqa, mlp: { experts: 8, hidden: 128 } },
  router: { train: "topk", k: 2, infer: { kind: "topk", k: 2 } },
});

// Per block of dsmoe: Q/O 4 experts × 2·128·32 = 32768; K/V 2·128·32 = 8192; attention router 128·4 = 512;
// MLP 8 × 2·128·128 = 262144; MLP router 128·8 = 1024; two LayerNorms 2·256 = 512 → 305152.
// Model: 4 × 305152 + embedding 256·128 + positions 128·128 + final norm 256 = 1,270,016.
Deno.test("countParams() matches hand-computed counts for the DS-MoE tiny config", () => {
  const p = countParams(dsmoe);
  assertEquals(p.attention_qo, 131072);
  assertEquals(p.attention_kv, 32768);
  assertEquals(p.attention_router, 2048);
  assertEquals(p.mlp_experts, 1048576);
  assertEquals(p.mlp_router, 4096);
  assertEquals(p.norms, 9 * 256);
  assertEquals(p.embedding, 32768);
  assertEquals(p.position, 16384);
  assertEquals(p.lm_head, 0);
  assertEquals(p.total, 1_270_016);
  assertEquals(p.experts, 131072 + 1048576);
});

// Per block of dense: Q 128·128 + O 128·128 + K, V 128·32 each = 40960; MLP 2·128·1024 = 262144; norms 512.
Deno.test("countParams() matches hand-computed counts for the dense tiny config", () => {
  const p = countParams(dense);
  assertEquals(p.attention_qo + p.attention_kv, 4 * 40960);
  assertEquals(p.mlp_experts, 4 * 262144);
  assertEquals(p.attention_router + p.mlp_router, 0);
  assertEquals(p.experts, 0);
  assertEquals(p.total, 1_263_872);
});

Deno.test("countParams() matches hand-computed counts for the SMoE tiny config", () => {
  const p = countParams(smoe);
  assertEquals(p.mlp_router, 4 * 1024);
  assertEquals(p.total, 1_267_968);
});

Deno.test("the dense and SMoE baselines have the same total parameters as DS-MoE within 5%", () => {
  for (const c of [dense, smoe]) {
    const ratio = countParams(c).total / countParams(dsmoe).total;
    if (Math.abs(ratio - 1) > 0.05) throw new Error(`${c.model.kind}: ratio ${ratio}`);
  }
});

Deno.test("activeParams() counts shared K/V, active Q/O and MLP experts and routers (top-k rules)", () => {
  // SMoE top-2 of 8: K/V 32768 + all Q/O 131072 (attention is not routed) + 2/8 of 1048576 + routers 4096.
  const s = activeParams(smoe);
  assertEquals(s.active, 32768 + 131072 + 262144 + 4096);
  assertEquals(s.exact, true);
  // Hidden: all K/V and Q/O and 2 of 8 MLP experts run, 425,984 of 1,212,416 attention and MLP weights.
  assertEquals([s.hidden, s.hiddenActive], [1_212_416, 425_984]);
  assertEquals(s.hiddenPct, (100 * 13) / 37);
  // DS-MoE with attention top-1 of 4 and MLP top-2 of 8.
  const d = activeParams(
    cfg({
      model: dsmoe.model,
      router: { infer: { kind: "topk", k: 2 }, infer_attention: { kind: "topk", k: 1 } },
    }),
  );
  assertEquals(d.active, 32768 + 32768 + 262144 + 6144);
  assertEquals(d.all, 32768 + 131072 + 1048576 + 6144);
  assertEquals(d.expertsActive, 32768 + 262144);
  assertEquals(d.hiddenActive, 32768 + 32768 + 262144);
  assertEquals(d.hiddenPct, (100 * 10) / 37);
});

// docs/design.md §5: one definition of hidden % and the share of all parameters for every model kind.
// An SMoE with MoA attention has dsmoe's shapes: 4 attention experts (Q/O 32768 per block) and 8 MLP experts
// (262144 per block), so routed expert parameters 4 × (32768 + 262144) = 1,179,648 of 1,270,016 in all;
// hidden parameters (attention Q/K/V/O and MLP) 4 × (32768 + 8192 + 262144) = 1,212,416; non-embedding
// parameters (hidden + routers 4 × (512 + 1024)) 1,218,560.
const smoeMoa = cfg({
  model: {
    kind: "smoe",
    attention: { kind: "moa", experts: 4, heads_per_expert: 2, head_dim: 16 },
    mlp: { experts: 8, hidden: 128 },
  },
  router: { train: "topk", k: 2, infer: { kind: "topk", k: 2 }, infer_attention: { kind: "topk", k: 1 } },
});

Deno.test("activeWith() counts the attention experts of an SMoE with MoA as it does DS-MoE's (hand-computed)", () => {
  // Top-1 of 4 attention experts, top-2 of 8 MLP experts: 4 × (8192 + 65536) = 294,912 expert parameters run,
  // 884,736 skipped; hidden parameters run: the shared K/V 32,768 besides, 327,680 of 1,212,416 (10/37).
  const a = activeParams(smoeMoa);
  assertEquals(a.experts, 1_179_648);
  assertEquals(a.expertsActive, 294_912);
  assertEquals(a.skipped, 884_736);
  assertEquals([a.hidden, a.hiddenActive], [1_212_416, 327_680]);
  assertEquals(a.hiddenPct, (100 * 327_680) / 1_212_416);
  assertEquals(a.all, 1_218_560);
  assertEquals(a.active, 1_218_560 - 884_736);
  assertEquals(a.activePct, (100 * 333_824) / 1_218_560);
  assertEquals(a.total, 1_270_016);
  assertEquals(a.activePctAll, (100 * (1_270_016 - 884_736)) / 1_270_016);
  // The same experts running in a DS-MoE of the same shapes give the same numbers: the definition does not
  // depend on model.kind.
  const { exact: _e, ...share } = a;
  const ds = activeParams(cfg({ model: dsmoe.model, router: { ...smoeMoa.router, train: "dense" } }));
  const { exact: _d, ...dsShare } = ds;
  assertEquals(dsShare, share);
});

Deno.test("activeWith() for an SMoE with dense attention: its routed experts are the MLP's (hand-computed)", () => {
  // Routed: 8 MLP experts, 4 × 262144 = 1,048,576; top-2 runs 262,144 and skips 786,432 of 1,267,968 in all.
  // Hidden: its dense attention (Q/O 131,072 and K/V 32,768) runs whole beside the 262,144 MLP parameters,
  // 425,984 of 1,212,416 (13/37 = 35.1%; 25% of its MLP experts alone under the earlier definition).
  const a = activeWith(smoe, 1, 2);
  assertEquals([a.experts, a.expertsActive, a.skipped], [1_048_576, 262_144, 786_432]);
  assertEquals([a.hidden, a.hiddenActive], [1_212_416, 425_984]);
  assertEquals(a.hiddenPct, (100 * 425_984) / 1_212_416);
  assertEquals(a.activePctAll, (100 * (1_267_968 - 786_432)) / 1_267_968);
  // The argument of a block that is not routed is ignored: dense attention always runs whole.
  assertEquals(activeWith(smoe, 0.5, 2), a);
});

Deno.test("activeWith() for a dense model: nothing routed, everything active", () => {
  const a = activeWith(dense, 1, 1);
  assertEquals([a.experts, a.skipped, a.hiddenPct, a.activePct, a.activePctAll], [0, 0, 100, 100, 100]);
  assertEquals([a.hidden, a.hiddenActive], [1_212_416, 1_212_416]); // 4 × (40960 + 262144)
  assertEquals(a.active, a.all);
});

Deno.test("hidden % has one denominator for every model kind: the attention and MLP weights (hand-computed)", () => {
  // The three tiny configs have the same 1,212,416 hidden parameters: dense attention 4 × 40,960 + MLP
  // 4 × 262,144; or MoA Q/O 4 × 32,768 + shared K/V 4 × 8,192 + MLP experts 4 × 262,144.
  const moaTop = cfg({
    model: dsmoe.model,
    router: { infer: { kind: "topk", k: 2 }, infer_attention: { kind: "topk", k: 1 } },
  });
  const shares = [activeWith(dense, 1, 1), activeWith(smoe, 1, 2), activeParams(moaTop)];
  assertEquals(shares.map((a) => a.hidden), [1_212_416, 1_212_416, 1_212_416]);
  // Dense runs all; SMoE top-2 skips 6 of 8 MLP experts (786,432); DS-MoE top-1/top-2 also 3 of 4 attention
  // experts' Q/O (98,304 more): 100%, 13/37 and 10/37.
  assertEquals(shares.map((a) => a.hiddenPct), [100, (100 * 13) / 37, (100 * 10) / 37]);
  // Routers are not hidden parameters: active % counts them, hidden % does not.
  assertEquals(shares[1]!.active - shares[1]!.hiddenActive, 4 * 1024);
});

Deno.test("activeOfSkipped() gives the share of an evaluation that stored only its active parameters", () => {
  const a = activeWith(smoe, 1, 2);
  assertEquals(activeOfSkipped(smoe, a.all - a.active), a);
  assertEquals(activeOfSkipped(dense, 0).hiddenPct, 100);
});

Deno.test("activeOfLayers() averages measured experts per token over the layers of each kind (hand-computed)", () => {
  // DS-MoE, attention layers ran 0.5, 1.5, 1, 1 experts per token (mean 1 of 4), MLP layers 5, 7, 6, 6 (mean 6
  // of 8): 4 × (8192 · 1 + 32768 · 6) = 819,200 expert parameters run, 360,448 skipped; with the shared K/V
  // 32,768, 851,968 of the 1,212,416 hidden parameters run.
  const layers = [
    ...[0.5, 1.5, 1, 1].map((experts) => ({ kind: "attention" as const, experts })),
    ...[5, 7, 6, 6].map((experts) => ({ kind: "mlp" as const, experts })),
  ];
  const a = activeOfLayers(dsmoe, layers);
  assertEquals([a.expertsActive, a.skipped, a.hiddenActive], [819_200, 360_448, 851_968]);
  assertEquals(a.hiddenPct, (100 * 851_968) / 1_212_416);
  assertEquals(a.active, 1_218_560 - 360_448);
  assertEquals(a.activePctAll, (100 * (1_270_016 - 360_448)) / 1_270_016);
  // A kind without measured layers runs all its experts.
  assertEquals(activeOfLayers(dsmoe, layers.slice(4)).expertsActive, 131_072 + 786_432);
});

Deno.test("activeParams() reports a threshold rule as an upper bound", () => {
  const a = activeParams(dsmoe);
  assertEquals(a.exact, false);
  assertEquals(a.active, a.all); // ε = 0.5 over 8 experts bounds nothing: up to 15 could pass
  assertEquals(expectedActive({ kind: "threshold", epsilon: 2, k: 2, p: 0.9 }, 8), {
    experts: 3,
    exact: false,
  });
  assertEquals(expectedActive({ kind: "threshold", epsilon: 4, k: 2, p: 0.9 }, 8), {
    experts: 1,
    exact: false,
  });
});

// Forward FLOPs per block of dsmoe: projections 2·128·(8·16)·2 + 2·128·(2·16)·2 = 81920; scores
// 2·2·8·16·64.5 = 33024 (mean causal context (128+1)/2); MLP 2·2·128·128·8 = 524288; routers 2·1536 = 3072.
// 4 blocks + LM head 2·128·256 = 65536 → 2,634,752; training = 3 × forward.
Deno.test("flopsPerToken() matches hand-computed FLOPs for the three tiny configs", () => {
  assertEquals(flopsPerToken(dsmoe).inferDense, 2_634_752);
  assertEquals(flopsPerToken(dsmoe).train, 3 * 2_634_752);
  assertEquals(flopsPerToken(dense).train, 3 * (4 * (81920 + 33024 + 524288) + 65536));
  // SMoE trains only the top-2 experts: MLP 2·2·128·128·2 = 131072; router 2·1024.
  assertEquals(flopsPerToken(smoe).train, 3 * (4 * (81920 + 33024 + 131072 + 2048) + 65536));
  assertEquals(flopsPerToken(smoe).infer, 4 * (81920 + 33024 + 131072 + 2048) + 65536);
});

Deno.test("estimateMemory() counts weights, gradients and both Adam moments", () => {
  const m = estimateMemory(dsmoe);
  assertEquals(m.parts.weights, 4 * 1_270_016);
  assertEquals(m.parts.optimizer, 3 * 4 * 1_270_016);
  assertEquals(m.train, 16 * 1_270_016 + m.parts.activations);
  if (m.parts.activations <= 0 || m.infer >= m.train) throw new Error("implausible memory estimate");
});

Deno.test("estimateMemory() with train.micro_batch: activations of a micro-batch, plus gradient accumulators", () => {
  const micro = cfg({ model: dsmoe.model, router: dsmoe.router, train: { batch: 16, micro_batch: 4 } });
  assertEquals(accumulationOf(micro), { batch: 16, microBatch: 4, steps: 4 });
  assertEquals(accumulationOf(dsmoe), { batch: 16, microBatch: 16, steps: 1 });
  const whole = estimateMemory(dsmoe), m = estimateMemory(micro);
  assertEquals(m.parts.activations * 4, whole.parts.activations);
  assertEquals([whole.parts.gradAccum, m.parts.gradAccum], [0, 4 * 1_270_016]);
  assertEquals(m.train, 20 * 1_270_016 + m.parts.activations); // weights, gradients, m, v, accumulators
  assertEquals(m.infer, whole.infer, "evaluation still runs train.batch sequences");
});

Deno.test("hasBatchRouterLoss() is true only for a weighted MI or Switch loss of a routed block", () => {
  assertEquals(hasBatchRouterLoss(dsmoe), false);
  assertEquals(hasBatchRouterLoss(cfg({ model: dsmoe.model, loss: { mi: { attention: 0.1 } } })), true);
  assertEquals(hasBatchRouterLoss(cfg({ model: dense.model, loss: { mi: { mlp: 0.1 } } })), false);
  assertEquals(hasBatchRouterLoss(cfg({ ...smoe, loss: { load_balance: 0.01, z: 0.1 } })), true);
  assertEquals(hasBatchRouterLoss(cfg({ ...smoe, loss: { z: 0.1 } })), false);
  // The Switch loss per micro-batch or per sequence is a mean over micro-batches: no batch statistics.
  for (const [scope, batch] of [["global", true], ["micro_batch", false], ["sequence", false]] as const) {
    const loss = { load_balance: 0.01, load_balance_scope: scope };
    assertEquals(hasBatchRouterLoss(cfg({ ...smoe, loss })), batch, scope);
  }
});

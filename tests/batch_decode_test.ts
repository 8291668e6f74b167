/**
 * The batched decoder (core/plan/model.ts `buildBatchDecoder`, docs/design.md §10 "Batched decoding"): B
 * sequences of different lengths decoded together give, row by row and step by step, the logits of B
 * independent batch-1 decoders (float64), in float64 and on the GPU under both kernel profiles — as built,
 * and with decoding's fusions (core/plan/fuse_decode.ts: routers with their norms, the experts' residual adds,
 * the embeddings, the products' activations and residual adds), which `plan` applies; for dense, DS-MoE with
 * MoA, and routers of the literature (ReLU routing, shared and fine-grained experts).
 */
import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import { type Experiment, ExperimentSchema } from "../core/config/schema.ts";
import { evaluateGraph, type HostValue } from "../core/graph/cpu_executor.ts";
import { CPU_OPS } from "../core/graph/cpu_ops.ts";
import { numel } from "../core/graph/ir.ts";
import { schedule } from "../core/graph/schedule.ts";
import { fuseDecoder } from "../core/plan/fuse_decode.ts";
import { buildBatchDecoder, buildDecoder, type InferRules } from "../core/plan/model.ts";
import { plan } from "../core/plan/plan.ts";
import { decodePlanBytes } from "../core/infer/batch_generate.ts";
import { Rng } from "../core/util/rng.ts";
import { readTensor, writeTensor } from "../gpu/buffers.ts";
import { GraphExecutor } from "../gpu/executor.ts";
import { assertClose, testGpu } from "./helpers/gpu.ts";
import { DECODER_MODELS, PER_TOKEN_RULES } from "./helpers/decoders.ts";
import { tinyMoa } from "./helpers/router_configs.ts";

const T = 6;
const RULES = PER_TOKEN_RULES;
/** The decoders' models, and routers of the literature (docs/design.md §16) with MoA and MoE experts. */
const MODELS: Record<string, { c: Experiment; dense: boolean }> = {
  ...Object.fromEntries(
    Object.entries(DECODER_MODELS).map(([name, model]) => [name, {
      c: ExperimentSchema.parse({ data: { seq_len: T }, model: { d_model: 16, layers: 2, ...model } }),
      dense: model.kind === "dense",
    }]),
  ),
  ...Object.fromEntries(
    Object.entries<Record<string, Record<string, unknown>>>({
      "ReLU routing with shared and fine-grained experts": {
        model: { kind: "smoe", mlp: { experts: 4, hidden: 12, segments: 2, shared: 2 } },
        router: { train: "relu" },
        loss: { l1: 0.01 },
      },
      "DS-MoE with shared and fine-grained experts": {
        model: { mlp: { experts: 4, hidden: 12, segments: 3, shared: 1 } },
      },
    }).map(([name, over]) => [name, {
      c: tinyMoa(over, { seqLen: T, dModel: 16, headsPerExpert: 2, headDim: 8, hidden: 12 }),
      dense: false,
    }]),
  ),
};
/** Prompt lengths of the B = 3 sequences: the shorter ones wait at their last token (re-fed in place). */
const LENGTHS = [6, 2, 4];

/** Parameter values by name, drawn once per test (routers wide, so rules leave experts out). */
function paramSource(rng: Rng) {
  const values = new Map<string, Float64Array>();
  return (name: string, n: number, ones: boolean) => {
    if (!values.has(name)) {
      const amp = name.includes("router") ? 2 : 0.3;
      values.set(
        name,
        Float64Array.from(
          Float32Array.from({ length: n }, () => (ones ? 1 : 0) + amp * (2 * rng.next() - 1)),
        ),
      );
    }
    return values.get(name)!;
  };
}

for (const [name, { c, dense }] of Object.entries(MODELS)) {
  Deno.test(`a batched decoder of 3 sequences at different positions gives 3 batch-1 decoders' logits: tiny ${name}`, async () => {
    const detected = await testGpu();
    const rng = new Rng(5), valueOf = paramSource(rng), B = LENGTHS.length;
    const seqs = LENGTHS.map((n) => Array.from({ length: n }, () => rng.int(256)));
    // Step s: row b feeds its token min(s, len_b − 1) at that position (a finished row repeats its last).
    const steps = Math.max(...LENGTHS);
    const at = (b: number, s: number) => Math.min(s, LENGTHS[b]! - 1);
    let routedOff = 0;
    for (const rule of RULES) {
      const what = `${name} ${JSON.stringify(rule)}`;
      // Ground truth: one batch-1 float64 decoder per sequence, its logits after each of its tokens.
      const one = buildDecoder(c, rule), oneSched = schedule(one.graph, [one.logits]);
      const want = seqs.map((ids) => {
        const feeds = new Map<number, HostValue>();
        for (const p of one.params) {
          feeds.set(p.value.id, valueOf(p.value.name, numel(p.value.shape), p.init === "ones"));
        }
        for (const cache of one.caches) feeds.set(cache.id, new Float64Array(numel(cache.shape)));
        return ids.map((id, pos) => {
          feeds.set(one.ids.id, Uint32Array.of(id));
          feeds.set(one.pos.id, Uint32Array.of(pos));
          return evaluateGraph(oneSched.nodes, feeds, [one.logits], CPU_OPS)[0]! as Float64Array;
        });
      });
      for (const fused of [false, true]) {
        const built = buildBatchDecoder(c, rule, B);
        const builtMasks = built.routers.flatMap((r) => (r.mask ? [r.mask] : []));
        const { model: dec, outputs } = fused
          ? fuseDecoder(built, [built.logits, ...builtMasks])
          : { model: built, outputs: [built.logits, ...builtMasks] };
        const masks = outputs.slice(1);
        const sched = schedule(dec.graph, [dec.logits, ...masks]);
        if (fused && dense) {
          const ops = sched.nodes.map((n) => n.op);
          assert(
            ops.includes("fused_matmul") && !ops.includes("add") && !ops.includes("activation"),
            ops.join(),
          );
        }
        if (fused && !dense && rule.mlp.kind !== "dense") {
          const ops = sched.nodes.map((n) => n.op);
          assert(!ops.includes("route_gate") && ops.includes("embedding_pair"), ops.join());
          assert(sched.nodes.length < schedule(built.graph, [built.logits, ...builtMasks]).nodes.length);
        }
        assertEquals(dec.caches[0]!.shape[0], B * T, "the caches of the 3 sequences are stacked");
        const cpuFeeds = new Map<number, HostValue>();
        for (const p of dec.params) {
          cpuFeeds.set(p.value.id, valueOf(p.value.name, numel(p.value.shape), p.init === "ones"));
        }
        for (const cache of dec.caches) cpuFeeds.set(cache.id, new Float64Array(numel(cache.shape)));
        const leaves = [...dec.graph.leaves.values()].map((l) => l.value);
        for (const ctx of [detected, detected.withProfile("gpu")]) {
          const ex = new GraphExecutor(ctx, sched, leaves);
          try {
            for (const p of dec.params) {
              writeTensor(ctx, ex.tensor(p.value), Float32Array.from(cpuFeeds.get(p.value.id)!));
            }
            await ex.check();
            for (const cache of dec.caches) cpuFeeds.set(cache.id, new Float64Array(numel(cache.shape)));
            for (let s = 0; s < steps; s++) {
              const ids = Uint32Array.from(seqs, (q, b) => q[at(b, s)]!);
              const pos = Uint32Array.from(seqs, (_, b) => at(b, s));
              cpuFeeds.set(dec.ids.id, ids);
              cpuFeeds.set(dec.pos.id, pos);
              const [cpu, ...cpuMasks] = evaluateGraph(
                sched.nodes,
                cpuFeeds,
                [dec.logits, ...masks],
                CPU_OPS,
              );
              writeTensor(ctx, ex.tensor(dec.ids), ids);
              writeTensor(ctx, ex.tensor(dec.pos), pos);
              await ctx.scoped("batch decode", () => ex.run().done());
              const got = await readTensor(ctx, ex.tensor(dec.logits));
              if (ctx === detected) {
                for (const m of cpuMasks) routedOff += m.filter((v) => v === 0).length;
              }
              const V = got.length / B;
              for (let b = 0; b < B; b++) {
                const row = want[b]![at(b, s)]!;
                const where = `${what}${fused ? " fused" : ""} ${ctx.profile} row ${b} step ${s}`;
                assertClose(
                  cpu!.subarray(b * V, (b + 1) * V),
                  row,
                  { atol: 1e-9, rtol: 1e-9 },
                  `float64 ${where}`,
                );
                const scale = Math.max(...Array.from(row, Math.abs));
                assertClose(
                  got.subarray(b * V, (b + 1) * V),
                  row,
                  { atol: 2e-4 * scale + 1e-7, rtol: 2e-3 },
                  `GPU ${where}`,
                );
              }
            }
          } finally {
            ex.destroy();
          }
        }
      }
    }
    if (!dense) assert(routedOff > 0, "the sparse rules left some experts out");
  });
}

Deno.test("plan decode with batch B > 1 builds the batched decoder; threshold_topk is refused there", () => {
  const c = ExperimentSchema.parse({
    data: { seq_len: T },
    model: { d_model: 16, layers: 1, ...DECODER_MODELS["DS-MoE with MoA"] },
  });
  const rules = RULES[1]!;
  const p = plan(c, "decode", { rules, batch: 4 });
  assertEquals([p.batch, p.model.ids.shape, p.model.pos.shape, p.model.logits.shape[0]], [4, [4], [4], 4]);
  const ops = new Set(p.schedule.nodes.map((n) => n.op));
  assert(ops.has("moa_attention_batch") && ops.has("moe_mlp") && !ops.has("moa_attention"), [...ops].join());
  const one = plan(c, "decode", { rules });
  assertEquals(one.batch, 1);
  assert(one.schedule.nodes.some((n) => n.op === "moa_attention"), "batch 1 keeps the one-token graph");
  const dense = ExperimentSchema.parse({
    data: { seq_len: T },
    model: { d_model: 16, layers: 1, ...DECODER_MODELS.dense },
  });
  assert(
    plan(dense, "decode", { rules, batch: 2 }).schedule.nodes.some((n) => n.op === "attention_cached_batch"),
  );
  const tt: InferRules = { ...rules, mlp: { ...rules.mlp, kind: "threshold_topk" } };
  throws(() => plan(c, "decode", { rules: tt, batch: 2 }), /threshold_topk \(mlp routers\): its K is a mean/);
});

Deno.test("decodePlanBytes with the texture copies adds the weights once more, each grouped matmul's A and the routers' rows", () => {
  // d 64: x's copy for every grouped up-product (k = d); MLP experts of 64 (k = h): H's copy too; MoA's 2
  // heads of 16 (k = 32): no H copy.
  const c = ExperimentSchema.parse({
    data: { seq_len: T },
    model: {
      d_model: 64,
      layers: 3,
      ...DECODER_MODELS["DS-MoE with MoA"],
      attention: { kind: "moa", experts: 4, heads_per_expert: 2, head_dim: 16 },
      mlp: { experts: 8, hidden: 64 },
    },
  });
  const B = 8, p = plan(c, "decode", { rules: RULES[1]!, batch: B });
  const params = p.model.params.reduce((n, q) => n + numel(q.value.shape), 0);
  // Per layer: the MLP's x and H, MoA's x, and the two routers' rows.
  const aCopies = 3 * (B * 64 + B * 8 * 64) + 3 * B * 64 + 3 * 2 * B * 64;
  assertEquals(decodePlanBytes(p, { textureCopies: true }) - decodePlanBytes(p), 4 * (params + aCopies));
});

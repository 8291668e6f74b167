/**
 * Sparse inference of models trained by the routers of the literature (docs/design.md §16): the inference
 * graph under each rule on WebGPU against float64, the rule that runs every expert with a gate against the
 * training forward, and token-by-token decoding against the whole-sequence forward.
 */
import { ok as assert } from "node:assert/strict";
import { evaluateGraph, type HostValue } from "../core/graph/cpu_executor.ts";
import { CPU_OPS } from "../core/graph/cpu_ops.ts";
import { numel } from "../core/graph/ir.ts";
import { schedule } from "../core/graph/schedule.ts";
import { buildModel, type InferRules, type ModelGraph } from "../core/plan/model.ts";
import { plan } from "../core/plan/plan.ts";
import { Rng } from "../core/util/rng.ts";
import { readTensor, writeTensor } from "../gpu/buffers.ts";
import { GraphExecutor } from "../gpu/executor.ts";
import { runBoth } from "./helpers/conform.ts";
import { assertClose, testGpu } from "./helpers/gpu.ts";
import { tinyMoa } from "./helpers/router_configs.ts";

const T = 7, B = 3;
const base = { epsilon: 0.5, k: 2, p: 0.6 };
const RULES: InferRules[] = [
  { mlp: { ...base, kind: "dense" }, attention: { ...base, kind: "dense" } },
  { mlp: { ...base, kind: "threshold", epsilon: 0.8 }, attention: { ...base, kind: "topk", k: 1 } },
  { mlp: { ...base, kind: "top_p" }, attention: { ...base, kind: "threshold_topk", epsilon: 0.9 } },
  { mlp: { ...base, kind: "threshold_topk", epsilon: 1 }, attention: { ...base, kind: "top_p", p: 0.9 } },
];

/** Tiny models of docs/design.md §16 with MoA and MoE routers. */
const MODELS: Record<string, Record<string, Record<string, unknown>>> = {
  "ReLU routing": { model: { kind: "smoe" }, router: { train: "relu" }, loss: { l1: 0.01 } },
  "DS-MoE with shared and fine-grained experts": {
    model: { mlp: { experts: 4, hidden: 12, segments: 3, shared: 1 } },
  },
  "ReLU routing with shared and fine-grained experts": {
    model: { kind: "smoe", mlp: { experts: 4, hidden: 12, segments: 2, shared: 2 } },
    router: { train: "relu" },
    loss: { l1: 0.01 },
  },
};

function configOf(over: Record<string, Record<string, unknown>>) {
  return tinyMoa(over, { seqLen: T, dModel: 16, headsPerExpert: 2, headDim: 8, hidden: 12 });
}

/** Seeded parameter values by name (router weights wide, so gates spread), the same for every graph. */
function paramValues(seed: number) {
  const rng = new Rng(seed), values = new Map<string, Float64Array>();
  return (m: { params: ModelGraph["params"] }, feeds: Map<number, HostValue>) => {
    for (const p of m.params) {
      if (!values.has(p.value.name)) {
        const amp = p.value.name.includes("router") ? 2 : 0.3, one = p.init === "ones" ? 1 : 0;
        const n = numel(p.value.shape);
        values.set(
          p.value.name,
          Float64Array.from(Float32Array.from({ length: n }, () => one + amp * (2 * rng.next() - 1))),
        );
      }
      feeds.set(p.value.id, values.get(p.value.name)!);
    }
    return feeds;
  };
}

for (const [name, over] of Object.entries(MODELS)) {
  Deno.test(`${name}: inference under each rule on WebGPU matches float64; the dense rule is the trained forward`, async () => {
    const ctx = await testGpu(), c = configOf(over), fill = paramValues(3), rng = new Rng(9);
    const ids = Uint32Array.from({ length: B * T }, () => rng.int(256));
    const feedsOf = (m: ModelGraph) =>
      fill(m, new Map<number, HostValue>([[m.ids.id, ids], [m.targets.id, ids]]));
    const train = buildModel(c, B);
    for (const s of train.routerState) assert(s.init > 0);
    const trainFeeds = feedsOf(train);
    for (const s of train.routerState) trainFeeds.set(s.value.id, Float64Array.of(s.init));
    const [want] = evaluateGraph(
      schedule(train.graph, [train.logits]).nodes,
      trainFeeds,
      [train.logits],
      CPU_OPS,
    );
    let off = 0;
    for (const rule of RULES) {
      const m = buildModel(c, B, rule), masks = m.routers.flatMap((r) => r.mask ? [r.mask] : []);
      // Every router has a mask, but a softmax router under the dense rule (it runs every expert).
      const relu = c.router.train === "relu";
      assert(masks.length === (relu || rule.mlp.kind !== "dense" ? m.routers.length : 0), "routers' masks");
      const outs = [m.logits, ...masks];
      const { ref, got } = await runBoth(ctx, m, schedule(m.graph, outs), feedsOf(m), outs, name);
      ref.forEach((r, i) => {
        const scale = Math.max(...Array.from(r, Math.abs));
        assertClose(
          got[i]!,
          r,
          { atol: 2e-4 * scale + 1e-7, rtol: 2e-3 },
          `${JSON.stringify(rule)} output ${i}`,
        );
      });
      for (const mask of ref.slice(1)) off += mask.filter((v) => v === 0).length;
      if (rule.mlp.kind === "dense") {
        assertClose(ref[0]!, want!, { atol: 1e-10, rtol: 1e-10 }, "dense rule vs the training forward");
      }
    }
    assert(off > 0, "the rules left some experts out");
  });

  Deno.test(`${name}: decoding token by token gives the sequence forward's logits (float64 and WebGPU)`, async () => {
    const ctx = await testGpu(), c = configOf(over), fill = paramValues(4), rng = new Rng(5);
    const ids = Uint32Array.from({ length: T }, () => rng.int(256));
    for (const rule of [RULES[0]!, RULES[1]!]) {
      const seq = buildModel(c, 1, rule);
      const [want] = evaluateGraph(
        schedule(seq.graph, [seq.logits]).nodes,
        fill(seq, new Map([[seq.ids.id, ids], [seq.targets.id, ids]])),
        [seq.logits],
        CPU_OPS,
      );
      // The decoder as `generate` plans it: fused (core/plan/fuse_decode.ts; the unfused one: decode_test.ts).
      const dec = plan(c, "decode", { rules: rule }).model, sched = schedule(dec.graph, [dec.logits]);
      const cpuFeeds = fill(dec, new Map());
      for (const cache of dec.caches) cpuFeeds.set(cache.id, new Float64Array(numel(cache.shape)));
      const ex = new GraphExecutor(ctx, sched, [...dec.graph.leaves.values()].map((l) => l.value));
      try {
        for (const p of dec.params) {
          writeTensor(ctx, ex.tensor(p.value), Float32Array.from(cpuFeeds.get(p.value.id)!));
        }
        await ex.check();
        const V = want!.length / T;
        for (let t = 0; t < T; t++) {
          cpuFeeds.set(dec.ids.id, Uint32Array.of(ids[t]!));
          cpuFeeds.set(dec.pos.id, Uint32Array.of(t));
          const [cpu] = evaluateGraph(sched.nodes, cpuFeeds, [dec.logits], CPU_OPS);
          const row = want!.subarray(t * V, (t + 1) * V), scale = Math.max(...Array.from(row, Math.abs));
          assertClose(cpu!, row, { atol: 1e-9, rtol: 1e-9 }, `float64 decoder at ${t}`);
          writeTensor(ctx, ex.tensor(dec.ids), Uint32Array.of(ids[t]!));
          writeTensor(ctx, ex.tensor(dec.pos), Uint32Array.of(t));
          await ctx.scoped("decode", () => ex.run().done());
          assertClose(await readTensor(ctx, ex.tensor(dec.logits)), row, {
            atol: 2e-4 * scale + 1e-7,
            rtol: 2e-3,
          }, `GPU decoder at ${t}`);
        }
      } finally {
        ex.destroy();
      }
    }
  });
}

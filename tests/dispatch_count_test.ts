/**
 * Dispatches per decoded token (docs/performance.md): the executor's count of one execution equals the
 * number of kernel calls the scheduled nodes make, counted here apart from the executor, and the per-layer
 * counts of a tiny dense and a tiny DS-MoE decoder are pinned so that a change in them is a visible one.
 *
 * @module
 */
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { ExperimentSchema } from "../core/config/schema.ts";
import { numel } from "../core/graph/ir.ts";
import { dispatchesByLayer } from "../core/infer/generate.ts";
import { plan } from "../core/plan/plan.ts";
import type { InferRules } from "../core/plan/model.ts";
import { createIndirectTensor, createTensor, type GpuTensor } from "../gpu/buffers.ts";
import type { KernelProfile } from "../gpu/device.ts";
import { Step } from "../gpu/dispatch.ts";
import { GraphExecutor } from "../gpu/executor.ts";
import { GPU_IMPLS, gpuImplOf } from "../gpu/graph_ops.ts";
import { testGpu } from "./helpers/gpu.ts";

const base = { epsilon: 0.5, k: 2, p: 0.9 };
const TOPK: InferRules = { mlp: { ...base, kind: "topk" }, attention: { ...base, kind: "topk" } };
const DENSE: InferRules = { mlp: { ...base, kind: "dense" }, attention: { ...base, kind: "dense" } };
const MODELS = {
  dense: {
    model: {
      kind: "dense",
      attention: { kind: "mha", heads: 4, kv_heads: 2, head_dim: 8 },
      mlp: { experts: 1, hidden: 24 },
    },
    rules: DENSE,
  },
  // K = 256 in the MLP's down projection: the gpu profile's tiled matmul would split K (two dispatches).
  "dense, wide MLP": {
    model: {
      kind: "dense",
      attention: { kind: "mha", heads: 4, kv_heads: 2, head_dim: 8 },
      mlp: { experts: 1, hidden: 256 },
    },
    rules: DENSE,
  },
  "DS-MoE": {
    model: {
      attention: { kind: "moa", experts: 3, heads_per_expert: 2, head_dim: 8 },
      mlp: { experts: 4, hidden: 12 },
    },
    rules: TOPK,
  },
} as const;

/**
 * Dispatches per layer of each model under each kernel profile, and outside the layers (embeddings, final
 * norm, logits). Lower these when a fusion lands; a rise is a regression.
 */
const EXPECTED: Record<KernelProfile, Record<keyof typeof MODELS, { layer: number; outside: number }>> = {
  // A layer after core/plan/fuse_decode.ts: dense — norm+Q/K/V, attention (writing its cache row), Wo+add,
  // norm+W1+GELU, W2+add; DS-MoE — norm+K/V, the attention router (logits, softmax, rule, gate), the routed
  // queries, attention, Wo+add, the MLP router with its norm, the routed experts' W1, their W2+add.
  "cpu-simd": {
    dense: { layer: 5, outside: 2 },
    "dense, wide MLP": { layer: 5, outside: 2 },
    "DS-MoE": { layer: 8, outside: 2 },
  },
  gpu: {
    dense: { layer: 5, outside: 2 },
    "dense, wide MLP": { layer: 5, outside: 2 },
    "DS-MoE": { layer: 8, outside: 2 },
  },
};

for (const profile of ["cpu-simd", "gpu"] as const) {
  for (const [name, m] of Object.entries(MODELS) as [keyof typeof MODELS, typeof MODELS.dense][]) {
    Deno.test(`a tiny ${name} decoder's dispatches per token are the scheduled kernels' (${profile} profile)`, async () => {
      const detected = await testGpu();
      const ctx = detected.profile === profile ? detected : detected.withProfile(profile);
      const c = ExperimentSchema.parse({
        data: { seq_len: 8 },
        model: { d_model: 16, layers: 2, ...m.model },
      });
      const { model: dec, schedule: sched } = plan(c, "decode", { rules: m.rules });
      const ex = new GraphExecutor(ctx, sched, [...dec.graph.leaves.values()].map((l) => l.value));
      const scratch: GpuTensor[] = [];
      try {
        assertEquals(ex.dispatches, 0, "nothing recorded before the first execution");
        const step = new Step(ctx, { label: "count" });
        ex.encode(step);
        step.submit();
        await step.done();
        // Counted apart from the executor: the kernel calls each scheduled node's implementation makes.
        let scheduled = 0;
        for (const node of sched.nodes) {
          if (node.op === "reshape") continue;
          const calls = gpuImplOf(node, GPU_IMPLS)(
            ctx,
            node,
            node.inputs.map((v) => ex.tensor(v)),
            node.outputs.map((v) => ex.tensor(v)),
            (shape, label, kind = "f32") => {
              const t = kind === "indirect"
                ? createIndirectTensor(ctx, numel(shape), label)
                : createTensor(ctx, shape, kind, undefined, label);
              scratch.push(t);
              return t;
            },
          );
          scheduled += calls.length;
        }
        assertEquals(ex.dispatches, scheduled, "executor count vs scheduled kernel calls");
        assertEquals(step.dispatches, scheduled, "the step recorded the same dispatches");
        assertEquals(ex.kernels().length, scheduled);
        const want = EXPECTED[profile][name];
        const perLayer = dispatchesByLayer(ex.kernels(), c.model.layers);
        assertEquals(perLayer, [want.layer, want.layer], `${name} dispatches per layer`);
        assertEquals(scheduled, 2 * want.layer + want.outside, `${name} dispatches per token`);
        ex.run();
        assertEquals(ex.dispatches, scheduled, "every execution records the same dispatches");
      } finally {
        ex.destroy();
        for (const t of scratch) t.buffer.destroy();
      }
    });
  }
}

Deno.test("the decoder's fusions are what lowers its dispatches: unfused, a layer takes 12 (dense) and 15 (DS-MoE)", async () => {
  const ctx = await testGpu();
  for (const [name, want] of [["dense", 12], ["DS-MoE", 15]] as const) {
    const m = MODELS[name];
    const c = ExperimentSchema.parse({ data: { seq_len: 8 }, model: { d_model: 16, layers: 2, ...m.model } });
    const { model: dec, schedule: sched } = plan(c, "decode", { rules: m.rules, fuse: false });
    const ex = new GraphExecutor(ctx, sched, [...dec.graph.leaves.values()].map((l) => l.value));
    try {
      ex.run();
      assertEquals(dispatchesByLayer(ex.kernels(), c.model.layers), [want, want], `${name} unfused`);
    } finally {
      ex.destroy();
    }
  }
});

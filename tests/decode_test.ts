import { ok as assert } from "node:assert/strict";
import { ExperimentSchema } from "../core/config/schema.ts";
import { evaluateGraph, type HostValue } from "../core/graph/cpu_executor.ts";
import { CPU_OPS } from "../core/graph/cpu_ops.ts";
import { numel } from "../core/graph/ir.ts";
import { schedule } from "../core/graph/schedule.ts";
import { buildDecoder, buildModel } from "../core/plan/model.ts";
import { plan } from "../core/plan/plan.ts";
import { Rng } from "../core/util/rng.ts";
import { readTensor, writeTensor } from "../gpu/buffers.ts";
import { GraphExecutor } from "../gpu/executor.ts";
import { openGpu } from "../gpu/device.ts";
import { assertClose, testGpu } from "./helpers/gpu.ts";
import { DECODER_MODELS, PER_TOKEN_RULES } from "./helpers/decoders.ts";

const T = 7;
const MODELS = DECODER_MODELS, RULES = PER_TOKEN_RULES;

const VARIANTS = [
  ...Object.entries(MODELS).map(([name, model]) => ({ name, model, gpuKernels: false })),
  // The one-token MoE/MoA kernels a real GPU gets (column sums over lanes), run here on llvmpipe.
  { name: "DS-MoE with MoA (gpu kernel profile)", model: MODELS["DS-MoE with MoA"]!, gpuKernels: true },
  // K = 256 in the MLP's down projection: one-row matmuls run as one gemv dispatch (gpu/kernels/gemv.ts).
  {
    name: "dense, MLP 256 wide (gpu kernel profile)",
    model: { ...MODELS.dense, mlp: { experts: 1, hidden: 256 } },
    gpuKernels: true,
  },
  // Head width 12 does not divide the 64 threads of attention_cached's workgroup: one thread per column.
  {
    name: "dense, head width 12 (gpu kernel profile)",
    model: { ...MODELS.dense, attention: { kind: "mha", heads: 4, kv_heads: 2, head_dim: 12 } },
    gpuKernels: true,
  },
];

for (const { name, model, gpuKernels } of VARIANTS) {
  Deno.test(`decoding a tiny ${name} model token by token with a KV cache gives the sequence forward's logits`, async () => {
    const detected = await testGpu();
    const ctx = gpuKernels ? await openGpu({ profile: "gpu", validation: true }) : detected;
    const c = ExperimentSchema.parse({ data: { seq_len: T }, model: { d_model: 16, layers: 2, ...model } });
    const rng = new Rng(3);
    const ids = Uint32Array.from({ length: T }, () => rng.int(256));
    const values = new Map<string, Float64Array>();
    const valueOf = (name: string, n: number, ones: boolean) => {
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
    let routedOff = 0;
    for (const rule of RULES) {
      // The whole sequence at once, in float64: the ground truth.
      const seq = buildModel(c, 1, rule);
      const feeds = new Map<number, HostValue>([[seq.ids.id, ids], [seq.targets.id, ids]]);
      for (const p of seq.params) {
        feeds.set(p.value.id, valueOf(p.value.name, numel(p.value.shape), p.init === "ones"));
      }
      const masks = seq.routers.flatMap((r) => (r.mask ? [r.mask] : []));
      const [want, ...maskRef] = evaluateGraph(schedule(seq.graph, [seq.logits, ...masks]).nodes, feeds, [
        seq.logits,
        ...masks,
      ], CPU_OPS);
      for (const m of maskRef) routedOff += m.filter((v) => v === 0).length;

      // Token by token: the decoder as built and as fused (core/plan/fuse_decode.ts) in float64 (caches
      // mutated in place), and the fused one on the GPU.
      const built = buildDecoder(c, rule), builtSched = schedule(built.graph, [built.logits]);
      const builtFeeds = new Map<number, HostValue>();
      for (const p of built.params) {
        builtFeeds.set(p.value.id, valueOf(p.value.name, numel(p.value.shape), p.init === "ones"));
      }
      for (const cache of built.caches) builtFeeds.set(cache.id, new Float64Array(numel(cache.shape)));
      const dec = plan(c, "decode", { rules: rule }).model;
      assert(dec.graph.nodes.some((n) => n.op === "fused_gemv"), "the planned decoder is fused");
      const sched = schedule(dec.graph, [dec.logits]);
      const cpuFeeds = new Map<number, HostValue>();
      for (const p of dec.params) {
        cpuFeeds.set(p.value.id, valueOf(p.value.name, numel(p.value.shape), p.init === "ones"));
      }
      for (const cache of dec.caches) cpuFeeds.set(cache.id, new Float64Array(numel(cache.shape)));
      const leaves = [...dec.graph.leaves.values()].map((l) => l.value);
      const ex = new GraphExecutor(ctx, sched, leaves);
      try {
        for (const p of dec.params) {
          writeTensor(ctx, ex.tensor(p.value), Float32Array.from(cpuFeeds.get(p.value.id)!));
        }
        await ex.check();
        const V = want!.length / T;
        for (let t = 0; t < T; t++) {
          cpuFeeds.set(dec.ids.id, Uint32Array.of(ids[t]!));
          cpuFeeds.set(dec.pos.id, Uint32Array.of(t));
          builtFeeds.set(built.ids.id, Uint32Array.of(ids[t]!));
          builtFeeds.set(built.pos.id, Uint32Array.of(t));
          const row = want!.subarray(t * V, (t + 1) * V);
          for (
            const [what, [cpu]] of [
              ["float64 decoder", evaluateGraph(builtSched.nodes, builtFeeds, [built.logits], CPU_OPS)],
              ["fused float64 decoder", evaluateGraph(sched.nodes, cpuFeeds, [dec.logits], CPU_OPS)],
            ] as const
          ) {
            assertClose(
              cpu!,
              row,
              { atol: 1e-9, rtol: 1e-9 },
              `${name} ${JSON.stringify(rule)} ${what} at ${t}`,
            );
          }
          writeTensor(ctx, ex.tensor(dec.ids), Uint32Array.of(ids[t]!));
          writeTensor(ctx, ex.tensor(dec.pos), Uint32Array.of(t));
          await ctx.scoped("decode", () => ex.run().done());
          const got = await readTensor(ctx, ex.tensor(dec.logits));
          const scale = Math.max(...Array.from(row, Math.abs));
          assertClose(
            got,
            row,
            { atol: 2e-4 * scale + 1e-7, rtol: 2e-3 },
            `${name} ${JSON.stringify(rule)} GPU decoder at ${t}`,
          );
        }
      } finally {
        ex.destroy();
      }
    }
    if (model.kind !== "dense") assert(routedOff > 0, "the sparse rules left some experts out");
    if (ctx !== detected) ctx.destroy();
  });
}

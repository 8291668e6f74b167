import { ok as assert } from "node:assert/strict";
import { ExperimentSchema } from "../core/config/schema.ts";
import { gradients } from "../core/graph/autodiff.ts";
import type { HostValue } from "../core/graph/cpu_executor.ts";
import { schedule } from "../core/graph/schedule.ts";
import { isOp } from "../core/graph/ir.ts";
import { openGpu } from "../gpu/device.ts";
import { matmulPlan } from "../gpu/kernels/matmul.ts";
import { buildModel, type InferRules } from "../core/plan/model.ts";
import { Rng } from "../core/util/rng.ts";
import { assertClose, testGpu } from "./helpers/gpu.ts";
import { runBoth } from "./helpers/conform.ts";

const MODELS: Record<string, unknown> = {
  "dense": {
    model: {
      kind: "dense",
      attention: { kind: "mha", heads: 4, kv_heads: 2, head_dim: 8 },
      mlp: { experts: 1, hidden: 24 },
    },
  },
  "SMoE": {
    model: {
      kind: "smoe",
      attention: { kind: "mha", heads: 2, head_dim: 8 },
      mlp: { experts: 4, hidden: 8 },
    },
    router: { train: "topk", k: 2 },
    loss: { load_balance: 0.01 },
  },
  "DS-MoE with MoA": {
    model: {
      attention: { kind: "moa", experts: 3, heads_per_expert: 2, head_dim: 8 },
      mlp: { experts: 4, hidden: 12 },
    },
    router: { hidden: 6 },
    loss: { mi: { attention: 0.05, mlp: 0.1 }, z: 0.01 },
  },
  // The real-GPU kernel family, run here on llvmpipe: a batch of 40 × 7 = 280 tokens makes every weight gradient
  // (K = tokens) split K in two across workgroups.
  "DS-MoE with MoA on the gpu kernel profile (split-K weight gradients)": {
    model: {
      attention: { kind: "moa", experts: 3, heads_per_expert: 2, head_dim: 8 },
      mlp: { experts: 4, hidden: 12 },
    },
    loss: { mi: { attention: 0.05, mlp: 0.1 } },
  },
};
const GPU_PROFILE = "DS-MoE with MoA on the gpu kernel profile (split-K weight gradients)";

for (const [name, over] of Object.entries(MODELS)) {
  Deno.test(`WebGPU forward and backward of a tiny ${name} model match the float64 reference`, async () => {
    const base = await testGpu();
    const ctx = name === GPU_PROFILE ? await openGpu({ profile: "gpu", validation: true }) : base;
    const o = over as Record<string, Record<string, unknown>>;
    const c = ExperimentSchema.parse({
      ...o,
      data: { seq_len: 7 },
      model: { d_model: 16, layers: 2, ...o.model },
    });
    const m = buildModel(c, name === GPU_PROFILE ? 40 : 3);
    const params = m.params.map((p) => p.value);
    const grads = gradients(m.graph, m.loss, params);
    const outs = [m.loss, m.lmLoss, ...grads];
    const sched = schedule(m.graph, outs);
    // Inputs: random tokens and f32-representable parameters (so both sides start from the same values).
    const rng = new Rng(5);
    const feeds = new Map<number, HostValue>([
      [m.ids.id, Uint32Array.from({ length: m.tokens }, () => rng.int(256))],
      [m.targets.id, Uint32Array.from({ length: m.tokens }, () => rng.int(256))],
    ]);
    for (const p of m.params) {
      const n = p.value.shape.reduce((a, b) => a * b, 1);
      const base = p.init === "ones" ? 1 : 0;
      feeds.set(
        p.value.id,
        Float64Array.from(Float32Array.from({ length: n }, () => base + 0.3 * (2 * rng.next() - 1))),
      );
    }
    if (name === GPU_PROFILE) {
      const splits = sched.nodes.filter((n) => isOp(n, "matmul") && n.attrs.transA).map((n) =>
        matmulPlan(ctx, n.outputs[0]!.shape[0]!, n.inputs[0]!.shape[0]!, n.outputs[0]!.shape[1]!).splits
      );
      assert(splits.length > 0 && splits.every((x) => x === 2), `weight-gradient splits ${splits}`);
    }
    const { ref, got: gpu } = await runBoth(ctx, m, sched, feeds, outs, name).finally(() => {
      if (ctx !== base) ctx.destroy();
    });
    for (let i = 0; i < outs.length; i++) {
      const got = gpu[i]!;
      const r = ref[i]!;
      const scale = Math.max(...Array.from(r, Math.abs));
      // f32 through two blocks and back: errors are relative to the tensor's largest entry.
      const what = i < 2 ? (i === 0 ? "loss" : "lm loss") : `grad ${params[i - 2]!.name}`;
      assertClose(got, r, { atol: 2e-4 * scale + 1e-7, rtol: 2e-3 }, what);
    }
    assert(scheduledUsesReuse(sched.memory.totalElements, sched.memory.withoutReuse));
  });
}

function scheduledUsesReuse(total: number, without: number): boolean {
  return total < without;
}

Deno.test("WebGPU inference graphs under each routing rule match the float64 reference that masks unrouted experts", async () => {
  const ctx = await testGpu();
  const c = ExperimentSchema.parse({
    ...MODELS["DS-MoE with MoA"] as object,
    data: { seq_len: 7 },
    model: {
      d_model: 16,
      layers: 2,
      attention: { kind: "moa", experts: 3, heads_per_expert: 2, head_dim: 8 },
      mlp: { experts: 4, hidden: 12 },
    },
  });
  const base = { epsilon: 0.5, k: 2, p: 0.9 };
  const rules: InferRules[] = [
    { mlp: { ...base, kind: "threshold", epsilon: 0.8 }, attention: { ...base, kind: "topk", k: 1 } },
    { mlp: { ...base, kind: "top_p", p: 0.6 }, attention: { ...base, kind: "threshold_topk", epsilon: 0.9 } },
    {
      mlp: { ...base, kind: "threshold", epsilon: 0 },
      attention: { ...base, kind: "threshold", epsilon: 0 },
    },
  ];
  const rng = new Rng(9);
  const values = new Map<string, Float64Array>(); // same parameters for every graph, by name
  const ids = Uint32Array.from({ length: 3 * 7 }, () => rng.int(256));
  const targets = Uint32Array.from({ length: 3 * 7 }, () => rng.int(256));
  const run = async (m: ReturnType<typeof buildModel>) => {
    const outs = [m.logits, m.lmLoss, ...m.routers.flatMap((r) => (r.mask ? [r.mask] : []))];
    const sched = schedule(m.graph, outs);
    const feeds = new Map<number, HostValue>([[m.ids.id, ids], [m.targets.id, targets]]);
    for (const p of m.params) {
      const n = p.value.shape.reduce((a, b) => a * b, 1), one = p.init === "ones" ? 1 : 0;
      if (!values.has(p.value.name)) {
        // Wide router logits so probabilities spread well away from the thresholds.
        const amp = p.value.name.includes("router") ? 2 : 0.3;
        values.set(
          p.value.name,
          Float64Array.from(Float32Array.from({ length: n }, () => one + amp * (2 * rng.next() - 1))),
        );
      }
      feeds.set(p.value.id, values.get(p.value.name)!);
    }
    const { ref, got } = await runBoth(ctx, m, sched, feeds, outs, "inference graph");
    return { ref: ref.map((r) => Float64Array.from(r)), got };
  };
  const dense = await run(buildModel(c, 3));
  let masked = 0;
  for (const rule of rules) {
    const m = buildModel(c, 3, rule);
    assert(m.routers.every((r) => r.mask), "every router has a mask");
    const { ref, got } = await run(m);
    for (let i = 0; i < ref.length; i++) {
      const scale = Math.max(...Array.from(ref[i]!, Math.abs));
      assertClose(
        got[i]!,
        ref[i]!,
        { atol: 2e-4 * scale + 1e-7, rtol: 2e-3 },
        `${JSON.stringify(rule)} output ${i}`,
      );
    }
    for (const mask of ref.slice(2)) masked += mask.filter((v) => v === 0).length;
    if (rule.mlp.epsilon === 0) {
      // ε = 0 runs every expert: the sparse forward is the dense one.
      assertClose(ref[0]!, dense.ref[0]!, { atol: 1e-12, rtol: 1e-12 }, "ε = 0 logits vs dense");
      assert(ref.slice(2).every((mask) => mask.every((v) => v === 1)), "ε = 0 masks are all ones");
    }
  }
  assert(masked > 0, "the subset rules left some experts out");
  // Leaving experts out changes the output: the masks reach the logits.
  const sub = await run(buildModel(c, 3, rules[0]!));
  assert(
    sub.ref[0]!.some((v, i) => Math.abs(v - dense.ref[0]![i]!) > 1e-6),
    "masked logits differ from dense",
  );
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { type Experiment, ExperimentSchema } from "../config/schema.ts";
import { Rng } from "../util/rng.ts";
import { CpuTrainBackend } from "./cpu_backend.ts";

// Every loss of the model on, the batch-level router losses (MI, Switch) at weights large enough to matter,
// and routers far from uniform (init_std 0.3). Computing those losses per micro-batch instead (each with its
// own p̄ and f) misses these gradients by 0.24 (DS-MoE) and 1.1 (SMoE) of their largest entry.
const MODELS: Record<string, unknown> = {
  "DS-MoE (MoA; MI and z losses)": {
    model: {
      attention: { kind: "moa", experts: 3, heads_per_expert: 1, head_dim: 4 },
      mlp: { experts: 4, hidden: 4 },
    },
    router: { hidden: 5 },
    loss: { mi: { attention: 0.5, mlp: 1.0 }, z: 0.01 },
  },
  "SMoE (top-2; Switch and MI losses)": {
    model: {
      kind: "smoe",
      attention: { kind: "mha", heads: 2, head_dim: 4 },
      mlp: { experts: 4, hidden: 4 },
    },
    router: { train: "topk", k: 2 },
    loss: { load_balance: 0.5, mi: { mlp: 0.5 } },
  },
  "dense (no router loss)": {
    model: {
      kind: "dense",
      attention: { kind: "mha", heads: 2, head_dim: 4 },
      mlp: { experts: 1, hidden: 8 },
    },
  },
};

function config(over: unknown, microBatch?: number): Experiment {
  const o = over as Record<string, Record<string, unknown>>;
  return ExperimentSchema.parse({
    ...o,
    data: { seq_len: 5 },
    model: { d_model: 8, layers: 2, init_std: 0.3, ...o.model },
    train: { batch: 8, micro_batch: microBatch },
  });
}

/** max |a − b| / max |a| over a tensor. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(a[i]!));
  }
  return worst / Math.max(scale, 1e-300);
}

for (const [name, over] of Object.entries(MODELS)) {
  Deno.test(`float64: the ${name} loss and gradients of 4 accumulated micro-batches equal the whole batch's`, () => {
    const whole = new CpuTrainBackend(config(over)), micro = new CpuTrainBackend(config(over, 2));
    assertEquals([whole.plan.accumulation, micro.plan.accumulation], [1, 4]);
    // The router statistics pass exactly when a batch-level router loss is on.
    assertEquals(micro.plan.stats !== null, !name.startsWith("dense"));
    const rng = new Rng(3), ids = () => Uint32Array.from({ length: 8 * 5 }, () => rng.int(256));
    const batch = { inputs: ids(), targets: ids(), domains: null };
    const a = whole.lossAndGrads(batch), b = micro.lossAndGrads(batch);
    assert(relErr(a.parts, b.parts) < 1e-12, `losses ${a.parts} vs ${b.parts}`);
    a.grads.forEach((g, i) => {
      const err = relErr(g, b.grads[i]!), what = whole.model.params[i]!.value.name;
      assert(err < 1e-12, `gradient of ${what}: relative error ${err}`);
    });
  });
}

Deno.test("float64: evaluation in micro-batches gives the whole batch's loss and router statistics", async () => {
  const over = MODELS["DS-MoE (MoA; MI and z losses)"];
  const whole = new CpuTrainBackend(config(over)), micro = new CpuTrainBackend(config(over, 2));
  const rng = new Rng(4), ids = () => Uint32Array.from({ length: 8 * 5 }, () => rng.int(256));
  const batch = { inputs: ids(), targets: ids(), domains: null };
  const [a, b] = [await whole.evaluate(batch), await micro.evaluate(batch)];
  assert(Math.abs(a.lmLoss - b.lmLoss) < 1e-12, `${a.lmLoss} vs ${b.lmLoss}`);
  a.routers.forEach((r, i) => {
    const s = b.routers[i]!;
    assert(relErr(r.load, s.load) < 1e-12 && relErr(r.meanProb, s.meanProb) < 1e-12);
    assert(Math.abs(r.entropy - s.entropy) < 1e-12, `${r.entropy} vs ${s.entropy}`);
  });
});

/**
 * Gradient accumulation with the routers of docs/design.md §16, in float64: top-p's per-token losses and its
 * Switch loss over shares of the batch's routed pairs are exact under accumulation; expert choice selects
 * within each micro-batch (C of its tokens), so it is not, as documented.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { type Experiment, ExperimentSchema } from "../config/schema.ts";
import { Rng } from "../util/rng.ts";
import { CpuTrainBackend } from "./cpu_backend.ts";
import { relErr } from "../../tests/helpers/router_configs.ts";

function config(router: Record<string, unknown>, loss: Record<string, unknown>, micro?: number): Experiment {
  return ExperimentSchema.parse({
    data: { seq_len: 5 },
    model: {
      kind: "smoe",
      d_model: 8,
      layers: 2,
      init_std: 0.3,
      attention: { kind: "moa", experts: 3, heads_per_expert: 1, head_dim: 4 },
      mlp: { experts: 4, hidden: 4 },
    },
    router,
    loss,
    train: { batch: 8, micro_batch: micro },
  });
}

/** The worst relative error of the loss and of any gradient, accumulated over 4 micro-batches vs whole. */
function accumulationError(router: Record<string, unknown>, loss: Record<string, unknown>): number {
  const whole = new CpuTrainBackend(config(router, loss)),
    micro = new CpuTrainBackend(config(router, loss, 2));
  assertEquals(micro.plan.accumulation, 4);
  const rng = new Rng(3), ids = () => Uint32Array.from({ length: 8 * 5 }, () => rng.int(256));
  const batch = { inputs: ids(), targets: ids(), domains: null };
  const a = whole.lossAndGrads(batch), b = micro.lossAndGrads(batch);
  // The total and LM losses (MI losses of weight 0 are logged as the micro-batches' mean, docs/design.md §11).
  return Math.max(
    relErr(a.parts.slice(0, 2), b.parts.slice(0, 2)),
    ...a.grads.map((g, i) => relErr(g, b.grads[i]!)),
  );
}

Deno.test("float64: top-p with dynamic and Switch losses accumulates exactly (the batch's shares f)", () => {
  const err = accumulationError({ train: "top_p", p: 0.5 }, { dynamic: 0.5, load_balance: 0.5 });
  assert(err < 1e-12, `relative error ${err}`);
});

Deno.test("float64: expert choice selects within each micro-batch, so accumulation changes its gradients", () => {
  const err = accumulationError({ train: "expert_choice", capacity: 1 }, {});
  assert(err > 1e-3, `relative error ${err}`);
});

Deno.test("float64: ReLU routing's L1 term and sparsity accumulate exactly (means over tokens)", () => {
  const err = accumulationError({ train: "relu" }, { l1: 0.5, z: 0.01 });
  assert(err < 1e-12, `relative error ${err}`);
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { ExperimentSchema } from "../config/schema.ts";
import { evaluateGraph, type HostValue } from "../graph/cpu_executor.ts";
import { CPU_OPS } from "../graph/cpu_ops.ts";
import type { Node } from "../graph/ir.ts";
import { initParams } from "../train/init.ts";
import { Rng } from "../util/rng.ts";
import { configRules, type InferPlan, plan, type TrainPlan } from "./plan.ts";
import type { InferRules } from "./model.ts";

const c = ExperimentSchema.parse({
  data: { seq_len: 8 },
  model: {
    d_model: 16,
    layers: 2,
    attention: { kind: "moa", experts: 3, heads_per_expert: 2, head_dim: 8 },
    mlp: { experts: 4, hidden: 12 },
  },
  router: { infer: { kind: "threshold", epsilon: 0.5 } },
  train: { batch: 2 },
});
const count = (nodes: readonly Node[], op: string) => nodes.filter((n) => n.op === op).length;
const every = { ...c.router.infer, kind: "dense" } as const;
const dense: InferRules = { mlp: every, attention: every };

/** The LM loss of a plan's model on fixed tokens, in float64, with the seeded initial parameters. */
function lmLoss(p: TrainPlan | InferPlan): number {
  const rng = new Rng(5);
  const ids = Uint32Array.from({ length: p.model.tokens }, () => rng.int(256));
  const init = initParams(p.model.params, 3);
  const feeds = new Map<number, HostValue>([[p.model.ids.id, ids], [
    p.model.targets.id,
    ids.map((i) => (i + 1) % 256),
  ]]);
  for (const s of p.model.params) feeds.set(s.value.id, Float64Array.from(init.get(s.value.name)!));
  return (evaluateGraph(p.schedule.nodes, feeds, [p.model.lmLoss], CPU_OPS)[0] as Float64Array)[0]!;
}

Deno.test("plan(train-dense) gives one gradient per parameter and runs every expert densely", () => {
  const p = plan(c, "train-dense");
  assertEquals(p.grads.length, p.model.params.length);
  for (const [i, g] of p.grads.entries()) assertEquals(g.shape, p.model.params[i]!.value.shape);
  assertEquals(p.outputs[0], p.model.loss);
  assertEquals(count(p.schedule.nodes, "moe_mlp") + count(p.schedule.nodes, "moa_attention"), 0);
  assert(p.schedule.memory.totalElements < p.schedule.memory.withoutReuse, "buffers are reused");
});

Deno.test("plan(train-dense) of train.micro_batch: the graph of a micro-batch, and the router statistics pass only for batch-level losses", () => {
  const micro = ExperimentSchema.parse({ ...c, train: { batch: 2, micro_batch: 1 } });
  const off = plan(micro, "train-dense");
  assertEquals([off.microBatch, off.accumulation, off.model.tokens], [1, 2, 8]);
  assertEquals(off.stats, null, "no batch-level router loss is weighted in: no statistics pass");
  assertEquals([count(off.schedule.nodes, "mi_loss"), count(off.schedule.nodes, "mi_loss_global")], [4, 0]);
  const on = plan(ExperimentSchema.parse({ ...micro, loss: { mi: { mlp: 0.1 } } }), "train-dense");
  // Every router's MI then reads the batch's p̄ (an input), which the statistics pass averages first.
  assertEquals(count(on.schedule.nodes, "mi_loss_global"), 4);
  assertEquals(on.model.batchStats.length, 4);
  for (const s of on.model.batchStats) assertEquals(on.model.graph.leaves.get(s.batch.id)?.kind, "input");
  const stats = on.stats!.nodes;
  assertEquals(count(stats, "mean_rows"), 4);
  // The pass stops at the last router: no LM head, loss or backward.
  assertEquals(
    count(stats, "cross_entropy") + count(stats, "mi_loss_global") + count(stats, "softmax_backward"),
    0,
  );
  assert(stats.length < on.schedule.nodes.length / 3, `${stats.length} of ${on.schedule.nodes.length} nodes`);
  const whole = plan(c, "train-dense");
  assertEquals([whole.microBatch, whole.accumulation, whole.stats], [2, 1, null]);
});

Deno.test("plan(infer-sparse) routes every layer by the config's rule; with the dense rule it equals training's loss", () => {
  const p = plan(c, "infer-sparse");
  assertEquals(p.rules, configRules(c));
  assertEquals(count(p.schedule.nodes, "moe_mlp"), 2);
  assertEquals(count(p.schedule.nodes, "moa_attention"), 2);
  assertEquals(p.outputs.length, 2 + 4); // loss, logits, a mask per router
  const all = plan(c, "infer-sparse", { rules: dense });
  assertEquals(all.outputs.length, 2, "the dense rule selects every expert: no masks");
  assertEquals(count(all.schedule.nodes, "route_mask"), 0);
  const top1 = { ...c.router.infer, kind: "topk", k: 1 } as const;
  const train = lmLoss(plan(c, "train-dense"));
  const topPlan = plan(c, "infer-sparse", { rules: { mlp: top1, attention: top1 } });
  // Softmax, top-1 mask and gate of each of the 4 routers are one fused op (threshold-top-K keeps its own).
  assertEquals([count(topPlan.schedule.nodes, "route_gate"), count(topPlan.schedule.nodes, "route_mask")], [
    4,
    0,
  ]);
  const sparse = lmLoss(topPlan);
  assert(Math.abs(lmLoss(all) - train) < 1e-9, `${lmLoss(all)} vs ${train}`);
  assert(Math.abs(sparse - train) > 1e-6, "top-1 drops experts, so the loss moves");
  assert(Math.abs(sparse - train) < 0.5, `${sparse} vs ${train}`);
});

Deno.test("plan(decode) reads and writes KV caches: one token in, one row of logits out", () => {
  const p = plan(c, "decode");
  assertEquals(p.model.ids.shape, [1]);
  assertEquals(p.model.logits.shape, [1, 256]);
  assertEquals(p.model.caches.length, 4);
  const moa = p.schedule.nodes.filter((n) => n.op === "moa_attention");
  assertEquals(moa.length, 2);
  for (const n of moa) assert(n.inputs.some((v) => p.model.caches.includes(v)), "attention reads its cache");
});

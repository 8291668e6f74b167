/**
 * `plan(config, mode)` (DESIGN.md §5): the compute graph of a config for one purpose, scheduled, with its
 * liveness-based buffer plan.
 *
 * - `train-dense`: forward with every expert, losses, and the gradient of the total loss for every parameter
 *   (the optimizer runs on those gradients).
 * - `infer-sparse`: forward only; routed layers compute just the experts their inference rule selects.
 * - `decode`: one token per execution with KV caches, routed like `infer-sparse`.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import { gradients } from "../graph/autodiff.ts";
import type { Value } from "../graph/ir.ts";
import { type Schedule, schedule } from "../graph/schedule.ts";
import { buildDecoder, buildModel, type DecoderGraph, type InferRules, type ModelGraph } from "./model.ts";

/** What a plan is for. */
export type PlanMode = "train-dense" | "infer-sparse" | "decode";

/** Options of {@link plan}. */
export interface PlanOptions {
  /** Sequences per execution (train-dense, infer-sparse); default `train.batch`. */
  batch?: number;
  /** Inference rules (infer-sparse, decode); default the config's `router.infer` / `router.infer_attention`. */
  rules?: InferRules;
}

/** A training plan: the model, its gradients (same order as `model.params`) and the schedule computing both. */
export interface TrainPlan {
  mode: "train-dense";
  model: ModelGraph;
  grads: Value[];
  outputs: Value[]; // loss, LM loss, MI losses, then gradients
  schedule: Schedule;
}

/** A sparse inference plan: loss, logits and router masks of a routed forward. */
export interface InferPlan {
  mode: "infer-sparse";
  model: ModelGraph;
  rules: InferRules;
  outputs: Value[]; // LM loss, logits, then each routed router's mask
  schedule: Schedule;
}

/** A decoding plan: one token's logits and router masks; the caches are updated in place. */
export interface DecodePlan {
  mode: "decode";
  model: DecoderGraph;
  rules: InferRules;
  outputs: Value[]; // logits, then each routed router's mask
  schedule: Schedule;
}

/** The inference rules a config declares: `router.infer` for MLP routers, `router.infer_attention` (or the same). */
export function configRules(c: Readonly<Experiment>): InferRules {
  return { mlp: c.router.infer, attention: c.router.infer_attention ?? c.router.infer };
}

/** Plans `c` for `mode`. */
export function plan(c: Readonly<Experiment>, mode: "train-dense", o?: PlanOptions): TrainPlan;
export function plan(c: Readonly<Experiment>, mode: "infer-sparse", o?: PlanOptions): InferPlan;
export function plan(c: Readonly<Experiment>, mode: "decode", o?: PlanOptions): DecodePlan;
export function plan(
  c: Readonly<Experiment>,
  mode: PlanMode,
  o: PlanOptions = {},
): TrainPlan | InferPlan | DecodePlan {
  const batch = o.batch ?? c.train.batch;
  const rules = o.rules ?? configRules(c);
  switch (mode) {
    case "train-dense": {
      const model = buildModel(c, batch);
      const grads = gradients(model.graph, model.loss, model.params.map((p) => p.value));
      const outputs = [model.loss, model.lmLoss, ...model.miLoss.attention, ...model.miLoss.mlp, ...grads];
      return { mode, model, grads, outputs, schedule: schedule(model.graph, outputs) };
    }
    case "infer-sparse": {
      const model = buildModel(c, batch, rules);
      const outputs = [model.lmLoss, model.logits, ..._masks(model.routers)];
      return { mode, model, rules, outputs, schedule: schedule(model.graph, outputs) };
    }
    case "decode": {
      const model = buildDecoder(c, rules);
      const outputs = [model.logits, ..._masks(model.routers)];
      return { mode, model, rules, outputs, schedule: schedule(model.graph, outputs) };
    }
    default:
      throw new RangeError(`Unknown plan mode "${mode satisfies never}"`);
  }
}

function _masks(routers: ModelGraph["routers"]): Value[] {
  return routers.flatMap((r) => r.mask ? [r.mask] : []);
}

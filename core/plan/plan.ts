/**
 * `plan(config, mode)` (docs/design.md §6): the compute graph of a config for one purpose, scheduled, with
 * its liveness-based buffer plan.
 *
 * - `train-dense`: forward with every expert, losses, and the gradient of the total loss for every parameter
 *   (the optimizer runs on those gradients). The graph is one micro-batch's (`train.micro_batch`); a step
 *   runs it `train.batch / train.micro_batch` times and averages gradients and losses (every micro-batch has
 *   as many tokens, so the mean of the per-token means is the batch's). The batch-level router losses (MI,
 *   Switch) are not means over tokens: their micro-batch graphs read the batch's router statistics, which a
 *   forward pass over every micro-batch (`stats`, up to the last router) averages first. That pass costs
 *   about one more forward per micro-batch, and is planned only when such a loss has a nonzero weight;
 *   without it, the MI values reported for routers (weight 0) are the mean of the micro-batches' own.
 * - `infer-sparse`: forward only; routed layers compute just the experts their inference rule selects.
 * - `decode`: one token per execution with KV caches, routed like `infer-sparse`; with `batch` B > 1, B
 *   sequences decoded together, one token each, each at its own position (`buildBatchDecoder`).
 *
 * @module
 */
import { type Experiment, type Precision, precisionOf } from "../config/schema.ts";
import { gradients } from "../graph/autodiff.ts";
import type { Value } from "../graph/ir.ts";
import { planMatmulCopies, type Schedule, schedule, shareBuffers } from "../graph/schedule.ts";
import { accumulationOf, estimateMemory, hasBatchRouterLoss } from "./counts.ts";
import { fuseDecoder } from "./fuse_decode.ts";
import {
  buildBatchDecoder,
  buildDecoder,
  buildModel,
  type DecoderGraph,
  type InferRules,
  type ModelGraph,
} from "./model.ts";

/** What a plan is for. */
export type PlanMode = "train-dense" | "infer-sparse" | "decode";

/** Options of {@link plan}. */
export interface PlanOptions {
  /**
   * Sequences per execution; default `train.micro_batch` (train-dense, which then accumulates
   * `train.batch / train.micro_batch` executions per step) or `train.batch` (infer-sparse). A train-dense
   * plan given a batch does not accumulate. Decode: sequences decoded together, default 1.
   */
  batch?: number;
  /** Inference rules (infer-sparse, decode); default the config's `router.infer` / `router.infer_attention`. */
  rules?: InferRules;
  /** infer-sparse: also output every router's probabilities (after the masks), for `eval --diagnostics`. */
  routerProbs?: boolean;
  /** decode: fuse norms, routers, activations and residual adds into their neighbours (default true). */
  fuse?: boolean;
  /**
   * train-dense: start the backward pass from an input `loss_scale` (the loss's shape) instead of 1, so the
   * gradients are the loss scale times the loss's (dynamic loss scaling, core/train/loss_scale.ts).
   */
  lossScale?: boolean;
}

/** A training plan: the model, its gradients (same order as `model.params`) and the schedule computing both. */
export interface TrainPlan {
  mode: "train-dense";
  model: ModelGraph;
  grads: Value[];
  outputs: Value[]; // loss, LM loss, MI losses, the model's scalars, the router loads (`loads`), then gradients
  /** The routers' selection statistics (router.train: topk): `model.loads`' selected (and kept) vectors. */
  loads: Value[];
  schedule: Schedule;
  microBatch: number; // sequences per execution of `schedule` (a micro-step)
  accumulation: number; // micro-steps per optimizer step; gradients and `outputs` are their means
  /**
   * Run over every micro-batch of a step before its micro-steps: computes each `model.batchStats[i].micro`,
   * whose mean over the micro-batches is fed to `.batch`. Null without accumulation or batch-level losses.
   */
  stats: Schedule | null;
  /**
   * Forward only, for evaluation: the LM loss and every router's probabilities of a micro-batch, then the
   * training gates of the routers that expose one (`RouterTap.trainGate`, docs/design.md §16).
   */
  evaluate: Schedule;
  /** With `PlanOptions.lossScale`: the input leaf the backward pass starts from; else null. */
  lossScale: Value | null;
}

/** A sparse inference plan: loss, logits and router masks of a routed forward. */
export interface InferPlan {
  mode: "infer-sparse";
  model: ModelGraph;
  rules: InferRules;
  outputs: Value[]; // LM loss, logits, then each routed router's mask (then each router's probabilities)
  schedule: Schedule;
}

/** A decoding plan: one token's logits and router masks (per sequence); the caches are updated in place. */
export interface DecodePlan {
  mode: "decode";
  model: DecoderGraph;
  /** Sequences decoded together (the rows of ids, pos and logits). */
  batch: number;
  rules: InferRules;
  outputs: Value[]; // logits, then each routed router's mask
  schedule: Schedule;
}

/** The graphs a training plan runs: the step, evaluation and (when planned) the router statistics pass. */
export function trainSchedules(p: TrainPlan): Schedule[] {
  return [p.schedule, p.evaluate, ...(p.stats ? [p.stats] : [])];
}

/** Bytes of a training plan's memory, by part ({@linkcode trainPlanMemory}). */
export interface TrainPlanMemory {
  weights: number; // the parameters and both Adam moments (f32)
  gradAccum: number; // gradient accumulators (0 without accumulation)
  graphs: number; // the graphs' planned buffers: activations, gradients and temporaries of one micro-batch
  f16Copies: number; // f16 copies of the matmul operands (0 in f32)
  total: number;
}

/**
 * Device bytes a training plan allocates, by part: the parameters and both Adam moments (f32), the gradient
 * accumulators (with accumulation), the planned buffers of its graphs (the step, evaluation and the router
 * statistics pass, which share the buffers of the values they read within a run: gpu/executor.ts
 * `SharedPlanBuffers`), and with `precision` f16 the f16 copies of the matmul operands
 * ({@linkcode f16CopyBytes}). Kernels' private scratch (e.g. split-K partial sums on real GPUs) and the
 * graphs' small inputs (token ids, targets) are not counted.
 */
export function trainPlanMemory(p: TrainPlan, precision: Precision = "f32"): TrainPlanMemory {
  const params = p.model.params.reduce((n, s) => n + s.value.shape.reduce((a, b) => a * b, 1), 0);
  const weights = 12 * params, gradAccum = p.accumulation > 1 ? 4 * params : 0;
  const graphs = 4 * shareBuffers(trainSchedules(p).map((s) => s.memory)).totalElements;
  const f16Copies = precision === "f16" ? f16CopyBytes(p) : 0;
  return { weights, gradAccum, graphs, f16Copies, total: weights + gradAccum + graphs + f16Copies };
}

/** The total of {@linkcode trainPlanMemory}: the device bytes a training plan allocates. */
export function trainPlanBytes(p: TrainPlan, precision: Precision = "f32"): number {
  return trainPlanMemory(p, precision).total;
}

/**
 * Bytes of the f16 copies half precision training holds while it runs (gpu/graph_ops_f16.ts `F16Copies`):
 * of every value a matmul reads (a weight, an activation, an activation's gradient), as f16 halves two to a
 * 32-bit word, in buffers planned by the copies' lifetimes and shared by the plan's graphs
 * (`planMatmulCopies`, core/graph/schedule.ts). The trainer allocates exactly this, an upper bound of what it
 * uses: a one-row product that runs as a GEMV reads its f32 operands.
 */
export function f16CopyBytes(p: TrainPlan): number {
  return 4 * planMatmulCopies(trainSchedules(p)).totalWords;
}

/**
 * The training plan of `c` as training makes it (with dynamic loss scaling's input under
 * `hardware.precision: f16`), or null where the planner refuses the config (a RangeError, e.g. rope).
 */
function _tryTrainPlan(c: Readonly<Experiment>): TrainPlan | null {
  try {
    return plan(c, "train-dense", { lossScale: precisionOf(c) === "f16" });
  } catch (e) {
    if (e instanceof RangeError) return null;
    throw e;
  }
}

/**
 * The training memory `run` (and `--resume`) checks against `hardware.memory_budget` before anything is
 * allocated: what the training plan allocates ({@linkcode trainPlanMemory}, with the f16 copies of matmul
 * operands under `hardware.precision: f16`), or where the config cannot be planned (which training refuses
 * anyway) {@linkcode estimateMemory}'s estimate, with `planned` null.
 */
export function trainMemoryEstimate(
  c: Readonly<Experiment>,
): { bytes: number; planned: TrainPlanMemory | null } {
  const p = _tryTrainPlan(c);
  if (p === null) return { bytes: estimateMemory(c).train, planned: null };
  const planned = trainPlanMemory(p, precisionOf(c));
  return { bytes: planned.total, planned };
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
      const acc = accumulationOf(c);
      const microBatch = o.batch ?? acc.microBatch, accumulation = o.batch === undefined ? acc.steps : 1;
      const batchStats = accumulation > 1 && hasBatchRouterLoss(c);
      const model = buildModel(c, microBatch, undefined, { batchStats });
      const lossScale = o.lossScale ? model.graph.leaf("input", "loss_scale", model.loss.shape) : null;
      const grads = gradients(
        model.graph,
        model.loss,
        model.params.map((p) => p.value),
        undefined,
        lossScale ?? undefined,
      );
      const loads = loadValues(model);
      const outputs = [
        model.loss,
        model.lmLoss,
        ...model.miLoss.attention,
        ...model.miLoss.mlp,
        ...model.scalars.map((s) => s.value),
        ...loads,
        ...grads,
      ];
      const stats = batchStats ? schedule(model.graph, model.batchStats.map((s) => s.micro)) : null;
      const evaluate = schedule(model.graph, [
        model.lmLoss,
        ...model.routers.map((r) => r.probs),
        ...model.routers.flatMap((r) => r.trainGate ? [r.trainGate] : []),
      ]);
      return {
        mode,
        model,
        grads,
        outputs,
        loads,
        schedule: schedule(model.graph, outputs),
        microBatch,
        accumulation,
        stats,
        evaluate,
        lossScale,
      };
    }
    case "infer-sparse": {
      const model = buildModel(c, batch, rules);
      const outputs = [model.lmLoss, model.logits, ..._masks(model.routers)];
      if (o.routerProbs) outputs.push(...model.routers.map((r) => r.probs));
      return { mode, model, rules, outputs, schedule: schedule(model.graph, outputs) };
    }
    case "decode": {
      const rows = o.batch ?? 1;
      // B > 1: the batched decoder's own graph (docs/design.md §10, "Batched decoding"). One token per
      // execution (per sequence): norms, routers' logits, activations and residual adds folded into the
      // kernels beside them where those take the rows (core/plan/fuse_decode.ts); `fuse: false` keeps the
      // built graph.
      const built = rows > 1 ? buildBatchDecoder(c, rules, rows) : buildDecoder(c, rules);
      const wanted = [built.logits, ..._masks(built.routers)];
      const { model, outputs } = o.fuse === false
        ? { model: built, outputs: wanted }
        : fuseDecoder(built, wanted);
      return { mode, model, rules, batch: rows, outputs, schedule: schedule(model.graph, outputs) };
    }
    default:
      throw new RangeError(`Unknown plan mode "${mode satisfies never}"`);
  }
}

/** The routers' selection statistics of a training graph, in `model.loads` order: selected, then kept. */
export function loadValues(model: ModelGraph): Value[] {
  return model.loads.flatMap((l) => l.kept ? [l.selected, l.kept] : [l.selected]);
}

function _masks(routers: ModelGraph["routers"]): Value[] {
  return routers.flatMap((r) => r.mask ? [r.mask] : []);
}

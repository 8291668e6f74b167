/**
 * The training gates of the routers of the literature (docs/design.md §16), built into a model's graph by
 * core/plan/model.ts: expert choice (each expert takes its top-C tokens of the micro-batch).
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import type { Graph, Value } from "../graph/ir.ts";
import { apply1 } from "../graph/ops.ts";

/**
 * C of expert-choice routing: ⌈T · capacity / E⌉ tokens per expert of the T tokens routed together, at
 * least 1 and at most T (docs/design.md §16).
 */
export function expertChoiceTokens(T: number, experts: number, capacity: number): number {
  return Math.min(T, Math.max(1, Math.ceil((T * capacity) / experts)));
}

/** The router.train values built here. */
export type ZooTrain = "expert_choice";

/** Whether `c` trains its routers with a rule of this module. */
export function isZooTrain(c: Readonly<Experiment>): boolean {
  return c.router.train === "expert_choice";
}

/**
 * The training gate (N, E) of a router of this module over router probabilities `probs` (N tokens × E
 * experts): expert choice gates by S on the (token, expert) pairs each expert took, 0 elsewhere.
 */
export function zooTrainGate(g: Graph, c: Readonly<Experiment>, probs: Value): Value {
  const [N, E] = probs.shape as [number, number];
  switch (c.router.train) {
    case "expert_choice": {
      const tokens = expertChoiceTokens(N, E, c.router.capacity);
      const mask = apply1(g, "expert_choice_mask", [probs], { tokens });
      return apply1(g, "mul", [probs, mask]);
    }
    default:
      throw new RangeError(`router.train ${c.router.train} is not a router of docs/design.md §16`);
  }
}

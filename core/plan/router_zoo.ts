/**
 * The training gates of the routers of the literature (docs/design.md §16), built into a model's graph by
 * core/plan/model.ts: expert choice (each expert takes its top-C tokens of the micro-batch) and dynamic
 * top-p (each token keeps the fewest experts whose probability mass reaches p, with the entropy loss).
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

/** Whether `c` trains its routers with a rule of this module. */
export function isZooTrain(c: Readonly<Experiment>): boolean {
  return c.router.train === "expert_choice" || c.router.train === "top_p";
}

/** A router's training gate and the pieces of its losses. */
export interface ZooGate {
  /** (N, E): the per-token expert weights; a pair is routed iff its gate is above 0. */
  gate: Value;
  /** The 0/1 routing mask the Switch loss counts (shares of the routed pairs, k = 0), when it applies. */
  switchMask?: Value;
  /** Top-p: the dynamic loss, the router's mean per-token entropy (unweighted). */
  dynamic?: Value;
}

/**
 * The training gate of a router of this module over router probabilities `probs` (N tokens × E experts):
 * expert choice gates by S on the (token, expert) pairs each expert took; top-p by S on each token's
 * fewest experts whose mass reaches router.p. Zero elsewhere.
 */
export function zooTrainGate(g: Graph, c: Readonly<Experiment>, probs: Value): ZooGate {
  const [N, E] = probs.shape as [number, number];
  switch (c.router.train) {
    case "expert_choice": {
      const tokens = expertChoiceTokens(N, E, c.router.capacity);
      const mask = apply1(g, "expert_choice_mask", [probs], { tokens });
      return { gate: apply1(g, "mul", [probs, mask]) };
    }
    case "top_p": {
      const mask = apply1(g, "topp_mask", [probs], { p: c.router.p });
      return {
        gate: apply1(g, "mul", [probs, mask]),
        switchMask: mask,
        dynamic: apply1(g, "entropy_loss", [probs]),
      };
    }
    default:
      throw new RangeError(`router.train ${c.router.train} is not a router of docs/design.md §16`);
  }
}

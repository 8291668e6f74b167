/**
 * The training gates of the routers of the literature (docs/design.md §16), built into a model's graph by
 * core/plan/model.ts: expert choice (each expert takes its top-C tokens of the micro-batch), dynamic top-p
 * (each token keeps the fewest experts whose probability mass reaches p, with the entropy loss) and ReLU
 * routing (gates ReLU(s) with an L1 term whose weight λ, optimizer-free state, adapts after each step).
 *
 * @module
 */
import { type Experiment, routerSetting } from "../config/schema.ts";
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
  const t = c.router.train;
  return t === "expert_choice" || t === "top_p" || t === "relu";
}

/** The name of ReLU routing's L1 weight λ in checkpoints (`router_state/l1_lambda`) and in step scalars. */
export const L1_LAMBDA = "l1_lambda";

/**
 * λ after a step of ReLU routing (the float64 rule; gpu/kernels/router_zoo.ts `l1LambdaUpdate` is the
 * kernel): λ · rate^sign(target − sparsity), the measured sparsity being the step's share of zero gates.
 *
 * @example
 * ```ts
 * import { nextL1Lambda } from "./router_zoo.ts";
 * if (nextL1Lambda(1, 0.5, 0.75, 2) !== 2 || nextL1Lambda(1, 0.9, 0.75, 2) !== 0.5) throw new Error();
 * ```
 */
export function nextL1Lambda(lambda: number, sparsity: number, target: number, rate: number): number {
  return target > sparsity ? lambda * rate : target < sparsity ? lambda / rate : lambda;
}

/** A router's training gate and the pieces of its losses. */
export interface ZooGate {
  /** (N, E): the per-token expert weights; a pair is routed iff its gate is above 0. */
  gate: Value;
  /** The 0/1 routing mask the Switch loss counts (shares of the routed pairs, k = 0), when it applies. */
  switchMask?: Value;
  /** Top-p: the dynamic loss, the router's mean per-token entropy (unweighted). */
  dynamic?: Value;
  /** ReLU: the L1 term λ · mean_t Σ_i g_t,i (weighted by the λ input). */
  l1?: Value;
  /** ReLU: the share of zero gates. */
  zeroShare?: Value;
}

/**
 * The training gate of a router of this module over its probabilities `probs` = softmax(`logits`) (N
 * tokens × E experts): expert choice gates by S on the (token, expert) pairs each expert took; top-p by S on
 * each token's fewest experts whose mass reaches router.p (zero elsewhere); ReLU by ReLU(logits), its L1
 * term weighted by the input `lambda()` (λ). With `segments` m (fine-grained MLP experts), expert choice's
 * capacity counts full-size experts: m·capacity segments per token.
 */
export function zooTrainGate(
  g: Graph,
  c: Readonly<Experiment>,
  router: { probs: Value; logits: Value },
  lambda: () => Value,
  segments = 1,
): ZooGate {
  const probs = router.probs;
  const [N, E] = probs.shape as [number, number];
  switch (c.router.train) {
    case "expert_choice": {
      const tokens = expertChoiceTokens(N, E, routerSetting(c.router, "capacity") * segments);
      const mask = apply1(g, "expert_choice_mask", [probs], { tokens });
      return { gate: apply1(g, "mul", [probs, mask]) };
    }
    case "top_p": {
      const mask = apply1(g, "topp_mask", [probs], { p: routerSetting(c.router, "p") });
      return {
        gate: apply1(g, "mul", [probs, mask]),
        switchMask: mask,
        dynamic: apply1(g, "entropy_loss", [probs]),
      };
    }
    case "relu": {
      const gate = apply1(g, "activation", [router.logits], { kind: "relu" });
      return {
        gate,
        l1: apply1(g, "l1_loss", [gate, lambda()]),
        zeroShare: apply1(g, "zero_share", [gate]),
      };
    }
    default:
      throw new RangeError(`router.train ${c.router.train} is not a router of docs/design.md §16`);
  }
}

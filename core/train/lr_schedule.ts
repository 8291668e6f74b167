/**
 * Learning rate per step: linear warmup from 0 to `lr` over `warmup` steps, then cosine, linear or constant
 * decay to `min_lr` at the last step.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";

/**
 * Learning rate of optimizer step `step` (0-based) of `steps`.
 *
 * @example
 * ```ts
 * import { learningRate } from "./lr_schedule.ts";
 * const t = { steps: 100, optimizer: { lr: 1 }, schedule: { kind: "cosine", warmup: 10, min_lr: 0.1 } } as const;
 * if (learningRate(t, 4) !== 0.5) throw new Error("warmup is linear");
 * ```
 */
export function learningRate(
  train: {
    steps: number;
    optimizer: Pick<Experiment["train"]["optimizer"], "lr">;
    schedule: Experiment["train"]["schedule"];
  },
  step: number,
): number {
  const { lr } = train.optimizer, { warmup, min_lr: minLr, kind } = train.schedule;
  if (step < warmup) return (lr * (step + 1)) / warmup;
  const decaySteps = Math.max(1, train.steps - warmup - 1);
  const t = Math.min(1, (step - warmup) / decaySteps);
  switch (kind) {
    case "constant":
      return lr;
    case "linear":
      return lr + (minLr - lr) * t;
    case "cosine":
      return minLr + 0.5 * (lr - minLr) * (1 + Math.cos(Math.PI * t));
    default:
      return kind satisfies never;
  }
}

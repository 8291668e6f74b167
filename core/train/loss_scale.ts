/**
 * Dynamic loss scaling (docs/performance.md "Half precision"), as in the mixed-precision literature: the
 * backward pass starts from S instead of 1 (the loss scaled by S), so that small gradients survive f16's
 * range; the optimizer divides them by S again. A step whose gradients are not finite (an overflow) is
 * skipped and S halved; after `growthInterval` finite steps in a row S is doubled. S is a power of two, so
 * scaling and unscaling are exact in floating point: with f32 everywhere, a scaled step gives the same bits
 * as an unscaled one (core/train/loss_scale_test.ts and tests/loss_scale_test.ts check both).
 *
 * On the GPU the state lives in a 3-element tensor [S, good steps, S of the last step] updated by
 * gpu/kernels/optimizer.ts `lossScaleUpdate` after every step, without a host sync; {@linkcode nextLossScale}
 * is its reference. Checkpoints keep [S, good steps] as the tensor `loss_scale`.
 *
 * @module
 */

/** The settings of dynamic loss scaling. */
export interface LossScaleSettings {
  /** S at the first step. */
  init: number;
  /** Finite steps in a row after which S is multiplied by `factor`. */
  growthInterval: number;
  /** S is multiplied by it after `growthInterval` good steps, divided by it after an overflow. */
  factor: number;
  /** Bounds of S: an overflow at `min` is the model's, not the scale's (it counts toward divergence). */
  min: number;
  max: number;
}

/** The usual settings: S = 2¹⁶ at first, ×2 after 2,000 good steps, ÷2 on an overflow, within [1, 2²⁴]. */
export const LOSS_SCALE_DEFAULTS: LossScaleSettings = {
  init: 2 ** 16,
  growthInterval: 2000,
  factor: 2,
  min: 1,
  max: 2 ** 24,
};

/** The scaler's state: the scale and the finite steps since it last changed. */
export interface LossScaleState {
  scale: number;
  good: number;
}

/** The state a run starts from. */
export function initialLossScale(s: LossScaleSettings = LOSS_SCALE_DEFAULTS): LossScaleState {
  return { scale: s.init, good: 0 };
}

/**
 * The state after a step whose gradients were finite (or not): the reference of the GPU update.
 *
 * @example
 * ```ts
 * import { nextLossScale } from "./loss_scale.ts";
 * const s = { init: 8, growthInterval: 2, factor: 2, min: 1, max: 64 };
 * let st = { scale: 8, good: 0 };
 * st = nextLossScale(st, false, s); // overflow: 4
 * st = nextLossScale(nextLossScale(st, true, s), true, s); // two good steps: 8
 * if (st.scale !== 8 || st.good !== 0) throw new Error(JSON.stringify(st));
 * ```
 */
export function nextLossScale(st: LossScaleState, finite: boolean, s: LossScaleSettings): LossScaleState {
  if (!finite) return { scale: Math.max(s.min, st.scale / s.factor), good: 0 };
  const good = st.good + 1;
  if (good < s.growthInterval) return { scale: st.scale, good };
  return { scale: Math.min(s.max, st.scale * s.factor), good: 0 };
}

/** Checks settings: positive, a power-of-two factor (exact scaling), min ≤ init ≤ max, interval ≥ 1. */
export function checkLossScaleSettings(s: LossScaleSettings): void {
  const pow2 = (x: number) => x > 0 && Number.isFinite(x) && 2 ** Math.round(Math.log2(x)) === x;
  const ok = pow2(s.init) && pow2(s.min) && pow2(s.max) && pow2(s.factor) && s.factor > 1 &&
    s.min <= s.init && s.init <= s.max && Number.isSafeInteger(s.growthInterval) && s.growthInterval >= 1;
  if (!ok) {
    throw new RangeError(
      `Invalid loss scaling ${JSON.stringify(s)}: init, min, max and factor (> 1) must be powers of two, ` +
        "min ≤ init ≤ max, growthInterval a positive integer",
    );
  }
}

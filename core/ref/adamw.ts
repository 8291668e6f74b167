/**
 * Float64 reference of one AdamW step (decoupled weight decay, bias-corrected moments), in place.
 *
 * @module
 */

/** Arguments of {@linkcode adamwStepRef}; `step` is t ≥ 1. */
export interface AdamWArgs {
  param: Float64Array;
  grad: ArrayLike<number>;
  m: Float64Array;
  v: Float64Array;
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  step: number;
}

/** p ← p·(1 − lr·wd) − lr·m̂/(√v̂ + ε), with m, v updated first. */
export function adamwStepRef(a: AdamWArgs): void {
  const c1 = 1 - a.beta1 ** a.step, c2 = 1 - a.beta2 ** a.step;
  for (let i = 0; i < a.param.length; i++) {
    const g = a.grad[i]!;
    a.m[i] = a.beta1 * a.m[i]! + (1 - a.beta1) * g;
    a.v[i] = a.beta2 * a.v[i]! + (1 - a.beta2) * g * g;
    a.param[i] = a.param[i]! * (1 - a.lr * a.weightDecay) -
      (a.lr * (a.m[i]! / c1)) / (Math.sqrt(a.v[i]! / c2) + a.eps);
  }
}

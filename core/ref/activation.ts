/**
 * Float64 reference of the activations: GELU (tanh form, as GPT-2), ReLU and SiLU, and their derivatives.
 *
 * @module
 */
import type { ActivationKind } from "../graph/op_types.ts";

export type { ActivationKind };

const _C = Math.sqrt(2 / Math.PI);

/** Activation value at x. */
export function activationAt(kind: ActivationKind, x: number): number {
  switch (kind) {
    case "gelu":
      return 0.5 * x * (1 + Math.tanh(_C * (x + 0.044715 * x * x * x)));
    case "relu":
      return x > 0 ? x : 0;
    case "silu":
      return x / (1 + Math.exp(-x));
    default:
      return kind satisfies never;
  }
}

/** Derivative of the activation at x. */
export function activationGradAt(kind: ActivationKind, x: number): number {
  switch (kind) {
    case "gelu": {
      const u = _C * (x + 0.044715 * x * x * x), t = Math.tanh(u);
      return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _C * (1 + 3 * 0.044715 * x * x);
    }
    case "relu":
      return x > 0 ? 1 : 0;
    case "silu": {
      const s = 1 / (1 + Math.exp(-x));
      return s * (1 + x * (1 - s));
    }
    default:
      return kind satisfies never;
  }
}

/** y = act(x). */
export function activationRef(kind: ActivationKind, x: ArrayLike<number>): Float64Array {
  return Float64Array.from(x, (v) => activationAt(kind, v));
}

/** dx = act'(x) ⊙ dy. */
export function activationBackwardRef(
  kind: ActivationKind,
  x: ArrayLike<number>,
  dy: ArrayLike<number>,
): Float64Array {
  return Float64Array.from(x, (v, i) => activationGradAt(kind, v) * dy[i]!);
}

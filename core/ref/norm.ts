/**
 * Float64 reference of LayerNorm and RMSNorm (eps inside the square root) and their backward.
 *
 * @module
 */
import type { NormKind } from "../graph/op_types.ts";

export type { NormKind };

/** y (rows, d), and per row the mean (0 for RMSNorm) and rstd = 1/sqrt(var + eps) (or of mean square). */
export function normRef(
  kind: NormKind,
  x: ArrayLike<number>,
  gamma: ArrayLike<number>,
  beta: ArrayLike<number> | null,
  d: number,
  eps = 1e-5,
): { y: Float64Array; mean: Float64Array; rstd: Float64Array } {
  const rows = x.length / d,
    y = new Float64Array(x.length),
    mean = new Float64Array(rows),
    rstd = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let mu = 0;
    if (kind === "layernorm") {
      for (let j = 0; j < d; j++) mu += x[r * d + j]!;
      mu /= d;
    }
    let v = 0;
    for (let j = 0; j < d; j++) v += (x[r * d + j]! - mu) ** 2;
    const rs = 1 / Math.sqrt(v / d + eps);
    mean[r] = mu;
    rstd[r] = rs;
    for (let j = 0; j < d; j++) y[r * d + j] = (x[r * d + j]! - mu) * rs * gamma[j]! + (beta ? beta[j]! : 0);
  }
  return { y, mean, rstd };
}

/** dx (rows, d), dgamma (d), dbeta (d) from the saved mean and rstd. */
export function normBackwardRef(
  kind: NormKind,
  x: ArrayLike<number>,
  gamma: ArrayLike<number>,
  mean: ArrayLike<number>,
  rstd: ArrayLike<number>,
  dy: ArrayLike<number>,
  d: number,
): { dx: Float64Array; dgamma: Float64Array; dbeta: Float64Array } {
  const rows = x.length / d,
    dx = new Float64Array(x.length),
    dgamma = new Float64Array(d),
    dbeta = new Float64Array(d);
  for (let r = 0; r < rows; r++) {
    const mu = mean[r]!, rs = rstd[r]!;
    let sumG = 0, sumGX = 0;
    for (let j = 0; j < d; j++) {
      const xhat = (x[r * d + j]! - mu) * rs, g = dy[r * d + j]! * gamma[j]!;
      dgamma[j]! += dy[r * d + j]! * xhat;
      dbeta[j]! += dy[r * d + j]!;
      sumG += g;
      sumGX += g * xhat;
    }
    for (let j = 0; j < d; j++) {
      const xhat = (x[r * d + j]! - mu) * rs, g = dy[r * d + j]! * gamma[j]!;
      dx[r * d + j] = kind === "layernorm"
        ? rs * (g - sumG / d - (xhat * sumGX) / d)
        : rs * (g - (xhat * sumGX) / d);
    }
  }
  return { dx, dgamma, dbeta };
}

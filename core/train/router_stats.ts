/**
 * Router statistics from probabilities: per-expert load (top-1 share), mean probability and mean entropy.
 *
 * @module
 */
import type { RouterStats } from "./backend.ts";

/** Load (top-1 fraction per expert), mean probability and mean entropy of router probabilities (N, E). */
export function routerStats(
  layer: number,
  kind: RouterStats["kind"],
  probs: ArrayLike<number>,
  experts: number,
): RouterStats {
  const n = probs.length / experts;
  const load = new Array(experts).fill(0), meanProb = new Array(experts).fill(0);
  let entropy = 0;
  for (let t = 0; t < n; t++) {
    let best = 0;
    for (let e = 0; e < experts; e++) {
      const p = probs[t * experts + e]!;
      meanProb[e] += p / n;
      if (p > 0) entropy -= (p * Math.log(p)) / n;
      if (p > probs[t * experts + best]!) best = e;
    }
    load[best] += 1 / n;
  }
  return { layer, kind, load, meanProb, entropy };
}

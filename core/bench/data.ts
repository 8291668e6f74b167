/**
 * Seeded benchmark inputs: f32-representable values, so the float64 reference sees exactly what the GPU sees.
 *
 * @module
 */
import { Rng } from "../util/rng.ts";

/**
 * `n` seeded values in [lo, hi), rounded to f32.
 *
 * @example
 * ```ts
 * import { randomF32 } from "./data.ts";
 * const x = randomF32(4, 1);
 * if (x.length !== 4 || x.some((v) => v < -1 || v >= 1)) throw new Error("range");
 * ```
 */
export function randomF32(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const r = new Rng(seed), out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * r.next();
  return out;
}

/**
 * `n` seeded integers in [0, max) (token ids, targets).
 *
 * @example
 * ```ts
 * import { randomIds } from "./data.ts";
 * if (randomIds(8, 3, 1).some((v) => v >= 3)) throw new Error("range");
 * ```
 */
export function randomIds(n: number, max: number, seed: number): Uint32Array {
  const r = new Rng(seed), out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = r.int(max);
  return out;
}

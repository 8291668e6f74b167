/**
 * Router jitter noise (router.jitter ε, docs/design.md §16): the U(1−ε, 1+ε) factors that multiply each
 * router's input in training. They come from the run's seeded RNG, addressed by (seed, step, router), and
 * are fed to the graph as inputs, so a run is reproducible, both backends see the same numbers, and a
 * resumed run draws exactly what it would have drawn.
 *
 * @module
 */
import { hash32, Rng } from "../util/rng.ts";

/** The RNG stream of jitter noise (data order and initialization use others). */
const JITTER_STREAM = 0x6a177e;

/**
 * The noise of router input `router` (its index in `ModelGraph.jitter`) for the optimizer step that follows
 * `step` steps already taken: `count` factors uniform in [1 − ε, 1 + ε] (drawn in [1 − ε, 1 + ε), then rounded to f32), for the whole
 * batch (micro-batch k's slice follows micro-batch k − 1's).
 *
 * @example
 * ```ts
 * import { jitterNoise } from "./jitter.ts";
 * const a = jitterNoise(1, 0, 0, 4, 0.1);
 * if (a.some((v) => v < 0.9 - 1e-7 || v > 1.1 + 1e-7)) throw new Error("range");
 * if (jitterNoise(1, 0, 0, 4, 0.1).join() !== a.join()) throw new Error("seeded");
 * ```
 */
export function jitterNoise(
  seed: number,
  step: number,
  router: number,
  count: number,
  eps: number,
): Float32Array {
  const rng = new Rng(hash32(seed, JITTER_STREAM, step, router));
  return Float32Array.from({ length: count }, () => 1 - eps + 2 * eps * rng.next());
}

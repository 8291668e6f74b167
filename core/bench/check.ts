/**
 * The correctness gate of the benchmark: before a kernel is timed, its output is compared once with the
 * float64 reference of core/ref, so the bench never reports a number for a wrong kernel.
 *
 * @module
 */

/** Tolerance of a comparison: |got − ref| ≤ atol + rtol·|ref|. */
export interface Tolerance {
  atol: number;
  rtol: number;
}

/** A benchmarked implementation disagreed with the float64 reference. */
export class BenchCheckError extends Error {
  override name = "BenchCheckError";
}

/**
 * Compares `got` with `ref` element-wise and returns the largest absolute error; throws
 * {@linkcode BenchCheckError} naming the worst element when any element is outside the tolerance
 * (NaN or ±Infinity where the reference is finite always fails).
 *
 * @example
 * ```ts
 * import { BenchCheckError, checkClose } from "./check.ts";
 * checkClose([1, 2.0000001], [1, 2], { atol: 1e-6, rtol: 0 }, "ok");
 * try {
 *   checkClose([1, 3], [1, 2], { atol: 1e-6, rtol: 0 }, "bad");
 *   throw new Error("not caught");
 * } catch (e) {
 *   if (!(e instanceof BenchCheckError)) throw e;
 * }
 * ```
 */
export function checkClose(
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  tol: Tolerance,
  what: string,
): number {
  if (got.length !== ref.length) {
    throw new BenchCheckError(`${what}: ${got.length} values, reference has ${ref.length}`);
  }
  let bad = 0, worst = -1, worstExcess = 0, maxErr = 0;
  for (let i = 0; i < ref.length; i++) {
    const g = got[i]!, r = ref[i]!, err = Math.abs(g - r);
    if (err > maxErr) maxErr = err;
    if (!(err <= tol.atol + tol.rtol * Math.abs(r)) && g !== r) {
      bad++;
      const excess = Number.isFinite(err) ? err / (tol.atol + tol.rtol * Math.abs(r)) : Infinity;
      if (excess >= worstExcess) worstExcess = excess, worst = i;
    }
  }
  if (bad > 0) {
    throw new BenchCheckError(
      `${what}: ${bad}/${ref.length} values differ from the float64 reference beyond atol=${tol.atol} ` +
        `rtol=${tol.rtol}; worst at [${worst}]: got ${got[worst]}, ref ${ref[worst]}`,
    );
  }
  return maxErr;
}

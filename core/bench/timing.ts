/**
 * The one timing method of every benchmark row, the same for our kernels and for tfjs: warm-up runs, then
 * timed repetitions, each one encode + submit + `await onSubmittedWorkDone()`, reported as the median.
 * A repetition therefore includes one host↔GPU sync (~11 ms on llvmpipe, shared/LLVMPIPE_NOTES.md), as in
 * the peer benchmarks; the median keeps one slow outlier on a shared machine from moving the row.
 *
 * @module
 */

/** How many runs to make. */
export interface TimingOptions {
  /** Untimed runs first (pipeline compiles, first uploads, allocator warm-up). */
  warmup: number;
  /** Timed runs; the reported time is their median. */
  reps: number;
}

/**
 * Median of `xs` (mean of the middle two for an even count).
 *
 * @example
 * ```ts
 * import { median } from "./timing.ts";
 * if (median([3, 1, 2]) !== 2 || median([4, 1, 2, 3]) !== 2.5) throw new Error("median");
 * ```
 */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new RangeError("Cannot take the median of no samples");
  const s = [...xs].sort((a, b) => a - b), h = s.length >> 1;
  return s.length % 2 === 1 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
}

/**
 * Runs `run` (which must submit its work and resolve only when the GPU has finished it) `warmup` times
 * untimed, then `reps` times timed; returns the median and every sample in milliseconds.
 *
 * @example
 * ```ts
 * import { timeMedian } from "./timing.ts";
 * const { ms, samples } = await timeMedian(() => Promise.resolve(), { warmup: 1, reps: 3 });
 * if (samples.length !== 3 || !(ms >= 0)) throw new Error("timing");
 * ```
 */
export async function timeMedian(
  run: () => Promise<void>,
  o: TimingOptions,
): Promise<{ ms: number; samples: number[] }> {
  if (!Number.isInteger(o.reps) || o.reps < 1) {
    throw new RangeError(`Cannot time: reps (${o.reps}) must be ≥ 1`);
  }
  for (let i = 0; i < o.warmup; i++) await run();
  const samples: number[] = [];
  for (let i = 0; i < o.reps; i++) {
    const t0 = performance.now();
    await run();
    samples.push(performance.now() - t0);
  }
  return { ms: median(samples), samples };
}

/**
 * The one timing method of every benchmark row, the same for our kernels and for every peer: warm-up runs,
 * then timed repetitions, reported as the median. A repetition queues `perSync` runs back to back (each
 * encoded and submitted) and waits for the GPU once; its time divided by `perSync` is one sample. One
 * host↔GPU wait costs ~11 ms in Deno on llvmpipe and on an H200 alike, so without the queueing every small
 * kernel would time as that wait; {@linkcode choosePerSync} sizes the queue from a first single run. The
 * median keeps one slow outlier on a shared machine from moving the row.
 *
 * @module
 */

/** How many runs to make. */
export interface TimingOptions {
  /** Untimed runs first (pipeline compiles, first uploads, allocator warm-up). */
  warmup: number;
  /** Timed runs; the reported time is their median. */
  reps: number;
  /**
   * Runs queued per host↔GPU wait (every implementation of a case uses the same count). Default: chosen
   * per case by {@linkcode choosePerSync} from the first implementation's single-run time.
   */
  perSync?: number;
}

/** Queue runs until one timed repetition lasts about this long. */
export const PER_SYNC_TARGET_MS = 100;
/** The most runs queued per wait. */
export const PER_SYNC_MAX = 64;

/**
 * Runs per wait so that a repetition lasts about {@linkcode PER_SYNC_TARGET_MS}: 1 for runs that already take
 * that long, at most {@linkcode PER_SYNC_MAX}.
 *
 * @example
 * ```ts
 * import { choosePerSync } from "./timing.ts";
 * if (choosePerSync(12) !== 8 || choosePerSync(300) !== 1 || choosePerSync(0.01) !== 64) throw new Error("perSync");
 * ```
 */
export function choosePerSync(singleRunMs: number): number {
  if (!(singleRunMs > 0)) return PER_SYNC_MAX;
  return Math.max(1, Math.min(PER_SYNC_MAX, Math.round(PER_SYNC_TARGET_MS / singleRunMs)));
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
 * Runs `run(perSync)` (which must queue that many runs and resolve only when the GPU has finished them)
 * `warmup` times untimed, then `reps` times timed; returns the median time of one run and every sample,
 * in milliseconds.
 *
 * @example
 * ```ts
 * import { timeMedian } from "./timing.ts";
 * const { ms, samples } = await timeMedian(() => Promise.resolve(), { warmup: 1, reps: 3, perSync: 4 });
 * if (samples.length !== 3 || !(ms >= 0)) throw new Error("timing");
 * ```
 */
export async function timeMedian(
  run: (times: number) => Promise<void>,
  o: TimingOptions,
): Promise<{ ms: number; samples: number[] }> {
  const per = o.perSync ?? 1;
  if (!Number.isInteger(o.reps) || o.reps < 1) {
    throw new RangeError(`Cannot time: reps (${o.reps}) must be ≥ 1`);
  }
  if (!Number.isInteger(per) || per < 1) throw new RangeError(`Cannot time: perSync (${per}) must be ≥ 1`);
  for (let i = 0; i < o.warmup; i++) await run(per);
  const samples: number[] = [];
  for (let i = 0; i < o.reps; i++) {
    const t0 = performance.now();
    await run(per);
    samples.push((performance.now() - t0) / per);
  }
  return { ms: median(samples), samples };
}

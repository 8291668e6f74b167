/**
 * The one timing method of every benchmark row, the same for our kernels and for every peer. A host↔GPU
 * wait costs ~11 ms in Deno, on llvmpipe and on an H200 alike, far more than most kernels take on a real
 * GPU, so a row is not "submit, wait, read the clock": each sample times a queue of p runs and one of 2p
 * runs (every run encoded and submitted, one wait at the end of each queue), and takes the difference
 * over p, the time the p extra runs added: the fixed cost of the wait cancels. p is sized per case from
 * the first implementation ({@linkcode sizeQueue}: doubled until the p extra runs take ≥ 25 ms, at most
 * {@linkcode PER_SYNC_MAX}) and used for every implementation of the case. The reported time is the
 * median sample, which keeps one slow outlier on a shared machine from moving the row.
 *
 * @module
 */

/** How many runs to make. */
export interface TimingOptions {
  /** Untimed runs first (pipeline compiles, first uploads, allocator warm-up). */
  warmup: number;
  /** Timed samples (each a queue of p and one of 2p runs); the reported time is their median. */
  reps: number;
  /**
   * p, the runs of the shorter queue per sample (every implementation of a case uses the same p); the case
   * runner sizes it with {@linkcode sizeQueue} when not given.
   */
  perSync?: number;
  /** The clock samples are timed with, in ms (default `performance.now`; tests give a virtual one). */
  now?: () => number;
}

/** {@linkcode sizeQueue} stops doubling once p extra runs take this long. */
export const PER_SYNC_TARGET_MS = 25;
/** The most runs queued per wait. */
export const PER_SYNC_MAX = 256;

async function _timed(
  run: (times: number) => Promise<void>,
  times: number,
  now: () => number = () => performance.now(),
): Promise<number> {
  const t0 = now();
  await run(times);
  return now() - t0;
}

/**
 * The queue length p for a case: 1, 2, 4, … until a queue of 2p runs takes {@linkcode PER_SYNC_TARGET_MS}
 * longer than one of p, at most {@linkcode PER_SYNC_MAX}.
 *
 * @example
 * ```ts
 * import { sizeQueue } from "./timing.ts";
 * // A fake run: 11 ms of waiting plus 0.5 ms per queued run.
 * let clock = 0;
 * const p = await sizeQueue((times) => { clock += 11 + 0.5 * times; return Promise.resolve(); }, () => clock);
 * if (p !== 64) throw new Error(`p ${p}`);
 * ```
 */
export async function sizeQueue(
  run: (times: number) => Promise<void>,
  now: () => number = () => performance.now(),
): Promise<number> {
  let p = 1;
  while (p < PER_SYNC_MAX) {
    const t1 = await _timed(run, p, now), t2 = await _timed(run, 2 * p, now);
    if (t2 - t1 >= PER_SYNC_TARGET_MS) break;
    p *= 2;
  }
  return p;
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

/** Throws a RangeError unless `reps` and `perSync` are positive integers. */
export function checkTiming(reps: number, perSync: number): void {
  if (!Number.isInteger(reps) || reps < 1) throw new RangeError(`Cannot time: reps (${reps}) must be ≥ 1`);
  if (!Number.isInteger(perSync) || perSync < 1) {
    throw new RangeError(`Cannot time: perSync (${perSync}) must be ≥ 1`);
  }
}

/**
 * One sample: the time of `run(2p)` minus that of `run(p)`, over p (`diff`), and `run(2p)`'s time over 2p
 * (`whole`, an upper bound that includes the wait), in milliseconds per run.
 *
 * @example
 * ```ts
 * import { timeSample } from "./timing.ts";
 * let clock = 0;
 * const s = await timeSample((times) => { clock += 11 + 0.5 * times; return Promise.resolve(); }, 4, () => clock);
 * if (s.diff !== 0.5 || s.whole !== 15 / 8) throw new Error(JSON.stringify(s));
 * ```
 */
export async function timeSample(
  run: (times: number) => Promise<void>,
  p: number,
  now: () => number = () => performance.now(),
): Promise<{ diff: number; whole: number }> {
  const t1 = await _timed(run, p, now), t2 = await _timed(run, 2 * p, now);
  return { diff: (t2 - t1) / p, whole: t2 / (2 * p) };
}

/** Samples of one implementation and the time they report. */
export class Samples {
  readonly diffs: number[] = [];
  readonly wholes: number[] = [];
  add(s: { diff: number; whole: number }): void {
    this.diffs.push(s.diff);
    this.wholes.push(s.whole);
  }
  /**
   * The median sample; should it come out at or below zero (noise far above the work, p too small), the
   * median of the whole queues' times instead.
   */
  ms(): number {
    const ms = median(this.diffs);
    return ms > 0 ? ms : median(this.wholes);
  }
}

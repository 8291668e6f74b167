/**
 * Server-side downsampling of a metric series for charts: min/max per bucket. A chart of 2,000 points looks
 * like the chart of all of them only if the spikes survive (a loss spike is what a researcher looks for), so
 * each bucket keeps its lowest and its highest point, in order, and the first and last points are always kept.
 *
 * @module
 */

/** Most points a series is sent with (the dashboard's `max` is clamped to this). */
export const MAX_POINTS = 2000;

/**
 * Picks at most `max` of `items` (in order): the first, the last, and the minimum and maximum of `value`
 * within each of ⌊(max − 2) / 2⌋ equal-count buckets between them. Returns `items` itself when it is short
 * enough.
 *
 * @example
 * ```ts
 * import { downsample } from "./downsample.ts";
 * const ys = Array.from({ length: 10_000 }, (_, i) => Math.sin(i / 100));
 * const kept = downsample(ys, (y) => y, 200);
 * console.log(kept.length <= 200, Math.max(...kept) === Math.max(...ys)); // true true
 * ```
 */
export function downsample<T>(
  items: readonly T[],
  value: (item: T) => number,
  max: number = MAX_POINTS,
): readonly T[] {
  if (!Number.isInteger(max) || max < 2) {
    throw new RangeError(`Cannot downsample: max must be an integer of at least 2, got ${max}`);
  }
  const n = items.length;
  if (n <= max) return items;
  const buckets = Math.floor((max - 2) / 2);
  const out: T[] = [items[0]!];
  const inner = n - 2; // items 1 … n−2 are bucketed
  for (let b = 0; b < buckets; b++) {
    const lo = 1 + Math.floor((b * inner) / buckets);
    const hi = 1 + Math.floor(((b + 1) * inner) / buckets); // exclusive
    if (hi <= lo) continue;
    let iMin = lo, iMax = lo;
    for (let i = lo + 1; i < hi; i++) {
      const v = value(items[i]!);
      if (v < value(items[iMin]!)) iMin = i;
      if (v > value(items[iMax]!)) iMax = i;
    }
    out.push(items[Math.min(iMin, iMax)]!);
    if (iMin !== iMax) out.push(items[Math.max(iMin, iMax)]!);
  }
  out.push(items[n - 1]!);
  return out;
}

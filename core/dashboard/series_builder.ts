/**
 * A chart series built point by point: the min/max downsampling of `downsample.ts` kept up to date as points
 * arrive, in memory bounded by the points it sends rather than the points stored. Points are folded into
 * buckets of `width` consecutive points, each keeping its lowest and highest; when the buckets run out,
 * neighbours merge and `width` doubles. So a poll of a live run costs its new points, not its history.
 *
 * @module
 */
import type { MetricRow } from "../runs/store.ts";
import { MAX_POINTS } from "./downsample.ts";
import type { XAxis } from "./x_axis.ts";

/** Buckets kept at most (an even number, so that they merge in pairs): 2 points each, plus first and last. */
const _BUCKETS = 2 * Math.floor((MAX_POINTS - 2) / 4);

interface _Bucket {
  lo: MetricRow; // lowest value, the earliest of equals
  hi: MetricRow; // highest value, the earliest of equals
  n: number; // points folded in
}

/**
 * The downsampled series of one key on one x axis. Feed it points in seq order with {@linkcode add}; of
 * points with the same x the newest is kept (a resumed run logs the steps after its checkpoint again).
 *
 * @example
 * ```ts
 * import { SeriesBuilder } from "./series_builder.ts";
 * const b = new SeriesBuilder("step");
 * for (let step = 1; step <= 100_000; step++) {
 *   b.add({ seq: step, key: "train/loss", step, tokens: 0, time: 0, value: step === 5000 ? 99 : 1 / step });
 * }
 * const kept = b.rows();
 * console.log(kept.length <= 2000, kept.some((r) => r.value === 99), kept.at(-1)!.step); // true true 100000
 * ```
 */
export class SeriesBuilder {
  /** Points added, those replaced at the same x included. */
  count = 0;
  /** Highest seq added (0 before any). */
  lastSeq = 0;
  readonly #x: XAxis;
  #first: MetricRow | null = null;
  #pending: MetricRow | null = null; // the newest point: a later one at the same x replaces it
  #full: _Bucket[] = [];
  #open: _Bucket | null = null;
  #width = 1;

  constructor(x: XAxis) {
    this.#x = x;
  }

  /** A builder fed `rows` (any order), as one that saw them in order of x, then seq. */
  static from(rows: readonly MetricRow[], x: XAxis): SeriesBuilder {
    const b = new SeriesBuilder(x);
    for (const r of [...rows].sort((a, b) => a[x] - b[x] || a.seq - b.seq)) b.add(r);
    return b;
  }

  /**
   * Adds a point with a seq above every one added. False when its x is below the newest point's: it belongs
   * before points already folded, and the series must be rebuilt from all its points ({@linkcode from}).
   */
  add(row: MetricRow): boolean {
    const x = this.#x, p = this.#pending;
    if (p && row[x] < p[x]) return false;
    this.count++;
    this.lastSeq = Math.max(this.lastSeq, row.seq);
    if (p && row[x] === p[x]) {
      this.#pending = row;
      return true;
    }
    if (p) this.#fold(p);
    this.#pending = row;
    return true;
  }

  /** The kept points in x order: the first, each bucket's lowest and highest, and the newest. */
  rows(): MetricRow[] {
    const out: MetricRow[] = this.#first ? [this.#first] : [];
    for (const b of this.#open ? [...this.#full, this.#open] : this.#full) {
      if (b.lo === b.hi) out.push(b.lo);
      else if (b.lo[this.#x] < b.hi[this.#x]) out.push(b.lo, b.hi);
      else out.push(b.hi, b.lo);
    }
    if (this.#pending) out.push(this.#pending);
    return out;
  }

  #fold(r: MetricRow): void {
    if (!this.#first) {
      this.#first = r;
      return;
    }
    const b = this.#open;
    if (!b) {
      this.#open = { lo: r, hi: r, n: 1 };
    } else {
      if (r.value < b.lo.value) b.lo = r;
      if (r.value > b.hi.value) b.hi = r;
      b.n++;
    }
    if (this.#open!.n < this.#width) return;
    this.#full.push(this.#open!);
    this.#open = null;
    if (this.#full.length < _BUCKETS) return;
    const merged: _Bucket[] = [];
    for (let i = 0; i < this.#full.length; i += 2) merged.push(_merge(this.#full[i]!, this.#full[i + 1]!));
    this.#full = merged;
    this.#width *= 2;
  }
}

/** Two neighbouring buckets as one; of equal values the earlier point is kept, as `downsample()` does. */
function _merge(a: _Bucket, b: _Bucket): _Bucket {
  return {
    lo: b.lo.value < a.lo.value ? b.lo : a.lo,
    hi: b.hi.value > a.hi.value ? b.hi : a.hi,
    n: a.n + b.n,
  };
}

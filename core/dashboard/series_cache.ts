/**
 * The dashboard's chart series, kept between requests: one {@linkcode SeriesBuilder} per (run, x axis, key),
 * built once from the key's stored points, then brought up to date at each request with the points
 * committed since. A run page polled while its run logs tens of thousands of points a second costs those
 * new points, not the millions before them. The least recently used builders are dropped past `capacity`.
 *
 * @module
 */
import type { RunStore } from "../runs/store.ts";
import { type Series, seriesOf } from "./series.ts";
import type { XAxis } from "./x_axis.ts";
import { SeriesBuilder } from "./series_builder.ts";

interface _Entry {
  builder: SeriesBuilder;
  seq: number; // every point of its key with seq ≤ this is folded in
}

/**
 * Series of stored runs, each the same as `buildSeries()` over all its points.
 *
 * @example
 * ```ts
 * import { openSqliteStore } from "../runs/sqlite_store.ts";
 * import { SeriesCache } from "./series_cache.ts";
 * const store = openSqliteStore(":memory:");
 * const cache = new SeriesCache(store);
 * console.log(await cache.series("no-run", ["train/loss"], "step", 100)); // {}
 * store.close();
 * ```
 */
export class SeriesCache {
  readonly #store: RunStore;
  readonly #capacity: number;
  readonly #entries = new Map<string, _Entry>(); // in order of last use

  constructor(store: RunStore, capacity = 256) {
    this.#store = store;
    this.#capacity = capacity;
  }

  /** The series of `keys` of run `runId` on axis `x`, at most `max` points each; keys without points left out. */
  async series(
    runId: string,
    keys: readonly string[],
    x: XAxis,
    max: number,
  ): Promise<Record<string, Series>> {
    const id = (key: string) => `${x}\n${runId}\n${key}`;
    const wanted = [...new Set(keys)];
    const known = wanted.filter((k) => this.#entries.has(id(k)));
    const stale = new Set(wanted.filter((k) => !this.#entries.has(id(k))));
    if (known.length > 0) {
      const from = Math.min(...known.map((k) => this.#entries.get(id(k))!.seq));
      // Every point with seq ≤ top is committed before the query reads (seq is commit order).
      const top = await this.#store.lastSeq();
      const rows = await this.#store.metrics(runId, { keys: known, afterSeq: from });
      for (const r of rows) {
        const e = this.#entries.get(id(r.key));
        if (!e || r.seq <= e.seq || stale.has(r.key)) continue;
        if (!e.builder.add(r)) stale.add(r.key); // a point before folded ones: rebuilt below
      }
      for (const k of known) {
        const e = this.#entries.get(id(k));
        if (e && !stale.has(k)) e.seq = Math.max(e.seq, top, e.builder.lastSeq);
      }
    }
    for (const k of stale) {
      const top = await this.#store.lastSeq();
      const builder = SeriesBuilder.from(await this.#store.metrics(runId, { keys: [k] }), x);
      this.#entries.set(id(k), { builder, seq: Math.max(top, builder.lastSeq) });
    }
    const out: Record<string, Series> = {};
    for (const k of wanted) {
      const e = this.#entries.get(id(k));
      if (!e) continue;
      this.#entries.delete(id(k)); // moved to the newest end
      this.#entries.set(id(k), e);
      if (e.builder.count > 0) out[k] = seriesOf(e.builder, max);
    }
    for (const k of this.#entries.keys()) {
      if (this.#entries.size <= this.#capacity) break;
      this.#entries.delete(k);
    }
    return out;
  }
}

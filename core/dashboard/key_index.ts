/**
 * The metric keys of runs, kept between requests, and the bounded selections the read routes make from
 * them. A run may hold tens of thousands of keys (remote logging accepts any): listing them reads the
 * (run, key) index once, then each request adds only the keys of points committed since, so no request
 * pays for the whole list again, and no route reads the points of more keys than it shows.
 *
 * @module
 */
import type { MetricRow, RunStore } from "../runs/store.ts";

/** Most series a metrics request returns when it names no keys (`prefix=` or nothing). */
export const MAX_SERIES = 64;
/** Most keys GET /api/runs/:id lists. */
export const MAX_LISTED_KEYS = 1000;
/** Most router keys (load and entropy, of one router kind) a heatmap reads. */
export const MAX_HEATMAP_KEYS = 4096;
/** Experts per layer a heatmap shows at most (a key naming a higher expert is left out). */
export const MAX_HEATMAP_EXPERTS = 1024;
/** Most inference rules a frontier reads. */
export const MAX_FRONTIER_RULES = 256;
/** The keys a metrics request without keys or prefix returns first: what the run page charts. */
export const DEFAULT_PREFIXES: readonly string[] = ["train/", "val/", "system/"];

/** Keys of points committed since the list was made, read at most: more means listing afresh. */
const _DELTA_LIMIT = 20_000;
/** Runs whose keys are kept. */
const _CAPACITY = 32;

interface _Entry {
  keys: Set<string>;
  sorted: string[] | null; // null when keys changed since it was sorted
  seq: number; // every point with seq ≤ this is in `keys`
}

/** A bounded choice of keys: which, of how many that matched, and whether some were left out. */
export interface KeyChoice {
  keys: string[];
  total: number;
  truncated: boolean;
}

/**
 * The sorted keys of runs, brought up to date at each call with the points committed since the last.
 *
 * @example
 * ```ts
 * import { openSqliteStore } from "../runs/sqlite_store.ts";
 * import { KeyIndex } from "./key_index.ts";
 * const store = openSqliteStore(":memory:");
 * console.log(await new KeyIndex(store).keys("no-run")); // []
 * store.close();
 * ```
 */
export class KeyIndex {
  readonly #store: RunStore;
  readonly #entries = new Map<string, _Entry>(); // in order of last use

  constructor(store: RunStore) {
    this.#store = store;
  }

  /** The keys of run `runId`, sorted. */
  async keys(runId: string): Promise<readonly string[]> {
    // Every point with seq ≤ top is committed before the queries below read (seq is commit order).
    const top = await this.#store.lastSeq();
    let e = this.#entries.get(runId);
    if (e && top > e.seq) {
      const rows = await this.#store.metrics(runId, { afterSeq: e.seq, limit: _DELTA_LIMIT });
      if (rows.length >= _DELTA_LIMIT) e = undefined;
      else {
        for (const r of rows) if (!e.keys.has(r.key)) (e.keys.add(r.key), e.sorted = null);
        e.seq = Math.max(top, rows.at(-1)?.seq ?? 0);
      }
    }
    if (!e) {
      const keys = await this.#store.metricKeys(runId);
      e = { keys: new Set(keys), sorted: [...keys].sort(), seq: top };
    }
    this.#entries.delete(runId); // moved to the newest end
    this.#entries.set(runId, e);
    for (const k of this.#entries.keys()) {
      if (this.#entries.size <= _CAPACITY) break;
      this.#entries.delete(k);
    }
    return e.sorted ??= [...e.keys].sort();
  }
}

/**
 * The keys of sorted `keys` that start with `prefix`, found by binary search: at most `max` of them, and
 * how many there are.
 *
 * @example
 * ```ts
 * import { withPrefix } from "./key_index.ts";
 * console.log(withPrefix(["a/1", "b/1", "b/2", "c"], "b/", 10)); // { keys: ["b/1", "b/2"], total: 2 }
 * ```
 */
export function withPrefix(
  keys: readonly string[],
  prefix: string,
  max: number,
): { keys: string[]; total: number } {
  const from = _lowerBound(keys, prefix);
  const to = _lowerBound(keys, prefix + "\uffff", from);
  return { keys: keys.slice(from, Math.min(to, from + max)), total: to - from };
}

/** The first index of sorted `keys` whose key is ≥ `v`, at or after `from`. */
function _lowerBound(keys: readonly string[], v: string, from = 0): number {
  let lo = from, hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keys[mid]! < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * The series a metrics request without `keys=` gets: with `prefix`, the keys under it; without, the
 * {@linkcode DEFAULT_PREFIXES} keys first, then the others; at most {@linkcode MAX_SERIES}.
 *
 * @example
 * ```ts
 * import { chooseSeries } from "./key_index.ts";
 * console.log(chooseSeries(["router/0/mlp/entropy", "train/loss", "val/loss"]).keys);
 * // ["train/loss", "val/loss", "router/0/mlp/entropy"]
 * ```
 */
export function chooseSeries(keys: readonly string[], prefix?: string, max = MAX_SERIES): KeyChoice {
  if (prefix !== undefined) {
    const r = withPrefix(keys, prefix, max);
    return { ...r, truncated: r.total > r.keys.length };
  }
  const out: string[] = [];
  for (const p of DEFAULT_PREFIXES) out.push(...withPrefix(keys, p, max - out.length).keys);
  const chosen = new Set(out);
  for (const k of keys) {
    if (out.length >= max) break;
    if (!chosen.has(k)) out.push(k);
  }
  return { keys: out, total: keys.length, truncated: keys.length > out.length };
}

const _ROUTER = /^router\/(\d{1,6})\/(attention|mlp)\/(?:load\/(\d{1,9})|entropy)$/;

/** The `router/<layer>/<kind>/load/<expert>` and `…/entropy` keys of `kind`, bounded as the module doc says. */
export function heatmapKeys(keys: readonly string[], kind: "attention" | "mlp"): KeyChoice {
  const all = withPrefix(keys, "router/", keys.length).keys;
  const out: string[] = [];
  let total = 0;
  for (const k of all) {
    const m = _ROUTER.exec(k);
    if (!m || m[2] !== kind) continue;
    total++;
    if (out.length < MAX_HEATMAP_KEYS && (m[3] === undefined || Number(m[3]) < MAX_HEATMAP_EXPERTS)) {
      out.push(k);
    }
  }
  return { keys: out, total, truncated: total > out.length };
}

const _INFER = /^infer\/(.+)\/(ppl|loss|active_pct|hidden_pct|active_pct_all|active_params)$/;

/** The `infer/<rule>/<field>` keys of at most {@linkcode MAX_FRONTIER_RULES} rules (in key order). */
export function frontierKeys(keys: readonly string[]): KeyChoice {
  const all = withPrefix(keys, "infer/", keys.length).keys;
  const rules = new Set<string>();
  const out: string[] = [];
  let total = 0;
  for (const k of all) {
    const m = _INFER.exec(k);
    if (!m) continue;
    total++;
    if (!rules.has(m[1]!) && rules.size >= MAX_FRONTIER_RULES) continue;
    rules.add(m[1]!);
    out.push(k);
  }
  return { keys: out, total, truncated: total > out.length };
}

/** Points of `keys` of a run, read a few hundred keys per query. */
export async function metricsOf(
  store: RunStore,
  runId: string,
  keys: readonly string[],
): Promise<MetricRow[]> {
  let out: MetricRow[] = [];
  for (let i = 0; i < keys.length; i += 500) {
    out = out.concat(await store.metrics(runId, { keys: keys.slice(i, i + 500) }));
  }
  return out;
}

import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { runMeta } from "../../tests/helpers/run_meta.ts";
import { openSqliteStore } from "../runs/sqlite_store.ts";
import type { MetricPoint, RunStore } from "../runs/store.ts";
import { buildSeries } from "./series.ts";
import { X_AXES } from "./x_axis.ts";
import { SeriesCache } from "./series_cache.ts";

const KEYS = ["train/loss", "train/lr", "val/loss"];

/** Points of steps `from … to` of every key; `time` restarts with each call, as a resumed process's does. */
function _points(from: number, to: number): MetricPoint[] {
  const out: MetricPoint[] = [];
  for (let step = from; step <= to; step++) {
    KEYS.forEach((key, k) =>
      out.push({ key, step, tokens: step * 64, time: (step - from) / 8, value: k + Math.sin(step / 50) })
    );
  }
  return out;
}

/** The cache's series of every key and axis, checked against buildSeries over every stored point. */
async function _agree(store: RunStore, cache: SeriesCache, runId: string, max: number): Promise<void> {
  const rows = await store.metrics(runId);
  for (const x of X_AXES) {
    const want = buildSeries(rows, x, max);
    assertEquals(await cache.series(runId, [...KEYS, "nope"], x, max), want, `x = ${x}, max = ${max}`);
  }
}

Deno.test("SeriesCache gives the series of every stored point as a run grows and resumes", async () => {
  const store = openSqliteStore(":memory:");
  try {
    await store.createRun(runMeta("a"), "");
    await store.createRun(runMeta("b"), "");
    const cache = new SeriesCache(store);
    await _agree(store, cache, "a", 2000);
    await store.logMetrics("a", _points(1, 1500));
    await _agree(store, cache, "a", 2000);
    for (let s = 1501; s <= 9000; s += 1500) {
      await store.logMetrics("a", _points(s, s + 1499));
      await store.logMetrics("b", _points(s, s + 9)); // another run's points in between
      await _agree(store, cache, "a", 2000);
      await _agree(store, cache, "a", 100);
    }
    // Resumed from a checkpoint at step 7000: steps logged again replace the old ones.
    await store.logMetrics("a", _points(7001, 9500));
    await _agree(store, cache, "a", 2000);
    await _agree(store, cache, "b", 2000);
  } finally {
    store.close();
  }
});

Deno.test("SeriesCache past its capacity drops the least recently used series and rebuilds them", async () => {
  const store = openSqliteStore(":memory:");
  try {
    await store.createRun(runMeta("a"), "");
    const cache = new SeriesCache(store, 2);
    for (let s = 1; s <= 3000; s += 1000) {
      await store.logMetrics("a", _points(s, s + 999));
      for (const k of KEYS) {
        const want = buildSeries(await store.metrics("a", { keys: [k] }), "step", 500);
        assertEquals(await cache.series("a", [k], "step", 500), want);
      }
    }
  } finally {
    store.close();
  }
});

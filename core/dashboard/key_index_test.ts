import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import type { MetricPoint } from "../runs/run_types.ts";
import { openSqliteStore } from "../runs/sqlite_store.ts";
import { createApp } from "./app.ts";
import {
  chooseSeries,
  frontierKeys,
  heatmapKeys,
  KeyIndex,
  MAX_FRONTIER_RULES,
  MAX_HEATMAP_KEYS,
  MAX_LISTED_KEYS,
  MAX_SERIES,
  withPrefix,
} from "./key_index.ts";

Deno.test("withPrefix() and chooseSeries() pick bounded ranges of sorted keys", () => {
  const keys = ["a", "infer/x/ppl", "router/0/mlp/entropy", "train/loss", "train/lr", "val/loss", "zz"];
  assertEquals(withPrefix(keys, "train/", 10), { keys: ["train/loss", "train/lr"], total: 2 });
  assertEquals(withPrefix(keys, "train/", 1), { keys: ["train/loss"], total: 2 });
  assertEquals(withPrefix(keys, "nope/", 10), { keys: [], total: 0 });
  assertEquals(chooseSeries(keys, undefined, 4), {
    keys: ["train/loss", "train/lr", "val/loss", "a"],
    total: 7,
    truncated: true,
  });
  assertEquals(chooseSeries(keys, "val/"), { keys: ["val/loss"], total: 1, truncated: false });
  const router = ["router/0/mlp/load/0", "router/0/mlp/load/5000", "router/1/attention/load/0"];
  assertEquals(heatmapKeys(router, "mlp"), { keys: ["router/0/mlp/load/0"], total: 2, truncated: true });
});

/** A store in `dir` with a run of 60,000 metric keys (two points each) and a run that keeps logging. */
async function _bigStore(dir: string) {
  const store = openSqliteStore(`${dir}/runs.db`);
  for (const id of ["big", "live"]) {
    await store.importRun({
      id,
      name: id,
      status: id === "live" ? "running" : "finished",
      seed: 1,
      git_commit: null,
      adapter: "test",
      started_at: "2026-12-01T00:00:00Z",
      ended_at: null,
      sweep_id: null,
      sweep_params: {},
      error: null,
      step: 2,
    }, "model: { kind: dsmoe }\n");
  }
  const t0 = performance.now();
  for (const step of [1, 2]) {
    const pts: MetricPoint[] = [];
    const p = (key: string, value: number) => pts.push({ key, step, tokens: step * 64, time: step, value });
    p("train/loss", 3 - step), p("val/loss", 3.5 - step);
    for (let i = 0; i < 20_000; i++) p(`custom/metric-${String(i).padStart(5, "0")}`, i);
    for (let i = 0; i < 19_998; i++) p(`router/${Math.floor(i / 100)}/mlp/load/${i % 100}`, 0.01);
    for (let i = 0; i < 20_000; i++) {
      p(`infer/rule-${Math.floor(i / 4)}/${["ppl", "loss", "active_pct", "hidden_pct"][i % 4]}`, i % 97);
    }
    await store.logMetrics("big", pts);
  }
  console.log(`stored 60,000 keys × 2 steps in ${(performance.now() - t0).toFixed(0)} ms`);
  return store;
}

Deno.test("a run with 60,000 metric keys gets bounded answers from every read route", async () => {
  const dir = await Deno.makeTempDir();
  const store = await _bigStore(dir);
  try {
    const keys = await store.metricKeys("big");
    assertEquals(keys.length, 60_000);
    const app = createApp({ store });
    const timed = async (path: string) => {
      const t0 = performance.now();
      const res = await app.request(`http://localhost${path}`);
      const body = await res.json();
      const ms = performance.now() - t0;
      console.log(`GET ${path}: ${res.status}, ${JSON.stringify(body).length} bytes, ${ms.toFixed(1)} ms`);
      assertEquals(res.status, 200, JSON.stringify(body).slice(0, 300));
      return body;
    };
    const all = await timed("/api/runs/big/metrics");
    assertEquals(Object.keys(all.series).length, MAX_SERIES);
    assertEquals([all.truncated, all.keys_total], [true, 60_000]);
    assertEquals(Object.keys(all.series).slice(0, 2), ["train/loss", "val/loss"], "the charts' keys first");
    assertEquals(all.series["train/loss"].value, [2, 1]);
    const again = await timed("/api/runs/big/metrics");
    assertEquals(again.series, all.series);
    const custom = await timed("/api/runs/big/metrics?prefix=custom/");
    assertEquals([Object.keys(custom.series).length, custom.truncated, custom.keys_total], [
      MAX_SERIES,
      true,
      20_000,
    ]);
    assertEquals(Object.keys(custom.series)[0], "custom/metric-00000");
    const named = await timed("/api/runs/big/metrics?keys=custom/metric-19999,val/loss");
    assertEquals([Object.keys(named.series).sort(), named.truncated], [
      ["custom/metric-19999", "val/loss"],
      false,
    ]);
    const run = await timed("/api/runs/big");
    assertEquals([run.keys.length, run.keys_total, run.keys_truncated], [MAX_LISTED_KEYS, 60_000, true]);
    const heat = await timed("/api/runs/big/heatmap?kind=mlp");
    assert(heat.truncated);
    const cells = heat.layers.reduce((n: number, l: { experts: number }) => n + l.experts, 0);
    assert(cells <= MAX_HEATMAP_KEYS && cells >= MAX_HEATMAP_KEYS - 100, `${cells} heatmap rows`);
    assertEquals(heat.steps, [1, 2]);
    const frontier = await timed("/api/runs/big/frontier");
    assertEquals([frontier.points.length, frontier.truncated], [MAX_FRONTIER_RULES, true]);
    assertEquals((await timed("/api/runs")).runs.length, 2);
    // A key logged after the list was made shows up at the next request, without listing all keys again.
    await store.logMetrics("big", [{ key: "train/new", step: 3, tokens: 1, time: 3, value: 7 }]);
    const grown = await timed("/api/runs/big");
    assertEquals(grown.keys_total, 60_001);
    assertEquals(grown.keys, keys.slice(0, MAX_LISTED_KEYS), "the first keys in order");
    const fresh = await timed("/api/runs/big/metrics");
    assertEquals(fresh.series["train/new"].value, [7]);
  } finally {
    store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("KeyIndex follows a growing run and the bounded key choices agree with a full listing", async () => {
  const store = openSqliteStore(":memory:");
  try {
    await store.importRun({
      id: "r",
      name: "r",
      status: "running",
      seed: 1,
      git_commit: null,
      adapter: "test",
      started_at: "2026-12-01T00:00:00Z",
      ended_at: null,
      sweep_id: null,
      sweep_params: {},
      error: null,
      step: 0,
    }, "");
    const index = new KeyIndex(store);
    assertEquals(await index.keys("r"), []);
    for (let step = 1; step <= 30; step++) {
      const pts: MetricPoint[] = [{ key: "train/loss", step, tokens: 0, time: 0, value: 1 }];
      if (step % 10 === 0) pts.push({ key: `infer/r${step}/ppl`, step, tokens: 0, time: 0, value: step });
      await store.logMetrics("r", pts);
      assertEquals(await index.keys("r"), await store.metricKeys("r"));
    }
    assertEquals(frontierKeys(await index.keys("r")).keys, [
      "infer/r10/ppl",
      "infer/r20/ppl",
      "infer/r30/ppl",
    ]);
  } finally {
    store.close();
  }
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { serveDashboard } from "../core/dashboard/server.ts";
import { closeRunStores, openRunStore } from "../core/runs/open_store.ts";
import { Browser } from "./helpers/chromium.ts";
import { cli } from "./helpers/cli.ts";

/** Pixels of each canvas under `selector` that differ from its most common colour (the background). */
const INK = `(sel) => [...document.querySelectorAll(sel)].map((c) => {
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data, counts = new Map();
  for (let i = 0; i < d.length; i += 4) {
    const k = (d[i] << 24) ^ (d[i + 1] << 16) ^ (d[i + 2] << 8) ^ d[i + 3];
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  return d.length / 4 - Math.max(...counts.values());
})`;

Deno.test("the run page of a trained run draws its charts, expert-load heatmaps and frontier, and a live point arrives over SSE", async () => {
  const dir = await Deno.makeTempDir();
  const stop = new AbortController();
  let browser: Browser | null = null;
  try {
    const sets = ["--set", "train.steps=30", "--set", "train.eval_every=10", "--set", "train.log_every=5"];
    const r = await cli(
      "run",
      "tests/fixtures/micro.yaml",
      ...sets,
      "--runs-dir",
      dir,
      "--no-dashboard",
      "--json",
    );
    assertEquals(r.code, 0, r.err.join("\n"));
    const id = r.json().run_id;
    const ev = await cli(
      "eval",
      id,
      "--rule",
      "topk:1",
      "--rule",
      "threshold:0.5",
      "--batches",
      "2",
      "--runs-dir",
      dir,
    );
    assertEquals(ev.code, 0, ev.err.join("\n"));

    const store = await openRunStore(dir);
    // Training goes on (as if resumed): the page subscribes to the run's stream.
    await store.updateRun(id, { status: "running" });
    const server = serveDashboard({ store, port: 0, signal: stop.signal, pollMs: 200 });
    browser = await Browser.launch(1400, 2400);
    await browser.goto(`${server.url}runs/${id}`);
    await browser.waitFor("document.querySelectorAll('#charts .uplot canvas').length >= 4");
    await browser.waitFor("document.querySelectorAll('#heatmaps figure canvas').length === 4");
    await browser.waitFor("document.querySelectorAll('#frontier .uplot canvas').length === 1");
    // Let the charts paint, then check that each holds lines, not just a blank background.
    await browser.waitFor(`(${INK})('#charts .uplot canvas').every((n) => n > 200)`);
    const charts = await browser.eval<number[]>(`(${INK})('#charts .uplot canvas')`);
    const heat = await browser.eval<number[]>(`(${INK})('#heatmaps figure canvas')`);
    const frontier = await browser.eval<number[]>(`(${INK})('#frontier .uplot canvas')`);
    assert(charts.every((n) => n > 200), `chart ink ${charts}`);
    assert(heat.every((n) => n > 100), `heatmap ink ${heat}`); // experts × steps cells in several colours
    assert(frontier[0]! > 100, `frontier ink ${frontier}`);
    const rules = await browser.eval<string>("document.getElementById('frontier-table').textContent");
    assert(rules.includes("topk@1") && rules.includes("threshold@0.5"), rules);

    // A point committed now reaches the open page over SSE.
    await store.logMetrics(id, [{ key: "train/loss", step: 31, tokens: 31 * 256, time: 99, value: 1.5 }]);
    const seq = await store.lastSeq();
    await browser.waitFor(`Number(document.body.dataset.liveSeq) >= ${seq}`, 10_000);
    await browser.waitFor("document.getElementById('run-step').textContent === '31'", 10_000);
    await store.updateRun(id, { status: "finished", step: 31 });
    await browser.waitFor("document.getElementById('run-status').textContent.includes('finished')", 10_000);
    assertEquals(browser.console.filter((l) => l.startsWith("exception")), []);
  } finally {
    await browser?.close();
    stop.abort();
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

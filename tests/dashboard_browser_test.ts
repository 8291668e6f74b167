import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { serveDashboard } from "../core/dashboard/server.ts";
import { runColor } from "../core/dashboard/static/format.js";
import { closeRunStores, openRunStore } from "../core/runs/open_store.ts";
import type { MetricPoint, RunMeta } from "../core/runs/run_types.ts";
import { openSqliteStore } from "../core/runs/sqlite_store.ts";
import { Browser } from "./helpers/chromium.ts";
import { cli, trainMicro } from "./helpers/cli.ts";

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
    const { id } = await trainMicro(dir, ...sets);
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
    await Deno.writeFile("/tmp/dsmoe-run-page-1400x2400.png", await browser.screenshot());
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

/** Where the runs-table test saves its screenshot (outside the repository). */
const RUNS_SCREENSHOT = "/tmp/dsmoe-runs-table-1400x900.png";

function _yaml(kind: string, train: string, infer: string, mi: number, tokenizer: string): string {
  return `name: x
seed: 1
data: { source: synthetic:multidomain, tokenizer: ${tokenizer}, seq_len: 64 }
model: { kind: ${kind}, d_model: 128, layers: 4, attention: { kind: moa, experts: 4 }, mlp: { experts: 8 } }
router: { train: ${train}, k: 2, infer: ${infer} }
loss: { mi: { attention: 0, mlp: ${mi} } }
train: { steps: 4000, optimizer: { lr: 0.003 } }
`;
}

Deno.test("the runs table fits its metric columns in a 1,400 px window, groups, hides columns and follows a running run", async () => {
  const store = openSqliteStore(":memory:");
  const stop = new AbortController();
  let browser: Browser | null = null;
  try {
    await store.createSweep({
      id: "sw-mi",
      name: "mi-sweep",
      config_yaml: "sweep: {}",
      created_at: "2026-12-06T09:00:00Z",
    });
    const runs: [string, string, string, string, number, string][] = [
      [
        "dsmoe-medium-mi-0.001-long-name",
        "dsmoe",
        "dense",
        "{ kind: threshold, epsilon: 0.5 }",
        0.001,
        "byte",
      ],
      ["dsmoe-medium-mi-0", "dsmoe", "dense", "{ kind: threshold, epsilon: 0.5 }", 0, "byte"],
      ["smoe-medium-top2", "smoe", "topk", "{ kind: topk, k: 2 }", 0.001, "bpe:gpt2"],
      ["dense-medium", "dense", "dense", "{ kind: dense }", 0, "bpe:gpt2"],
      ["dsmoe-medium-running", "dsmoe", "dense", "{ kind: topk, k: 1 }", 0.0006, "byte"],
    ];
    const ids: string[] = [];
    for (const [i, [name, kind, train, infer, mi, tok]] of runs.entries()) {
      const id = `20261206-10${String(i).padStart(2, "0")}00-${name}-ab${i}c`;
      ids.push(id);
      const meta: RunMeta = {
        id,
        name,
        status: i === 4 ? "running" : "finished",
        seed: 1,
        git_commit: null,
        adapter: "test",
        started_at: `2026-12-06T10:${String(i).padStart(2, "0")}:00.000Z`,
        ended_at: null,
        sweep_id: i < 2 ? "sw-mi" : null,
        sweep_params: i < 2 ? { "loss.mi.mlp": mi } : {},
        error: null,
        step: 0,
      };
      await store.importRun(meta, _yaml(kind, train, infer, mi, tok));
      const pts: MetricPoint[] = [];
      for (let s = 100; s <= 1000; s += 100) {
        const pt = (key: string, value: number) => ({ key, step: s, tokens: s * 512, time: s / 10, value });
        pts.push(pt("train/loss", 4 - s / 1000 - i / 10));
        pts.push(pt("val/loss", 4.2 - s / 1000 - i / 10), pt("val/ppl", Math.exp(4.2 - s / 1000 - i / 10)));
        pts.push(pt("val/bpb", (4.2 - s / 1000 - i / 10) / Math.LN2 / 1.1));
      }
      await store.logMetrics(id, pts);
    }
    const server = serveDashboard({ store, port: 0, signal: stop.signal, pollMs: 200 });
    browser = await Browser.launch(1400, 900);
    await browser.send("Emulation.setDeviceMetricsOverride", {
      width: 1400,
      height: 900,
      deviceScaleFactor: 1,
      mobile: false,
    });
    await browser.goto(server.url);
    await browser.waitFor("document.body.dataset.ready === '1'");
    assertEquals(await browser.eval<number>("window.innerWidth"), 1400);

    // The metric columns come first after the name and lie inside the window; the page never scrolls sideways.
    const layout = await browser.eval<
      { cols: string[]; rects: { col: string; left: number; right: number }[]; scroll: number; inner: number }
    >(`(() => {
      const cols = [...document.querySelectorAll("#runs thead th")].map((th) => th.dataset.col);
      const rects = ["name", "best_val_loss", "val_ppl", "val_bpb", "train_loss"].map((col) => {
        const r = document.querySelector('#runs thead th[data-col="' + col + '"]').getBoundingClientRect();
        return { col, left: r.left, right: r.right };
      });
      return { cols, rects, scroll: document.documentElement.scrollWidth, inner: window.innerWidth };
    })()`);
    assertEquals(layout.cols.slice(0, 6), [
      "select",
      "name",
      "best_val_loss",
      "val_ppl",
      "val_bpb",
      "train_loss",
    ]);
    for (const r of layout.rects) {
      assert(r.left >= 0 && r.right <= layout.inner, `${r.col}: ${JSON.stringify(r)}`);
    }
    assert(layout.scroll <= layout.inner, `the page scrolls sideways: ${layout.scroll} > ${layout.inner}`);
    await Deno.writeFile(RUNS_SCREENSHOT, await browser.screenshot());

    // Each run's swatch has its colour; times are local (no "UTC" suffix once localised).
    const swatch = await browser.eval<string>(
      `getComputedStyle(document.querySelector('tr[data-id="${ids[2]}"] .swatch')).backgroundColor`,
    );
    const hex = runColor(ids[2]!);
    const rgb = `rgb(${[1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)).join(", ")})`;
    assertEquals(swatch, rgb);
    const time = await browser.eval<string>(
      `document.querySelector('td[data-col="started"] time').textContent`,
    );
    assert(/^\d{4}-\d\d-\d\d \d\d:\d\d$/.test(time), time);
    const router = await browser.eval<string>(
      `document.querySelector('tr[data-id="${ids[2]}"] td[data-col="router"]').textContent`,
    );
    assertEquals(router, "topk 2 → topk 2");

    // Sorting by val loss: lowest first.
    await browser.eval(`document.querySelector('th[data-col="best_val_loss"]').click()`);
    const order = await browser.eval<string[]>(
      `[...document.querySelectorAll("#runs tbody tr[data-id]")].map((r) => r.dataset.id)`,
    );
    assertEquals(order, [...ids].reverse());

    // Group by data.tokenizer: a header row per value with its count and best val loss.
    await browser.eval(`(() => { const s = document.getElementById("group-by"); s.value = "data.tokenizer";
      s.dispatchEvent(new Event("change")); })()`);
    const groups = await browser.eval<string[]>(
      `[...document.querySelectorAll("tr.group-row")].map((r) => r.textContent)`,
    );
    assertEquals(groups.length, 2, groups.join(" | "));
    assert(
      groups.some((g) =>
        g.includes("data.tokenizer=byte") && g.includes("3 runs") && g.includes("best val loss")
      ),
      groups.join(" | "),
    );
    assert(
      groups.some((g) => g.includes("data.tokenizer=bpe:gpt2") && g.includes("2 runs")),
      groups.join(" | "),
    );

    // Hiding a column in the picker hides it, and the choice outlives a reload.
    await browser.eval(
      `(() => { const b = document.querySelector('#column-picker input[data-col="seed"]'); b.checked = false;
      b.dispatchEvent(new Event("change")); })()`,
    );
    assert(await browser.eval<boolean>(`document.querySelector('th[data-col="seed"]').hidden`));
    await browser.goto(server.url);
    await browser.waitFor("document.body.dataset.ready === '1'");
    assert(await browser.eval<boolean>(`document.querySelector('th[data-col="seed"]').hidden`), "remembered");
    assert(
      await browser.eval<boolean>(`!document.querySelector('#column-picker input[data-col="seed"]').checked`),
    );
    assertEquals(await browser.eval<string>(`document.getElementById("group-by").value`), "data.tokenizer");

    // The running run's step follows its newest training point.
    await store.logMetrics(ids[4]!, [{ key: "train/loss", step: 1234, tokens: 0, time: 200, value: 2.5 }]);
    await browser.waitFor(
      `document.querySelector('tr[data-id="${ids[4]}"] td[data-col="step"]').textContent === "1234"`,
      15_000,
    );

    // The sweep page draws its metric-vs-hyperparameter scatter in the runs' colours.
    await browser.goto(`${server.url}sweeps/sw-mi`);
    await browser.waitFor("document.querySelectorAll('#scatter .uplot canvas').length === 1");
    await browser.waitFor(`(${INK})('#scatter .uplot canvas')[0] > 50`);
    const sweepSwatch = await browser.eval<string>(
      `getComputedStyle(document.querySelector('#runs tr[data-id="${ids[0]}"] .swatch')).backgroundColor`,
    );
    const hex0 = runColor(ids[0]!);
    assertEquals(sweepSwatch, `rgb(${[1, 3, 5].map((i) => parseInt(hex0.slice(i, i + 2), 16)).join(", ")})`);
    await Deno.writeFile("/tmp/dsmoe-sweep-scatter-1400x900.png", await browser.screenshot());
    assertEquals(browser.console.filter((l) => l.startsWith("exception")), []);
  } finally {
    await browser?.close();
    stop.abort();
    store.close();
  }
});

/**
 * The sweep page: a chosen metric against a chosen swept key (scatter.js), its points' losses overlaid
 * (live while they train) and the sparsity frontier of every point, each run in its colour; the points table
 * sorts by any column.
 *
 * @module
 */
import { el, getJson, localizeTimes, pageData, paintSwatches, sortableTable } from "./common.js";
import { FrontierView } from "./frontier.js";
import { MetricsView } from "./metrics_view.js";
import { ScatterView } from "./scatter.js";

const SWEEP_CHARTS = [
  { title: "Validation loss", keys: ["val/loss"], yLabel: "loss (nats/token)" },
  { title: "Training loss", keys: ["train/loss"], yLabel: "loss (nats/token)", smooth: true },
  { title: "Validation perplexity", keys: ["val/ppl"], yLabel: "perplexity" },
  { title: "Validation bits per byte", keys: ["val/bpb"], yLabel: "bits per byte" },
];

const data = pageData();
const $ = (id) => document.getElementById(id);
const runs = data.ids.map((id, i) => ({ id, name: data.names[i], color: data.colors?.[i] }));
const colorOf = Object.fromEntries(runs.map((r) => [r.id, r.color]));

async function start() {
  localizeTimes();
  paintSwatches();
  sortableTable($("runs"));
  const scatter = $("scatter")
    ? new ScatterView(
      $("scatter"),
      { metric: $("scatter-metric"), param: $("scatter-param"), log: $("scatter-log") },
      colorOf,
    )
    : null;
  scatter?.set(data.points ?? []);
  const view = new MetricsView($("charts"), runs, SWEEP_CHARTS);
  const frontier = new FrontierView($("frontier"), $("frontier-table"), runs);
  view.bindControls($("x-axis"), $("smoothing"), $("smoothing-value"));
  const sweep = await getJson(`/api/sweeps/${encodeURIComponent(data.sweep_id)}`);
  scatter?.set(sweep.runs);
  frontier.set(Object.fromEntries(sweep.runs.map((r) => [r.id, r.frontier])));
  await view.load();
  view.onRows((_run, rows) => {
    if (rows.some((r) => r.key.startsWith("infer/"))) frontier.load();
  });
  view.live({ statuses: Object.fromEntries(sweep.runs.map((r) => [r.id, r.status])) });
}

start().catch((e) => {
  document.querySelector("main").prepend(
    el("p", { class: "error" }, `Could not load the sweep: ${e.message}`),
  );
});

/**
 * The sweep page: its points' losses overlaid (live while they train) and the sparsity frontier of every
 * point; the points table sorts by any column.
 *
 * @module
 */
import { el, getJson, pageData, sortableTable } from "./common.js";
import { FrontierView } from "./frontier.js";
import { MetricsView } from "./metrics_view.js";

const SWEEP_CHARTS = [
  { title: "Validation loss", keys: ["val/loss"] },
  { title: "Training loss", keys: ["train/loss"], smooth: true },
  { title: "Validation perplexity", keys: ["val/ppl"] },
  { title: "Validation bits per byte", keys: ["val/bpb"] },
];

const data = pageData();
const $ = (id) => document.getElementById(id);
const runs = data.ids.map((id, i) => ({ id, name: data.names[i] }));

async function start() {
  sortableTable($("runs"));
  const view = new MetricsView($("charts"), runs, SWEEP_CHARTS);
  const frontier = new FrontierView($("frontier"), $("frontier-table"), runs);
  view.bindControls($("x-axis"), $("smoothing"), $("smoothing-value"));
  const sweep = await getJson(`/api/sweeps/${encodeURIComponent(data.sweep_id)}`);
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

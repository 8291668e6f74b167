/**
 * The run page: training charts of the run (and of the runs overlaid on it), kept live over SSE; the
 * sparsity frontier; expert-load heatmaps; events and checkpoints.
 *
 * @module
 */
import {
  el,
  fmtBytes,
  fmtStep,
  getJson,
  localizeTimes,
  pageData,
  paintSwatches,
  statusBadge,
  table,
  throttle,
  timeEl,
} from "./common.js";
import { FrontierView } from "./frontier.js";
import { drawHeatmaps } from "./heatmap.js";
import { MetricsView } from "./metrics_view.js";

/** The training charts, in page order. */
export const TRAINING_CHARTS = [
  { title: "Loss", keys: ["train/loss", "val/loss"], yLabel: "loss (nats/token)", smooth: true },
  { title: "Validation perplexity", keys: ["val/ppl"], yLabel: "perplexity" },
  { title: "Validation bits per byte", keys: ["val/bpb"], yLabel: "bits per byte" },
  { title: "Learning rate", keys: ["train/lr"], yLabel: "learning rate" },
  { title: "Gradient norm", keys: ["train/grad_norm"], yLabel: "gradient norm", smooth: true },
  {
    title: "MI router loss",
    keys: ["train/mi_loss/attention", "train/mi_loss/mlp"],
    yLabel: "MI loss",
    smooth: true,
  },
  { title: "Throughput (tokens/s)", keys: ["train/tokens_per_s"], yLabel: "tokens/s", smooth: true },
];

const data = pageData();
const runs = data.ids.map((id, i) => ({ id, name: data.names[i], color: data.colors?.[i] }));
const main = data.run_id;
const $ = (id) => document.getElementById(id);

const view = new MetricsView($("charts"), runs, TRAINING_CHARTS);
const frontier = new FrontierView($("frontier"), $("frontier-table"), runs);
let events = [];

function showEvents() {
  const rows = events.slice(-200).reverse().map((e) => [
    timeEl(e.time),
    fmtStep(e.step),
    el("span", { class: `kind kind-${e.kind}` }, e.kind),
    e.message,
  ]);
  $("events").replaceChildren(
    rows.length ? table(["time", "step", "kind", "message"], rows) : el("p", {}, "None."),
  );
}

function showCheckpoints(list) {
  const rows = list.map((
    c,
  ) => [
    fmtStep(c.step),
    timeEl(c.time),
    fmtBytes(c.bytes),
    el("code", { title: c.sha256 }, c.sha256.slice(0, 12)),
    c.path,
  ]);
  $("checkpoints").replaceChildren(
    rows.length ? table(["step", "time", "size", "sha256", "path"], rows) : el("p", {}, "None."),
  );
}

async function showHeatmaps() {
  const box = $("heatmaps");
  const parts = await Promise.all(["attention", "mlp"].map(async (kind) => {
    const hm = await getJson(`/api/runs/${encodeURIComponent(main)}/heatmap?kind=${kind}`);
    const div = el("div", { class: "heat-kind" });
    box.append(div); // measured while drawing
    const drawn = drawHeatmaps(div, hm, kind === "mlp" ? "MLP routers" : "Attention routers");
    div.remove();
    return drawn ? div : null;
  }));
  const shown = parts.filter(Boolean);
  box.replaceChildren(
    ...(shown.length
      ? shown
      : [el("p", {}, "No router load metrics (a dense model, or no validation yet).")]),
  );
}

async function start() {
  localizeTimes();
  paintSwatches();
  view.bindControls($("x-axis"), $("smoothing"), $("smoothing-value"));
  const details = await Promise.all(runs.map((r) => getJson(`/api/runs/${encodeURIComponent(r.id)}`)));
  const mine = details[0];
  events = mine.events;
  showEvents();
  showCheckpoints(mine.checkpoints);
  await Promise.all([view.load(), frontier.load(), showHeatmaps()]);

  const heatmaps = throttle(() => showHeatmaps(), 2000);
  const frontiers = throttle(() => frontier.load(), 2000);
  view.onRows((run, rows) => {
    if (run.id === main && rows.some((r) => r.key.startsWith("router/"))) heatmaps();
    // The stored step moves at checkpoints; the newest training point shows where the run is now.
    const step = rows.reduce((m, r) => (r.key.startsWith("train/") ? Math.max(m, r.step) : m), -1);
    if (run.id === main && step > Number($("run-step").textContent)) $("run-step").textContent = String(step);
    if (rows.some((r) => r.key.startsWith("infer/"))) frontiers();
  });
  const statuses = Object.fromEntries(details.map((d) => [d.run.id, d.run.status]));
  const afterEvents = { [main]: events.at(-1)?.seq ?? 0 };
  view.live({
    statuses,
    afterEvents,
    onRun: (run, info) => {
      if (run.id !== main) return;
      $("run-status").replaceChildren(statusBadge(info.status));
      if (info.step > Number($("run-step").textContent) || info.status !== "running") {
        $("run-step").textContent = String(info.step);
      }
      if (info.status !== "running") {
        getJson(`/api/runs/${encodeURIComponent(main)}`).then((d) => showCheckpoints(d.checkpoints));
      }
    },
    onEvents: (run, list) => {
      if (run.id !== main) return;
      events.push(...list);
      showEvents();
      if (list.some((e) => e.kind === "checkpoint")) {
        getJson(`/api/runs/${encodeURIComponent(main)}`).then((d) => showCheckpoints(d.checkpoints));
      }
    },
  });
}

start().catch((e) => {
  document.querySelector("main").prepend(el("p", { class: "error" }, `Could not load the run: ${e.message}`));
});

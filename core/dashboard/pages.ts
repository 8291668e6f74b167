/**
 * The dashboard's HTML pages: the runs table, a run (or several overlaid), a sweep, and errors. Pages hold
 * no inline script (the CSP forbids it): what a page's script needs is a JSON block (`<script
 * type="application/json" id="data">`, never executed) and the script itself is a static file. Every page is
 * built with {@linkcode markup} (Hono's `html` template), so every value from a run, sweep, report or error
 * is escaped where it is interpolated; only markup built the same way is kept as it is. Every number,
 * timestamp, sweep parameter and run colour is written by core/util/quantities.js (served as
 * static/format.js), the module the page scripts and the terminal output use too, so a quantity reads the
 * same on every page and in every table.
 *
 * @module
 */
import type { ReportRecord, RunRecord, SweepRecord } from "../runs/store.ts";
import { type Html, joinHtml, jsonScript, markup } from "./html.ts";
import {
  fmtBpb,
  fmtCount,
  fmtLoss,
  fmtNum,
  fmtPpl,
  fmtRate,
  fmtStep,
  fmtValue,
  NONE,
  paramPairs,
  runColor,
  runColors,
  utcText,
} from "./static/format.js";
import { reportHtml } from "./report_html.ts";
import type { RunSummary } from "./run_summary.ts";
import type { SweepProgress } from "./sweep_progress.ts";
import { fmtDuration } from "../util/format.ts";

function _layout(title: string, body: Html, o: { script?: string; data?: unknown } = {}): string {
  return String(markup`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title} · dsmoe</title>
<link rel="stylesheet" href="/static/uplot.css">
<link rel="stylesheet" href="/static/dashboard.css">
</head>
<body>
<header class="top"><a href="/" class="brand">dsmoe</a><span class="sub">runs dashboard</span></header>
<main>
${body}
</main>
${o.data !== undefined && jsonScript("data", o.data)}
${
    o.script &&
    markup`<script src="/static/uplot.js"></script>\n<script type="module" src="/static/${o.script}"></script>`
  }
</body>
</html>
`);
}

/** The page frame (head, header, the JSON data block and script) around `body`, for pages built elsewhere. */
export const pageLayout = _layout;

/** A cell's text from a number: the caller picks the quantity's format (core/util/quantities.js). */
type _Fmt = (v: number | null | undefined) => string;

/** A sortable cell: `v` is its sort key (`data-v`), shown as `shown`, else formatted by `f` or as text. */
function _cell(
  col: string,
  v: string | number | null | undefined,
  shown?: Html | string,
  f: _Fmt = fmtNum,
): Html {
  const sort = v === null || v === undefined ? "" : String(v);
  const text = shown ?? (typeof v === "number" ? f(v) : v ?? NONE);
  return markup`<td data-col="${col}" data-v="${sort}"${
    typeof v === "number" && markup` class="num"`
  }>${text}</td>`;
}

function _status(s: string): Html {
  return markup`<span class="status status-${s}">${s}</span>`;
}

/** A timestamp: ISO in `datetime` and the title (UTC), shown in the viewer's local time by common.js. */
function _time(iso: string | null): Html | string {
  if (iso === null) return NONE;
  return markup`<time datetime="${iso}" title="${iso} (UTC)">${utcText(iso)}</time>`;
}

/** A colour swatch of a run (its colour set by the page script: the CSP allows no inline style). */
function _swatch(color: string): Html {
  return markup`<span class="swatch" data-color="${color}"></span>`;
}

/** Sweep parameters as `key=value` chips. */
function _params(params: Record<string, unknown>): Html | string {
  const pairs = paramPairs(params);
  return pairs.length
    ? markup`<span class="params">${pairs.map((p) => markup`<code>${p}</code>`)}</span>`
    : NONE;
}

/**
 * The runs table's columns in order: [label, tooltip, id]. The headline metrics come first after the name,
 * so they stay in view on a laptop screen however many hyperparameter columns follow.
 */
export const RUN_COLUMNS = [
  ["", "", "select"],
  ["name", "", "name"],
  ["val loss", "lowest val/loss (at step)", "best_val_loss"],
  ["val ppl", "last val/ppl", "val_ppl"],
  ["val bpb", "last val/bpb (bits per byte)", "val_bpb"],
  ["train loss", "last train/loss", "train_loss"],
  ["status", "", "status"],
  ["step", "newest step logged", "step"],
  ["sweep", "sweep and its parameters", "sweep"],
  ["started", "", "started"],
  ["kind", "model.kind", "kind"],
  ["d_model", "model.d_model", "d_model"],
  ["layers", "model.layers", "layers"],
  ["att. exp.", "model.attention.experts (moa)", "attention_experts"],
  ["mlp exp.", "model.mlp.experts", "mlp_experts"],
  ["router", "router.train → router.infer (training mode → inference rule)", "router"],
  ["lr", "train.optimizer.lr", "lr"],
  ["steps", "train.steps", "steps"],
  ["seed", "seed", "seed"],
] as const;

/** The step a run is at: its newest training point, else its stored step (which moves at checkpoints). */
export function liveStep(r: Pick<RunSummary, "step" | "last_train_step">): number {
  return Math.max(r.step, r.last_train_step ?? 0);
}

/** The router column: "dense → threshold 0.5", "topk 2 → topk 2"; null for a model without routers. */
export function routerText(h: Pick<RunSummary["hyper"], "router_train" | "router_infer">): string | null {
  return h.router_train === null ? null : `${h.router_train} → ${h.router_infer ?? "?"}`;
}

/** The metric cells of a run's row, in the order both tables show them: best val loss (and its step), val ppl,
 * val bpb, train loss. */
function _metricCells(r: RunSummary): Html[] {
  return [
    _cell(
      "best_val_loss",
      r.best_val_loss,
      r.best_val_loss === null
        ? NONE
        : markup`${fmtLoss(r.best_val_loss)} <small>@${fmtStep(r.best_val_loss_step)}</small>`,
    ),
    _cell("val_ppl", r.last_val_ppl, undefined, fmtPpl),
    _cell("val_bpb", r.last_val_bpb, undefined, fmtBpb),
    _cell("train_loss", r.last_train_loss, undefined, fmtLoss),
  ];
}

function _runRow(r: RunSummary): Html {
  const h = r.hyper;
  const step = liveStep(r);
  return markup`<tr data-id="${r.id}">${[
    markup`<td><input type="checkbox" class="pick" value="${r.id}" aria-label="select ${r.name}"></td>`,
    _cell(
      "name",
      r.name,
      markup`<span class="clip">${
        _swatch(runColor(r.id))
      }<a href="/runs/${r.id}" title="${r.name} (${r.id})">${r.name}</a></span>`,
    ),
    ..._metricCells(r),
    _cell("status", r.status, _status(r.status)),
    _cell("step", step, undefined, fmtStep),
    _cell(
      "sweep",
      r.sweep_id,
      r.sweep_id
        ? markup`<span class="clip" title="${
          paramPairs(r.sweep_params).join(" ")
        }"><a href="/sweeps/${r.sweep_id}">${r.sweep_id}</a> ${_params(r.sweep_params)}</span>`
        : NONE,
    ),
    _cell("started", r.started_at, _time(r.started_at)),
    _cell("kind", h.kind),
    _cell("d_model", h.d_model),
    _cell("layers", h.layers),
    _cell("attention_experts", h.attention_experts),
    _cell("mlp_experts", h.mlp_experts),
    _cell("router", routerText(h)),
    _cell("lr", h.lr, undefined, fmtRate),
    _cell("steps", h.steps, undefined, fmtStep),
    _cell("seed", h.seed, undefined, fmtStep),
  ]}</tr>`;
}

/** Config keys of `runs` for the group-by select: those whose value differs between runs, then the rest. */
export function groupKeys(runs: readonly RunSummary[]): { differ: string[]; same: string[] } {
  const keys = [...new Set(runs.flatMap((r) => Object.keys(r.config)))].sort();
  const differ: string[] = [], same: string[] = [];
  for (const k of keys) {
    const values = new Set(runs.map((r) => JSON.stringify(r.config[k] ?? null)));
    (values.size > 1 ? differ : same).push(k);
  }
  return { differ, same };
}

function _toolbar(runs: readonly RunSummary[]): Html {
  const { differ, same } = groupKeys(runs);
  const options = (keys: string[]) => keys.map((k) => markup`<option value="${k}">${k}</option>`);
  const picker = RUN_COLUMNS.filter(([, , col]) => col !== "select" && col !== "name").map(([label, , col]) =>
    markup`<label><input type="checkbox" data-col="${col}" checked> ${label}</label>`
  );
  return markup`<div class="toolbar">
<input type="search" id="filter" placeholder="Filter runs (name, status, sweep, kind…)" aria-label="filter runs">
<label>group by <select id="group-by"><option value="">nothing</option>
<optgroup label="run"><option value=":status">status</option><option value=":sweep">sweep</option></optgroup>
<optgroup label="config: differs between runs">${options(differ)}</optgroup>
<optgroup label="config: the same in every run">${options(same)}</optgroup>
</select></label>
<details class="picker" id="column-picker"><summary>Columns</summary><div class="picker-list">${picker}</div></details>
<button id="compare" disabled>Compare selected</button>
</div>`;
}

/** The runs table at `/`. */
export function runsPage(runs: readonly RunSummary[]): string {
  const head = RUN_COLUMNS.map(([label, title, col]) =>
    col === "select"
      ? markup`<th data-col="select"></th>`
      : markup`<th class="sortable" data-col="${col}"${title && markup` title="${title}"`}>${label}</th>`
  );
  const body = runs.length === 0
    ? markup`<p class="empty">No runs yet. Train one with <code>deno task run configs/quickstart.yaml</code>.</p>`
    : markup`<div class="table-wrap"><table class="runs" id="runs"><thead><tr>${head}</tr></thead>
<tbody>${joinHtml(runs.map(_runRow), "\n")}</tbody></table></div>`;
  return _layout(
    "Runs",
    markup`<h1>Runs <small>${runs.length}</small></h1>
${runs.length > 0 && _toolbar(runs)}
${body}`,
    {
      script: "runs.js",
      data: {
        page: "runs",
        running: runs.some((r) => r.status === "running"),
        configs: Object.fromEntries(runs.map((r) => [r.id, r.config])),
      },
    },
  );
}

function _meta(run: RunRecord): Html {
  const rows: [string, Html | string][] = [
    ["id", markup`<code>${run.id}</code>`],
    ["started", _time(run.started_at)],
    ["ended", _time(run.ended_at)],
    ["step", markup`<span id="run-step">${run.step}</span>`],
    ["sweep", run.sweep_id ? markup`<a href="/sweeps/${run.sweep_id}">${run.sweep_id}</a>` : NONE],
    ["sweep params", _params(run.sweep_params)],
    ["device", run.adapter ?? NONE],
    ["commit", run.git_commit?.slice(0, 12) ?? NONE],
  ];
  if (run.error) rows.push(["error", markup`<span class="error">${run.error}</span>`]);
  return markup`<dl class="meta">${rows.map(([k, v]) => markup`<dt>${k}</dt><dd>${v}</dd>`)}</dl>`;
}

/** The run page `/runs/:id`, with `others` overlaid on its charts. */
export function runPage(run: RunRecord, others: readonly RunRecord[]): string {
  const ids = [run.id, ...others.map((o) => o.id)];
  const colors = runColors(ids);
  const chips = others.map((o, i) => {
    const rest = ids.filter((x) => x !== run.id && x !== o.id);
    const href = `/runs/${run.id}${rest.length ? `?compare=${rest.join(",")}` : ""}`;
    return markup`<span class="chip" data-id="${o.id}">${
      _swatch(colors[i + 1]!)
    }${o.name} <code>${o.id}</code> <a href="${href}" title="remove">×</a></span>`;
  });
  const body = markup`<h1 data-id="${run.id}">${_swatch(colors[0]!)}${run.name} <span id="run-status">${
    _status(run.status)
  }</span></h1>
${_meta(run)}
<form class="toolbar" method="get" action="/runs/${run.id}">
<label>x axis <select id="x-axis"><option>step</option><option>tokens</option><option>time</option></select></label>
<label>smoothing <input type="range" id="smoothing" min="0" max="0.99" step="0.01" value="0.6">
<output id="smoothing-value">0.60</output></label>
<label>compare with <input type="text" name="compare" value="${others.map((o) => o.id).join(",")}"
 placeholder="run ids, comma separated" size="40"></label><button type="submit">Overlay</button>
</form>
${chips.length > 0 && markup`<p class="chips">Overlaid: ${joinHtml(chips, " ")}</p>`}
<section><h2>Training</h2><div id="charts" class="charts"></div></section>
<section><h2>Sparsity frontier <small>perplexity vs active parameters, from <code>eval</code></small></h2>
<div class="frontier"><div id="frontier"></div><div id="frontier-table"></div></div></section>
<section><h2>Expert load <small>share of validation tokens whose top expert it is (rows) over steps (columns)</small></h2>
<div id="heatmaps"></div></section>
<div class="two">
<section><h2>Events</h2><div id="events"></div></section>
<section><h2>Checkpoints</h2><div id="checkpoints"></div></section>
</div>
<section><details><summary>Resolved config</summary><pre>${run.config_yaml}</pre></details></section>`;
  return _layout(run.name, body, {
    script: "run.js",
    data: {
      page: "run",
      run_id: run.id,
      ids,
      names: [run.name, ...others.map((o) => o.name)],
      colors,
      status: run.status,
    },
  });
}

/** The metrics the sweep page's scatter plots against a swept parameter: [RunSummary field, label]. */
export const SCATTER_METRICS = [
  ["best_val_loss", "best val loss"],
  ["last_val_ppl", "val ppl"],
  ["last_val_bpb", "val bpb"],
  ["last_train_loss", "train loss"],
] as const;

/** A sweep point as the scatter reads it (the page's JSON block and /api/sweeps/:id hold the same fields). */
export function scatterPoint(r: RunSummary) {
  return {
    id: r.id,
    name: r.name,
    sweep_params: r.sweep_params,
    best_val_loss: r.best_val_loss,
    last_val_ppl: r.last_val_ppl,
    last_val_bpb: r.last_val_bpb,
    last_train_loss: r.last_train_loss,
  };
}

function _scatter(params: readonly string[]): Html {
  if (params.length === 0) return markup``;
  return markup`<section><h2>Metric vs hyperparameter <small>one point per sweep point, in its colour</small></h2>
<div class="toolbar"><label>metric <select id="scatter-metric">${
    SCATTER_METRICS.map(([k, label]) => markup`<option value="${k}">${label}</option>`)
  }</select></label>
<label>against <select id="scatter-param">${
    params.map((p) => markup`<option value="${p}">${p}</option>`)
  }</select></label>
<label><input type="checkbox" id="scatter-log"> log x</label></div>
<div id="scatter" class="scatter"></div></section>`;
}

/** The sweep page `/sweeps/:id`: its points side by side. */
export function sweepPage(
  id: string,
  sweep: SweepRecord | null,
  runs: readonly RunSummary[],
  params: readonly string[],
  report: ReportRecord | null = null,
  progress: SweepProgress | null = null,
): string {
  const colors = runColors(runs.map((r) => r.id));
  const head = ["name", "best val loss", "val ppl", "val bpb", "train loss", ...params, "status", "step"]
    .map((h) => markup`<th class="sortable">${h}</th>`);
  const rows = runs.map((r, i) =>
    markup`<tr data-id="${r.id}">${[
      _cell("name", r.name, markup`${_swatch(colors[i]!)}<a href="/runs/${r.id}">${r.name}</a>`),
      ..._metricCells(r),
      _paramCells(params, r.sweep_params),
      _cell("status", r.status, _status(r.status)),
      _cell("step", liveStep(r), undefined, fmtStep),
    ]}</tr>`
  );
  // Points not started yet: their names and parameters, in expansion order, after the runs.
  const pending = (progress?.pending ?? []).map((p) =>
    markup`<tr class="pending">${[
      _cell("name", p.name),
      [null, null, null, null].map((v) => _cell("metric", v)),
      _paramCells(params, p.params),
      _cell("status", "pending", _status("pending")),
      _cell("step", 0, `0/${fmtStep(p.steps)}`),
    ]}</tr>`
  );
  const body = markup`<h1>Sweep ${sweep?.name ?? id} <small>${
    progress ? _progressText(progress) : `${runs.length} points`
  }</small></h1>
<p><code>${id}</code>${sweep && markup` · created ${_time(sweep.created_at)}`}${
    progress && markup` · <span id="sweep-eta">${_etaText(progress)}</span>`
  }
${
    runs.length > 0 &&
    markup` · <a href="/runs/${runs[0]!.id}?compare=${runs.slice(1).map((r) => r.id).join(",")}">
open all on one run page</a>`
  }</p>
<div class="table-wrap"><table class="runs" id="runs"><thead><tr>${head}</tr></thead><tbody>${
    joinHtml([...rows, ...pending], "\n")
  }</tbody></table></div>
${
    report?.kind === "study" &&
    markup`<p class="study-link"><a href="/studies/${report.id}">Study page: the router × rule matrix as a heatmap</a></p>`
  }
${report && markup`<section class="report" id="report">${reportHtml(report.markdown)}</section>`}
${_scatter(params)}
<form class="toolbar"><label>x axis <select id="x-axis"><option>step</option><option>tokens</option>
<option>time</option></select></label>
<label>smoothing <input type="range" id="smoothing" min="0" max="0.99" step="0.01" value="0.6">
<output id="smoothing-value">0.60</output></label></form>
<section><h2>Loss across the sweep</h2><div id="charts" class="charts"></div></section>
<section><h2>Sparsity frontier across the sweep</h2>
<div class="frontier"><div id="frontier"></div><div id="frontier-table"></div></div></section>
${
    sweep?.config_yaml &&
    markup`<section><details><summary>Sweep config</summary><pre>${sweep.config_yaml}</pre></details></section>`
  }`;
  return _layout(`Sweep ${sweep?.name ?? id}`, body, {
    script: "sweep.js",
    data: {
      page: "sweep",
      sweep_id: id,
      ids: runs.map((r) => r.id),
      names: runs.map((r) => r.name),
      colors,
      params,
      points: runs.map(scatterPoint),
    },
  });
}

/** An error page. */
export function errorPage(status: number, message: string): string {
  return _layout(
    `Error ${status}`,
    markup`<h1>Error ${status}</h1><p class="error">${message}</p>
<p><a href="/">Back to the runs</a></p>`,
  );
}

/** "6 points: 2 finished, 1 running, 3 pending" (stopped points named when there are any). */
function _progressText(p: SweepProgress): string {
  const parts = [`${p.finished} finished`, `${p.running} running`, `${p.pending.length} pending`];
  if (p.stopped > 0) parts.push(`${p.stopped} failed or interrupted`);
  return `${p.total} point${p.total === 1 ? "" : "s"}: ${parts.join(", ")}`;
}

/** The whole sweep's ETA and what it rests on. */
function _etaText(p: SweepProgress): string {
  if (p.remaining_steps === 0) return p.stopped > 0 ? "nothing left to train until a rerun" : "sweep done";
  if (p.eta_seconds === null) return `${fmtCount(p.remaining_steps)} steps left; ETA once a step is measured`;
  return `ETA ${fmtDuration(p.eta_seconds)} for the whole sweep: ${
    fmtCount(p.remaining_steps)
  } steps left at ` +
    `${fmtNum(p.seconds_per_step)} s/step, ${p.workers} point${p.workers === 1 ? "" : "s"} training at once`;
}

/** A sweep point's parameter cells, one per swept key: numbers sort as numbers, values read `fmtValue`. */
function _paramCells(keys: readonly string[], values: Readonly<Record<string, unknown>>): Html[] {
  return keys.map((k) => {
    const v = values[k];
    return _cell(`param:${k}`, typeof v === "number" ? v : v === undefined ? null : fmtValue(v), fmtValue(v));
  });
}

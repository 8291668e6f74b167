/**
 * The dashboard's HTML pages: the runs table, a run (or several overlaid), a sweep, and errors. Pages hold
 * no inline script (the CSP forbids it): what a page's script needs is a JSON block (`<script
 * type="application/json" id="data">`, never executed) and the script itself is a static file. Every page is
 * built with {@linkcode markup} (Hono's `html` template), so every value from a run, sweep, report or error
 * is escaped where it is interpolated; only markup built the same way is kept as it is.
 *
 * @module
 */
import type { ReportRecord, RunRecord, SweepRecord } from "../runs/store.ts";
import { fmtCount } from "../util/format.ts";
import { type Html, joinHtml, jsonScript, markup } from "./html.ts";
import { reportHtml } from "./report_html.ts";
import type { RunSummary } from "./run_summary.ts";

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

function _num(v: number | null | undefined, digits = 4): string {
  if (v === null || v === undefined) return "—";
  if (Number.isInteger(v)) return fmtCount(v);
  return v !== 0 && Math.abs(v) < 1e-3 ? v.toExponential(2) : String(Number(v.toPrecision(digits)));
}

/** A sortable cell: `v` is its sort key (`data-v`), shown as `shown`, else as a number or as text. */
function _cell(v: string | number | null | undefined, shown?: Html | string): Html {
  const sort = v === null || v === undefined ? "" : String(v);
  const text = shown ?? (typeof v === "number" ? _num(v) : v ?? "—");
  return markup`<td data-v="${sort}"${typeof v === "number" && markup` class="num"`}>${text}</td>`;
}

function _status(s: string): Html {
  return markup`<span class="status status-${s}">${s}</span>`;
}

const _RUN_COLUMNS = [
  ["", "", "select"],
  ["status", "", "status"],
  ["name", "", "name"],
  ["sweep", "", "sweep"],
  ["started", "", "started"],
  ["step", "last completed step", "step"],
  ["kind", "model.kind", "kind"],
  ["d_model", "model.d_model", "d_model"],
  ["layers", "model.layers", "layers"],
  ["att. experts", "model.attention.experts (moa)", "attention_experts"],
  ["mlp experts", "model.mlp.experts", "mlp_experts"],
  ["router", "router.train", "router"],
  ["lr", "train.optimizer.lr", "lr"],
  ["steps", "train.steps", "steps"],
  ["seed", "seed", "seed"],
  ["train loss", "last train/loss", "train_loss"],
  ["best val loss", "lowest val/loss (at step)", "best_val_loss"],
  ["val ppl", "last val/ppl", "val_ppl"],
  ["val bpb", "last val/bpb (bits per byte)", "val_bpb"],
] as const;

function _runRow(r: RunSummary): Html {
  const h = r.hyper;
  return markup`<tr data-id="${r.id}">${[
    markup`<td><input type="checkbox" class="pick" value="${r.id}" aria-label="select ${r.name}"></td>`,
    _cell(r.status, _status(r.status)),
    _cell(r.name, markup`<a href="/runs/${r.id}" title="${r.id}">${r.name}</a>`),
    _cell(r.sweep_id, r.sweep_id ? markup`<a href="/sweeps/${r.sweep_id}">${r.sweep_id}</a>` : "—"),
    _cell(r.started_at, r.started_at.replace("T", " ").slice(0, 16)),
    _cell(r.step),
    _cell(h.kind),
    _cell(h.d_model),
    _cell(h.layers),
    _cell(h.attention_experts),
    _cell(h.mlp_experts),
    _cell(h.router_train),
    _cell(h.lr),
    _cell(h.steps),
    _cell(h.seed),
    _cell(r.last_train_loss),
    _cell(
      r.best_val_loss,
      r.best_val_loss === null
        ? "—"
        : markup`${_num(r.best_val_loss)} <small>@${r.best_val_loss_step}</small>`,
    ),
    _cell(r.last_val_ppl),
    _cell(r.last_val_bpb),
  ]}</tr>`;
}

/** The runs table at `/`. */
export function runsPage(runs: readonly RunSummary[]): string {
  const head = _RUN_COLUMNS.map(([label, title, col]) =>
    col === "select"
      ? markup`<th></th>`
      : markup`<th class="sortable" data-col="${col}"${title && markup` title="${title}"`}>${label}</th>`
  );
  const body = runs.length === 0
    ? markup`<p class="empty">No runs yet. Train one with <code>deno task run configs/quickstart.yaml</code>.</p>`
    : markup`<table class="runs" id="runs"><thead><tr>${head}</tr></thead>
<tbody>${joinHtml(runs.map(_runRow), "\n")}</tbody></table>`;
  return _layout(
    "Runs",
    markup`<h1>Runs <small>${runs.length}</small></h1>
<div class="toolbar">
<input type="search" id="filter" placeholder="Filter runs (name, status, sweep, kind…)" aria-label="filter runs">
<button id="compare" disabled>Compare selected</button>
</div>
${body}`,
    { script: "runs.js", data: { page: "runs", running: runs.some((r) => r.status === "running") } },
  );
}

function _meta(run: RunRecord): Html {
  const rows: [string, Html | string][] = [
    ["id", markup`<code>${run.id}</code>`],
    ["started", run.started_at],
    ["ended", run.ended_at ?? "—"],
    ["step", markup`<span id="run-step">${run.step}</span>`],
    ["sweep", run.sweep_id ? markup`<a href="/sweeps/${run.sweep_id}">${run.sweep_id}</a>` : "—"],
    ["sweep params", Object.keys(run.sweep_params).length ? JSON.stringify(run.sweep_params) : "—"],
    ["device", run.adapter ?? "—"],
    ["commit", run.git_commit?.slice(0, 12) ?? "—"],
  ];
  if (run.error) rows.push(["error", markup`<span class="error">${run.error}</span>`]);
  return markup`<dl class="meta">${rows.map(([k, v]) => markup`<dt>${k}</dt><dd>${v}</dd>`)}</dl>`;
}

/** The run page `/runs/:id`, with `others` overlaid on its charts. */
export function runPage(run: RunRecord, others: readonly RunRecord[]): string {
  const ids = [run.id, ...others.map((o) => o.id)];
  const chips = others.map((o) => {
    const rest = ids.filter((i) => i !== run.id && i !== o.id);
    const href = `/runs/${run.id}${rest.length ? `?compare=${rest.join(",")}` : ""}`;
    return markup`<span class="chip">${o.name} <code>${o.id}</code> <a href="${href}" title="remove">×</a></span>`;
  });
  const body = markup`<h1>${run.name} <span id="run-status">${_status(run.status)}</span></h1>
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
      status: run.status,
    },
  });
}

/** The sweep page `/sweeps/:id`: its points side by side. */
export function sweepPage(
  id: string,
  sweep: SweepRecord | null,
  runs: readonly RunSummary[],
  params: readonly string[],
  report: ReportRecord | null = null,
): string {
  const head = ["status", "name", ...params, "step", "train loss", "best val loss", "val ppl", "val bpb"]
    .map((h) => markup`<th class="sortable">${h}</th>`);
  const rows = runs.map((r) =>
    markup`<tr data-id="${r.id}">${[
      _cell(r.status, _status(r.status)),
      _cell(r.name, markup`<a href="/runs/${r.id}">${r.name}</a>`),
      params.map((p) => {
        const v = r.sweep_params[p];
        return _cell(typeof v === "number" ? v : v === undefined ? null : JSON.stringify(v));
      }),
      _cell(r.step),
      _cell(r.last_train_loss),
      _cell(r.best_val_loss),
      _cell(r.last_val_ppl),
      _cell(r.last_val_bpb),
    ]}</tr>`
  );
  const body = markup`<h1>Sweep ${sweep?.name ?? id} <small>${runs.length} points</small></h1>
<p><code>${id}</code>${sweep && markup` · created ${sweep.created_at}`}
${
    runs.length > 0 &&
    markup` · <a href="/runs/${runs[0]!.id}?compare=${runs.slice(1).map((r) => r.id).join(",")}">
open all on one run page</a>`
  }</p>
<table class="runs" id="runs"><thead><tr>${head}</tr></thead><tbody>${joinHtml(rows, "\n")}</tbody></table>
${report && markup`<section class="report" id="report">${reportHtml(report.markdown)}</section>`}
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
    data: { page: "sweep", sweep_id: id, ids: runs.map((r) => r.id), names: runs.map((r) => r.name) },
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

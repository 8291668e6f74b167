/**
 * The dashboard's HTML pages: the runs table, a run (or several overlaid), a sweep, and errors. Pages hold
 * no inline script (the CSP forbids it): what a page's script needs is a JSON block (`<script
 * type="application/json" id="data">`, never executed) and the script itself is a static file.
 *
 * @module
 */
import type { ReportRecord, RunRecord, SweepRecord } from "../runs/store.ts";
import { fmtCount } from "../util/format.ts";
import { esc } from "./esc.ts";
import { reportHtml } from "./report_html.ts";
import type { RunSummary } from "./run_summary.ts";

/** JSON that is safe inside a `<script type="application/json">` element (no `</script>`). */
function _json(data: unknown): string {
  return JSON.stringify(data).replace(/</g, "\\u003c").replace(/\u2028/g, "\\u2028").replace(
    /\u2029/g,
    "\\u2029",
  );
}

function _layout(title: string, body: string, o: { script?: string; data?: unknown } = {}): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)} · dsmoe</title>
<link rel="stylesheet" href="/static/uplot.css">
<link rel="stylesheet" href="/static/dashboard.css">
</head>
<body>
<header class="top"><a href="/" class="brand">dsmoe</a><span class="sub">runs dashboard</span></header>
<main>
${body}
</main>
${o.data === undefined ? "" : `<script type="application/json" id="data">${_json(o.data)}</script>`}
${
    o.script
      ? `<script src="/static/uplot.js"></script>\n<script type="module" src="/static/${o.script}"></script>`
      : ""
  }
</body>
</html>
`;
}

function _num(v: number | null | undefined, digits = 4): string {
  if (v === null || v === undefined) return "—";
  if (Number.isInteger(v)) return fmtCount(v);
  return v !== 0 && Math.abs(v) < 1e-3 ? v.toExponential(2) : String(Number(v.toPrecision(digits)));
}

function _cell(v: string | number | null | undefined, shown?: string): string {
  const sort = v === null || v === undefined ? "" : String(v);
  const text = shown ?? (typeof v === "number" ? _num(v) : esc(v ?? "—"));
  return `<td data-v="${esc(sort)}"${typeof v === "number" ? ' class="num"' : ""}>${text}</td>`;
}

function _status(s: string): string {
  return `<span class="status status-${esc(s)}">${esc(s)}</span>`;
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

function _runRow(r: RunSummary): string {
  const h = r.hyper;
  return `<tr data-id="${esc(r.id)}">` +
    `<td><input type="checkbox" class="pick" value="${esc(r.id)}" aria-label="select ${esc(r.name)}"></td>` +
    _cell(r.status, _status(r.status)) +
    _cell(r.name, `<a href="/runs/${esc(r.id)}" title="${esc(r.id)}">${esc(r.name)}</a>`) +
    _cell(r.sweep_id, r.sweep_id ? `<a href="/sweeps/${esc(r.sweep_id)}">${esc(r.sweep_id)}</a>` : "—") +
    _cell(r.started_at, esc(r.started_at.replace("T", " ").slice(0, 16))) +
    _cell(r.step) + _cell(h.kind) + _cell(h.d_model) + _cell(h.layers) + _cell(h.attention_experts) +
    _cell(h.mlp_experts) + _cell(h.router_train) + _cell(h.lr) + _cell(h.steps) + _cell(h.seed) +
    _cell(r.last_train_loss) +
    _cell(
      r.best_val_loss,
      r.best_val_loss === null ? "—" : `${_num(r.best_val_loss)} <small>@${r.best_val_loss_step}</small>`,
    ) +
    _cell(r.last_val_ppl) + _cell(r.last_val_bpb) + "</tr>";
}

/** The runs table at `/`. */
export function runsPage(runs: readonly RunSummary[]): string {
  const head = _RUN_COLUMNS.map(([label, title, col]) =>
    col === "select"
      ? "<th></th>"
      : `<th class="sortable" data-col="${col}"${title ? ` title="${esc(title)}"` : ""}>${esc(label)}</th>`
  ).join("");
  const body = runs.length === 0
    ? `<p class="empty">No runs yet. Train one with <code>deno task run configs/quickstart.yaml</code>.</p>`
    : `<table class="runs" id="runs"><thead><tr>${head}</tr></thead>
<tbody>${runs.map(_runRow).join("\n")}</tbody></table>`;
  return _layout(
    "Runs",
    `<h1>Runs <small>${runs.length}</small></h1>
<div class="toolbar">
<input type="search" id="filter" placeholder="Filter runs (name, status, sweep, kind…)" aria-label="filter runs">
<button id="compare" disabled>Compare selected</button>
</div>
${body}`,
    { script: "runs.js", data: { page: "runs", running: runs.some((r) => r.status === "running") } },
  );
}

function _meta(run: RunRecord): string {
  const rows: [string, string][] = [
    ["id", `<code>${esc(run.id)}</code>`],
    ["started", esc(run.started_at)],
    ["ended", esc(run.ended_at ?? "—")],
    ["step", `<span id="run-step">${run.step}</span>`],
    ["sweep", run.sweep_id ? `<a href="/sweeps/${esc(run.sweep_id)}">${esc(run.sweep_id)}</a>` : "—"],
    ["sweep params", esc(Object.keys(run.sweep_params).length ? JSON.stringify(run.sweep_params) : "—")],
    ["device", esc(run.adapter ?? "—")],
    ["commit", esc(run.git_commit?.slice(0, 12) ?? "—")],
  ];
  if (run.error) rows.push(["error", `<span class="error">${esc(run.error)}</span>`]);
  return `<dl class="meta">${rows.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("")}</dl>`;
}

/** The run page `/runs/:id`, with `others` overlaid on its charts. */
export function runPage(run: RunRecord, others: readonly RunRecord[]): string {
  const ids = [run.id, ...others.map((o) => o.id)];
  const chips = others.map((o) => {
    const rest = ids.filter((i) => i !== run.id && i !== o.id);
    const href = `/runs/${esc(run.id)}${rest.length ? `?compare=${esc(rest.join(","))}` : ""}`;
    return `<span class="chip">${esc(o.name)} <code>${
      esc(o.id)
    }</code> <a href="${href}" title="remove">×</a></span>`;
  }).join(" ");
  const body = `<h1>${esc(run.name)} <span id="run-status">${_status(run.status)}</span></h1>
${_meta(run)}
<form class="toolbar" method="get" action="/runs/${esc(run.id)}">
<label>x axis <select id="x-axis"><option>step</option><option>tokens</option><option>time</option></select></label>
<label>smoothing <input type="range" id="smoothing" min="0" max="0.99" step="0.01" value="0.6">
<output id="smoothing-value">0.60</output></label>
<label>compare with <input type="text" name="compare" value="${esc(others.map((o) => o.id).join(","))}"
 placeholder="run ids, comma separated" size="40"></label><button type="submit">Overlay</button>
</form>
${chips ? `<p class="chips">Overlaid: ${chips}</p>` : ""}
<section><h2>Training</h2><div id="charts" class="charts"></div></section>
<section><h2>Sparsity frontier <small>perplexity vs active parameters, from <code>eval</code></small></h2>
<div class="frontier"><div id="frontier"></div><div id="frontier-table"></div></div></section>
<section><h2>Expert load <small>share of validation tokens whose top expert it is (rows) over steps (columns)</small></h2>
<div id="heatmaps"></div></section>
<div class="two">
<section><h2>Events</h2><div id="events"></div></section>
<section><h2>Checkpoints</h2><div id="checkpoints"></div></section>
</div>
<section><details><summary>Resolved config</summary><pre>${esc(run.config_yaml)}</pre></details></section>`;
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
    .map((h) => `<th class="sortable">${esc(h)}</th>`).join("");
  const rows = runs.map((r) =>
    `<tr data-id="${esc(r.id)}">${_cell(r.status, _status(r.status))}` +
    _cell(r.name, `<a href="/runs/${esc(r.id)}">${esc(r.name)}</a>`) +
    params.map((p) => {
      const v = r.sweep_params[p];
      return _cell(typeof v === "number" ? v : v === undefined ? null : JSON.stringify(v));
    }).join("") +
    _cell(r.step) + _cell(r.last_train_loss) + _cell(r.best_val_loss) + _cell(r.last_val_ppl) +
    _cell(r.last_val_bpb) + "</tr>"
  ).join("\n");
  const body = `<h1>Sweep ${esc(sweep?.name ?? id)} <small>${runs.length} points</small></h1>
<p><code>${esc(id)}</code>${sweep ? ` · created ${esc(sweep.created_at)}` : ""}
${
    runs.length
      ? ` · <a href="/runs/${esc(runs[0]!.id)}?compare=${esc(runs.slice(1).map((r) => r.id).join(","))}">
open all on one run page</a>`
      : ""
  }</p>
<table class="runs" id="runs"><thead><tr>${head}</tr></thead><tbody>${rows}</tbody></table>
${report ? `<section class="report" id="report">${reportHtml(report.markdown)}</section>` : ""}
<form class="toolbar"><label>x axis <select id="x-axis"><option>step</option><option>tokens</option>
<option>time</option></select></label>
<label>smoothing <input type="range" id="smoothing" min="0" max="0.99" step="0.01" value="0.6">
<output id="smoothing-value">0.60</output></label></form>
<section><h2>Loss across the sweep</h2><div id="charts" class="charts"></div></section>
<section><h2>Sparsity frontier across the sweep</h2>
<div class="frontier"><div id="frontier"></div><div id="frontier-table"></div></div></section>
${
    sweep?.config_yaml
      ? `<section><details><summary>Sweep config</summary><pre>${
        esc(sweep.config_yaml)
      }</pre></details></section>`
      : ""
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
    `<h1>Error ${status}</h1><p class="error">${esc(message)}</p>
<p><a href="/">Back to the runs</a></p>`,
  );
}

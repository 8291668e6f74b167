/**
 * The router study's page `/studies/:id` and its data `/api/studies/:id`: the stored report of kind
 * "study" (core/runs/study_types.ts) as a heatmap of the matrix (rows: training routers and the dense
 * baseline; columns: inference rules), each cell coloured by its perplexity against the baseline's, showing
 * ppl and hidden %, and linking to its run's page; below it the whole report (frontier and diagnostics
 * tables). The page is server-rendered with {@linkcode markup} and needs no script; colours are CSS classes
 * (the CSP allows no inline style). Numbers are written by core/util/quantities.js. The study's sweep page
 * links here and overlays the routers' frontier curves.
 *
 * @module
 */
import type { Hono } from "hono";
import { HTTPException } from "hono/http-exception";
import type { RunStore } from "../runs/store.ts";
import { asStudyReport, type StudyCell, type StudyReport } from "../runs/study_types.ts";
import { type Html, markup } from "./html.ts";
import { pageLayout } from "./pages.ts";
import { reportHtml } from "./report_html.ts";
import { checkId } from "./security.ts";
import { fmtBpb, fmtChange, fmtCount, fmtNum, fmtPct, fmtPpl, NONE } from "./static/format.js";

/**
 * The heatmap's colour buckets: a cell takes the first whose upper bound its Δppl against the baseline (in
 * percent, + worse) does not exceed; `b…` better than the baseline, `0` within half a percent, `w…` worse.
 */
export const HEAT_BUCKETS: readonly (readonly [upTo: number, cls: string, label: string])[] = [
  [-5, "b3", "≤ −5%"],
  [-2, "b2", "−5 … −2%"],
  [-0.5, "b1", "−2 … −0.5%"],
  [0.5, "0", "±0.5%"],
  [2, "w1", "+0.5 … +2%"],
  [5, "w2", "+2 … +5%"],
  [10, "w3", "+5 … +10%"],
  [25, "w4", "+10 … +25%"],
  [Infinity, "w5", "> +25%"],
];

/**
 * The CSS class of a cell with Δppl `dppl` (percent against the baseline): `heat-<bucket>`, `heat-na` when
 * there is none.
 *
 * @example
 * ```ts
 * import { heatClass } from "./study_page.ts";
 * console.log(heatClass(-3), heatClass(0.2), heatClass(12), heatClass(null)); // heat-b2 heat-0 heat-w4 heat-na
 * ```
 */
export function heatClass(dppl: number | null): string {
  if (dppl === null || !Number.isFinite(dppl)) return "heat-na";
  return `heat-${HEAT_BUCKETS.find(([upTo]) => dppl <= upTo)![1]}`;
}

/** Adds GET /studies/:id (the page) and GET /api/studies/:id (the report's data) to `app`. */
export function registerStudies(app: Hono, store: RunStore): void {
  const load = async (raw: string) => {
    const id = checkId("study", raw);
    const record = await store.getReport(id);
    const report = asStudyReport(record);
    if (!record || record.kind !== "study") throw new HTTPException(404, { message: `No study "${id}"` });
    if (!report) {
      throw new HTTPException(500, { message: `Study "${id}" has a report this version cannot read` });
    }
    return { record, report };
  };
  app.get("/api/studies/:id", async (c) => {
    const { record, report } = await load(c.req.param("id"));
    return c.json({ id: record.id, sweep_id: record.sweep_id, created_at: record.created_at, report });
  });
  app.get("/studies/:id", async (c) => {
    const { record, report } = await load(c.req.param("id"));
    return c.html(studyPage(report, record.markdown));
  });
}

function _tooltip(r: StudyReport, x: StudyCell): string {
  if (x.na !== null) return `${x.model} under ${x.rule}: ${x.na}`;
  const vs = x.dppl_pct === null ? "" : ` (${fmtChange(x.dppl_pct)} vs baseline)`;
  return `${x.model} under ${x.rule_name}: ppl ${fmtPpl(x.ppl)}${vs}, bpb ${fmtBpb(x.bpb)}, ` +
    `hidden ${fmtPct(x.hidden_pct)}, active ${fmtPct(x.active_pct)} (${fmtCount(x.active_params)} params), ` +
    `${fmtNum(x.tokens_per_s)} tokens/s (sparse evaluation)` +
    (r.baseline_ppl === null ? "" : `; baseline ppl ${fmtPpl(r.baseline_ppl)}`);
}

function _heatCell(r: StudyReport, x: StudyCell | undefined): Html {
  if (!x) return markup`<td class="heat heat-na">${NONE}</td>`;
  const title = _tooltip(r, x);
  if (x.na !== null || x.run_id === null) {
    return markup`<td class="heat heat-na" title="${title}">${NONE}</td>`;
  }
  return markup`<td class="heat ${
    heatClass(x.dppl_pct)
  }" title="${title}" data-model="${x.model}" data-rule="${x.rule}"><a href="/runs/${x.run_id}"><span class="ppl">${
    fmtPpl(x.ppl)
  }</span><small>hidden ${fmtPct(x.hidden_pct)}</small></a></td>`;
}

/** The heatmap table of the matrix. */
export function studyHeatmap(r: StudyReport): Html {
  const cells = new Map(r.cells.map((x) => [`${x.model}\0${x.rule}`, x]));
  const head = markup`<tr><th>training router</th>${r.rules.map((x) => markup`<th>${x.label}</th>`)}</tr>`;
  const rows = r.models.map((m) =>
    markup`<tr><th class="row">${
      m.run_id ? markup`<a href="/runs/${m.run_id}">${m.name}</a>` : m.name
    }<small>${m.train}</small></th>${
      r.rules.map((x) => _heatCell(r, cells.get(`${m.name}\0${x.spec}`)))
    }</tr>`
  );
  const legend = HEAT_BUCKETS.map(([, cls, label]) => markup`<span class="heat heat-${cls}">${label}</span>`);
  return markup`<div class="table-wrap"><table class="heatmap" id="study-heatmap"><thead>${head}</thead><tbody>${rows}</tbody></table></div>
<p class="legend">ppl against the baseline's ${
    fmtPpl(r.baseline_ppl)
  }: ${legend} <span class="heat heat-na">${NONE} not measured or no router</span></p>`;
}

/** The report's Markdown from its first section on: the page has the title and caveat already. */
function _afterHeader(markdown: string): string {
  const at = markdown.indexOf("\n## ");
  return at < 0 ? markdown : markdown.slice(at + 1);
}

/** The study page: the heatmap, then the stored report's Markdown. */
export function studyPage(r: StudyReport, markdown: string): string {
  const body = markup`<h1>Router study ${r.name} <small>scale ${r.scale}</small></h1>
${
    r.caveat &&
    markup`<p class="caveat"><strong>Smoke test: these numbers mean nothing.</strong> ${r.caveat}</p>`
  }
<p><code>${r.id}</code> · <a href="/sweeps/${r.sweep_id}">the study's sweep</a> (runs, losses and every router's frontier curve on one chart) · made ${r.created_at}</p>
<section><h2>Matrix <small>cells: ppl and hidden % active, coloured by ppl against the baseline; each links to its run</small></h2>
${studyHeatmap(r)}</section>
<section class="report" id="report">${reportHtml(_afterHeader(markdown))}</section>`;
  return pageLayout(`Study ${r.name}`, body);
}

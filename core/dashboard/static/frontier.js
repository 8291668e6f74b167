/**
 * The sparsity frontier: validation perplexity against the % of parameters active per token, one point per
 * inference rule that `eval` measured, one line per run (in the run's colour), each point labelled with its
 * rule; with a table of the points. Its headers say what each share is of (docs/design.md §5).
 *
 * @module
 */
import { align, Chart } from "./charts.js";
import { el, fmtCount, fmtLoss, fmtPct, fmtPpl, fmtStep, getJson, runColors, table } from "./common.js";

/** The frontier chart and table of several runs. */
export class FrontierView {
  /** `runs`: [{ id, name, color? }] (a run without a colour takes its `runColor`). */
  constructor(chartParent, tableParent, runs) {
    const colors = runColors(runs.map((r) => r.id));
    this.runs = runs.map((r, i) => ({ ...r, color: r.color ?? colors[i], points: [] }));
    this.chart = new Chart(chartParent, {
      title: "Perplexity vs active parameters",
      xAxis: "pct",
      xLabel: "active parameters (%)",
      yLabel: "validation perplexity",
      yFmt: fmtPpl,
      points: true,
    });
    this.tableParent = tableParent;
  }

  /** Sets the points of runs from already fetched frontiers (`byId`: id → points). */
  set(byId) {
    for (const r of this.runs) r.points = byId[r.id] ?? r.points;
    this.draw();
  }

  /** Fetches and draws the frontier of each run. */
  async load() {
    const byId = {};
    await Promise.all(this.runs.map(async (r) => {
      byId[r.id] = (await getJson(`/api/runs/${encodeURIComponent(r.id)}/frontier`)).points;
    }));
    this.set(byId);
  }

  draw() {
    const withData = this.runs.filter((r) => r.points.some((p) => p.active_pct !== null && p.ppl !== null));
    if (withData.length === 0) {
      this.chart.hide(
        "No infer/<rule>/… metrics yet: run `deno task eval <run-id> --rule …` to measure some.",
      );
      this.tableParent.replaceChildren();
      return;
    }
    const shown = withData.map((r) => r.points.filter((p) => p.active_pct !== null && p.ppl !== null));
    const list = shown.map((ps) => ({ x: ps.map((p) => p.active_pct), y: ps.map((p) => p.ppl) }));
    const { x, ys } = align(list);
    // Each point's rule name, at its place on the shared x axis.
    const labels = shown.map((ps) => {
      const out = new Array(x.length).fill(null);
      for (const p of ps) out[x.indexOf(p.active_pct)] = p.rule;
      return out;
    });
    this.chart.set(
      x,
      withData.map((r, i) => ({ label: r.name, color: r.color, values: ys[i], labels: labels[i] })),
    );
    const many = this.runs.length > 1;
    const rows = withData.flatMap((r) =>
      r.points.map((p) => [
        ...(many ? [r.name] : []),
        el("code", {}, p.rule),
        fmtStep(p.step),
        fmtPct(p.active_pct),
        fmtPct(p.hidden_pct),
        fmtPct(p.active_pct_all),
        fmtCount(p.active_params),
        fmtLoss(p.loss),
        fmtPpl(p.ppl),
      ])
    );
    const headers = [
      ...(many ? ["run"] : []),
      "rule",
      "step",
      _share("active %", "of the parameters outside the embeddings, norms and LM head (routers included)"),
      _share("hidden %", "of the attention and MLP weights (Q, K, V, O and MLP w1/w2, routed or not)"),
      _share("all %", "of all parameters, embeddings included"),
      "active params",
      "loss",
      "ppl",
    ];
    this.tableParent.replaceChildren(table(headers, rows));
  }
}

/** A share's header: its name, with what it is a share of as a tooltip. */
function _share(name, of) {
  return el("abbr", { title: `${name}: the share ${of} that runs per token (mean over tokens)` }, name);
}

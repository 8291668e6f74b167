/**
 * The sparsity frontier: validation perplexity against the % of parameters active per token, one point per
 * inference rule that `eval` measured, one line per run; with a table of the points.
 *
 * @module
 */
import { align, Chart } from "./charts.js";
import { COLORS, el, fmt, getJson, table } from "./common.js";

/** The frontier chart and table of several runs. */
export class FrontierView {
  constructor(chartParent, tableParent, runs) {
    this.runs = runs.map((r, i) => ({ ...r, color: COLORS[i % COLORS.length], points: [] }));
    this.chart = new Chart(chartParent, {
      title: "Perplexity vs active parameters",
      xAxis: "pct",
      xLabel: "active parameters (%)",
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
    const list = withData.map((r) => {
      const ps = r.points.filter((p) => p.active_pct !== null && p.ppl !== null);
      return { x: ps.map((p) => p.active_pct), y: ps.map((p) => p.ppl) };
    });
    const { x, ys } = align(list);
    this.chart.set(x, withData.map((r, i) => ({ label: r.name, color: r.color, values: ys[i] })));
    const many = this.runs.length > 1;
    const rows = withData.flatMap((r) =>
      r.points.map((p) => [
        ...(many ? [r.name] : []),
        el("code", {}, p.rule),
        p.step,
        p.active_pct === null ? "—" : `${fmt(p.active_pct)}%`,
        p.hidden_pct === null ? "—" : `${fmt(p.hidden_pct)}%`,
        p.active_params,
        p.loss,
        p.ppl,
      ])
    );
    const headers = [
      ...(many ? ["run"] : []),
      "rule",
      "step",
      "active %",
      "hidden %",
      "active params",
      "loss",
      "ppl",
    ];
    this.tableParent.replaceChildren(table(headers, rows));
  }
}

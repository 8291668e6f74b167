/**
 * The sweep page's metric-vs-hyperparameter view: one point per sweep point, a chosen metric (best val loss,
 * val ppl, val bpb, train loss) against a chosen swept key, each point in its run's colour. A numeric key is
 * a numeric x axis (log scale on request); any other is a category axis, its values in sorted order.
 *
 * @module
 */
import { Chart } from "./charts.js";
import { fmtBpb, fmtLoss, fmtPpl, fmtValue } from "./format.js";

/** The metrics offered: field of a sweep point → [axis label, format]. */
export const SCATTER_METRICS = {
  best_val_loss: ["best validation loss", fmtLoss],
  last_val_ppl: ["validation perplexity", fmtPpl],
  last_val_bpb: ["validation bits per byte", fmtBpb],
  last_train_loss: ["training loss", fmtLoss],
};

/**
 * The scatter of `points` ([{ id, name, sweep_params, <metric>… }]): `x` (sorted distinct positions),
 * `categories` (the x axis's value names, null when the key is numeric) and one series per point with a
 * metric, `values` null except at its own x. Points without the metric or the key are left out.
 * @param {{ id: string, name: string, sweep_params: Record<string, unknown>, [k: string]: unknown }[]} points
 * @param {string} metric
 * @param {string} param
 */
export function scatterData(points, metric, param) {
  const usable = points.filter((p) =>
    typeof p[metric] === "number" && Number.isFinite(p[metric]) && p.sweep_params?.[param] !== undefined
  );
  const raw = usable.map((p) => p.sweep_params[param]);
  const numeric = raw.every((v) => typeof v === "number" && Number.isFinite(v));
  const categories = numeric ? null : [...new Set(raw.map((v) => fmtValue(v)))].sort();
  const pos = raw.map((v) => (numeric ? v : categories.indexOf(fmtValue(v))));
  const x = [...new Set(pos)].sort((a, b) => a - b);
  const series = usable.map((p, i) => {
    const values = new Array(x.length).fill(null);
    values[x.indexOf(pos[i])] = p[metric];
    return { id: p.id, name: p.name, x: pos[i], value: p[metric], values };
  });
  return { x, categories, series };
}

/** The scatter chart with its two selects and a log-x checkbox. */
export class ScatterView {
  /** `colors`: run id → colour. */
  constructor(parent, { metric, param, log }, colors) {
    this.parent = parent;
    this.selects = { metric, param, log };
    this.colors = colors;
    this.points = [];
    this.chart = null;
    for (const c of [metric, param, log]) c?.addEventListener("change", () => this.draw());
  }

  /** Sets the sweep points and redraws. */
  set(points) {
    this.points = points;
    this.draw();
  }

  draw() {
    const metric = this.selects.metric.value, param = this.selects.param.value;
    const [label, format] = SCATTER_METRICS[metric] ?? [metric, fmtLoss];
    const d = scatterData(this.points, metric, param);
    const canLog = d.categories === null && d.x.length > 0 && d.x[0] > 0;
    if (this.selects.log) this.selects.log.disabled = !canLog;
    const xLog = canLog && Boolean(this.selects.log?.checked);
    // The axis settings are fixed when a chart is built: a new choice builds a new chart.
    this.parent.replaceChildren();
    this.chart = new Chart(this.parent, {
      title: `${label} vs ${param}`,
      xAxis: "value",
      xLabel: param,
      yLabel: label,
      xLog,
      lines: false,
      yFmt: format,
      height: 280,
      // Ticks read as the swept values do in the table (format.js's fmtValue).
      xValues: d.categories
        ? (v) => (Number.isInteger(v) && d.categories[v] !== undefined ? d.categories[v] : "")
        : (v) => fmtValue(v),
    });
    if (d.series.length === 0) {
      this.chart.hide(`No point has both ${param} and a ${label} yet.`);
      return;
    }
    this.chart.set(
      d.x,
      d.series.map((s) => ({ label: s.name, color: this.colors[s.id] ?? "#1f77b4", values: s.values })),
    );
  }
}

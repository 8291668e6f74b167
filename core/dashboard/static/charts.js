/**
 * Line and point charts on uPlot (loaded as the global `uPlot` by /static/uplot.js): a card with a title,
 * that fits its container's width, keeps the user's zoom across live updates, and shares the cursor with
 * the other charts of the page.
 *
 * @module
 */
import { el, fmt, fmtX } from "./common.js";

const _uPlot = globalThis.uPlot;
const _SYNC = "dsmoe";

/**
 * Merges series with their own x values onto one sorted x axis (what uPlot wants), null where a series has
 * no point. `list`: [{ x: number[], y: (number|null)[] }].
 */
export function align(list) {
  const xs = [...new Set(list.flatMap((s) => s.x))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const ys = list.map((s) => {
    const out = new Array(xs.length).fill(null);
    s.x.forEach((x, i) => (out[index.get(x)] = s.y[i]));
    return out;
  });
  return { x: xs, ys };
}

/** A chart card. `o`: { title, xLabel, xAxis ("step" | "tokens" | "time" | "pct"), yLog, points }. */
export class Chart {
  /** @param {HTMLElement} parent */
  constructor(parent, o) {
    this.o = o;
    this.card = el("div", { class: "chart" });
    this.body = el("div", { class: "chart-body" });
    this.card.append(this.body);
    parent.append(this.card);
    this.plot = null;
    this.signature = "";
    this.fullX = null; // [min, max] of the data last shown: a different x scale means the user zoomed
    new ResizeObserver(() => this.plot?.setSize(this.#size())).observe(this.card);
  }

  #size() {
    return { width: Math.max(240, this.card.clientWidth - 16), height: this.o.height ?? 240 };
  }

  /** Hides the card (no data). */
  hide(message) {
    this.plot?.destroy();
    this.plot = null;
    this.signature = "";
    this.body.replaceChildren(
      el("div", { class: "chart-empty" }, el("strong", {}, this.o.title), el("br"), message),
    );
  }

  /**
   * Shows `x` and `series`: [{ label, color, dash?, values }]. The plot is rebuilt only when the set of
   * series changes; otherwise its data is swapped in place, keeping a zoom.
   */
  set(x, series) {
    const signature = JSON.stringify([this.o.xAxis, series.map((s) => [s.label, s.color, s.dash])]);
    const data = [x, ...series.map((s) => s.values)];
    const full = x.length ? [x[0], x[x.length - 1]] : null;
    if (this.plot && signature === this.signature) {
      const sx = this.plot.scales.x;
      const zoomed = this.fullX && (sx.min > this.fullX[0] || sx.max < this.fullX[1]);
      this.fullX = full;
      this.plot.setData(data, !zoomed);
      return;
    }
    this.plot?.destroy();
    this.body.replaceChildren();
    this.signature = signature;
    this.fullX = full;
    this.plot = new _uPlot(this.#options(series), data, this.body);
  }

  #options(series) {
    const axis = this.o.xAxis;
    const xFmt = (v) => (axis === "pct" ? `${fmt(v)}%` : fmtX(v, axis));
    const grid = { stroke: "#eceff3", width: 1 };
    return {
      ...this.#size(),
      title: this.o.title,
      cursor: { sync: { key: _SYNC, setSeries: false }, drag: { x: true, y: false } },
      scales: { x: { time: false }, y: this.o.yLog ? { distr: 3 } : {} },
      legend: { live: true },
      axes: [
        { grid, ticks: grid, label: this.o.xLabel, values: (_u, vals) => vals.map(xFmt), size: 40 },
        { grid, ticks: grid, values: (_u, vals) => vals.map(fmt), size: 56 },
      ],
      series: [
        { label: this.o.xLabel, value: (_u, v) => xFmt(v) },
        ...series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: s.width ?? 1.6,
          dash: s.dash,
          spanGaps: true,
          value: (_u, v) => fmt(v),
          points: this.o.points ? { show: true, size: 8, fill: s.color, stroke: s.color } : { show: false },
        })),
      ],
    };
  }
}

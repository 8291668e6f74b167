/**
 * Line and point charts on uPlot (loaded as the global `uPlot` by /static/uplot.js): a card with a title,
 * that fits its container's width, keeps the user's zoom across live updates, and shares the cursor with
 * the other charts of the page.
 *
 * @module
 */
import { el, fmt, fmtPct, fmtX } from "./common.js";

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

/**
 * A chart card. `o`: { title, xLabel, yLabel, xAxis ("step" | "tokens" | "time" | "pct" | "value"), xLog,
 * yLog, points (draw points), lines (default true: false draws points only, a scatter), xValues (tick text
 * of an x value, for category axes), yFmt (a value's text in the legend, default by `fmt`) }. Each axis is
 * labelled: `xLabel` and `yLabel`.
 */
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
   * Shows `x` and `series`: [{ label, color, dash?, values, fmt?, labels? }] (`labels[i]`: text drawn by
   * point i, such as a frontier's rule names). The plot is rebuilt only when the set of series changes;
   * otherwise its data is swapped in place, keeping a zoom.
   */
  set(x, series) {
    this.series = series;
    const signature = JSON.stringify([
      this.o.xAxis,
      this.o.xLabel,
      this.o.yLabel,
      this.o.xLog,
      series.map((s) => [s.label, s.color, s.dash]),
    ]);
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
    const xFmt = this.o.xValues ??
      ((v) => (axis === "pct" ? fmtPct(v) : axis === "value" ? fmt(v) : fmtX(v, axis)));
    const grid = { stroke: "#eceff3", width: 1 };
    const lines = this.o.lines !== false;
    return {
      ...this.#size(),
      title: this.o.title,
      cursor: { sync: { key: _SYNC, setSeries: false }, drag: { x: true, y: false } },
      scales: {
        x: { time: false, ...(this.o.xLog ? { distr: 3 } : {}) },
        y: this.o.yLog ? { distr: 3 } : {},
      },
      legend: { live: true },
      axes: [
        {
          grid,
          ticks: grid,
          label: this.o.xLabel,
          labelSize: 20,
          values: (_u, vals) => vals.map((v) => (v === null ? "" : xFmt(v))),
          size: 40,
        },
        {
          grid,
          ticks: grid,
          label: this.o.yLabel,
          labelSize: 20,
          values: (_u, vals) => vals.map(fmt),
          size: 56,
        },
      ],
      series: [
        { label: this.o.xLabel, value: (_u, v) => (v === null || v === undefined ? "—" : xFmt(v)) },
        ...series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: s.width ?? 1.6,
          dash: s.dash,
          spanGaps: true,
          value: (_u, v) => (s.fmt ?? this.o.yFmt ?? fmt)(v),
          ...(lines ? {} : { paths: () => null }),
          points: this.o.points || !lines
            ? { show: true, size: 8, fill: s.color, stroke: s.color }
            : { show: false },
        })),
      ],
      hooks: { draw: [(u) => this.#pointLabels(u)] },
    };
  }

  /** Draws each series' `labels` beside its points (the canvas is in device pixels). */
  #pointLabels(u) {
    const list = this.series ?? [];
    if (!list.some((s) => s.labels)) return;
    const ctx = u.ctx, dpr = globalThis.devicePixelRatio || 1;
    ctx.save();
    ctx.font = `${11 * dpr}px system-ui, sans-serif`;
    ctx.textBaseline = "bottom";
    list.forEach((s, si) => {
      if (!s.labels || u.series[si + 1]?.show === false) return;
      ctx.fillStyle = s.color;
      u.data[0].forEach((x, i) => {
        const y = u.data[si + 1][i], text = s.labels[i];
        if (y === null || y === undefined || !text) return;
        const px = u.valToPos(x, "x", true), py = u.valToPos(y, "y", true);
        if (!Number.isFinite(px) || !Number.isFinite(py)) return;
        // Beside the point, or before it where the text would leave the plot on the right.
        const w = ctx.measureText(text).width, right = u.bbox.left + u.bbox.width;
        const tx = px + 6 * dpr + w > right ? px - 6 * dpr - w : px + 6 * dpr;
        ctx.fillText(text, tx, Math.max(u.bbox.top + 12 * dpr, py - 4 * dpr));
      });
    });
    ctx.restore();
  }
}

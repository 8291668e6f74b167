/**
 * Training charts of one or more runs, overlaid: fetched downsampled from /api/runs/:id/metrics, kept
 * live by each running run's SSE stream, redrawn on a choice of x axis and EMA smoothing.
 *
 * @module
 */
import { align, Chart } from "./charts.js";
import { ema, fmtMetric, getJson, runColors, throttle } from "./common.js";

const _MAX_STREAMS = 4;

/**
 * The charts of a page. `specs`: [{ title, keys, yLabel, smooth?, yLog? }], keys drawn in the chart (train/*
 * keys are smoothed when `smooth`). `runs`: [{ id, name, color? }]: each run is drawn in its colour (its
 * `runColor` unless given), a chart's second key dashed.
 */
export class MetricsView {
  constructor(container, runs, specs) {
    const colors = runColors(runs.map((r) => r.id));
    this.runs = runs.map((r, i) => ({ ...r, color: r.color ?? colors[i], series: {}, lastSeq: 0 }));
    this.specs = specs;
    this.keys = [...new Set(specs.flatMap((s) => s.keys))];
    this.axis = "step";
    this.alpha = 0;
    this.charts = specs.map((s) =>
      new Chart(container, { title: s.title, xAxis: "step", xLabel: "step", yLabel: s.yLabel, yLog: s.yLog })
    );
    this.redraw = throttle(() => this.draw(), 200);
    this.listeners = [];
  }

  /** Calls `fn(run, rows)` with each batch of streamed metric rows (other views react to router/infer keys). */
  onRows(fn) {
    this.listeners.push(fn);
  }

  /** (Re)loads every run's series on the current x axis. */
  async load() {
    const q = `keys=${encodeURIComponent(this.keys.join(","))}&x=${this.axis}&max=2000`;
    await Promise.all(this.runs.map(async (r) => {
      const res = await getJson(`/api/runs/${encodeURIComponent(r.id)}/metrics?${q}`);
      r.series = res.series;
      r.lastSeq = Math.max(r.lastSeq, res.last_seq);
    }));
    this.draw();
  }

  setAxis(axis) {
    this.axis = axis;
    return this.load();
  }

  setSmoothing(alpha) {
    this.alpha = alpha;
    this.draw();
  }

  /** Follows an x-axis <select>, a smoothing range input and the <output> that shows its value. */
  bindControls(axis, smoothing, shown) {
    axis.addEventListener("change", () => this.setAxis(axis.value));
    const apply = () => {
      shown.value = Number(smoothing.value).toFixed(2);
      this.setSmoothing(Number(smoothing.value));
    };
    smoothing.addEventListener("input", apply);
    apply();
  }

  /** Appends streamed rows to `run`'s series. */
  append(run, rows) {
    for (const row of rows) {
      if (!this.keys.includes(row.key)) continue;
      const s =
        (run.series[row.key] ??= { step: [], tokens: [], time: [], value: [], count: 0, last_seq: 0 });
      if (row.seq <= s.last_seq) continue; // already in the fetched series
      const xs = s[this.axis], x = row[this.axis];
      // A resumed run logs the steps after its checkpoint again: the new points replace the old ones.
      let n = xs.length;
      while (n > 0 && xs[n - 1] >= x) n--;
      for (const col of ["step", "tokens", "time", "value"]) s[col].length = n;
      s.step.push(row.step), s.tokens.push(row.tokens), s.time.push(row.time), s.value.push(row.value);
      s.last_seq = row.seq;
    }
    // The newest live point received, for people inspecting the page and for the browser test.
    if (rows.length > 0) document.body.dataset.liveSeq = String(rows.at(-1).seq);
    this.redraw();
  }

  /** Opens the live stream of each running run; `onRun(run, info)` hears status changes, `onEvents` events. */
  live({ statuses, afterEvents = {}, onRun, onEvents }) {
    // Browsers open at most 6 connections to one host over HTTP/1.1: leave some for fetches.
    const running = this.runs.filter((r) => statuses[r.id] === "running").slice(0, _MAX_STREAMS);
    for (const run of running) {
      const after = afterEvents[run.id] === undefined ? "" : `&after_events=${afterEvents[run.id]}`;
      const es = new EventSource(
        `/api/runs/${encodeURIComponent(run.id)}/stream?after=${run.lastSeq}${after}`,
      );
      es.addEventListener("metrics", (ev) => {
        const rows = JSON.parse(ev.data);
        this.append(run, rows);
        for (const fn of this.listeners) fn(run, rows);
      });
      es.addEventListener("events", (ev) => onEvents?.(run, JSON.parse(ev.data)));
      es.addEventListener("run", (ev) => {
        const info = JSON.parse(ev.data);
        onRun?.(run, info);
        if (info.status !== "running") es.close();
      });
    }
  }

  /** Redraws every chart from the series held. */
  draw() {
    const many = this.runs.length > 1;
    this.specs.forEach((spec, ci) => {
      const chart = this.charts[ci];
      chart.o.xAxis = this.axis;
      chart.o.xLabel = { step: "step", tokens: "tokens", time: "elapsed time" }[this.axis] ?? this.axis;
      const list = [], meta = [];
      for (const run of this.runs) {
        spec.keys.forEach((key, ki) => {
          const s = run.series[key];
          if (!s || s.value.length === 0) return;
          const smooth = spec.smooth && key.startsWith("train/") ? this.alpha : 0;
          list.push({ x: s[this.axis], y: ema(s.value, smooth) });
          meta.push({
            label: !many ? key : spec.keys.length > 1 ? `${run.name} · ${key}` : run.name,
            color: run.color,
            dash: ki > 0 ? [6, 3] : undefined,
            fmt: (v) => fmtMetric(key, v),
            width: ki > 0 ? 1.4 : 1.6,
          });
        });
      }
      if (list.length === 0) return chart.hide(`No ${spec.keys.join(", ")} points yet.`);
      const { x, ys } = align(list);
      chart.set(x, meta.map((m, i) => ({ ...m, values: ys[i] })));
    });
  }
}

/**
 * Metric rows of the store shaped for charts: columnar series per key (ordered by the chosen x axis,
 * downsampled), the expert-load heatmap of each router layer, and the sparsity frontier of `eval`'s
 * `infer/<rule>/…` metrics.
 *
 * @module
 */
import type { MetricRow } from "../runs/store.ts";
import { downsample } from "./downsample.ts";
import { SeriesBuilder } from "./series_builder.ts";
import type { XAxis } from "./x_axis.ts";

/** One metric of one run, as columns of equal length. */
export interface Series {
  step: number[];
  tokens: number[];
  time: number[];
  value: number[];
  count: number; // points stored before downsampling
  last_seq: number; // highest seq among them: a live client skips streamed points at or below it
}

/**
 * Groups `rows` by key; orders each group by `x` and keeps the newest point (highest seq) of each x value
 * (a resumed run logs the steps after its checkpoint again); then downsamples to at most `max` points.
 *
 * @example
 * ```ts
 * import { buildSeries } from "./series.ts";
 * const rows = [
 *   { seq: 1, key: "train/loss", step: 1, tokens: 64, time: 0.1, value: 5 },
 *   { seq: 2, key: "train/loss", step: 2, tokens: 128, time: 0.2, value: 4 },
 * ];
 * console.log(buildSeries(rows, "step", 100)["train/loss"]!.value); // [5, 4]
 * ```
 */
export function buildSeries(rows: readonly MetricRow[], x: XAxis, max: number): Record<string, Series> {
  const byKey = new Map<string, MetricRow[]>();
  for (const r of rows) {
    const list = byKey.get(r.key);
    if (list) list.push(r);
    else byKey.set(r.key, [r]);
  }
  const out: Record<string, Series> = {};
  for (const [key, list] of byKey) out[key] = seriesOf(SeriesBuilder.from(list, x), max);
  return out;
}

/** The series a builder holds, downsampled further to at most `max` points. */
export function seriesOf(b: SeriesBuilder, max: number): Series {
  const kept = downsample(b.rows(), (r) => r.value, max);
  return {
    step: kept.map((r) => r.step),
    tokens: kept.map((r) => r.tokens),
    time: kept.map((r) => r.time),
    value: kept.map((r) => r.value),
    count: b.count,
    last_seq: b.lastSeq,
  };
}

/** The routers whose load a heatmap shows. */
export type RouterKind = "attention" | "mlp";

/** One router layer's load over time. */
export interface HeatmapLayer {
  layer: number;
  experts: number;
  values: (number | null)[][]; // (experts, steps): top-1 token share, null where not logged
  entropy: (number | null)[]; // (steps)
}

/** Expert load of every layer of one router kind, on shared steps. */
export interface Heatmap {
  kind: RouterKind;
  steps: number[];
  layers: HeatmapLayer[];
}

const _LOAD = /^router\/(\d+)\/(attention|mlp)\/(load\/(\d+)|entropy)$/;

/**
 * The expert-load heatmaps of `kind` from `router/<layer>/<kind>/load/<expert>` and `…/entropy` rows, on at
 * most `maxSteps` evenly spaced steps (the last always kept).
 */
export function buildHeatmap(rows: readonly MetricRow[], kind: RouterKind, maxSteps = 600): Heatmap {
  const cells = new Map<number, Map<number, Map<number, MetricRow>>>(); // layer → expert (−1: entropy) → step
  const allSteps = new Set<number>();
  for (const r of rows) {
    const m = _LOAD.exec(r.key);
    if (!m || m[2] !== kind) continue;
    const layer = Number(m[1]), expert = m[4] === undefined ? -1 : Number(m[4]);
    let byExpert = cells.get(layer);
    if (!byExpert) cells.set(layer, byExpert = new Map());
    let byStep = byExpert.get(expert);
    if (!byStep) byExpert.set(expert, byStep = new Map());
    const prev = byStep.get(r.step);
    if (!prev || prev.seq < r.seq) byStep.set(r.step, r);
    allSteps.add(r.step);
  }
  const steps = _spread([...allSteps].sort((a, b) => a - b), maxSteps);
  const at = (byStep: Map<number, MetricRow> | undefined) => steps.map((s) => byStep?.get(s)?.value ?? null);
  const layers = [...cells.keys()].sort((a, b) => a - b).map((layer): HeatmapLayer => {
    const byExpert = cells.get(layer)!;
    const experts = Math.max(-1, ...byExpert.keys()) + 1;
    return {
      layer,
      experts,
      values: Array.from({ length: experts }, (_, e) => at(byExpert.get(e))),
      entropy: at(byExpert.get(-1)),
    };
  });
  return { kind, steps, layers };
}

/** At most `max` of sorted `steps`, evenly spaced, first and last kept. */
function _spread(steps: number[], max: number): number[] {
  if (steps.length <= max) return steps;
  const out: number[] = [];
  for (let i = 0; i < max; i++) out.push(steps[Math.round((i * (steps.length - 1)) / (max - 1))]!);
  return [...new Set(out)];
}

/** One inference rule's point on the sparsity frontier: its newest evaluation. */
export interface FrontierPoint {
  rule: string; // e.g. "threshold@0.5", "dense"
  step: number; // the checkpoint step evaluated
  ppl: number | null;
  loss: number | null;
  active_pct: number | null; // active parameters, % of the non-embedding ones (docs/design.md §5)
  hidden_pct: number | null; // % of the attention and MLP weights, as eval stored it (docs/design.md §5)
  active_pct_all: number | null; // % of all parameters, embeddings included (null: evaluated before it was stored)
  active_params: number | null;
}

const _INFER = /^infer\/(.+)\/(ppl|loss|active_pct|hidden_pct|active_pct_all|active_params)$/;
type _Field = "ppl" | "loss" | "active_pct" | "hidden_pct" | "active_pct_all" | "active_params";

/**
 * The sparsity frontier of a run: for each rule of `infer/<rule>/{ppl,active_pct,…}` rows, the values of its
 * newest evaluated step; ordered by active %.
 */
export function buildFrontier(rows: readonly MetricRow[]): FrontierPoint[] {
  const byRule = new Map<string, Map<number, Map<_Field, MetricRow>>>();
  for (const r of rows) {
    const m = _INFER.exec(r.key);
    if (!m) continue;
    const rule = m[1]!, field = m[2] as _Field;
    let bySteps = byRule.get(rule);
    if (!bySteps) byRule.set(rule, bySteps = new Map());
    let fields = bySteps.get(r.step);
    if (!fields) bySteps.set(r.step, fields = new Map());
    const prev = fields.get(field);
    if (!prev || prev.seq < r.seq) fields.set(field, r);
  }
  const points: FrontierPoint[] = [];
  for (const [rule, bySteps] of byRule) {
    const step = Math.max(...bySteps.keys());
    const f = bySteps.get(step)!;
    const v = (k: _Field) => f.get(k)?.value ?? null;
    points.push({
      rule,
      step,
      ppl: v("ppl"),
      loss: v("loss"),
      active_pct: v("active_pct"),
      hidden_pct: v("hidden_pct"),
      active_pct_all: v("active_pct_all"),
      active_params: v("active_params"),
    });
  }
  return points.sort((a, b) =>
    (a.active_pct ?? Infinity) - (b.active_pct ?? Infinity) || (a.rule < b.rule ? -1 : 1)
  );
}

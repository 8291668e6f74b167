/**
 * The router study's report, computed from the run store alone (docs/design.md "The router study"): the runs
 * of the study's sweep, their resolved configs and their `infer/<rule>/…`, `router/…` and `generate/…`
 * metric points. It holds the matrix (rows: the baseline and each training router; columns: the inference
 * rules; cells: ppl, bpb, measured active and hidden %, the sparse evaluation's tokens/s), each router's
 * frontier (quality against measured active parameters, Pareto points marked), the size check from the
 * stored configs, and the routing diagnostics.
 *
 * @module
 */
import { parseExperimentText } from "../config/mod.ts";
import type { Experiment } from "../config/schema.ts";
import type { RouterDiagnostics } from "../infer/diagnostics.ts";
import { ruleName } from "../infer/evaluate.ts";
import { readRoutingDiagnostics } from "../infer/record.ts";
import { denseRules } from "../infer/rule_spec.ts";
import { countParams } from "../plan/counts.ts";
import type { InferRules } from "../plan/model.ts";
import { configRules } from "../plan/plan.ts";
import { type MetricRow, preferredRun, type RunRecord, type RunStore } from "../runs/store.ts";
import type {
  StudyCell,
  StudyDiagnostics,
  StudyFrontierPoint,
  StudyModelRow,
  StudyReport,
  StudyRouterLayer,
} from "../runs/study_types.ts";
import { fmtRate } from "../util/quantities.js";
import { routedSides } from "./pipeline.ts";
import { SMOKE_TEST_SCALES } from "./report.ts";
import { BASELINE, checkSizes, OWN_RULE, type StudyRule, type StudySpec } from "./study_spec.ts";

/** What a smoke-test scale's study report says first. */
export const STUDY_SMOKE_NOTE =
  "This is a smoke test of the pipeline (training, evaluation, the report, the " +
  "dashboard), not a comparison: its models are too small and too briefly trained for the differences " +
  "between routers to mean anything.";

/** What the matrix's tokens/s measure (the report says it beside the matrix). */
export const SPEED_NOTE = "tokens/s is the sparse evaluation's (`infer/<rule>/tokens_per_s`): validation " +
  "batches of batch × seq_len tokens through the rule's compiled sparse graph, each batch's loss and " +
  "routing masks read back; not token-by-token decoding (see Decoding).";

/**
 * The diagnostics of each (router, rule) cell: what each is, read from the run's stored metrics at the
 * checkpoint evaluated (`infer/<rule>/…` and, from the study's evaluation with diagnostics, `diag/<rule>/…`,
 * core/infer/record.ts). Rule-independent diagnostics (entropy, MI(expert; domain), stability) are the
 * model's: {@linkcode StudyDiagnostics}.
 */
export const CELL_DIAGNOSTICS: readonly {
  id: string;
  label: string;
  value: (last: ReadonlyMap<string, MetricRow>, rule: string, c: Readonly<Experiment>) => number | null;
}[] = [
  {
    id: "mlp_experts",
    label: "MLP experts per token",
    value: (last, rule) => _diagnostic(last, `infer/${rule}/layer/*/mlp/experts`),
  },
  {
    id: "attention_experts",
    label: "attention experts per token",
    value: (last, rule) => _diagnostic(last, `infer/${rule}/layer/*/attention/experts`),
  },
  {
    id: "coactivation",
    label: "co-activation (tokens running both experts of a pair, mean over pairs)",
    value: (last, rule, c) =>
      meanCoactivation(readRoutingDiagnostics(last.values(), rule), c.router.null_experts),
  },
];

/**
 * Expert co-activation as one number: over every routed block, the mean over pairs i < j of its real experts
 * of the share of tokens for which both run (0 under top-1, 1 when every expert runs); a router's last
 * `nullExperts` columns are null experts (router.null_experts: no parameters, nothing runs) and are left out.
 * Null without stored diagnostics.
 */
export function meanCoactivation(routers: readonly RouterDiagnostics[], nullExperts = 0): number | null {
  let sum = 0, n = 0;
  for (const r of routers) {
    const real = r.experts - nullExperts;
    for (let i = 0; i < real; i++) {
      for (let j = i + 1; j < real; j++) {
        const v = r.coactivation[i]?.[j];
        if (v === undefined || !Number.isFinite(v)) continue;
        sum += v;
        n++;
      }
    }
  }
  return n === 0 ? null : sum / n;
}

/** What the report is built from besides the store: the manifest's rows, columns and size tolerance. */
export interface StudyReportOptions {
  name: string;
  scale: string;
  /** The models in row order (baseline first) and the run name of each one's current config. */
  models: readonly { name: string; pointName: string }[];
  rules: readonly StudyRule[];
  size: StudySpec["size"];
}

/** Builds the report of study sweep `id` from the store. */
export async function buildStudyReport(
  store: RunStore,
  id: string,
  o: StudyReportOptions,
): Promise<StudyReport> {
  const runs = await store.listRuns({ sweepId: id });
  const models: StudyModelRow[] = [], cells: StudyCell[] = [];
  const frontier: StudyReport["frontier"] = [], diagnostics: StudyDiagnostics[] = [];
  const decode: StudyReport["decode"] = [], sizes: { name: string; params: number }[] = [];
  for (const { name, pointName } of o.models) {
    const run = preferredRun(runs.filter((r) => r.sweep_params.router === name && r.name === pointName));
    if (!run) {
      models.push(_untrained(name));
      for (const r of o.rules) cells.push(_naCell(name, r.spec, null, "not trained (its training failed)"));
      continue;
    }
    const c = parseExperimentText(run.config_yaml, `store:${run.id}`).points[0]!.config;
    const last = await store.lastMetrics(run.id);
    const row = _modelRow(name, run, c);
    models.push(row);
    sizes.push({ name, params: row.params_total });
    const mine = o.rules.map((r) => _cell(name, r, run.id, c, last));
    cells.push(...mine);
    if (row.routed) frontier.push({ model: name, run_id: run.id, points: studyFrontier(mine) });
    diagnostics.push(_diagnostics(name, run.id, c, last, mine));
    const speed = last.get(`generate/${row.infer}/tokens_per_s`);
    if (speed) decode.push({ model: name, rule: row.infer, tokens_per_s: speed.value });
  }
  const baselinePpl = cells.find((x) => x.model === BASELINE && x.rule === "dense")?.ppl ?? null;
  for (const x of cells) x.dppl_pct = x.ppl !== null && baselinePpl ? (x.ppl / baselinePpl - 1) * 100 : null;
  const size = checkSizes(sizes, o.size);
  return {
    id,
    name: o.name,
    scale: o.scale,
    caveat: SMOKE_TEST_SCALES.includes(o.scale) ? STUDY_SMOKE_NOTE : null,
    created_at: new Date().toISOString(),
    sweep_id: id,
    baseline: BASELINE,
    baseline_ppl: baselinePpl,
    rules: o.rules.map((r) => ({ spec: r.spec, label: r.spec === OWN_RULE ? "own (router.infer)" : r.spec })),
    models,
    cells,
    size: {
      tolerance: size.tolerance,
      on_mismatch: size.onMismatch,
      baseline_params: size.baselineParams,
      within: size.within,
      rows: size.rows,
    },
    frontier,
    diagnostics,
    diagnostic_labels: Object.fromEntries(CELL_DIAGNOSTICS.map((d) => [d.id, d.label])),
    decode,
  };
}

/** How a config trains its routers: `router.train` and the router losses with a weight. */
export function trainingText(c: Readonly<Experiment>): string {
  const s = routedSides(c);
  if (!s.mlp && !s.attention) return "dense model";
  const r = c.router, l = c.loss, parts: string[] = [r.train === "topk" ? `topk (k ${r.k})` : r.train];
  if (l.mi.attention > 0 || l.mi.mlp > 0) parts.push(`MI ${fmtRate(l.mi.attention)} / ${fmtRate(l.mi.mlp)}`);
  if (l.load_balance > 0) parts.push(`load balance ${fmtRate(l.load_balance)}`);
  if (l.z > 0) parts.push(`z ${fmtRate(l.z)}`);
  return parts.join(", ");
}

function _modelRow(name: string, run: RunRecord, c: Readonly<Experiment>): StudyModelRow {
  const s = routedSides(c), routed = s.mlp || s.attention;
  return {
    name,
    run_id: run.id,
    status: run.status,
    step: run.step,
    train: trainingText(c),
    infer: routed ? ruleName(configRules(c), s) : "dense",
    routed,
    params_total: countParams(c).total,
  };
}

function _untrained(name: string): StudyModelRow {
  return {
    name,
    run_id: null,
    status: null,
    step: null,
    train: "—",
    infer: "—",
    routed: name !== BASELINE,
    params_total: 0,
  };
}

function _naCell(model: string, rule: string, runId: string | null, why: string): StudyCell {
  return {
    model,
    rule,
    rule_name: null,
    run_id: runId,
    ppl: null,
    bpb: null,
    loss: null,
    active_params: null,
    active_pct: null,
    hidden_pct: null,
    tokens_per_s: null,
    dppl_pct: null,
    na: why,
  };
}

/** The metric name a column's rule has on a model ("dense" for a model without routers). */
export function cellRuleName(r: StudyRule, c: Readonly<Experiment>): string {
  const s = routedSides(c);
  if (!s.mlp && !s.attention) return "dense";
  const rules: InferRules = r.rules === OWN_RULE ? configRules(c) : r.rules;
  return ruleName(rules, s);
}

/** The rules a model is evaluated under: every column's, or only dense for a model without routers. */
export function modelRules(rules: readonly StudyRule[], c: Readonly<Experiment>): InferRules[] {
  const s = routedSides(c);
  if (!s.mlp && !s.attention) return [denseRules()];
  return rules.map((r) => (r.rules === OWN_RULE ? configRules(c) : r.rules));
}

function _cell(
  model: string,
  r: StudyRule,
  runId: string,
  c: Readonly<Experiment>,
  last: ReadonlyMap<string, MetricRow>,
): StudyCell {
  const s = routedSides(c);
  if (!s.mlp && !s.attention && r.spec !== "dense") {
    return _naCell(model, r.spec, runId, "no routers: every rule runs the whole model (see dense)");
  }
  const name = cellRuleName(r, c);
  const v = (k: string) => last.get(`infer/${name}/${k}`)?.value ?? null;
  if (v("ppl") === null) return _naCell(model, r.spec, runId, `not evaluated under ${name}`);
  return {
    model,
    rule: r.spec,
    rule_name: name,
    run_id: runId,
    ppl: v("ppl"),
    bpb: v("bpb"),
    loss: v("loss"),
    active_params: v("active_params"),
    active_pct: v("active_pct"),
    hidden_pct: v("hidden_pct"),
    tokens_per_s: v("tokens_per_s"),
    dppl_pct: null,
    na: null,
  };
}

/**
 * A router's frontier from its cells: one point per distinct rule measured, by measured active parameters
 * then ppl, each marked Pareto-optimal when no other point has fewer or as many active parameters and a
 * lower or equal ppl (one of the two strictly).
 *
 * @example
 * ```ts
 * import { studyFrontier } from "./study_report.ts";
 * const cell = (rule: string, active_params: number, ppl: number) => ({
 *   model: "m", rule, rule_name: rule, run_id: "r", ppl, bpb: 1, loss: 1, active_params, active_pct: 0,
 *   hidden_pct: 0, tokens_per_s: null, dppl_pct: null, na: null,
 * });
 * const f = studyFrontier([cell("dense", 100, 10), cell("a", 50, 11), cell("b", 60, 12)]);
 * console.log(f.map((p) => `${p.rule}:${p.pareto}`).join(" ")); // a:true b:false dense:true
 * ```
 */
export function studyFrontier(cells: readonly StudyCell[]): StudyFrontierPoint[] {
  const seen = new Set<string>(), points: StudyFrontierPoint[] = [];
  for (const x of cells) {
    if (x.rule_name === null || x.ppl === null || x.active_params === null || seen.has(x.rule_name)) continue;
    seen.add(x.rule_name);
    points.push({
      rule: x.rule,
      rule_name: x.rule_name,
      active_params: x.active_params,
      active_pct: x.active_pct ?? NaN,
      hidden_pct: x.hidden_pct ?? NaN,
      ppl: x.ppl,
      bpb: x.bpb,
      pareto: false,
    });
  }
  for (const p of points) {
    p.pareto = !points.some((q) =>
      q !== p && q.active_params <= p.active_params && q.ppl <= p.ppl &&
      (q.active_params < p.active_params || q.ppl < p.ppl)
    );
  }
  return points.sort((a, b) => a.active_params - b.active_params || a.ppl - b.ppl);
}

/** Per-expert load and routing entropy of each routed block, and the per-(router, rule) diagnostics. */
function _diagnostics(
  model: string,
  runId: string,
  c: Readonly<Experiment>,
  last: ReadonlyMap<string, MetricRow>,
  cells: readonly StudyCell[],
): StudyDiagnostics {
  const layers: StudyRouterLayer[] = [];
  let step: number | null = null;
  for (let l = 0; l < c.model.layers; l++) {
    for (const kind of ["attention", "mlp"]) {
      const entropy = last.get(`router/${l}/${kind}/entropy`);
      if (!entropy) continue;
      const load: number[] = [];
      for (let e = 0; last.has(`router/${l}/${kind}/load/${e}`); e++) {
        load.push(last.get(`router/${l}/${kind}/load/${e}`)!.value);
      }
      layers.push({
        layer: l,
        kind,
        load,
        load_cv: coefficientOfVariation(load),
        max_load: load.length > 0 ? Math.max(...load) : NaN,
        entropy: entropy.value,
      });
      step = Math.max(step ?? 0, entropy.step);
    }
  }
  const mean = (f: (x: StudyRouterLayer) => number) =>
    layers.length === 0 ? null : layers.reduce((a, x) => a + f(x), 0) / layers.length;
  const seen = new Set<string>();
  const perCell = cells.filter((x) => x.rule_name !== null && !seen.has(x.rule_name) && seen.add(x.rule_name))
    .map((x) => ({
      rule: x.rule_name!,
      values: Object.fromEntries(CELL_DIAGNOSTICS.map((d) => [d.id, d.value(last, x.rule_name!, c)])),
    }));
  return {
    model,
    run_id: runId,
    step,
    layers,
    mean_load_cv: mean((x) => x.load_cv),
    mean_entropy: mean((x) => x.entropy),
    eval_entropy: last.get("diag/dense/entropy")?.value ?? null,
    mi_domain_bits: last.get("diag/dense/mi_domain_bits")?.value ?? null,
    domain_entropy_bits: last.get("diag/dense/domain_entropy_bits")?.value ?? null,
    top1_changed: last.get("diag/dense/top1_changed")?.value ?? null,
    stability_against: last.get("diag/dense/against_step")?.value ?? null,
    cells: perCell,
  };
}

/** A diagnostic's stored value; a key with `*` is the mean over the keys it matches (e.g. over layers). */
function _diagnostic(last: ReadonlyMap<string, MetricRow>, key: string): number | null {
  if (!key.includes("*")) return last.get(key)?.value ?? null;
  const [head, tail] = key.split("*", 2) as [string, string];
  const xs: number[] = [];
  for (const [k, row] of last) {
    if (
      k.startsWith(head) && k.endsWith(tail) && !k.slice(head.length, k.length - tail.length).includes("/")
    ) {
      xs.push(row.value);
    }
  }
  return xs.length === 0 ? null : xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** Population standard deviation over mean; NaN for no values. */
export function coefficientOfVariation(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  return Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / xs.length) / mean;
}

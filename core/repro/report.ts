/**
 * The reproduction report, computed from the run store alone: the runs of one repro sweep, their resolved
 * configs, and their `infer/…`, `router/…` and `generate/…` metric points. Nothing is passed in from the
 * training or evaluation that produced them, so a report can be rebuilt at any time and checked against the
 * store. Each claim of the paper is judged by a stated test on the measured numbers, and reported as not
 * holding when it does not. Active %, hidden % and the share of all parameters of every model are
 * recomputed from its stored experts per layer by the one definition of docs/design.md §5 (core/plan/counts.ts
 * `activeOfLayers`), so the SMoE and DS-MoE rows are compared by the same rule whatever code evaluated them:
 * hidden % is a share of the same weights for every model (its attention and MLP blocks, routed or not).
 *
 * @module
 */
import { fmtChange, fmtPpl } from "../util/quantities.js";
import { parseExperimentText } from "../config/mod.ts";
import type { Experiment } from "../config/schema.ts";
import { ruleName } from "../infer/evaluate.ts";
import {
  activeOfLayers,
  activeOfSkipped,
  countParams,
  type LayerExperts,
  layerShape,
} from "../plan/counts.ts";
import type { InferRules } from "../plan/model.ts";
import { configRules } from "../plan/plan.ts";
import { fmtCount } from "../util/format.ts";
import { type MetricRow, preferredRun, type RunRecord, type RunStore } from "../runs/store.ts";
import { ABLATION_ROLES, MODEL_ROLES, type Role } from "./spec.ts";

/** One model of the main table, at the rule it is compared under. */
export interface ModelRow {
  role: Role;
  run_id: string;
  name: string;
  status: string;
  step: number;
  rule: string;
  params_total: number;
  active_params: number | null;
  active_pct: number | null; // of the non-embedding parameters (docs/design.md §5)
  hidden_pct: number | null; // of the hidden parameters: attention Q/K/V/O and MLP weights, routed or not
  active_pct_all: number | null; // of all parameters, embeddings included
  hidden_params: number; // the hidden parameters hidden % is a share of (docs/design.md §5)
  ppl: number | null;
  bpb: number | null; // bits per byte of the same evaluation (compares models of different tokenizers)
}

/** A point of a model's sparsity frontier. */
export interface FrontierRow {
  rule: string;
  active_params: number;
  active_pct: number;
  hidden_pct: number;
  active_pct_all: number;
  ppl: number;
  bpb: number;
  dppl_pct: number; // against the same model evaluated densely
}

/** One DS-MoE model of the MI-weight sweep: its weights, quality and routing at the claim rule. */
export interface MiRow {
  role: Role;
  run_id: string;
  mi_attention: number;
  mi_mlp: number;
  dense_ppl: number | null; // the model evaluated with every expert
  ppl: number | null; // at the claim rule
  bpb: number | null;
  hidden_pct: number | null;
  mean_entropy: number | null;
  mean_prob_cv: number | null;
  /** The fewest hidden % active on its frontier with ppl within PPL_TOLERANCE of the dense model's. */
  within: { rule: string; hidden_pct: number; ppl: number } | null;
}

/** Router load balance and sharpness of one router at the last validation. */
export interface RouterRow {
  layer: number;
  kind: string;
  experts: number;
  prob_cv: number; // coefficient of variation across experts of the mean router probability
  load_cv: number; // … of the top-1 token share (Switch's f_i)
  entropy: number; // mean per-token routing entropy (nats)
}

/** A claim of the paper and whether the measured numbers support it (null: not measured). */
export interface Claim {
  id: number;
  claim: string;
  test: string;
  held: boolean | null;
  evidence: string;
}

/** The report's data (stored as JSON beside its Markdown). */
export interface ReproReport {
  id: string;
  scale: string;
  /**
   * Why the claims of this scale mean nothing ({@linkcode SMOKE_TEST_NOTE} for a {@linkcode SMOKE_TEST_SCALES}
   * scale), or null; the Markdown and the terminal summary state it first.
   */
  caveat: string | null;
  claim_rule: string;
  created_at: string;
  models: ModelRow[];
  frontier: { role: Role; run_id: string; rows: FrontierRow[] }[];
  routers: {
    role: Role;
    run_id: string;
    step: number;
    mean_prob_cv: number;
    mean_load_cv: number;
    mean_entropy: number;
    rows: RouterRow[];
  }[];
  decode: { role: Role; rule: string; tokens_per_s: number; vs_dense: number | null }[];
  /** DS-MoE at each MI weight of the manifest (the paper's, α = 0, and the ablation's others). */
  mi: MiRow[];
  claims: Claim[];
}

/** Claim 1: DS-MoE's perplexity is within this fraction of the dense model's. */
export const PPL_TOLERANCE = 0.05;
/** Claim 2: at most this percentage of hidden parameters (attention and MLP weights, docs/design.md §5) active. */
export const MAX_HIDDEN_PCT = 50;
/** Claim 4: the expert-probability CV with the MI loss may exceed α = 0's by at most this and count as balanced. */
export const CV_SLACK = 0.05;
/**
 * Claim 3: SMoE's perplexity must exceed DS-MoE's by more than this fraction to count as worse (1%): a
 * difference within run-to-run noise (seeds, the order of float sums) decides nothing.
 */
export const WORSE_MARGIN = 0.01;
/**
 * Claim 4: DS-MoE's mean routing entropy must be lower than α = 0's by at least this fraction (1%) to count
 * as sharper, for the same reason.
 */
export const ENTROPY_MARGIN = 0.01;

/** Scales that are smoke tests of the pipeline: models too small and too briefly trained to test a claim. */
export const SMOKE_TEST_SCALES: readonly string[] = ["micro"];
/** What a smoke-test scale's report says first. */
export const SMOKE_TEST_NOTE =
  "This is a smoke test of the pipeline (training, evaluation, decoding, the report), not a reproduction: " +
  "its models are too small and too briefly trained for the claims to mean anything, held or not. " +
  "Run `deno task repro` (--scale small) or `deno task repro --data real` for claims that do.";

/** Builds the report of repro sweep `id` from the store. */
export async function buildReproReport(
  store: RunStore,
  id: string,
  o: { scale: string; claimRule: InferRules },
): Promise<ReproReport> {
  const runs = await _runsByRole(store, id);
  const models: ModelRow[] = [];
  const frontier: ReproReport["frontier"] = [];
  const routers: ReproReport["routers"] = [];
  const decode: ReproReport["decode"] = [];
  const rows = new Map<Role, ModelRow>();
  let claimRuleName = "";
  for (const role of [...MODEL_ROLES, ...ABLATION_ROLES]) {
    const run = runs.get(role);
    if (!run) continue;
    const c = parseExperimentText(run.config_yaml, `store:${run.id}`).points[0]!.config;
    const last = await store.lastMetrics(run.id);
    const shape = layerShape(c), routed = { mlp: shape.routedMlp, attention: shape.routedAtt };
    const anyRouted = routed.mlp || routed.attention;
    // DS-MoE models under the claim rule; the others under their own inference rule.
    const rules = role === "smoe" ? configRules(c) : o.claimRule;
    const rule = anyRouted ? ruleName(rules, routed) : "dense";
    if (role === "dsmoe") claimRuleName = rule;
    const v = (k: string) => last.get(`infer/${rule}/${k}`)?.value ?? null;
    const p = countParams(c);
    const row: ModelRow = {
      role,
      run_id: run.id,
      name: run.name,
      status: run.status,
      step: run.step,
      rule,
      params_total: p.total,
      ...ruleShares(last, rule, c),
      hidden_params: activeOfSkipped(c, 0).hidden,
      ppl: v("ppl"),
      bpb: v("bpb"),
    };
    models.push(row);
    rows.set(role, row);
    frontier.push({ role, run_id: run.id, rows: _frontier(last, c) });
    const r = _routers(last, c);
    if (r.rows.length > 0) routers.push({ role, run_id: run.id, ...r });
    const speed = last.get(`generate/${rule}/tokens_per_s`);
    if (speed) decode.push({ role, rule, tokens_per_s: speed.value, vs_dense: null });
  }
  const denseSpeed = decode.find((d) => d.role === "dense")?.tokens_per_s;
  for (const d of decode) d.vs_dense = denseSpeed ? d.tokens_per_s / denseSpeed : null;
  const mi = _miRows(runs, rows, frontier, routers);
  return {
    id,
    scale: o.scale,
    caveat: SMOKE_TEST_SCALES.includes(o.scale) ? SMOKE_TEST_NOTE : null,
    claim_rule: claimRuleName,
    created_at: new Date().toISOString(),
    models,
    frontier,
    routers,
    decode,
    mi,
    claims: judgeClaims(rows, routers),
  };
}

/** The DS-MoE models of the MI-weight sweep, ordered by their MLP router's MI weight. */
function _miRows(
  runs: Map<Role, RunRecord>,
  rows: Map<Role, ModelRow>,
  frontier: ReproReport["frontier"],
  routers: ReproReport["routers"],
): MiRow[] {
  const densePpl = rows.get("dense")?.ppl ?? null;
  const out: MiRow[] = [];
  for (const role of ["dsmoe", ...ABLATION_ROLES] as Role[]) {
    const run = runs.get(role), row = rows.get(role);
    if (!run || !row) continue;
    const c = parseExperimentText(run.config_yaml, `store:${run.id}`).points[0]!.config;
    const f = frontier.find((x) => x.role === role)?.rows ?? [];
    const r = routers.find((x) => x.role === role);
    out.push({
      role,
      run_id: run.id,
      mi_attention: c.loss.mi.attention,
      mi_mlp: c.loss.mi.mlp,
      dense_ppl: f.find((x) => x.rule === "dense")?.ppl ?? null,
      ppl: row.ppl,
      bpb: row.bpb,
      hidden_pct: row.hidden_pct,
      mean_entropy: r?.mean_entropy ?? null,
      mean_prob_cv: r?.mean_prob_cv ?? null,
      within: densePpl === null ? null : fewestWithin(f, densePpl * (1 + PPL_TOLERANCE)),
    });
  }
  return out.sort((a, b) => a.mi_mlp - b.mi_mlp);
}

/**
 * Of a model's frontier, the rule with the fewest hidden parameters active whose ppl is at most `maxPpl`
 * (null when none is).
 *
 * @example
 * ```ts
 * import { fewestWithin } from "./report.ts";
 * const row = (rule: string, hidden_pct: number, ppl: number) =>
 *   ({ rule, hidden_pct, ppl, active_params: 0, active_pct: 0, active_pct_all: 0, bpb: 0, dppl_pct: 0 });
 * const f = [row("dense", 100, 10), row("threshold@0.5", 40, 10.4), row("topk@1", 15, 13)];
 * console.log(fewestWithin(f, 10.5)?.rule); // "threshold@0.5"
 * ```
 */
export function fewestWithin(
  rows: readonly FrontierRow[],
  maxPpl: number,
): { rule: string; hidden_pct: number; ppl: number } | null {
  let best: FrontierRow | null = null;
  for (const r of rows) {
    if (r.ppl <= maxPpl && (best === null || r.hidden_pct < best.hidden_pct)) best = r;
  }
  return best ? { rule: best.rule, hidden_pct: best.hidden_pct, ppl: best.ppl } : null;
}

/** The run of each role in the sweep: its newest finished one, else its newest. */
async function _runsByRole(store: RunStore, id: string): Promise<Map<Role, RunRecord>> {
  const runs = await store.listRuns({ sweepId: id }), out = new Map<Role, RunRecord>();
  for (const role of [...MODEL_ROLES, ...ABLATION_ROLES]) {
    const run = preferredRun(runs.filter((r) => r.sweep_params.role === role));
    if (run) out.set(role, run);
  }
  return out;
}

/** A rule's shares of {@linkcode ruleShares}; null where the rule was not evaluated. */
export interface RuleShares {
  active_params: number | null;
  active_pct: number | null;
  hidden_pct: number | null;
  active_pct_all: number | null;
}

/**
 * The shares of `rule` on the model of config `c` (docs/design.md §5): from its stored experts per layer
 * (`infer/<rule>/layer/<l>/<kind>/experts`) through core/plan/counts.ts `activeOfLayers`, the function eval
 * itself uses, so that the numbers of every model follow one definition even when an older eval stored them
 * under another (before 2026-12-06 `hidden_pct` was a share of the routed experts only). A routed kind without
 * stored layers (an eval from before they were stored) takes the skipped parameters from the stored
 * `active_params` (the non-embedding parameters less them, a count whose definition never changed) through
 * `activeOfSkipped`. A rule without a stored `ppl` (not evaluated), or with neither layers nor `active_params`,
 * has nulls.
 */
export function ruleShares(
  last: ReadonlyMap<string, MetricRow>,
  rule: string,
  c: Readonly<Experiment>,
): RuleShares {
  const stored = (k: string) => last.get(`infer/${rule}/${k}`)?.value ?? null;
  const none = { active_params: null, active_pct: null, hidden_pct: null, active_pct_all: null };
  if (!last.has(`infer/${rule}/ppl`)) return none;
  const prefix = `infer/${rule}/layer/`, layers: LayerExperts[] = [];
  for (const [key, row] of last) {
    const m = key.startsWith(prefix)
      ? /^(\d+)\/(attention|mlp)\/experts$/.exec(key.slice(prefix.length))
      : null;
    if (m) layers.push({ kind: m[2] as LayerExperts["kind"], experts: row.value });
  }
  const s = layerShape(c), has = (kind: LayerExperts["kind"]) => layers.some((l) => l.kind === kind);
  const noLayers = (s.routedAtt && !has("attention")) || (s.routedMlp && !has("mlp"));
  const active = stored("active_params");
  if (noLayers && active === null) return none;
  const a = noLayers ? activeOfSkipped(c, activeOfSkipped(c, 0).all - active!) : activeOfLayers(c, layers);
  return {
    active_params: a.active,
    active_pct: a.activePct,
    hidden_pct: a.hiddenPct,
    active_pct_all: a.activePctAll,
  };
}

function _frontier(last: Map<string, MetricRow>, c: Readonly<Experiment>): FrontierRow[] {
  const rules = [...last.keys()].flatMap((k) => {
    const m = /^infer\/(.+)\/ppl$/.exec(k);
    return m ? [m[1]!] : [];
  });
  const densePpl = last.get("infer/dense/ppl")?.value;
  const rows = rules.map((rule) => {
    const v = (k: string) => last.get(`infer/${rule}/${k}`)?.value ?? NaN;
    const sh = ruleShares(last, rule, c);
    return {
      rule,
      active_params: sh.active_params ?? NaN,
      active_pct: sh.active_pct ?? NaN,
      hidden_pct: sh.hidden_pct ?? NaN,
      active_pct_all: sh.active_pct_all ?? NaN,
      ppl: v("ppl"),
      bpb: v("bpb"),
      dppl_pct: densePpl ? (v("ppl") / densePpl - 1) * 100 : NaN,
    };
  });
  return rows.sort((a, b) => b.active_pct - a.active_pct || a.ppl - b.ppl);
}

function _routers(last: Map<string, MetricRow>, c: Readonly<Experiment>) {
  const rows: RouterRow[] = [];
  let step = 0;
  for (let l = 0; l < c.model.layers; l++) {
    for (const kind of ["attention", "mlp"]) {
      const entropy = last.get(`router/${l}/${kind}/entropy`);
      if (!entropy) continue;
      const series = (what: string) => {
        const xs: number[] = [];
        for (let e = 0; last.has(`router/${l}/${kind}/${what}/${e}`); e++) {
          xs.push(last.get(`router/${l}/${kind}/${what}/${e}`)!.value);
        }
        return xs;
      };
      const loads = series("load");
      rows.push({
        layer: l,
        kind,
        experts: loads.length,
        prob_cv: _cv(series("prob")),
        load_cv: _cv(loads),
        entropy: entropy.value,
      });
      step = Math.max(step, entropy.step);
    }
  }
  const avg = (f: (r: RouterRow) => number) => rows.reduce((a, r) => a + f(r), 0) / Math.max(1, rows.length);
  return {
    step,
    mean_prob_cv: avg((r) => r.prob_cv),
    mean_load_cv: avg((r) => r.load_cv),
    mean_entropy: avg((r) => r.entropy),
    rows,
  };
}

/** Coefficient of variation (population standard deviation over mean); NaN for no values. */
function _cv(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  return Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / xs.length) / mean;
}

/** "x% of all parameters" of a row (docs/design.md §5): the share with one denominator for every model. */
function _shareOfAll(r: ModelRow): string {
  const pct = (x: number | null) => (x === null ? "—" : x.toFixed(1));
  return `${pct(r.active_pct_all)}% of all parameters, ${pct(r.active_pct)}% of the non-embedding ones`;
}

/** What a row's hidden % is of (docs/design.md §5): "N attention and MLP parameters". */
function _hiddenOf(r: ModelRow): string {
  return `${fmtCount(r.hidden_params)} attention and MLP parameters`;
}

/** A model's hidden % of its hidden parameters (attention and MLP weights) beside its share of all parameters. */
function _shares(r: ModelRow): string {
  const hidden = r.hidden_pct === null ? "—" : r.hidden_pct.toFixed(1);
  return `hidden ${hidden}% of ${_hiddenOf(r)}; ${_shareOfAll(r)}`;
}

/**
 * The paper's four claims judged on the models table and router statistics of a report, with the named
 * thresholds and margins above ({@linkcode PPL_TOLERANCE}, {@linkcode MAX_HIDDEN_PCT},
 * {@linkcode WORSE_MARGIN}, {@linkcode ENTROPY_MARGIN}, {@linkcode CV_SLACK}); a claim whose numbers are
 * missing is `held: null`.
 */
export function judgeClaims(rows: Map<Role, ModelRow>, routers: ReproReport["routers"]): Claim[] {
  const ds = rows.get("dsmoe"), dense = rows.get("dense"), smoe = rows.get("smoe");
  const f = (x: number) => fmtPpl(x);
  const claims: Claim[] = [];
  const measured = (...xs: (number | null | undefined)[]) => xs.every((x) => typeof x === "number");
  {
    const ok = measured(ds?.ppl, dense?.ppl);
    const rel = ok ? ds!.ppl! / dense!.ppl! - 1 : NaN;
    claims.push({
      id: 1,
      claim: "DS-MoE matches the dense model's perplexity",
      test: `DS-MoE ppl (sparse, ${ds?.rule ?? "?"}) ≤ dense ppl × ${1 + PPL_TOLERANCE}`,
      held: ok ? rel <= PPL_TOLERANCE : null,
      evidence: ok
        ? `DS-MoE ${f(ds!.ppl!)} vs dense ${f(dense!.ppl!)}: ${fmtChange(rel * 100)}`
        : "not measured",
    });
  }
  {
    const ok = measured(ds?.hidden_pct);
    claims.push({
      id: 2,
      claim: "… with at most half of its hidden parameters (attention and MLP weights) active",
      test: `DS-MoE hidden % active (${ds?.rule ?? "?"}) ≤ ${MAX_HIDDEN_PCT}`,
      held: ok ? ds!.hidden_pct! <= MAX_HIDDEN_PCT : null,
      evidence: ok
        ? `${ds!.hidden_pct!.toFixed(1)}% of its ${_hiddenOf(ds!)} active (${_shareOfAll(ds!)})`
        : "not measured",
    });
  }
  {
    const ok = measured(ds?.ppl, smoe?.ppl);
    claims.push({
      id: 3,
      claim: "SMoE of the same total size has worse perplexity than DS-MoE",
      test: `SMoE ppl (${smoe?.rule ?? "?"}) > DS-MoE ppl (${ds?.rule ?? "?"}) × ${1 + WORSE_MARGIN}`,
      held: ok ? smoe!.ppl! > ds!.ppl! * (1 + WORSE_MARGIN) : null,
      evidence: ok
        ? `SMoE ${f(smoe!.ppl!)} (${_shares(smoe!)}) vs DS-MoE ${f(ds!.ppl!)} (${_shares(ds!)})`
        : "not measured",
    });
  }
  {
    const r = (role: Role) => routers.find((x) => x.role === role);
    const mi = r("dsmoe"), zero = r("alpha0"), mid = r("alpha-3x"), large = r("alpha-large");
    const ok = mi !== undefined && zero !== undefined;
    const sharper = ok && mi.mean_entropy <= zero.mean_entropy * (1 - ENTROPY_MARGIN);
    const balanced = ok && mi.mean_prob_cv <= zero.mean_prob_cv + CV_SLACK;
    const say = (name: string, x: typeof mi) =>
      x
        ? `${name}: entropy ${x.mean_entropy.toFixed(3)}, probability CV ${x.mean_prob_cv.toFixed(3)}`
        : `${name}: not measured`;
    claims.push({
      id: 4,
      claim: "The MI loss sharpens routing and keeps expert load balanced, against α = 0",
      test: `mean routing entropy ≤ α = 0's × ${1 - ENTROPY_MARGIN} (lower by at least ` +
        `${ENTROPY_MARGIN * 100}%), and mean expert-probability CV ≤ α = 0's + ${CV_SLACK}`,
      held: ok ? sharper && balanced : null,
      evidence: [
        say("α = paper", mi),
        say("α = 0", zero),
        ...(mid ? [say("α = 3× paper", mid)] : []),
        say("α = 10× paper", large),
      ].join("; "),
    });
  }
  return claims;
}

/**
 * The data of a stored router-study report (a {@linkcode ReportRecord} of kind `"study"`, written by
 * `deno task study`, core/repro/study_report.ts): the matrix of training routers × inference rules, each
 * router's frontier, the size check and the routing diagnostics. It lives beside the store's record types so
 * that the dashboard (which imports only core/runs) reads the same shape the study writes; a stored report
 * is still checked with {@linkcode asStudyReport} before use, since a store may hold one of another version.
 *
 * @module
 */
import type { ReportRecord } from "./store.ts";

/** The `kind` of a study's {@linkcode ReportRecord}. */
export const STUDY_REPORT_KIND = "study";

/** A row of the matrix: the baseline or a training router. */
export interface StudyModelRow {
  name: string;
  run_id: string | null; // null: not trained (its training failed)
  status: string | null;
  step: number | null;
  /** How it trains: `router.train` and its losses ("dense, MI 3.5e-4 / 6.3e-4"), or "dense model". */
  train: string;
  /** Its own inference rule (`router.infer`), by the metric name ("threshold@0.5"). */
  infer: string;
  routed: boolean;
  params_total: number;
}

/** A cell of the matrix: one model under one rule, every number read from the store. */
export interface StudyCell {
  model: string;
  rule: string; // the column: the rule as the manifest writes it
  rule_name: string | null; // the metric name it was evaluated under (`infer/<rule_name>/…`)
  run_id: string | null;
  ppl: number | null;
  bpb: number | null;
  loss: number | null;
  active_params: number | null;
  active_pct: number | null;
  hidden_pct: number | null;
  /** Tokens per second of the sparse evaluation over the validation batches (`infer/<rule>/tokens_per_s`). */
  tokens_per_s: number | null;
  /** ppl against the baseline's, in percent (+ worse). */
  dppl_pct: number | null;
  /** Why the cell has no numbers (no router to apply the rule to, not trained, not evaluated), else null. */
  na: string | null;
}

/** A point of a router's frontier: quality against measured active parameters. */
export interface StudyFrontierPoint {
  rule: string;
  rule_name: string;
  active_params: number;
  active_pct: number;
  hidden_pct: number;
  ppl: number;
  bpb: number | null;
  /** No other point of the router has fewer (or as many) active parameters and a lower (or equal) ppl. */
  pareto: boolean;
}

/** Routing of one routed block at the last validation of training. */
export interface StudyRouterLayer {
  layer: number;
  kind: string;
  load: number[]; // per expert: share of validation tokens whose most probable expert it is
  load_cv: number; // coefficient of variation of `load` (0 = balanced)
  max_load: number;
  entropy: number; // mean per-token routing entropy (nats)
}

/** The routing diagnostics of one model. */
export interface StudyDiagnostics {
  model: string;
  run_id: string;
  step: number | null; // of the router statistics
  layers: StudyRouterLayer[];
  mean_load_cv: number | null;
  mean_entropy: number | null;
  /**
   * From the study's evaluation of its final checkpoint (`eval --diagnostics` under the dense rule; the
   * top-1 expert does not depend on the rule): mean routing entropy (nats), MI(top-1 expert; domain) in bits
   * and the domain entropy that bounds it (null where the data has no domain labels), and routing stability:
   * the share of validation tokens whose top-1 expert changed since the checkpoint at `stability_against`.
   */
  eval_entropy: number | null;
  mi_domain_bits: number | null;
  domain_entropy_bits: number | null;
  top1_changed: number | null;
  stability_against: number | null;
  /** Per-(router, rule) diagnostics by id (see CELL_DIAGNOSTICS in core/repro/study_report.ts). */
  cells: { rule: string; values: Record<string, number | null> }[];
}

/** The report's data. */
export interface StudyReport {
  id: string;
  name: string;
  scale: string;
  /** What the numbers of this scale are worth, when it is a smoke test; null otherwise. */
  caveat: string | null;
  created_at: string;
  sweep_id: string;
  baseline: string; // the baseline row's name
  baseline_ppl: number | null;
  /** The columns: each rule as written and the label shown. */
  rules: { spec: string; label: string }[];
  models: StudyModelRow[];
  /** Every (model, rule) cell, row by row. */
  cells: StudyCell[];
  size: {
    tolerance: number;
    on_mismatch: string;
    baseline_params: number;
    within: boolean;
    rows: { name: string; params_total: number; rel_diff: number; within: boolean }[];
  };
  frontier: { model: string; run_id: string; points: StudyFrontierPoint[] }[];
  diagnostics: StudyDiagnostics[];
  /** Labels of the per-(router, rule) diagnostics, by id. */
  diagnostic_labels: Record<string, string>;
  decode: { model: string; rule: string; tokens_per_s: number }[];
}

/**
 * The study report of a stored record, or null when the record is not a study's or its data lacks the
 * matrix (another version's): the fields a page reads are checked, not trusted.
 */
export function asStudyReport(r: ReportRecord | null): StudyReport | null {
  if (!r || r.kind !== STUDY_REPORT_KIND) return null;
  const d = r.data as Partial<StudyReport>;
  const ok = typeof d.id === "string" && typeof d.name === "string" && Array.isArray(d.rules) &&
    Array.isArray(d.models) && Array.isArray(d.cells) && Array.isArray(d.frontier) &&
    d.rules.every((x) => typeof x?.spec === "string" && typeof x.label === "string") &&
    d.models.every((m) => typeof m?.name === "string") &&
    d.cells.every((c) => typeof c?.model === "string" && typeof c.rule === "string");
  return ok ? d as StudyReport : null;
}

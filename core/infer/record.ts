/**
 * Inference results as metric points of their run, so that the dashboard and reports read them from the run
 * store: `infer/<rule>/{loss,ppl,bpb,active_params,active_pct,hidden_pct,active_pct_all,layer/<l>/<kind>/experts}`
 * from `eval`, `generate/<rule>/{tokens_per_s,active_pct,hidden_pct,active_pct_all}` from `generate`, at the
 * checkpoint's step. The shares are docs/design.md §5's (core/plan/counts.ts activeWith).
 *
 * `eval --diagnostics` adds each rule's routing diagnostics (core/infer/diagnostics.ts) under `diag/<rule>/`:
 * `{entropy,mi_domain_bits,domain_entropy_bits,top1_changed,against_step}` (means over the routers; the last
 * two only when compared with another checkpoint) and per router
 * `layer/<l>/<kind>/{entropy,mi_domain_bits,domain_entropy_bits,top1_changed,load_top1/<e>,load_active/<e>,
 * coact/<i>/<j>}` (co-activation for i < j; the diagonal is `load_active`). {@linkcode readRoutingDiagnostics}
 * reads them back from a run's metrics.
 *
 * @module
 */
import type { RunDir } from "../runs/run_dir.ts";
import type { MetricRow } from "../runs/store.ts";
import { type RouterDiagnostics, summarizeRouting } from "./diagnostics.ts";
import type { RuleResult } from "./evaluate.ts";
import type { GenerateResult } from "./generate.ts";

/** Logs and flushes `infer/<rule>/…` of each result (a rule listed twice is logged once). */
export async function recordRuleResults(
  run: RunDir,
  step: number,
  results: readonly RuleResult[],
): Promise<void> {
  const t = run.secondsSinceStart(), seen = new Set<string>();
  for (const r of results) {
    if (seen.has(r.rule)) continue;
    seen.add(r.rule);
    const log = (k: string, value: number) =>
      run.log({ key: `infer/${r.rule}/${k}`, step, tokens: r.tokens, time: t, value });
    log("loss", r.loss);
    log("ppl", r.ppl);
    log("bpb", r.bpb);
    log("active_params", r.activeParams);
    log("active_pct", r.activePct);
    log("hidden_pct", r.hiddenPct);
    log("active_pct_all", r.activePctAll);
    for (const l of r.layers) log(`layer/${l.layer}/${l.kind}/experts`, l.experts);
    // The sparse evaluation's speed over its validation batches (RuleResult.seconds).
    if (r.seconds > 0) log("tokens_per_s", r.tokens / r.seconds);
  }
  await run.flush();
}

/** Logs and flushes `generate/<rule>/…` of a generation, with an event saying what was generated. */
export async function recordGeneration(
  run: RunDir,
  step: number,
  rule: string,
  r: GenerateResult,
): Promise<void> {
  const t = run.secondsSinceStart(), tokens = r.tokens.length;
  const values = [
    ["tokens_per_s", r.tokensPerS],
    ["active_pct", r.activePct],
    ["hidden_pct", r.hiddenPct],
    ["active_pct_all", r.activePctAll],
  ] as const;
  for (const [k, value] of values) run.log({ key: `generate/${rule}/${k}`, step, tokens, time: t, value });
  await run.flush();
  await run.event(
    "info",
    `generated ${tokens} tokens at ${r.tokensPerS.toFixed(1)} tokens/s (${rule})`,
    step,
  );
}

/**
 * Logs and flushes `diag/<rule>/…` of each result that has routing diagnostics (see the module docs);
 * `againstStep` is the step of the checkpoint `top1_changed` compares with.
 */
export async function recordRoutingDiagnostics(
  run: RunDir,
  step: number,
  results: readonly RuleResult[],
  againstStep: number | null,
): Promise<void> {
  const t = run.secondsSinceStart(), seen = new Set<string>();
  for (const r of results) {
    if (!r.routing || seen.has(r.rule)) continue;
    seen.add(r.rule);
    const log = (k: string, value: number | null) => {
      if (value !== null) run.log({ key: `diag/${r.rule}/${k}`, step, tokens: r.tokens, time: t, value });
    };
    const sum = summarizeRouting(r.routing.routers);
    log("entropy", sum.entropy);
    log("mi_domain_bits", sum.mi_domain_bits);
    log("domain_entropy_bits", sum.domain_entropy_bits);
    log("top1_changed", sum.top1_changed);
    if (sum.top1_changed !== null) log("against_step", againstStep);
    for (const d of r.routing.routers) {
      const at = `layer/${d.layer}/${d.kind}`;
      log(`${at}/entropy`, d.entropy);
      log(`${at}/mi_domain_bits`, d.mi_domain_bits);
      log(`${at}/domain_entropy_bits`, d.domain_entropy_bits);
      log(`${at}/top1_changed`, d.top1_changed);
      d.load_top1.forEach((v, e) => log(`${at}/load_top1/${e}`, v));
      d.load_active.forEach((v, e) => log(`${at}/load_active/${e}`, v));
      for (let i = 0; i < d.experts; i++) {
        for (let j = i + 1; j < d.experts; j++) log(`${at}/coact/${i}/${j}`, d.coactivation[i]![j]!);
      }
    }
  }
  await run.flush();
}

const _DIAG =
  /^diag\/(.+)\/layer\/(\d+)\/(attention|mlp)\/(entropy|mi_domain_bits|domain_entropy_bits|top1_changed|load_top1\/(\d+)|load_active\/(\d+)|coact\/(\d+)\/(\d+))$/;

/**
 * The routing diagnostics of `rule` stored by {@linkcode recordRoutingDiagnostics}, from a run's metric rows
 * (e.g. `RunStore.lastMetrics`; for a key logged at several steps, the row given last wins), in layer order
 * with attention before MLP. What a later study reads: the co-activation matrix is rebuilt whole (symmetric,
 * its diagonal the active share); values not stored are null.
 */
export function readRoutingDiagnostics(rows: Iterable<MetricRow>, rule: string): RouterDiagnostics[] {
  const byRouter = new Map<string, { d: RouterDiagnostics; pairs: [number, number, number][] }>();
  for (const row of rows) {
    const m = _DIAG.exec(row.key);
    if (!m || m[1] !== rule) continue;
    const layer = Number(m[2]), kind = m[3] as RouterDiagnostics["kind"], id = `${layer}/${kind}`;
    let r = byRouter.get(id);
    if (!r) {
      const d: RouterDiagnostics = {
        layer,
        kind,
        experts: 0,
        tokens: row.tokens,
        load_top1: [],
        load_active: [],
        entropy: NaN,
        coactivation: [],
        mi_domain_bits: null,
        domain_entropy_bits: null,
        top1_changed: null,
      };
      byRouter.set(id, r = { d, pairs: [] });
    }
    const d = r.d, field = m[4]!;
    if (m[5] !== undefined) d.load_top1[Number(m[5])] = row.value;
    else if (m[6] !== undefined) d.load_active[Number(m[6])] = row.value;
    else if (m[7] !== undefined) r.pairs.push([Number(m[7]), Number(m[8]), row.value]);
    else if (field === "entropy") d.entropy = row.value;
    else d[field as "mi_domain_bits" | "domain_entropy_bits" | "top1_changed"] = row.value;
  }
  const out = [...byRouter.values()].map(({ d, pairs }) => {
    const E = Math.max(d.load_top1.length, d.load_active.length);
    const c = Array.from(
      { length: E },
      (_, i) => Array.from({ length: E }, (_, j) => (i === j ? d.load_active[i] ?? NaN : NaN)),
    );
    for (const [i, j, v] of pairs) if (i < E && j < E) c[i]![j] = c[j]![i] = v;
    return { ...d, experts: E, coactivation: c };
  });
  return out.sort((a, b) => a.layer - b.layer || (a.kind === b.kind ? 0 : a.kind === "attention" ? -1 : 1));
}

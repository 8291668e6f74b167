/**
 * Inference results as metric points of their run, so that the dashboard and reports read them from the run
 * store: `infer/<rule>/{loss,ppl,bpb,active_params,active_pct,hidden_pct,active_pct_all,layer/<l>/<kind>/experts}`
 * from `eval`, `generate/<rule>/{tokens_per_s,active_pct,hidden_pct,active_pct_all}` from `generate`, at the
 * checkpoint's step. The shares are docs/design.md §5's (core/plan/counts.ts activeWith).
 *
 * @module
 */
import type { RunDir } from "../runs/run_dir.ts";
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

/**
 * `deno task eval <run-id|run-dir|checkpoint.safetensors> [--rule …]…`: validation perplexity and active
 * parameters of a trained model under one or more inference routing rules — a sparsity frontier — printed
 * as a table, stored as `infer/<rule>/…` metrics of the run, and as JSON with `--json`.
 *
 * @module
 */
import { loadDataset } from "../data/dataset.ts";
import { evaluateRules, type RuleResult } from "../infer/evaluate.ts";
import { recordRuleResults } from "../infer/record.ts";
import { countParams, layerShape } from "../plan/counts.ts";
import type { InferRules } from "../plan/model.ts";
import { configRules } from "../plan/plan.ts";
import { denseRules, parseRuleSpec, ruleParamValue } from "../infer/rule_spec.ts";
import { fmtCount, table } from "../util/format.ts";
import { openGpu } from "../../gpu/device.ts";
import { parseCommandArgs, positiveInt } from "./args.ts";
import { loadTarget, targetArg } from "./run_checkpoint.ts";
import { storeUsage, useStore } from "./store_flag.ts";
import { EXIT_OK, UsageError } from "./errors.ts";
import type { CliIo } from "./main.ts";

/** Usage of `eval`. */
export const EVAL_USAGE =
  `Usage: deno task eval <run-id | run-dir | checkpoint.safetensors> [--rule RULE [--epsilon E | --k K | --p P]]…

Evaluates the newest complete checkpoint of a run (or one checkpoint file) on validation data under each
inference rule, beside dense evaluation of the same model. Without --rule: the config's own rule(s).

Rules (for MLP and attention routers alike; prefix mlp= or attention= to set one side):
  --rule threshold --epsilon 0.5     expert i runs iff N·S_i > epsilon (also --rule threshold:0.5)
  --rule topk --k 2                  the k most probable experts (also --rule topk:2)
  --rule threshold_topk --epsilon E  one K for all tokens: the batch's mean count under the threshold
  --rule top_p --p 0.9               the fewest experts whose probability mass reaches p
  --rule dense                       every expert
  --rule mlp=threshold:0.5,attention=topk:2   different rules for the two router kinds

Options:
  --batches N       validation batches (of train.batch sequences) per rule (default 32)
  --json            last stdout line: {"dense_ppl","rules":[{"rule","params","ppl","active_params",…}]}
${storeUsage(20)}`;

/** Runs `f`, turning its RangeError (bad rule text) into a usage error prefixed with `prefix`. */
function _usage<T>(f: () => T, prefix: string): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof RangeError) throw new UsageError(prefix + e.message);
    throw e;
  }
}

/** Runs `eval`. */
export async function evalCommand(args: string[], io: CliIo): Promise<number> {
  const parsed = parseCommandArgs("eval", args, {
    rule: { type: "string", multiple: true },
    epsilon: { type: "string", multiple: true },
    k: { type: "string", multiple: true },
    p: { type: "string", multiple: true },
    batches: { type: "string" },
  });
  const { values, positionals } = parsed;
  if (values.help) {
    io.out(EVAL_USAGE);
    return EXIT_OK;
  }
  const arg = targetArg("eval", positionals);
  const batches = positiveInt("batches", values.batches) ?? 32;
  const asked = parseRules(parsed.tokens ?? []);
  const target = await loadTarget(arg, useStore(values), "evaluate", (l) => io.err(l));
  const c = target.config, shape = layerShape(c);
  const routed = { mlp: shape.routedMlp, attention: shape.routedAtt };
  const own: InferRules = configRules(c);
  const dense = denseRules();
  const rules = [dense, ...(asked.length > 0 ? asked : [own])];

  io.err(`Evaluating ${target.label} (step ${target.step}) on ${batches} validation batches per rule`);
  const dataset = await loadDataset(c);
  const gpu = await openGpu({
    powerPreference: c.hardware.power_preference,
    validation: c.hardware.validation,
  });
  let results: RuleResult[];
  try {
    results = await evaluateRules(gpu, c, target.params, dataset, rules, {
      batches,
      progress: (l) => io.err(l),
    });
  } finally {
    gpu.destroy();
  }
  const denseResult = results[0]!;
  // A rule asked for twice (or "dense" asked for) is shown once.
  const shown = results.filter((r, i) => results.findIndex((x) => x.rule === r.rule) === i);
  io.out(_table(shown, denseResult, routed));

  if (target.run) {
    await recordRuleResults(target.run, target.step, shown);
    io.err(`Metrics infer/<rule>/… recorded in ${target.run.store.url}`);
  }
  if (values.json) {
    const params = countParams(c).total;
    io.out(JSON.stringify({
      dense_ppl: denseResult.ppl,
      step: target.step,
      rules: shown.map((r) => ({
        rule: r.rule,
        params,
        ppl: r.ppl,
        loss: r.loss,
        active_params: r.activeParams,
        active_pct: r.activePct,
        hidden_pct: r.hiddenPct,
        layers: r.layers,
      })),
    }));
  }
  return EXIT_OK;
}

/**
 * Rules from the ordered flags: each `--rule` starts one; a following `--epsilon`, `--k` or `--p` sets
 * that rule's parameter.
 */
export function parseRules(
  tokens: readonly { kind: string; name?: string; value?: string | undefined }[],
): InferRules[] {
  const rules: InferRules[] = [];
  for (const t of tokens) {
    if (t.kind !== "option") continue;
    if (t.name === "rule") {
      rules.push(_usage(() => parseRuleSpec(t.value ?? ""), "--rule "));
      continue;
    }
    if (t.name !== "epsilon" && t.name !== "k" && t.name !== "p") continue;
    const last = rules.at(-1);
    if (!last) throw new UsageError(`--${t.name} must follow the --rule it qualifies`);
    const name = t.name;
    const v = _usage(() => ruleParamValue(name, t.value ?? "", `--${name} ${t.value}`), "");
    for (const side of [last.mlp, last.attention]) side[t.name] = v;
  }
  return rules;
}

function _table(
  results: readonly RuleResult[],
  dense: RuleResult,
  routed: { mlp: boolean; attention: boolean },
): string {
  const mean = (r: RuleResult, kind: "attention" | "mlp") => {
    const ls = r.layers.filter((l) => l.kind === kind);
    if (ls.length === 0) return "-";
    return `${(ls.reduce((a, l) => a + l.experts, 0) / ls.length).toFixed(2)}/${ls[0]!.of}`;
  };
  const header = ["rule", "val loss", "ppl", "Δppl vs dense", "active params", "active %", "hidden %"];
  if (routed.attention) header.push("attn experts");
  if (routed.mlp) header.push("mlp experts");
  const rows = results.map((r) => {
    const row = [
      r.rule,
      r.loss.toFixed(4),
      r.ppl.toFixed(3),
      `${r.ppl >= dense.ppl ? "+" : ""}${((100 * (r.ppl - dense.ppl)) / dense.ppl).toFixed(2)}%`,
      fmtCount(r.activeParams),
      r.activePct.toFixed(1),
      r.hiddenPct.toFixed(1),
    ];
    if (routed.attention) row.push(mean(r, "attention"));
    if (routed.mlp) row.push(mean(r, "mlp"));
    return row;
  });
  return table(header, rows, [
    "left",
    "right",
    "right",
    "right",
    "right",
    "right",
    "right",
    "right",
    "right",
  ]);
}

/**
 * `deno task eval <run-id|run-dir|checkpoint.safetensors> [--rule …]…`: validation perplexity and active
 * parameters of a trained model under one or more inference routing rules — a sparsity frontier — printed
 * as a table, stored as `infer/<rule>/…` metrics of the run, and as JSON with `--json`.
 *
 * @module
 */
import { loadDataset } from "../data/dataset.ts";
import { evaluateRules, type RuleResult } from "../infer/evaluate.ts";
import { countParams, layerShape } from "../plan/counts.ts";
import type { InferRules } from "../plan/model.ts";
import { configRules } from "../plan/plan.ts";
import { type RouteRule, ruleParam } from "../ref/routing.ts";
import { fmtCount, table } from "../util/format.ts";
import { openGpu } from "../../gpu/device.ts";
import { parseCommandArgs, positiveInt } from "./args.ts";
import { loadTarget, targetArg } from "./run_checkpoint.ts";
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
  --runs-dir DIR    where runs are stored (default runs/)`;

const _DEFAULTS: Omit<RouteRule, "kind"> = { epsilon: 0.5, k: 2, p: 0.9 };
const _KINDS = ["threshold", "topk", "threshold_topk", "top_p", "dense"] as const;

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
  const target = await loadTarget(arg, values["runs-dir"] ?? "runs", "evaluate");
  const c = target.config, shape = layerShape(c);
  const routed = { mlp: shape.routedMlp, attention: shape.routedAtt };
  const own: InferRules = configRules(c);
  const dense: InferRules = {
    mlp: { ..._DEFAULTS, kind: "dense" },
    attention: { ..._DEFAULTS, kind: "dense" },
  };
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
    const t = target.run.secondsSinceStart();
    for (const r of shown) {
      const key = (k: string) => `infer/${r.rule}/${k}`;
      const log = (k: string, value: number) =>
        target.run!.log({ key: key(k), step: target.step, tokens: r.tokens, time: t, value });
      log("loss", r.loss);
      log("ppl", r.ppl);
      log("active_params", r.activeParams);
      log("active_pct", r.activePct);
      log("hidden_pct", r.hiddenPct);
      for (const l of r.layers) log(`layer/${l.layer}/${l.kind}/experts`, l.experts);
    }
    await target.run.flush();
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
      rules.push(_ruleSpec(t.value ?? ""));
      continue;
    }
    if (t.name !== "epsilon" && t.name !== "k" && t.name !== "p") continue;
    const last = rules.at(-1);
    if (!last) throw new UsageError(`--${t.name} must follow the --rule it qualifies`);
    const v = _paramValue(t.name, t.value ?? "", `--${t.name} ${t.value}`);
    for (const side of [last.mlp, last.attention]) side[t.name] = v;
  }
  return rules;
}

function _ruleSpec(spec: string): InferRules {
  if (!spec.includes("=")) {
    const r = _one(spec);
    return { mlp: r, attention: { ...r } };
  }
  const out: Partial<InferRules> = {};
  for (const part of spec.split(",")) {
    const [side, rule] = part.split("=", 2) as [string, string | undefined];
    if ((side !== "mlp" && side !== "attention") || rule === undefined) {
      throw new UsageError(`--rule ${spec}: expected mlp=RULE,attention=RULE`);
    }
    out[side] = _one(rule);
  }
  return {
    mlp: out.mlp ?? { ..._DEFAULTS, kind: "dense" },
    attention: out.attention ?? { ..._DEFAULTS, kind: "dense" },
  };
}

function _one(spec: string): RouteRule {
  const [kind, param] = spec.split(":", 2) as [string, string | undefined];
  if (!(_KINDS as readonly string[]).includes(kind)) {
    throw new UsageError(`--rule ${spec}: unknown rule "${kind}"; expected one of ${_KINDS.join(", ")}`);
  }
  const r: RouteRule = { ..._DEFAULTS, kind: kind as RouteRule["kind"] };
  if (param !== undefined) {
    const field = ruleParam(r.kind);
    if (!field) throw new UsageError(`--rule ${spec}: ${kind} takes no parameter`);
    r[field] = _paramValue(field, param, `--rule ${spec}`);
  }
  return r;
}

/** A rule parameter from text, in the range its field allows (the same for `--k 2` and `topk:2`). */
function _paramValue(field: "epsilon" | "k" | "p", text: string, what: string): number {
  const v = Number(text);
  const ok = field === "k" ? Number.isSafeInteger(v) && v >= 1 : field === "p" ? v > 0 && v <= 1 : v >= 0;
  if (!ok || text.trim() === "" || !Number.isFinite(v)) {
    const want = field === "k" ? "an integer ≥ 1" : field === "p" ? "a number in (0, 1]" : "a number ≥ 0";
    throw new UsageError(`${what}: expected ${want}`);
  }
  return v;
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

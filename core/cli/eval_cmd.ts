/**
 * `deno task eval <run-id|run-dir|checkpoint.safetensors> [--rule …]…`: validation perplexity and active
 * parameters of a trained model under one or more inference routing rules — a sparsity frontier — printed
 * as a table, stored as `infer/<rule>/…` metrics of the run, and as JSON with `--json`. `--diagnostics` adds
 * each rule's routing diagnostics (core/infer/diagnostics.ts), stored as `diag/<rule>/…`.
 *
 * @module
 */
import { fmtChange, fmtLoss, fmtPpl } from "../util/quantities.js";
import type { Experiment } from "../config/schema.ts";
import { Dataset, loadDataset } from "../data/dataset.ts";
import { defaultCacheDir } from "../data/prepare.ts";
import { ChunkedEncoder, type Tokenizer } from "../data/tokenizers.ts";
import { DataError, inspectSource, resolveSource, sourceStream } from "../data/sources.ts";
import { compareRouting, evaluateRules, type RuleResult } from "../infer/evaluate.ts";
import { summarizeRouting } from "../infer/diagnostics.ts";
import { recordRoutingDiagnostics, recordRuleResults } from "../infer/record.ts";
import { countParams, layerShape } from "../plan/counts.ts";
import type { InferRules } from "../plan/model.ts";
import { configRules } from "../plan/plan.ts";
import { denseRules, parseRuleSpec, ruleParamValue } from "../infer/rule_spec.ts";
import { ruleParam } from "../ref/routing.ts";
import { fmtCount, table } from "../util/format.ts";
import { openGpu } from "../../gpu/device.ts";
import { boundedInt, parseCommandArgs } from "./args.ts";
import { loadTarget, recordOrWarn, targetArg } from "./run_checkpoint.ts";
import { expectedParams } from "../runs/stored_run.ts";
import { dataProgress } from "./progress.ts";
import { storeUsage, useStore } from "./store_flag.ts";
import { EXIT_OK, UsageError } from "./errors.ts";
import type { CliIo } from "./io.ts";

/** Usage of `eval`. */
export const EVAL_USAGE =
  `Usage: deno task eval <run-id | run-dir | checkpoint.safetensors> [--rule RULE [--epsilon E | --k K | --p P]]…

Evaluates the newest complete checkpoint of a run (or one checkpoint file) on validation data under each
inference rule, beside dense evaluation of the same model. Without --rule: the config's own rule(s). A run is
its id, its name (the newest finished run of that name) or a unique id prefix.

Routing rules: which experts run per token (for MLP and attention routers alike; prefix mlp= or attention=
to set one side). The routing rule top_p is not nucleus sampling of tokens (that is generate's --top-p):
  --rule threshold --epsilon 0.5     expert i runs iff N·S_i > epsilon (also --rule threshold:0.5)
  --rule topk --k 2                  the k most probable experts (also --rule topk:2)
  --rule threshold_topk --epsilon E  one K for all tokens: the batch's mean count under the threshold
  --rule top_p --p 0.9               the fewest experts whose probability mass reaches p
  --rule dense                       every expert
  --rule mlp=threshold:0.5,attention=topk:2   different rules for the two router kinds

Options:
  --batches N       validation batches (of train.batch sequences) per rule (default 32, at most 100000). Every
                    window of seq_len + 1 tokens evaluated is a distinct one of the validation split: N above
                    the split's distinct windows ÷ train.batch is refused (exit 2) naming that maximum; the
                    default 32 is lowered to it, with a notice
  --text FILE       score FILE instead of the validation split (text, .jsonl or .parquet, at most 64 MiB):
                    windows of seq_len + 1 tokens spread over all of it, tokenized with the model's tokenizer;
                    printed only (not recorded with the run)
  --diagnostics     also measure each rule's routing: per-expert load (top-1 and active shares), routing
                    entropy, expert co-activation and, on synthetic:multidomain data, the mutual information
                    of top-1 expert and domain (bits); printed, stored as diag/<rule>/… and in --json
  --against TARGET  with --diagnostics: another checkpoint of the same model shape (run or .safetensors file,
                    e.g. an earlier step of the same run) evaluated on the same tokens; routing stability is
                    the share of tokens whose top-1 expert differs between the two
  --json            last stdout line: {"dense_ppl","rules":[{"rule","params","ppl","bpb","active_params",…}]}
${storeUsage(20)}`;

/** Validation batches per rule when `--batches` is not given (fewer when the split holds fewer). */
export const DEFAULT_EVAL_BATCHES = 32;
/** Largest `--batches` accepted before the data is looked at. */
export const MAX_EVAL_BATCHES = 100_000;

/**
 * Parses `--batches`: a whole number from 1 to {@linkcode MAX_EVAL_BATCHES} written in decimal digits, else a
 * usage error naming the flag; `undefined` when the flag is absent.
 */
export function parseBatchesFlag(text: string | undefined): number | undefined {
  return boundedInt("batches", text, MAX_EVAL_BATCHES);
}

/**
 * The batches to evaluate: `asked` (or the default) against what the validation split holds. An explicit
 * `--batches` above that is a usage error naming the maximum; the default is lowered to it with a notice.
 */
export function evalBatches(
  asked: number | undefined,
  dataset: Dataset,
  batch: number,
  notice: (line: string) => void,
): number {
  const max = dataset.maxValBatches(batch);
  const windows = dataset.valTokens - dataset.seqLen;
  const holds =
    `the validation split holds ${windows} distinct windows of seq_len + 1 = ${dataset.seqLen + 1} ` +
    `tokens`;
  if (max < 1) {
    throw new DataError(
      `Cannot evaluate: ${holds}, fewer than one batch of train.batch = ${batch}; use more validation data ` +
        `(data.val_fraction) or a smaller train.batch`,
    );
  }
  if (asked !== undefined && asked > max) {
    throw new UsageError(
      `--batches ${asked}: ${holds}, ${max} batches of ${batch}; use --batches ${max} or fewer`,
    );
  }
  if (asked === undefined && max < DEFAULT_EVAL_BATCHES) {
    notice(
      `Note: ${holds}: evaluating ${max} batches of ${batch} instead of the default ${DEFAULT_EVAL_BATCHES}`,
    );
    return max;
  }
  return asked ?? DEFAULT_EVAL_BATCHES;
}

/**
 * The validation data of a checkpoint's config: prepared shards under `<runs-dir>/cache` (prepared now, with
 * a progress bar, when missing) for file and corpus sources, in memory for synthetic ones, tokenized with the
 * checkpoint's own tokenizer so the tokens match the model.
 */
export async function loadEvalData(
  c: Readonly<Experiment>,
  runsDir: string,
  tokenizer: Tokenizer,
  io: CliIo,
): Promise<Dataset> {
  return await loadDataset(c, undefined, {
    cacheDir: defaultCacheDir(runsDir),
    tokenizer,
    progress: (l) => io.err(l),
    onProgress: dataProgress(io),
  });
}

/** Most bytes of text `eval --text` reads. */
export const MAX_EVAL_TEXT_BYTES = 64 << 20;

/**
 * `eval --text FILE`: the file's text (plain, JSON Lines or Parquet, read and checked as a data source is)
 * tokenized with the model's tokenizer, as the validation split of a Dataset; at most
 * {@linkcode MAX_EVAL_TEXT_BYTES}. A file too short for one batch of windows is a DataError naming it.
 */
export async function loadEvalText(
  path: string,
  c: Readonly<Experiment>,
  tokenizer: Tokenizer,
): Promise<Dataset> {
  const named = (e: unknown) =>
    e instanceof DataError ? new DataError(e.message.replace(/^data\.source /, "--text ")) : e;
  try {
    const r = await resolveSource(path);
    if (r.kind !== "files") throw new DataError(`--text "${path}": expected a file, got ${r.kind} text`);
    await inspectSource(r, { textField: c.data.text_field });
    const encoder = new ChunkedEncoder(tokenizer), parts: Uint32Array[] = [];
    let bytes = 0;
    for await (const b of sourceStream(r, { textField: c.data.text_field })) {
      bytes += b.length;
      if (bytes > MAX_EVAL_TEXT_BYTES) {
        throw new DataError(
          `--text "${path}": more than ${MAX_EVAL_TEXT_BYTES} bytes of text; score a part of it`,
        );
      }
      parts.push(encoder.push(b));
    }
    parts.push(encoder.flush());
    const tokens = new Uint32Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) tokens.set(p, at), at += p.length;
    const need = c.data.seq_len + c.train.batch;
    if (tokens.length < need) {
      throw new DataError(
        `--text "${path}": ${tokens.length} tokens; scoring needs at least seq_len + batch = ${need} (one batch ` +
          "of windows)",
      );
    }
    return new Dataset(
      { train: tokens, val: tokens, trainDomains: null, valDomains: null },
      {
        seqLen: c.data.seq_len,
        seed: c.seed,
        domainNames: [],
        tokenizer,
        trainBytes: bytes,
        valBytes: bytes,
      },
    );
  } catch (e) {
    throw named(e);
  }
}

/** Runs `f`, turning its RangeError (bad rule text) into a usage error prefixed with `prefix`. */
function _usage<T>(f: () => T, prefix: string): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof RangeError) throw new UsageError(prefix + e.message);
    throw e;
  }
}

/**
 * Refuses (usage error naming `what`) a checkpoint whose model differs from `c`'s: other parameters or
 * shapes, or another tokenizer, so that its routing of the same tokens cannot be compared.
 */
export function checkComparable(c: Readonly<Experiment>, other: Readonly<Experiment>, what: string): void {
  if (c.data.tokenizer !== other.data.tokenizer) {
    throw new UsageError(`${what}: tokenizer ${other.data.tokenizer}, not the model's ${c.data.tokenizer}`);
  }
  const mine = expectedParams(c), theirs = expectedParams(other);
  for (const [name, shape] of mine) {
    const o = theirs.get(name);
    if (!o || o.join() !== shape.join()) {
      throw new UsageError(
        `${what}: not a checkpoint of the same model shape: parameter "${name}" is [${shape}] here and ` +
          `${o ? `[${o}]` : "missing"} there`,
      );
    }
  }
  for (const name of theirs.keys()) {
    if (!mine.has(name)) throw new UsageError(`${what}: parameter "${name}" is not in the model evaluated`);
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
    text: { type: "string" },
    diagnostics: { type: "boolean" },
    against: { type: "string" },
  });
  const { values, positionals } = parsed;
  if (values.help) {
    io.out(EVAL_USAGE);
    return EXIT_OK;
  }
  const arg = targetArg("eval", positionals);
  const askedBatches = parseBatchesFlag(values.batches);
  const asked = parseRules(parsed.tokens ?? []);
  if (values.against !== undefined && !values.diagnostics) {
    throw new UsageError("--against compares routing: it needs --diagnostics");
  }
  const runsDir = useStore(values);
  const target = await loadTarget(arg, runsDir, "evaluate", (l) => io.err(l));
  const c = target.config, shape = layerShape(c);
  const against = values.against === undefined
    ? null
    : await loadTarget(values.against, runsDir, "compare routing with", (l) => io.err(l));
  if (against) checkComparable(c, against.config, `--against ${values.against}`);
  const routed = { mlp: shape.routedMlp, attention: shape.routedAtt };
  const own: InferRules = configRules(c);
  const dense = denseRules();
  const rules = [dense, ...(asked.length > 0 ? asked : [own])];

  const text = values.text;
  const dataset = text === undefined
    ? await loadEvalData(c, runsDir, target.tokenizer, io)
    : await loadEvalText(text, c, target.tokenizer);
  const batches = evalBatches(askedBatches, dataset, c.train.batch, (l) => io.err(l));
  const what = text === undefined ? "validation batches" : `batches of ${text}`;
  io.err(`Evaluating ${target.label} (step ${target.step}) on ${batches} ${what} per rule`);
  const gpu = await openGpu({
    powerPreference: c.hardware.power_preference,
    validation: c.hardware.validation,
  });
  let results: RuleResult[];
  try {
    const diagnostics = values.diagnostics === true;
    results = await evaluateRules(gpu, c, target.params, dataset, rules, {
      batches,
      progress: (l) => io.err(l),
      diagnostics,
    });
    if (against) {
      io.err(`Evaluating ${against.label} (step ${against.step}) on the same tokens for routing stability`);
      const other = await evaluateRules(gpu, c, against.params, dataset, rules, { batches, diagnostics });
      for (const [i, r] of results.entries()) compareRouting(r.routing!, other[i]!.routing!);
    }
  } finally {
    gpu.destroy();
  }
  const denseResult = results[0]!;
  // A rule asked for twice (or "dense" asked for) is shown once.
  const shown = results.filter((r, i) => results.findIndex((x) => x.rule === r.rule) === i);
  io.out(_table(shown, denseResult, routed));
  if (values.diagnostics) io.out(diagnosticsText(shown, against));

  const run = text === undefined ? target.run : null; // a score of another text is not the run's metric
  if (run) {
    await recordOrWarn(
      async () => {
        await recordRuleResults(run, target.step, shown);
        if (values.diagnostics) {
          await recordRoutingDiagnostics(run, target.step, shown, against?.step ?? null);
        }
        io.err(
          `Metrics infer/<rule>/…${
            values.diagnostics ? " and diag/<rule>/…" : ""
          } recorded in ${run.store.url}`,
        );
      },
      io,
      "infer/",
    );
  }
  if (values.json) {
    const params = countParams(c).total;
    io.out(JSON.stringify({
      dense_ppl: denseResult.ppl,
      step: target.step,
      ...(text === undefined ? {} : { text, tokens: dataset.valTokens, bytes: dataset.valBytes }),
      rules: shown.map((r) => ({
        rule: r.rule,
        params,
        ppl: r.ppl,
        loss: r.loss,
        bpb: r.bpb,
        active_params: r.activeParams,
        active_pct: r.activePct,
        hidden_pct: r.hiddenPct,
        active_pct_all: r.activePctAll,
        layers: r.layers,
        ...(r.routing
          ? {
            diagnostics: {
              domains: r.routing.domains,
              ...summarizeRouting(r.routing.routers),
              routers: r.routing.routers,
            },
          }
          : {}),
      })),
      ...(values.diagnostics
        ? { against: against ? { target: against.label, step: against.step } : null }
        : {}),
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
    const name = t.name;
    // --p is the top_p *routing* rule's expert mass; nucleus sampling of tokens is generate's --top-p.
    const sampling = name === "p" ? `; for nucleus sampling of tokens use generate's --top-p ${t.value}` : "";
    if (!last) {
      throw new UsageError(
        name === "p"
          ? `--p must follow the --rule top_p it qualifies (a routing rule: which experts run)${sampling}`
          : `--${name} must follow the --rule it qualifies`,
      );
    }
    if (ruleParam(last.mlp.kind) !== name && ruleParam(last.attention.kind) !== name) {
      const wants = name === "p" ? "top_p" : name === "k" ? "topk" : "threshold";
      const was = last.mlp.kind === last.attention.kind
        ? last.mlp.kind
        : `mlp=${last.mlp.kind},attention=${last.attention.kind}`;
      throw new UsageError(
        `--${name} ${t.value} does not qualify the routing rule ${was} before it: ` +
          `write --rule ${wants} --${name} ${t.value}${sampling}`,
      );
    }
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
  // Shares by docs/design.md §5: active % of the non-embedding parameters, hidden % of the attention and MLP
  // weights (routed or not), "all %" of every parameter (embeddings included).
  const header = [
    "rule",
    "val loss",
    "ppl",
    "Δppl vs dense",
    "active params",
    "active %",
    "hidden %",
    "all %",
  ];
  if (routed.attention) header.push("attn experts");
  if (routed.mlp) header.push("mlp experts");
  const rows = results.map((r) => {
    const row = [
      r.rule,
      fmtLoss(r.loss),
      fmtPpl(r.ppl),
      fmtChange((100 * (r.ppl - dense.ppl)) / dense.ppl),
      fmtCount(r.activeParams),
      r.activePct.toFixed(1),
      r.hiddenPct.toFixed(1),
      r.activePctAll.toFixed(1),
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
    "right",
  ]);
}

/**
 * The routing diagnostics of `results` as text: per rule, the means over routers, then one line per router
 * (entropy, MI with the domain, top-1 changes, the active share of each expert and the pair of experts most
 * often active together).
 */
export function diagnosticsText(
  results: readonly RuleResult[],
  against: { label: string; step: number } | null,
): string {
  const out = ["", "Routing diagnostics (core/infer/diagnostics.ts)"];
  if (against) out.push(`routing stability against ${against.label} (step ${against.step})`);
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  for (const r of results) {
    if (!r.routing) continue;
    const s = summarizeRouting(r.routing.routers);
    const mi = s.mi_domain_bits === null
      ? "no domain labels"
      : `MI(expert; domain) ${s.mi_domain_bits.toFixed(3)} of ${s.domain_entropy_bits!.toFixed(3)} bits`;
    const changed = s.top1_changed === null ? "" : `, top-1 changed ${pct(s.top1_changed)}`;
    out.push(`${r.rule}: entropy ${s.entropy.toFixed(3)} nats, ${mi}${changed} (means over routers)`);
    for (const d of r.routing.routers) {
      let best = [0, 0, -1];
      for (let i = 0; i < d.experts; i++) {
        for (let j = i + 1; j < d.experts; j++) {
          if (d.coactivation[i]![j]! > best[2]!) best = [i, j, d.coactivation[i]![j]!];
        }
      }
      out.push(
        `  L${d.layer} ${d.kind}: entropy ${d.entropy.toFixed(3)}` +
          (d.mi_domain_bits === null ? "" : `, MI ${d.mi_domain_bits.toFixed(3)} bits`) +
          (d.top1_changed === null ? "" : `, top-1 changed ${pct(d.top1_changed)}`) +
          `, active ${d.load_active.map(pct).join(" ")}, top-1 ${d.load_top1.map(pct).join(" ")}` +
          (best[2]! >= 0 ? `, most co-active ${best[0]}+${best[1]} ${pct(best[2]!)}` : ""),
      );
    }
  }
  return out.join("\n");
}

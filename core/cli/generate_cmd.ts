/**
 * `deno task generate <run-id|run-dir|checkpoint.safetensors> --prompt TEXT`: streams text from a trained
 * model, decoding one token at a time with a KV cache and routing each layer sparsely under an inference
 * rule, then reports tokens/s and the active parameters the rule used. With `--batch B` (or several
 * prompts), B sequences are decoded together (core/infer/batch_generate.ts): each sequence's text, then the
 * total tokens/s across the batch and per sequence.
 *
 * @module
 */
import { parseByteSize } from "../config/schema.ts";
import {
  BatchDecoder,
  type BatchGenerateResult,
  decodePlanBytes,
  generateBatch,
} from "../infer/batch_generate.ts";
import { Decoder, generate } from "../infer/generate.ts";
import { ruleName } from "../infer/evaluate.ts";
import { recordGeneration } from "../infer/record.ts";
import { countParams, layerShape, vocabSize } from "../plan/counts.ts";
import type { InferRules } from "../plan/model.ts";
import { configRules, plan } from "../plan/plan.ts";
import { fmtBytes, fmtCount } from "../util/format.ts";
import { openGpu } from "../../gpu/device.ts";
import { boundedInt, parseCommandArgs } from "./args.ts";
import { parseRules } from "./eval_cmd.ts";
import { EXIT_OK, UsageError } from "./errors.ts";
import type { CliIo } from "./io.ts";
import { loadTarget, recordOrWarn, targetArg } from "./run_checkpoint.ts";
import { storeUsage, useStore } from "./store_flag.ts";

/** Most sequences `generate --batch` decodes together (memory is checked against the budget as well). */
export const MAX_BATCH = 1024;

/** Usage of `generate`. */
export const GENERATE_USAGE =
  `Usage: deno task generate <run-id | run-dir | checkpoint.safetensors> --prompt TEXT [options]
       deno task generate <run> --prompt A --prompt B … | --prompts-file FILE | --prompt TEXT --batch B

Streams a continuation of TEXT from the newest complete checkpoint of a run (or one checkpoint file),
decoding one token at a time with a KV cache; routed layers run only the experts the rule selects. A run is
its id, its name (the newest finished run of that name) or a unique id prefix.

Options:
  --prompt TEXT        text to continue (not empty); repeat it for several sequences decoded together
  --prompts-file FILE  one prompt per line (blank lines skipped), all decoded together
  --max-tokens N       new tokens to generate, per sequence (default 200, at most 100000)

Batched decoding (several sequences at once; every token routed on its own):
  --batch B            sequences decoded together, 1 to ${MAX_BATCH} (default: the number of prompts).
                       With one prompt, that prompt B times; sequence b samples with seed + b, so at
                       --temperature 0 all B continue alike. With several prompts, B must be their number.
                       Each prompt must fit the context (seq_len tokens). The texts are printed when done,
                       labelled; then the total tokens/s across the batch and per sequence. Batched runs
                       are not recorded in the run store.

Sampling (which token comes next):
  --temperature T      sampling temperature, 0 = always the most likely token (default 0.8)
  --top-k K            sample among the K most likely tokens, 0 = all (default 40)
  --top-p P            nucleus sampling: of those, the fewest most likely tokens whose probability
                       reaches P, in (0, 1] (default 1 = all)
  --seed N             sampling seed (default 1): the same seed gives the same text
  --host-sampling      draw each token on the host from read-back logits (one GPU wait per token)
                       instead of on the GPU, where the next step embeds it directly (same tokens)

Routing (which experts run; not sampling):
  --rule RULE          inference routing rule, as for eval (default: the config's router.infer):
                       threshold:0.5 | topk:2 | threshold_topk:0.5 | top_p:0.9 | dense |
                       mlp=RULE,attention=RULE  (or --rule threshold --epsilon 0.5, --rule topk --k 2,
                       --rule top_p --p 0.9: the routing rule's expert probability mass, not --top-p)

  --json               last stdout line: {"text","new_tokens","tokens_per_s","compile_s",
                       "dispatches_per_token","batch",…}; batched: {"batch","tokens_per_s" (total),
                       "tokens_per_s_per_sequence","sequences":[{"prompt","text","tokens",…}],…}
${storeUsage(23)}

The context is the model's seq_len; when it fills, its newest half is kept and re-encoded.`;

/** Most new tokens one `generate` may ask for (`--max-tokens`). */
export const MAX_NEW_TOKENS = 100_000;

/** Runs `generate`. */
export async function generateCommand(args: string[], io: CliIo): Promise<number> {
  const parsed = parseCommandArgs("generate", args, {
    prompt: { type: "string", multiple: true },
    "prompts-file": { type: "string" },
    batch: { type: "string" },
    "max-tokens": { type: "string" },
    temperature: { type: "string" },
    "top-k": { type: "string" },
    "top-p": { type: "string" },
    seed: { type: "string" },
    "host-sampling": { type: "boolean" },
    rule: { type: "string", multiple: true },
    epsilon: { type: "string", multiple: true },
    k: { type: "string", multiple: true },
    p: { type: "string", multiple: true },
  });
  const { values, positionals } = parsed;
  if (values.help) {
    io.out(GENERATE_USAGE);
    return EXIT_OK;
  }
  const arg = targetArg("generate", positionals);
  const prompts = await _prompts(values.prompt, values["prompts-file"]);
  const batch = boundedInt("batch", values.batch, MAX_BATCH) ?? prompts.length;
  if (prompts.length > 1 && batch !== prompts.length) {
    throw new UsageError(
      `--batch ${batch} with ${prompts.length} prompts: give one prompt (decoded ${batch} times) or exactly ` +
        `${batch} prompts`,
    );
  }
  const prompt = prompts[0]!;
  const maxTokens = boundedInt("max-tokens", values["max-tokens"], MAX_NEW_TOKENS) ?? 200;
  const temperature = _number("temperature", values.temperature, 0.8, (v) => v >= 0, "a number ≥ 0");
  const topK = _number(
    "top-k",
    values["top-k"],
    40,
    (v) => Number.isSafeInteger(v) && v >= 0,
    "an integer ≥ 0",
  );
  const topP = _number("top-p", values["top-p"], 1, (v) => v > 0 && v <= 1, "a number in (0, 1]");
  const seed = _number("seed", values.seed, 1, (v) => Number.isSafeInteger(v) && v >= 0, "an integer ≥ 0");
  const asked = parseRules(parsed.tokens ?? []);
  if (asked.length > 1) throw new UsageError("generate takes one --rule (eval compares several)");

  const target = await loadTarget(arg, useStore(values), "generate from", (l) => io.err(l));
  const c = target.config, shape = layerShape(c);
  const vocab = vocabSize(c.data);
  if (topK > vocab) {
    throw new UsageError(`--top-k expects 0 (all) to the vocabulary size ${vocab}, got ${topK}`);
  }
  const rules: InferRules = asked[0] ?? configRules(c);
  const routed = shape.routedMlp || shape.routedAtt;
  const rule = routed ? ruleName(rules, { mlp: shape.routedMlp, attention: shape.routedAtt }) : "dense";
  if (batch > 1) {
    const texts = prompts.length === 1 ? new Array<string>(batch).fill(prompt) : prompts;
    return await _generateBatch(io, target, texts, rules, rule, routed, {
      maxTokens,
      temperature,
      topK,
      topP,
      seed,
      hostSampling: !!values["host-sampling"],
      json: !!values.json,
    });
  }
  io.err(
    `Generating from ${target.label} (step ${target.step}): ${routed ? `rule ${rule}, ` : ""}` +
      `temperature ${temperature}, top-k ${topK || "all"}${
        topP < 1 ? `, top-p ${topP}` : ""
      }, seed ${seed}, ` +
      `up to ${maxTokens} tokens`,
  );
  const gpu = await openGpu({
    powerPreference: c.hardware.power_preference,
    validation: c.hardware.validation,
  });
  let result;
  const tok = target.tokenizer, stream = tok.decoder();
  const promptIds = [...tok.encode(prompt)];
  if (promptIds.length === 0) throw new UsageError("--prompt encodes to no tokens");
  let compile = 0;
  try {
    const c0 = performance.now();
    // Building the decoder compiles its shaders and runs one throwaway step: setup, timed apart.
    const dec = await Decoder.create(gpu, c, target.params, rules);
    compile = (performance.now() - c0) / 1000;
    try {
      io.write(prompt);
      result = await generate(dec, promptIds, {
        maxTokens,
        temperature,
        topK,
        topP,
        seed,
        hostSampling: !!values["host-sampling"],
        // A character whose bytes are split across tokens is written once, whole, with its last token.
        onToken: (id) => io.write(stream.push(id)),
      });
      io.write(stream.flush() + "\n");
    } finally {
      dec.destroy();
    }
  } finally {
    gpu.destroy();
  }
  const r = result;
  const compileSeconds = compile + r.setupSeconds;
  io.err(
    `${r.tokens.length} tokens: ${r.tokensPerS.toFixed(1)} tokens/s decoding, prompt of ${r.promptTokens} ` +
      `tokens in ${(r.prefillSeconds * 1000).toFixed(0)} ms, setup (shader compilation, first step) ` +
      `${compileSeconds.toFixed(2)} s` +
      (r.contextShifts > 0 ? `, ${r.contextShifts} context shift(s)` : "") +
      (routed
        ? `; active params ${fmtCount(r.activeParams)} per token (${r.activePct.toFixed(1)}% of ` +
          `${fmtCount(r.activeParams / (r.activePct / 100))}; ${
            r.activePctAll.toFixed(1)
          }% of all parameters), ` +
          `hidden ${r.hiddenPct.toFixed(1)}% (of the attention and MLP weights)`
        : ""),
  );
  if (target.run) {
    await recordOrWarn(() => recordGeneration(target.run!, target.step, rule, r), io, "generate/");
  }
  if (values.json) {
    io.out(JSON.stringify({
      text: tok.decode(r.tokens),
      prompt,
      batch: 1,
      rule,
      step: target.step,
      params: countParams(c).total,
      prompt_tokens: r.promptTokens,
      new_tokens: r.tokens.length,
      tokens: r.tokens,
      tokens_per_s: r.tokensPerS,
      compile_s: compileSeconds,
      prefill_s: r.prefillSeconds,
      decode_s: r.decodeSeconds,
      context_shifts: r.contextShifts,
      dispatches_per_token: r.dispatchesPerToken,
      active_params: r.activeParams,
      active_pct: r.activePct,
      hidden_pct: r.hiddenPct,
      active_pct_all: r.activePctAll,
      layers: r.layers,
    }));
  }
  return EXIT_OK;
}

function _number(
  flag: string,
  text: string | undefined,
  fallback: number,
  ok: (v: number) => boolean,
  want: string,
): number {
  if (text === undefined) return fallback;
  const v = Number(text);
  if (text.trim() === "" || !Number.isFinite(v) || !ok(v)) {
    throw new UsageError(`--${flag} expects ${want}, got "${text}"`);
  }
  return v;
}

/** The prompts of `--prompt` (repeatable) or `--prompts-file` (one a line, blank lines skipped). */
async function _prompts(given: string[] | undefined, file: string | undefined): Promise<string[]> {
  if (given !== undefined && file !== undefined) {
    throw new UsageError("give prompts with --prompt or with --prompts-file, not both");
  }
  if (file !== undefined) {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch (e) {
      throw new UsageError(`--prompts-file ${file}: cannot read it (${(e as Error).message})`);
    }
    const lines = text.split(/\r?\n/).filter((l) => l.trim() !== "");
    if (lines.length === 0) throw new UsageError(`--prompts-file ${file} holds no prompt (one per line)`);
    if (lines.length > MAX_BATCH) {
      throw new UsageError(
        `--prompts-file ${file} holds ${lines.length} prompts; at most ${MAX_BATCH} at once`,
      );
    }
    return lines;
  }
  if (given === undefined || given.length === 0 || given.some((p) => p === "")) {
    throw new UsageError("generate needs a non-empty --prompt TEXT (or --prompts-file FILE)");
  }
  return given;
}

/** What `_generateBatch` takes from the flags. */
interface _BatchFlags {
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
  hostSampling: boolean;
  json: boolean;
}

/**
 * `generate` of B sequences decoded together: each prompt must fit the context, the batched decoder must
 * fit hardware.memory_budget (and the device's binding limits); prints each sequence's text, labelled, then
 * the total and per-sequence tokens/s.
 */
async function _generateBatch(
  io: CliIo,
  target: Awaited<ReturnType<typeof loadTarget>>,
  texts: string[],
  rules: InferRules,
  rule: string,
  routed: boolean,
  f: _BatchFlags,
): Promise<number> {
  const c = target.config, tok = target.tokenizer, B = texts.length, T = c.data.seq_len;
  const ids = texts.map((t) => [...tok.encode(t)]);
  ids.forEach((p, b) => {
    if (p.length === 0) throw new UsageError(`prompt ${b + 1} encodes to no tokens`);
    if (p.length > T) {
      throw new UsageError(
        `prompt ${b + 1} encodes to ${p.length} tokens, more than the model's context (data.seq_len ${T}); ` +
          "shorten it (a single prompt without --batch keeps its newest half instead)",
      );
    }
  });
  // Both estimates from one plan: the texture copies (weights, grouped matmuls' inputs) count once the
  // adapter is known.
  let need: number, withCopies: number;
  try {
    const p = plan(c, "decode", { rules, batch: B });
    need = decodePlanBytes(p);
    withCopies = decodePlanBytes(p, { textureCopies: true });
  } catch (e) {
    if (e instanceof RangeError) throw new UsageError(`--batch ${B}: ${e.message}`);
    throw e;
  }
  const budget = parseByteSize(c.hardware.memory_budget);
  const refuse = (bytes: number, what: string) => {
    const needs = `--batch ${B} needs an estimated ${fmtBytes(bytes)} of device memory`;
    const parts = `(${what}, ${B} KV caches of ${T} positions, activations)`;
    return new UsageError(
      `${needs} ${parts}, more than hardware.memory_budget ${fmtBytes(budget)}; lower --batch`,
    );
  };
  if (need > budget) throw refuse(need, "weights");
  const gpu = await openGpu({
    powerPreference: c.hardware.power_preference,
    validation: c.hardware.validation,
  });
  // A software adapter's products read the weights from texture copies.
  if (gpu.profile === "cpu-simd" && withCopies > budget) {
    gpu.destroy();
    throw refuse(withCopies, "weights and the texture copies the cpu-simd kernels read");
  }
  io.err(
    `Generating ${B} sequences together from ${target.label} (step ${target.step}): ` +
      `${routed ? `rule ${rule}, ` : ""}temperature ${f.temperature}, top-k ${f.topK || "all"}` +
      `${f.topP < 1 ? `, top-p ${f.topP}` : ""}, seeds ${f.seed}…${f.seed + B - 1}, ` +
      `${f.maxTokens} tokens each`,
  );
  let r: BatchGenerateResult, compile = 0;
  try {
    const c0 = performance.now();
    const dec = await BatchDecoder.create(gpu, c, target.params, rules, B);
    compile = (performance.now() - c0) / 1000;
    try {
      let shown = 0;
      r = await generateBatch(dec, ids, {
        ...f,
        // Long work prints progress: every 64 tokens per sequence.
        onProgress: (n) => {
          if (Math.floor(n / 64) > Math.floor(shown / 64) && n < f.maxTokens) {
            io.err(`  ${n}/${f.maxTokens} tokens per sequence`);
          }
          shown = n;
        },
      });
    } finally {
      dec.destroy();
    }
  } finally {
    gpu.destroy();
  }
  r.tokens.forEach((t, b) => {
    io.out(`--- sequence ${b + 1} of ${B} (seed ${f.seed + b}) ---`);
    io.out(texts[b]! + tok.decode(t));
  });
  const compileSeconds = compile + r.setupSeconds;
  io.err(
    `${B} sequences × ${r.tokens[0]!.length} tokens: ${r.tokensPerS.toFixed(1)} tokens/s in total ` +
      `(${r.perSequenceTokensPerS.toFixed(1)} per sequence), prompts of ${Math.min(...r.promptTokens)}–` +
      `${Math.max(...r.promptTokens)} tokens in ${(r.prefillSeconds * 1000).toFixed(0)} ms, setup ` +
      `${compileSeconds.toFixed(2)} s` +
      (r.contextShifts > 0 ? `, ${r.contextShifts} context shift(s)` : "") +
      (routed
        ? `; hidden ${r.hiddenPct.toFixed(1)}% (of the attention and MLP weights), active params ` +
          `${fmtCount(r.activeParams)} per token`
        : ""),
  );
  if (f.json) {
    io.out(JSON.stringify({
      batch: B,
      rule,
      step: target.step,
      params: countParams(c).total,
      new_tokens: r.tokens[0]!.length,
      tokens_per_s: r.tokensPerS,
      tokens_per_s_per_sequence: r.perSequenceTokensPerS,
      compile_s: compileSeconds,
      prefill_s: r.prefillSeconds,
      decode_s: r.decodeSeconds,
      context_shifts: r.contextShifts,
      dispatches_per_step: r.dispatchesPerStep,
      active_params: r.activeParams,
      active_pct: r.activePct,
      hidden_pct: r.hiddenPct,
      active_pct_all: r.activePctAll,
      layers: r.layers,
      sequences: r.tokens.map((t, b) => ({
        prompt: texts[b],
        text: tok.decode(t),
        tokens: t,
        prompt_tokens: r.promptTokens[b],
        seed: f.seed + b,
      })),
    }));
  }
  return EXIT_OK;
}

/**
 * `deno task generate <run-id|run-dir|checkpoint.safetensors> --prompt TEXT`: streams text from a trained
 * model, decoding one token at a time with a KV cache and routing each layer sparsely under an inference
 * rule, then reports tokens/s and the active parameters the rule used.
 *
 * @module
 */
import { Decoder, generate } from "../infer/generate.ts";
import { ruleName } from "../infer/evaluate.ts";
import { recordGeneration } from "../infer/record.ts";
import { countParams, layerShape, vocabSize } from "../plan/counts.ts";
import type { InferRules } from "../plan/model.ts";
import { configRules } from "../plan/plan.ts";
import { fmtCount } from "../util/format.ts";
import { openGpu } from "../../gpu/device.ts";
import { boundedInt, parseCommandArgs } from "./args.ts";
import { parseRules } from "./eval_cmd.ts";
import { EXIT_OK, UsageError } from "./errors.ts";
import type { CliIo } from "./io.ts";
import { loadTarget, recordOrWarn, targetArg } from "./run_checkpoint.ts";
import { storeUsage, useStore } from "./store_flag.ts";

/** Usage of `generate`. */
export const GENERATE_USAGE =
  `Usage: deno task generate <run-id | run-dir | checkpoint.safetensors> --prompt TEXT [options]

Streams a continuation of TEXT from the newest complete checkpoint of a run (or one checkpoint file),
decoding one token at a time with a KV cache; routed layers run only the experts the rule selects. A run is
its id, its name (the newest finished run of that name) or a unique id prefix.

Options:
  --prompt TEXT        text to continue (required, not empty)
  --max-tokens N       new tokens to generate (default 200, at most 100000)

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
                       "dispatches_per_token",…}
${storeUsage(23)}

The context is the model's seq_len; when it fills, its newest half is kept and re-encoded.`;

/** Most new tokens one `generate` may ask for (`--max-tokens`). */
export const MAX_NEW_TOKENS = 100_000;

/** Runs `generate`. */
export async function generateCommand(args: string[], io: CliIo): Promise<number> {
  const parsed = parseCommandArgs("generate", args, {
    prompt: { type: "string" },
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
  const prompt = values.prompt;
  if (prompt === undefined || prompt === "") throw new UsageError("generate needs a non-empty --prompt TEXT");
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

/**
 * The decode suite: batch-1 decoding of a DS-MoE model under a sparse rule (`sparse` rows) against a dense
 * model with the same total parameters (`dense` rows), both through `deno task generate`'s decoder (KV
 * cache, one token per step). Two ways of timing a run of `tokens` steps:
 * - `queued`: every step submitted back to back, one wait at the end: the GPU's decode throughput;
 * - `read each`: the logits read back after every step, as host sampling must (a host↔GPU sync per token:
 *   ~11 ms in Deno 2.9.6 on any adapter, whose map waits sleep 10 ms; docs/llvmpipe.md "Syncs and
 *   dispatches").
 * Models start from seeded weights (no training needed; {@linkcode benchTensor}); the sparse rule is top-k,
 * so the active share is fixed: at the small sizes 2 of 8 MLP experts and 2 of 4 attention experts, a third
 * of the hidden parameters (attention and MLP weights, the shared K/V included) at tiny's shape; at 125m and
 * 1b the rule that runs the share threshold@0.5 ran on a trained model ({@linkcode DECODE_LARGE_RULE}). Each
 * case's name states its hidden % and its share of all parameters (docs/design.md §5, core/plan/counts.ts
 * `activeWith`).
 *
 * Sizes: tiny and d512 (configs/dsmoe-tiny.yaml and configs/dense-tiny.yaml), and 125m and 1b, the shapes of
 * configs/real/dsmoe-125m.yaml and configs/real/dense-125m.yaml (GPT-2's vocabulary of 50,257 tokens), at
 * d_model 768 and 2048. The two large sizes are `large`: a software adapter skips them unless they are named
 * (`--decode-sizes`; {@linkcode decodeSizesFor}); their embedding alone is more than llvmpipe binds (128 MiB).
 *
 * The check. Every row is checked against the float64 decoder of its own model, before it is timed. At the
 * small sizes the check covers the logits after all `tokens` steps. The float64 decoder of a large model
 * costs seconds per token per model in JS (and 8 bytes per weight: 7.5 GB at 1b), so a large size checks
 * the logits after its first `checkTokens` steps (4 at 125m, 2 at 1b: attention over more than one
 * position, every layer, the routing and the tied LM head), read back once in the untimed check run of the
 * very model, weights and decoder that are then timed; the later steps run the same kernels on the same
 * weights, at positions the small sizes check. The reference is computed once per size and shared by its two
 * cases. Before any weight is made, each model's tensors are checked against the adapter's buffer and
 * binding limits and its kernels against the adapter's other limits (gpu/preflight.ts), so a size that
 * cannot run fails at once with an error row naming the tensor and the limit.
 *
 * @module
 */
import { loadExperiment } from "../config/mod.ts";
import type { Experiment } from "../config/schema.ts";
import { evaluateGraph, type HostValue } from "../graph/cpu_executor.ts";
import { CPU_OPS } from "../graph/cpu_ops.ts";
import { numel } from "../graph/ir.ts";
import { schedule } from "../graph/schedule.ts";
import { Decoder } from "../infer/generate.ts";
import { buildDecoder, type InferRules, type ParamSpec } from "../plan/model.ts";
import { plan } from "../plan/plan.ts";
import type { RouteRule } from "../graph/op_types.ts";
import { activeWith, countParams, expectedActive, layerShape } from "../plan/counts.ts";
import { fmtCount } from "../util/format.ts";
import { hash32, Rng } from "../util/rng.ts";
import { type AdapterDescription, type GpuContext, isSoftwareAdapter } from "../../gpu/device.ts";
import { assertScheduleBuilds, assertTensorsFit } from "../../gpu/preflight.ts";
import { type BenchCase, MOE_IMPLS, type Runnable } from "./case.ts";

/** A pair of models: the DS-MoE config and the dense one, with `--set` overrides applied to both. */
export interface DecodeBenchSize {
  name: string;
  /** The DS-MoE and the dense config, under the config directory; default dsmoe-tiny.yaml, dense-tiny.yaml. */
  config?: string;
  denseConfig?: string;
  sets: readonly string[];
  denseSets: readonly string[];
  tokens: number; // decode steps per timed run (≤ seq_len)
  /** The DS-MoE model's rule; default {@linkcode DECODE_SPARSE_RULE}. */
  rule?: InferRules;
  /** Steps whose logits the float64 check covers (the first ones); default all `tokens`. */
  checkTokens?: number;
  /** Too large for a software adapter: run there only when named ({@linkcode decodeSizesFor}). */
  large?: boolean;
}

const _BASE: Omit<RouteRule, "kind"> = { epsilon: 0.5, k: 2, p: 0.9 };
/** The DS-MoE model's rule at the small sizes: top-2 in every routed layer. */
export const DECODE_SPARSE_RULE: InferRules = {
  mlp: { ..._BASE, kind: "topk", k: 2 },
  attention: { ..._BASE, kind: "topk", k: 2 },
};

/**
 * The DS-MoE model's rule at 125m and 1b: top-3 of 4 attention experts and top-2 of 8 MLP experts, the top-k
 * whose hidden % (docs/design.md §5) is nearest what threshold@0.5 ran on a trained DS-MoE model: 36.0% of the
 * attention and MLP weights in the router study on real English (docs/results.md, "The router study on real
 * English"). This rule runs 36.6% at 125m (next nearest: top-1/top-3, 38.0%; top-2/top-2, 32.4%) and 36.0% at
 * 1b, whose MLP width was chosen for it (8 × 1,280 = 5 × d_model; at GPT's 4 × the nearest top-k would run
 * 38.1% or 33.3%). The trained model's routing varies per token; the bench fixes the count so that the timed
 * work is the same in every run.
 */
export const DECODE_LARGE_RULE: InferRules = {
  mlp: { ..._BASE, kind: "topk", k: 2 },
  attention: { ..._BASE, kind: "topk", k: 3 },
};
const _DENSE_RULE: InferRules = { mlp: { ..._BASE, kind: "dense" }, attention: { ..._BASE, kind: "dense" } };

/** The 1b shape's overrides of configs/real/*-125m.yaml: d_model 2048, 16 layers, 16 heads of 128. */
const _1B = ["model.d_model=2048", "model.layers=16", "model.attention.head_dim=128"];

/**
 * Full suite: the tiny configs as trained, the same shape at d_model 512 (≈ 19M parameters), and two
 * GPT-style shapes with GPT-2's vocabulary: configs/real/dsmoe-125m.yaml and dense-125m.yaml as they are
 * (d 768, 12 layers, 12 heads of 64; 123M parameters), and the same at d 2048, 16 layers, MoA 4 experts × 4
 * heads of 128 (the dense model: 16 heads over 4 KV heads) and 8 MLP experts of 1280 (dense: 10,240; the
 * width that puts {@linkcode DECODE_LARGE_RULE} at threshold@0.5's share), 944M parameters. Equal totals
 * within 0.1% (stated in each case's name; docs/performance.md "Decode sizes").
 */
export const DECODE_SIZES: readonly DecodeBenchSize[] = [
  { name: "tiny", sets: [], denseSets: [], tokens: 32 },
  {
    name: "d512",
    sets: ["model.d_model=512", "model.attention.head_dim=64", "model.mlp.hidden=512"],
    denseSets: ["model.d_model=512", "model.attention.head_dim=64", "model.mlp.hidden=4096"],
    tokens: 32,
  },
  {
    name: "125m",
    config: "real/dsmoe-125m.yaml",
    denseConfig: "real/dense-125m.yaml",
    sets: [],
    denseSets: [],
    tokens: 32,
    rule: DECODE_LARGE_RULE,
    checkTokens: 4,
    large: true,
  },
  {
    name: "1b",
    config: "real/dsmoe-125m.yaml",
    denseConfig: "real/dense-125m.yaml",
    sets: [..._1B, "model.attention.heads_per_expert=4", "model.mlp.hidden=1280"],
    denseSets: [..._1B, "model.attention.heads=16", "model.attention.kv_heads=4", "model.mlp.hidden=10240"],
    tokens: 32,
    rule: DECODE_LARGE_RULE,
    checkTokens: 2,
    large: true,
  },
];

/** Names `--decode-sizes` accepts. */
export const DECODE_SIZE_NAMES: readonly string[] = DECODE_SIZES.map((s) => s.name);

/** `--quick` (tests): two layers, 8 steps. */
export const DECODE_SIZES_QUICK: readonly DecodeBenchSize[] = [
  {
    name: "quick",
    sets: ["model.layers=2", "data.seq_len=16"],
    denseSets: ["model.layers=2", "data.seq_len=16"],
    tokens: 8,
  },
];

/**
 * `size` made small enough for llvmpipe and a test, by the same code: one layer of the same shape (d_model,
 * heads, experts, widths), the byte vocabulary (256 tokens) and 16 positions, 4 steps of which the first 2
 * are checked; named "<name>-quick" (`--quick --decode-sizes 125m,1b`).
 */
export function quickDecodeSize(size: DecodeBenchSize): DecodeBenchSize {
  const shrink = ["model.layers=1", "data.tokenizer=byte", "data.seq_len=16"];
  return {
    ...size,
    name: `${size.name}-quick`,
    sets: [...size.sets, ...shrink],
    denseSets: [...size.denseSets, ...shrink],
    tokens: 4,
    checkTokens: 2,
  };
}

/**
 * The sizes to run on `adapter`: the ones `names` lists, in that order, whatever the adapter; else every
 * size, except the large ones on a software adapter, which are returned as `skipped`.
 */
export function decodeSizesFor(
  adapter: AdapterDescription,
  names?: readonly string[],
): { sizes: DecodeBenchSize[]; skipped: DecodeBenchSize[] } {
  if (names) {
    const sizes = names.map((n) => {
      const size = DECODE_SIZES.find((s) => s.name === n);
      if (!size) throw new RangeError(`no decode size "${n}" (sizes: ${DECODE_SIZE_NAMES.join(", ")})`);
      return size;
    });
    return { sizes, skipped: [] };
  }
  const software = isSoftwareAdapter(adapter);
  return {
    sizes: DECODE_SIZES.filter((s) => !(software && s.large)),
    skipped: DECODE_SIZES.filter((s) => software && s.large),
  };
}

/** The line the bench prints when {@linkcode decodeSizesFor} skipped sizes. */
export function skippedDecodeLine(names: readonly string[], adapter: string): string {
  return `decode sizes ${names.join(", ")} skipped on ${adapter} (a software adapter); run them with ` +
    `\`deno task bench --suite decode --decode-sizes ${
      names.join(",")
    }\` (a real GPU runs them by default; ` +
    `\`--quick --decode-sizes ${names.join(",")}\` runs one layer of each shape)`;
}

/**
 * What the sparse model of a decode case runs under `rule` (default {@linkcode DECODE_SPARSE_RULE}), by
 * docs/design.md §5: e.g. "hidden 33.3%, 37.8% of all" at configs/dsmoe-tiny.yaml's shape (of the attention
 * and MLP weights; of every parameter).
 */
export function decodeShare(c: Readonly<Experiment>, rule: InferRules = DECODE_SPARSE_RULE): string {
  const s = layerShape(c);
  const a = activeWith(
    c,
    expectedActive(rule.attention, s.attExperts).experts,
    expectedActive(rule.mlp, s.mlpExperts).experts,
  );
  return `hidden ${a.hiddenPct.toFixed(1)}%, ${a.activePctAll.toFixed(1)}% of all`;
}

/**
 * The bench's seeded values of one parameter, made per tensor (no array larger than the tensor): ones for
 * norm gains, zeros for biases, and for the "normal" parameters uniform values with the init's standard
 * deviation (half-width √3·std) from a xorshift stream of (seed, name): 4–9× faster than core/train/init.ts's
 * Box–Muller normals on the 2-core VM (docs/performance.md "Decode sizes"), which matters at 1b's 1.9G weights
 * per model pair. Decoding time does not depend on the values: the sparse rule is top-k.
 */
export function benchTensor(p: ParamSpec, seed: number): Float32Array {
  const data = new Float32Array(numel(p.value.shape));
  if (p.init === "ones") data.fill(1);
  if (p.init !== "normal") return data;
  const half = Math.sqrt(3) * p.std, scale = (2 * half) / 4294967296;
  let x = hash32(seed, ...Array.from(p.value.name, (ch) => ch.charCodeAt(0))) | 0 || 1;
  for (let i = 0; i < data.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    data[i] = (x >>> 0) * scale - half;
  }
  return data;
}

/** {@linkcode benchTensor} of every parameter, by name (what the decoder uploads). */
export function benchWeights(specs: readonly ParamSpec[], seed: number): Map<string, Float32Array> {
  return new Map(specs.map((p) => [p.value.name, benchTensor(p, seed)]));
}

/**
 * Refuses, before any weight is made, a model whose tensors or kernels this adapter cannot hold or run
 * (gpu/preflight.ts): a GpuLimitError prefixed with `what`.
 */
export function assertDecoderFits(ctx: GpuContext, c: Readonly<Experiment>, rules: InferRules, what: string) {
  const dec = buildDecoder(c, rules);
  assertTensorsFit(ctx, [...dec.params.map((p) => p.value), ...dec.caches], what);
  assertScheduleBuilds(ctx, plan(c, "decode", { rules }).schedule, what);
}

/**
 * Float64 logits after decoding `ids` from position 0 (the reference of one timed run), with the weights
 * `tensor` makes, widened to float64 one tensor at a time.
 */
export function referenceLogits(
  c: Readonly<Experiment>,
  rules: InferRules,
  tensor: (p: ParamSpec) => Float32Array,
  ids: number[],
) {
  const dec = buildDecoder(c, rules), sched = schedule(dec.graph, [dec.logits]);
  const feeds = new Map<number, HostValue>();
  for (const p of dec.params) feeds.set(p.value.id, new Float64Array(tensor(p)));
  for (const cache of dec.caches) feeds.set(cache.id, new Float64Array(numel(cache.shape)));
  let logits: HostValue = new Float64Array(0);
  ids.forEach((id, pos) => {
    feeds.set(dec.ids.id, Uint32Array.of(id));
    feeds.set(dec.pos.id, Uint32Array.of(pos));
    [logits] = evaluateGraph(sched.nodes, feeds, [dec.logits], CPU_OPS) as [HostValue];
  });
  return logits;
}

/**
 * A run decodes `ids`; `output()` gives the logits after the last step of the last run, or, when `checkAt` is
 * an earlier step, the logits after step `checkAt` of the first run (the untimed check run; its one extra
 * read-back is in no timed run).
 */
function _decoderRunnable(
  dec: Decoder,
  ids: number[],
  readEach: boolean,
  checkAt = ids.length - 1,
): Runnable {
  let last: Float32Array = new Float32Array(0), checked: Float32Array | null = null, first = true;
  return {
    async run(times = 1) {
      for (let i = 0; i < times; i++) {
        for (const [pos, id] of ids.entries()) {
          dec.feed(id, pos);
          const check = first && pos === checkAt;
          if (readEach || pos === ids.length - 1 || check) last = (await dec.read()).logits;
          if (check) checked = last;
        }
        first = false;
      }
    },
    output: () => Promise.resolve(checkAt < ids.length - 1 ? checked ?? new Float32Array(0) : last),
    dispose: () => dec.destroy(),
    dispatches() {
      const d = dec.dispatches();
      return { perToken: d.graph, perLayer: d.perLayer.reduce((a, b) => a + b, 0) / d.perLayer.length };
    },
  };
}

/** Options of {@linkcode decodeCases}. */
export interface DecodeCaseOptions {
  /** Where the size's configs are; default "configs". */
  configDir?: string;
  /** Lines on the slow steps of a large size's setup (its float64 reference). */
  progress?: (line: string) => void;
}

/**
 * The decode cases for `sizes` (each size's DS-MoE and dense config with its overrides), a queued and a
 * read-each case per size.
 */
export async function decodeCases(
  ctx: GpuContext,
  sizes: readonly DecodeBenchSize[],
  o: DecodeCaseOptions = {},
): Promise<BenchCase[]> {
  const configDir = o.configDir ?? "configs", cases: BenchCase[] = [];
  for (const size of sizes) {
    const load = (file: string, sets: readonly string[]) =>
      loadExperiment(`${configDir}/${file}`, { sets }).then((r) => r.config);
    const sparse = await load(size.config ?? "dsmoe-tiny.yaml", size.sets);
    const dense = await load(size.denseConfig ?? "dense-tiny.yaml", size.denseSets);
    const rng = new Rng(41), ids = Array.from({ length: size.tokens }, () => 32 + rng.int(95));
    const checkTokens = Math.min(size.checkTokens ?? size.tokens, size.tokens);
    const rule = size.rule ?? DECODE_SPARSE_RULE;
    const models = {
      sparse: { c: sparse, rules: rule },
      dense: { c: dense, rules: _DENSE_RULE },
    } as const;
    const tensor = (p: ParamSpec) => benchTensor(p, 7);
    const total = `${fmtCount(countParams(sparse).total)} vs ${fmtCount(countParams(dense).total)} params, ` +
      decodeShare(sparse, rule);
    // Checked once per size, shared by its queued and read-each cases.
    let refs: { sparse: HostValue; dense: HostValue } | null = null;
    const label = (impl: string) => `decode ${size.name} ${impl === "dense" ? "dense model" : "DS-MoE"}`;
    const references = () => {
      for (const [impl, m] of Object.entries(models)) assertDecoderFits(ctx, m.c, m.rules, label(impl));
      if (refs) return refs;
      const ref = (impl: keyof typeof models) => {
        const m = models[impl];
        if (size.large) {
          o.progress?.(
            `${label(impl)}: float64 reference of its first ${checkTokens} tokens ` +
              `(${fmtCount(countParams(m.c).total)} params) …`,
          );
        }
        return referenceLogits(m.c, m.rules, tensor, ids.slice(0, checkTokens));
      };
      return refs = { sparse: ref("sparse"), dense: ref("dense") };
    };
    const checked = checkTokens < size.tokens ? ` (first ${checkTokens} checked)` : "";
    for (const readEach of [false, true]) {
      cases.push({
        suite: "decode",
        name: `${size.name} (${total}) ${size.tokens} tokens ${readEach ? "read each" : "queued"}${checked}`,
        flops: null,
        tokens: size.tokens,
        impls: MOE_IMPLS,
        setup() {
          const r = references();
          // Logits of an initialized model are small: the tolerance scales with the largest one.
          // (A loop, not Math.max(...): a 50,257-token vocabulary's logits are too many arguments.)
          let scale = 0;
          for (const v of [...r.sparse, ...r.dense]) scale = Math.max(scale, Math.abs(v));
          const build = (impl: keyof typeof models) => async () => {
            const m = models[impl];
            const weights = benchWeights(buildDecoder(m.c, m.rules).params, 7);
            const dec = await Decoder.create(ctx, m.c, weights, m.rules);
            return _decoderRunnable(dec, ids, readEach, checkTokens - 1);
          };
          return {
            tolerance: { atol: 2e-4 * scale, rtol: 2e-3 },
            reference: (impl) => r[impl === "dense" ? "dense" : "sparse"],
            referencePerImpl: true,
            impls: { sparse: build("sparse"), dense: build("dense") },
          };
        },
      });
    }
  }
  return cases;
}

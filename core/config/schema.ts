/**
 * The one typed schema of a dsmoe experiment: every key has a default and a one-line doc.
 * YAML parses to `unknown`, `ExperimentSchema` validates it, and the loader freezes the result.
 * Cross-field rules (k ≤ experts, heads divisible, kind consistency) live in `_crossChecks` so that
 * their issues carry the key path that the loader maps back to file:line:col.
 *
 * @module
 */
import { z } from "zod";

/** Largest integer a YAML number may hold without losing precision (2^53). */
export const MAX_SAFE_NUMBER = 2 ** 53;

const posInt = (doc: string, def: number) => z.int().min(1).default(def).describe(doc);
const nonNeg = (doc: string, def: number) => z.number().min(0).default(def).describe(doc);

/** Byte sizes such as `2GiB`, `512MiB`, `1e9` (bytes). */
export const BYTE_SIZE_RE = /^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)?\s*$/;

const _UNITS: Record<string, number> = {
  B: 1,
  KB: 1e3,
  KiB: 2 ** 10,
  MB: 1e6,
  MiB: 2 ** 20,
  GB: 1e9,
  GiB: 2 ** 30,
  TB: 1e12,
  TiB: 2 ** 40,
};

/**
 * Parses a byte size (`"2GiB"`, `"512MB"`, `1048576`) into bytes.
 *
 * @example
 * ```ts
 * import { parseByteSize } from "./schema.ts";
 * if (parseByteSize("2GiB") !== 2147483648) throw new Error("bad");
 * ```
 */
export function parseByteSize(value: string | number): number {
  if (typeof value === "number") return value;
  const m = BYTE_SIZE_RE.exec(value);
  if (!m) throw new RangeError(`Invalid byte size: "${value}" (expected e.g. 2GiB, 512MiB)`);
  return Math.round(Number(m[1]) * (_UNITS[m[2] ?? "B"] ?? 1));
}

/** `data.vocab_size` of a bpe tokenizer when the config gives none. */
export const DEFAULT_BPE_VOCAB = 4096;

/** Data source, tokenizer and split. */
export const DataSchema = z.strictObject({
  source: z.string().min(1).default("synthetic:multidomain")
    .describe(
      "Text source: corpus:<name> (corpus:moby-dick, corpus:sotu), synthetic:multidomain, or a file, directory " +
        "or glob of UTF-8 text, JSON Lines (.jsonl, .ndjson) or Parquet (.parquet)",
    ),
  tokenizer: z.union([
    z.enum(["byte", "bpe", "gpt2"]),
    z.string().regex(/^file:.+/, "expected byte, bpe, gpt2 or file:<path to tokenizer.json>"),
  ]).default("byte").describe(
    "Tokenizer: byte (256 tokens), bpe (byte-level BPE trained on the training split, data.vocab_size " +
      "tokens), gpt2 (50,257 tokens) or file:<path to tokenizer.json> (relative to the config file)",
  ),
  vocab_size: z.int().min(257).max(1 << 20).optional().describe(
    `Tokens of the bpe tokenizer (bpe only; default ${DEFAULT_BPE_VOCAB})`,
  ),
  text_field: z.string().min(1).default("text").describe(
    "Field (JSON Lines) or column (Parquet) that holds the text",
  ),
  seq_len: z.int().min(2).max(65536).default(128).describe("Tokens per training sequence (context length)"),
  val_fraction: z.number().gt(0).lt(1).default(0.05).describe(
    "Fraction of the corpus held out for validation",
  ),
  synthetic_bytes: z.int().min(1024).max(1 << 30).default(4_000_000)
    .describe("Size in bytes of the generated corpus for synthetic sources"),
}).superRefine((d, ctx) => {
  if (d.vocab_size !== undefined && d.tokenizer !== "bpe") {
    ctx.addIssue({
      code: "custom",
      path: ["vocab_size"],
      message: `data.vocab_size applies to data.tokenizer bpe only; ${d.tokenizer} has a fixed vocabulary`,
    });
  }
});

/** Attention block: plain multi-head (mha) or mixture of attention-head experts (moa). */
export const AttentionSchema = z.strictObject({
  kind: z.enum(["mha", "moa"]).default("moa").describe(
    "mha: multi-head (dense, smoe); moa: attention experts",
  ),
  heads: posInt("Query heads (mha)", 4),
  kv_heads: z.int().min(1).optional().describe("Key/value heads (mha); default = heads. Fewer gives GQA"),
  experts: posInt("Attention experts (moa)", 4),
  heads_per_expert: posInt("Query heads per attention expert (moa); also the number of shared KV heads", 2),
  head_dim: posInt("Dimension of each head", 16),
});

/** MLP block: one dense MLP (experts: 1) or stacked experts. */
export const MlpSchema = z.strictObject({
  experts: posInt("MLP experts; 1 = dense MLP", 8),
  hidden: posInt("Hidden width of each expert", 128),
  activation: z.enum(["gelu", "relu", "silu"]).default("gelu").describe("Activation inside each expert"),
  shared: z.int().min(0).default(0).describe(
    "Shared experts (DeepSeekMoE): always on with gate 1, each `hidden` wide, added to the routed sum",
  ),
  segments: posInt(
    "Fine-grained experts (DeepSeekMoE): each expert split into m of hidden/m; m·experts routed, m·k active",
    1,
  ),
});

/** The decoder-only transformer. */
export const ModelSchema = z.strictObject({
  kind: z.enum(["dense", "smoe", "dsmoe"]).default("dsmoe")
    .describe("dense: no experts; smoe: top-k trained experts; dsmoe: dense-trained, sparse inference"),
  d_model: posInt("Residual stream width", 128),
  layers: posInt("Decoder blocks", 4),
  norm: z.enum(["layernorm", "rmsnorm"]).default("layernorm").describe("Normalization before each sub-block"),
  position: z.enum(["learned", "rope"]).default("learned").describe("Position encoding"),
  tie_embeddings: z.boolean().default(true).describe("Share the token embedding with the LM head"),
  init_std: z.number().gt(0).default(0.02).describe("Standard deviation of weight initialization"),
  attention: AttentionSchema.prefault({}).describe("Attention block"),
  mlp: MlpSchema.prefault({}).describe("MLP block"),
});

/** One inference routing rule (threshold, topk, threshold_topk, top_p or dense). */
export const InferRuleSchema = z.strictObject({
  kind: z.enum(["threshold", "topk", "threshold_topk", "top_p", "dense"]).default("threshold")
    .describe("threshold: N·S_i > epsilon; topk: k largest; threshold_topk: batch-mean count; top_p; dense"),
  epsilon: z.number().min(0).default(0.5).describe("Threshold on the normalized probability N·S_i"),
  k: posInt("Experts per token (topk)", 2),
  p: z.number().gt(0).max(1).default(0.9).describe("Probability mass to cover (top_p)"),
});

/** The step γ of the auxiliary-loss-free bias update when `router.bias_rate` is not given. */
export const AUX_FREE_BIAS_RATE = 0.001;

/**
 * The router settings that belong to one `router.train` mode, their defaults and their mode: optional in a
 * config (so that one set under another mode is refused, not ignored), read through {@linkcode routerSetting}.
 */
export const ROUTER_MODE_SETTINGS = {
  capacity: { train: "expert_choice", default: 2 },
  p: { train: "top_p", default: 0.4 },
  target_sparsity: { train: "relu", default: 0.75 },
  l1_rate: { train: "relu", default: 1.2 },
} as const;

/** A router setting of {@linkcode ROUTER_MODE_SETTINGS}: as configured, else its default. */
export function routerSetting(
  r: { readonly [K in keyof typeof ROUTER_MODE_SETTINGS]?: number },
  key: keyof typeof ROUTER_MODE_SETTINGS,
): number {
  return r[key] ?? ROUTER_MODE_SETTINGS[key].default;
}

/** Router: how experts are weighted in training and chosen at inference. */
export const RouterSchema = z.strictObject({
  hidden: z.int().min(0).default(0).describe("0 = linear router; >0 = d → hidden → N MLP router with GELU"),
  train: z.enum(["dense", "topk", "expert_choice", "top_p", "relu"]).default("dense").describe(
    "dense: every expert trains (DS-MoE); topk: SMoE; expert_choice: each expert takes its top-C tokens " +
      "(training only); top_p: each token's fewest experts reaching mass router.p; relu: gates ReLU(s) with " +
      "an adaptive L1 term (docs/design.md §16)",
  ),
  k: posInt("Experts per token when train: topk", 2),
  capacity: z.number().gt(0).optional().describe(
    "train: expert_choice: each expert takes C = ceil(T·capacity/N) of the T tokens of a micro-batch, so " +
      "capacity is the mean experts per token (default 2: the paper's EC-CF2)",
  ),
  p: z.number().gt(0).max(1).optional().describe(
    "train: top_p: each token keeps its most probable experts until their mass reaches p (at least one; " +
      "default 0.4)",
  ),
  target_sparsity: z.number().min(0).lt(1).optional().describe(
    "train: relu: the share of zero gates the L1 weight λ steers to (default 0.75: 2 of 8 experts per token)",
  ),
  l1_rate: z.number().gt(1).optional().describe(
    "train: relu: λ is multiplied by l1_rate after a step sparser than the target, divided when denser " +
      "(default 1.2)",
  ),
  infer: InferRuleSchema.prefault({}).describe("Inference rule for MLP experts (and attention, by default)"),
  infer_attention: InferRuleSchema.optional().describe(
    "Inference rule for attention experts; default = infer",
  ),
  capacity_factor: nonNeg(
    "Expert capacity (train: topk): each expert takes at most ceil(capacity_factor · T · k / N) of the T " +
      "tokens of a micro-batch, in token order; the rest are dropped for it. 0 = dropless",
    0,
  ),
  jitter: z.number().min(0).lt(1).default(0).describe(
    "Jitter ε (train: topk): the router input is multiplied by U(1−ε, 1+ε) noise in training; 0 = off",
  ),
  renormalize: z.boolean().default(false).describe(
    "Renormalise each token's kept gates to sum 1 (train: topk, softmax_order: before)",
  ),
  softmax_order: z.enum(["before", "after"]).default("before").describe(
    "train: topk gates: before = the kept softmax probabilities; after = softmax over the kept logits " +
      "(equal to renormalised kept probabilities)",
  ),
  balance: z.enum(["none", "aux_free"]).default("none").describe(
    "aux_free (train: topk): a per-expert bias added to the scores for selection only, moved after every " +
      "step by bias_rate · sign(mean load − load) (auxiliary-loss-free balancing); none = no bias",
  ),
  null_experts: z.int().min(0).max(1024).default(0).describe(
    "Null experts N_null (train: topk; AdaMoE): the router scores N + N_null experts and top-k picks among " +
      "all of them; a null expert computes nothing (output 0, no parameters). 0 = none",
  ),
  bias_rate: z.number().gt(0).optional().describe(
    `Step γ of the aux_free bias update (balance: aux_free); default ${AUX_FREE_BIAS_RATE}`,
  ),
});

/** Loss weights. */
export const LossSchema = z.strictObject({
  mi: z.strictObject({
    attention: nonNeg("Mutual-information loss weight for attention routers", 0),
    mlp: nonNeg("Mutual-information loss weight for MLP routers", 0),
  }).prefault({}).describe("DS-MoE mutual-information loss"),
  load_balance: nonNeg("Switch load-balance loss weight (SMoE uses 0.01)", 0),
  load_balance_scope: z.enum(["global", "micro_batch", "sequence"]).optional().describe(
    "Tokens the Switch loss's routed shares f and mean probabilities P are taken over (load_balance > 0): " +
      "global = the step's whole batch, across accumulation micro-steps (the default); micro_batch = each " +
      "micro-batch's own, averaged; sequence = each sequence's own, averaged",
  ),
  z: nonNeg("Router z-loss weight", 0),
  dynamic: nonNeg("Dynamic loss weight of router.train top_p: mean per-token router entropy", 0),
  l1: nonNeg("router.train relu: λ_0, the first weight of the L1 term of the gates (then adapted)", 0),
});

/** Optimizer, schedule and loop. */
export const TrainSchema = z.strictObject({
  steps: posInt("Optimizer steps", 2000),
  batch: posInt("Sequences per step", 16),
  micro_batch: z.int().min(1).optional().describe(
    "Sequences per micro-step; batch / micro_batch micro-steps accumulate one step's gradient. Default = batch",
  ),
  optimizer: z.strictObject({
    kind: z.enum(["adamw"]).default("adamw").describe("Optimizer"),
    lr: z.number().gt(0).default(3e-3).describe("Peak learning rate"),
    betas: z.tuple([z.number().min(0).lt(1), z.number().min(0).lt(1)]).default([0.9, 0.95])
      .describe("Adam β1, β2"),
    eps: z.number().gt(0).default(1e-8).describe("Adam ε"),
    weight_decay: nonNeg("Decoupled weight decay (matrices only)", 0.01),
  }).prefault({}).describe("Optimizer"),
  schedule: z.strictObject({
    kind: z.enum(["cosine", "linear", "constant"]).default("cosine").describe("Decay after warmup"),
    warmup: z.int().min(0).default(100).describe("Linear warmup steps"),
    min_lr: nonNeg("Learning rate at the end of decay", 3e-4),
  }).prefault({}).describe("Learning-rate schedule"),
  grad_clip: nonNeg("Clip the global gradient norm to this (0 = off)", 1.0),
  eval_every: posInt("Evaluate on validation data every N steps", 100),
  eval_batches: posInt("Validation batches per evaluation", 8),
  checkpoint_every: posInt("Write a checkpoint every N steps", 500),
  log_every: posInt("Record training metrics every N steps", 10),
});

/** Training precisions of `hardware.precision` (docs/performance.md "Half precision"). */
export const PRECISIONS = ["f32", "f16"] as const;

/** One of {@linkcode PRECISIONS}. */
export type Precision = typeof PRECISIONS[number];

/** Where and how the compute runs. */
export const HardwareSchema = z.strictObject({
  backend: z.enum(["webgpu", "cpu"]).default("webgpu").describe("webgpu, or cpu (float64 reference; slow)"),
  power_preference: z.enum(["high-performance", "low-power"]).default("high-performance")
    .describe("WebGPU adapter preference"),
  memory_budget: z.union([z.string().regex(BYTE_SIZE_RE, "expected a size such as 2GiB"), z.int().min(1)])
    .default("2GiB").describe("The planner refuses a plan larger than this, before allocating"),
  validation: z.boolean().default(false).describe("Wrap each step in WebGPU error scopes (slower)"),
  precision: z.enum(PRECISIONS).optional().describe(
    "Training precision (webgpu): f32 (the default), or f16: f16 operands in the matmuls with f32 " +
      "accumulation, f32 master weights and dynamic loss scaling; needs an adapter with shader-f16",
  ),
});

/** How a config's precision reads when `hardware.precision` is not set. */
export const DEFAULT_PRECISION = "f32";

/**
 * A config's training precision: `hardware.precision`, else f32. Optional in the schema so that configs
 * without the key resolve (and hash) as they did before it existed.
 */
export function precisionOf(c: { readonly hardware: { readonly precision?: Precision } }): Precision {
  return c.hardware.precision ?? DEFAULT_PRECISION;
}

/** A numeric sampling range for random sweeps. */
export const RangeSchema = z.strictObject({
  min: z.number().describe("Lower bound"),
  max: z.number().describe("Upper bound"),
  log: z.boolean().default(false).describe("Sample uniformly in log space"),
  int: z.boolean().default(false).describe("Round to an integer"),
});

/** A family of runs from one file. */
export const SweepSchema = z.strictObject({
  grid: z.record(z.string(), z.array(z.unknown()).min(1)).default({})
    .describe("Dotted key → list of values; one point per combination"),
  random: z.strictObject({
    n: posInt("Points to sample", 8),
    seed: z.int().default(0).describe("Seed of the sampler"),
    params: z.record(z.string(), z.union([RangeSchema, z.array(z.unknown()).min(1)]))
      .describe("Dotted key → {min, max, log, int} range or a list to choose from"),
  }).optional().describe("Random search, combined with every grid point"),
  repeat: posInt("Seeds per point (seed, seed+1, …)", 1),
});

/**
 * Where runs are stored (a `postgres://` URL or a SQLite file path). The config is saved with every run and
 * in its checkpoints, so a password may not be written here.
 */
export const StoreSchema = z.string().min(1).refine(
  (s) => !/^[a-z][a-z0-9+.-]*:\/\/[^/?#@]*:[^/?#@]*@/i.test(s),
  "a store URL in a config must not hold a password (the config is saved with every run): " +
    "set PGPASSWORD, or pass the URL with --store or $DSMOE_STORE",
);

/** A whole experiment file. `extends` is resolved by the loader before validation. */
export const ExperimentSchema = z.strictObject({
  name: z.string().min(1).regex(/^[A-Za-z0-9._=-]+$/, "use letters, digits, '.', '_', '-' and '='")
    .default("run").describe("Run name (sweep points append their parameters)"),
  description: z.string().default("").describe("Free text shown in the dashboard"),
  seed: z.int().min(0).default(1).describe("Seed for initialization, data order and sampling"),
  data: DataSchema.prefault({}).describe("Data"),
  model: ModelSchema.prefault({}).describe("Model"),
  router: RouterSchema.prefault({}).describe("Router"),
  loss: LossSchema.prefault({}).describe("Losses"),
  train: TrainSchema.prefault({}).describe("Training"),
  hardware: HardwareSchema.prefault({}).describe("Hardware"),
  store: StoreSchema.optional().describe(
    "Run store: postgres://user@host:port/db (password in $PGPASSWORD); default $DSMOE_STORE, else runs.db",
  ),
  sweep: SweepSchema.optional().describe("Optional: expand this file into a family of runs"),
}).superRefine(_crossChecks);

/** A validated experiment (output type of the schema). */
export type Experiment = z.output<typeof ExperimentSchema>;
/** An inference routing rule. */
export type InferRule = z.output<typeof InferRuleSchema>;

function _crossChecks(c: z.output<z.ZodObject<typeof _shape>>, ctx: z.RefinementCtx): void {
  const issue = (path: (string | number)[], message: string) =>
    ctx.addIssue({ code: "custom", path, message });
  const m = c.model, a = m.attention, r = c.router;
  const routedMlp = m.mlp.experts > 1, routedAtt = a.kind === "moa";
  switch (m.kind) {
    case "dense":
      if (routedMlp) {
        issue(["model", "mlp", "experts"], `model.kind dense needs mlp.experts 1, got ${m.mlp.experts}`);
      }
      if (routedAtt) {
        issue(["model", "attention", "kind"], "model.kind dense needs attention.kind mha, got moa");
      }
      break;
    case "smoe":
      if (!routedMlp) issue(["model", "mlp", "experts"], "model.kind smoe needs mlp.experts > 1");
      if (r.train === "dense") {
        issue(["router", "train"], `model.kind smoe needs a sparse router.train: ${SPARSE_TRAIN.join(", ")}`);
      }
      break;
    case "dsmoe":
      if (!routedMlp && !routedAtt) {
        issue(["model", "mlp", "experts"], "model.kind dsmoe needs mlp.experts > 1 or attention.kind moa");
      }
      if (r.train !== "dense") issue(["router", "train"], "model.kind dsmoe needs router.train: dense");
      break;
    default:
      m.kind satisfies never;
  }
  _routerZooChecks(c, issue);
  _expertShapeChecks(c, issue);
  const seg = m.mlp.segments, nulls = r.null_experts;
  if (r.train === "topk" && r.k * seg > m.mlp.experts * seg + nulls) {
    // With segments m, k counts full-size experts: m·k of the N·m segments and the null experts.
    const of = seg > 1 ? `${m.mlp.experts} × ${seg} segments` : `${m.mlp.experts}`;
    const all = `${of}${nulls > 0 ? ` + ${nulls} null experts` : ""}`;
    const k = seg > 1 ? `k (${r.k}) × ${seg} segments` : `k (${r.k})`;
    issue(["router", "k"], `${k} exceeds experts (${all}) at model.mlp`);
  }
  const rules: [string, InferRule | undefined, number][] = [
    ["infer", r.infer, m.mlp.experts],
    ["infer_attention", r.infer_attention ?? (routedAtt ? r.infer : undefined), a.experts],
  ];
  for (const [key, rule, n] of rules) {
    if (rule?.kind === "topk" && rule.k > n && (key === "infer" ? routedMlp : routedAtt)) {
      issue(["router", key, "k"], `k (${rule.k}) exceeds experts (${n})`);
    }
  }
  _tokenChoiceChecks(r, issue);
  if (c.loss.load_balance_scope !== undefined && c.loss.load_balance <= 0) {
    issue(
      ["loss", "load_balance_scope"],
      `loss.load_balance_scope (${c.loss.load_balance_scope}) applies to the Switch load-balance loss, ` +
        "which is off: set loss.load_balance > 0",
    );
  }
  if (a.kind === "mha") {
    const kv = a.kv_heads ?? a.heads;
    if (a.heads % kv !== 0) {
      issue(["model", "attention", "kv_heads"], `heads (${a.heads}) is not divisible by kv_heads (${kv})`);
    }
  }
  if (m.position === "rope" && a.head_dim % 2 !== 0) {
    issue(["model", "attention", "head_dim"], `rope needs an even head_dim, got ${a.head_dim}`);
  }
  if (c.train.schedule.warmup >= c.train.steps) {
    // A quick run (`--set train.steps=20`) of a config with a longer warmup would never reach its learning
    // rate nor decay: refused, naming the fix.
    const w = c.train.schedule.warmup, n = c.train.steps;
    issue(
      ["train", "schedule", "warmup"],
      `train.schedule.warmup (${w}) must be less than train.steps (${n}): lower it, e.g. ` +
        `--set train.schedule.warmup=${Math.floor(n / 10)}`,
    );
  }
  const micro = c.train.micro_batch;
  if (micro !== undefined && (micro > c.train.batch || c.train.batch % micro !== 0)) {
    issue(
      ["train", "micro_batch"],
      `train.micro_batch (${micro}) must divide train.batch (${c.train.batch}): one step is ` +
        `train.batch / train.micro_batch micro-steps`,
    );
  }
  if (c.train.schedule.min_lr > c.train.optimizer.lr) {
    issue(["train", "schedule", "min_lr"], `min_lr (${c.train.schedule.min_lr}) exceeds lr`);
  }
  if (c.hardware.precision === "f16" && c.hardware.backend !== "webgpu") {
    issue(
      ["hardware", "precision"],
      `hardware.precision f16 runs on the webgpu backend; hardware.backend ${c.hardware.backend} is the ` +
        "float64 reference",
    );
  }
  const mem = c.hardware.memory_budget;
  // Format issues do not stop refinements in zod 4, so a malformed size must not reach parseByteSize.
  if (typeof mem === "string" && BYTE_SIZE_RE.test(mem) && parseByteSize(mem) <= 0) {
    issue(["hardware", "memory_budget"], `memory_budget must be positive, got "${mem}"`);
  }
}

/** The training rules of model.kind smoe: every router that trains some experts per token, not all. */
export const SPARSE_TRAIN = ["topk", "expert_choice", "top_p", "relu"] as const;

/**
 * The top-k token-choice options (capacity, renormalised gates, softmax order, aux-free balancing, null
 * experts; docs/design.md §16) act on training's top-k selection: with another router.train each is refused
 * at its key. Jitter acts on the router's input: any sparse router.train takes it, dense training does not.
 */
function _tokenChoiceChecks(
  r: z.output<typeof RouterSchema>,
  issue: (path: (string | number)[], message: string) => void,
): void {
  const topkOnly = (key: string, set: boolean, value: unknown) => {
    if (!set || r.train === "topk") return;
    const why = r.train === "dense"
      ? "selects no experts in training"
      : `selects experts by its own rule (docs/design.md §16)${
        key === "capacity_factor" ? "; expert choice's capacity is router.capacity" : ""
      }`;
    issue(
      ["router", key],
      `router.${key} (${value}) applies to top-k token choice (router.train: topk); router.train ${r.train} ` +
        why,
    );
  };
  topkOnly("capacity_factor", r.capacity_factor > 0, r.capacity_factor);
  if (r.jitter > 0 && r.train === "dense") {
    issue(
      ["router", "jitter"],
      `router.jitter (${r.jitter}) applies to sparse training (router.train: ${SPARSE_TRAIN.join(", ")}); ` +
        "router.train dense selects no experts in training",
    );
  }
  topkOnly("renormalize", r.renormalize, r.renormalize);
  topkOnly("softmax_order", r.softmax_order !== "before", r.softmax_order);
  topkOnly("balance", r.balance !== "none", r.balance);
  topkOnly("null_experts", r.null_experts > 0, r.null_experts);
  for (
    const [key, s] of Object.entries(ROUTER_MODE_SETTINGS) as [
      keyof typeof ROUTER_MODE_SETTINGS,
      { train: string },
    ][]
  ) {
    if (r[key] !== undefined && r.train !== s.train) {
      issue(
        ["router", key],
        `router.${key} (${r[key]}) is a setting of router.train ${s.train}, not ${r.train}` +
          (key === "capacity" ? "; top-k's expert capacity is router.capacity_factor" : ""),
      );
    }
  }
  if (r.bias_rate !== undefined && r.balance !== "aux_free") {
    issue(
      ["router", "bias_rate"],
      `router.bias_rate (${r.bias_rate}) is the step of the aux_free bias: set router.balance: aux_free`,
    );
  }
  if (r.renormalize && r.softmax_order === "after") {
    issue(
      ["router", "renormalize"],
      "router.renormalize has no effect with router.softmax_order: after (the softmax over the kept " +
        "logits already sums to 1); remove one of them",
    );
  }
}

/** Cross-checks of the routers of the literature (docs/design.md §16), each issue at the key to change. */
function _routerZooChecks(
  c: z.output<z.ZodObject<typeof _shape>>,
  issue: (path: (string | number)[], message: string) => void,
): void {
  const r = c.router;
  if (c.loss.dynamic > 0 && r.train !== "top_p") {
    issue(["loss", "dynamic"], `loss.dynamic is the dynamic loss of router.train top_p, not ${r.train}`);
  }
  if (r.train === "relu") _reluChecks(c, issue);
  else if (c.loss.l1 > 0) issue(["loss", "l1"], `loss.l1 is λ_0 of router.train relu, not ${r.train}`);
  if (r.train === "top_p" && c.loss.load_balance_scope === "sequence") {
    issue(
      ["loss", "load_balance_scope"],
      "loss.load_balance_scope sequence takes each sequence's shares of k selections per token; router.train " +
        "top_p keeps a varying number per token: use global or micro_batch",
    );
  }
  if (r.train === "expert_choice" && c.loss.load_balance > 0) {
    issue(
      ["loss", "load_balance"],
      "router.train expert_choice is balanced by construction (every expert takes C tokens): set " +
        "loss.load_balance to 0",
    );
  }
}

/** Shared and fine-grained experts (docs/design.md §16): segments divide the width; both need routing. */
function _expertShapeChecks(
  c: z.output<z.ZodObject<typeof _shape>>,
  issue: (path: (string | number)[], message: string) => void,
): void {
  const mlp = c.model.mlp;
  if (mlp.hidden % mlp.segments !== 0) {
    issue(
      ["model", "mlp", "segments"],
      `segments (${mlp.segments}) must divide model.mlp.hidden (${mlp.hidden}): each segment is hidden/m wide`,
    );
  }
  for (const key of ["shared", "segments"] as const) {
    if (mlp.experts === 1 && mlp[key] > (key === "shared" ? 0 : 1)) {
      issue(["model", "mlp", key], `model.mlp.${key} needs routed experts (model.mlp.experts > 1)`);
    }
  }
}

/** ReLU routing: λ_0 > 0 (λ only ever scales), no softmax-based router loss. */
function _reluChecks(
  c: z.output<z.ZodObject<typeof _shape>>,
  issue: (path: (string | number)[], message: string) => void,
): void {
  if (c.loss.l1 <= 0) {
    issue(
      ["loss", "l1"],
      "router.train relu needs loss.l1 > 0: it is λ_0, the first L1 weight, which each step multiplies or " +
        "divides by router.l1_rate (e.g. loss.l1: 1e-3)",
    );
  }
  const softmaxLosses: [string, number][] = [
    ["load_balance", c.loss.load_balance],
    ["mi.mlp", c.loss.mi.mlp],
    ["mi.attention", c.loss.mi.attention],
  ];
  for (const [key, w] of softmaxLosses) {
    if (w > 0) {
      issue(
        ["loss", ...key.split(".")],
        `loss.${key} acts on the softmax of the router, which router.train relu does not gate with (its ` +
          "sparsity comes from the L1 term): set it to 0",
      );
    }
  }
}

// Shape helper so `_crossChecks` is typed by the object schema before refinement.
const _shape = {
  name: z.string(),
  description: z.string(),
  seed: z.int(),
  data: DataSchema,
  model: ModelSchema,
  router: RouterSchema,
  loss: LossSchema,
  train: TrainSchema,
  hardware: HardwareSchema,
  store: StoreSchema.optional(),
  sweep: SweepSchema.optional(),
};

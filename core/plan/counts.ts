/**
 * Parameter, FLOP and memory accounting for a config, before anything is built or allocated.
 * These numbers drive `run --dry-run`, the memory-budget refusal and the dashboard's hyperparameter columns.
 *
 * Conventions (documented in docs/design.md §5):
 * - Weights have no biases except the hidden layer of an MLP router (d → hidden → N, biases on both).
 * - Active parameters per token follow docs/design.md §5: shared K/V + Q/O of active attention experts +
 *   active MLP experts + routers; embeddings, positions, norms and the LM head are excluded. Hidden % (of the
 *   attention and MLP weights, routed or not) and the share of all parameters come from the same function,
 *   {@linkcode activeWith}, for every report.
 * - FLOPs count multiply-adds as 2 and include matmuls and attention scores (QKᵀ and AV over the mean
 *   causal context (T+1)/2); elementwise ops are left out. Training = 3 × forward (forward + backward).
 * - Gradient accumulation (`train.micro_batch` < `train.batch`): activations are a micro-batch's, plus one
 *   gradient-sized accumulator per parameter.
 *
 * @module
 */
import { type Experiment, type InferRule, routerSetting } from "../config/schema.ts";
import { tokenizerVocabSize } from "../data/vocab.ts";
import { expertChoiceTokens } from "./router_zoo.ts";

/** Vocabulary size of a tokenizer (core/data/vocab.ts: byte 256, bpe data.vocab_size, gpt2 50257, file:). */
export function vocabSize(data: Experiment["data"]): number {
  return tokenizerVocabSize(data);
}

/** How one optimizer step is split: `steps` micro-steps of `microBatch` sequences make `batch`. */
export interface Accumulation {
  batch: number; // train.batch
  microBatch: number; // train.micro_batch (default train.batch)
  steps: number; // batch / microBatch (1: no accumulation)
}

/** The gradient accumulation of `c` (the schema checks that micro_batch divides batch). */
export function accumulationOf(c: Readonly<Experiment>): Accumulation {
  const batch = c.train.batch, microBatch = c.train.micro_batch ?? batch;
  return { batch, microBatch, steps: batch / microBatch };
}

/**
 * True when `c` has a router loss over the whole batch with a nonzero weight: the MI loss of a routed kind
 * or the Switch load-balance loss over the global batch (loss.load_balance_scope global, the default).
 * Under accumulation such a loss needs the batch's router statistics before the micro-steps
 * (core/plan/plan.ts); the other losses (and the Switch loss per micro-batch or per sequence) are means
 * over micro-batches or tokens.
 */
export function hasBatchRouterLoss(c: Readonly<Experiment>): boolean {
  const s = layerShape(c), l = c.loss;
  const lb = l.load_balance > 0 && (l.load_balance_scope ?? "global") === "global";
  return (s.routedAtt && (l.mi.attention > 0 || lb)) || (s.routedMlp && (l.mi.mlp > 0 || lb));
}

/** Parameter counts by component (whole model, all layers). */
export interface ParamCounts {
  embedding: number; // token embedding (V, d)
  position: number; // learned positions (T, d); 0 for rope
  lm_head: number; // (d, V); 0 when tied
  norms: number; // 2 per block + final
  attention_qo: number; // query and output projections (all experts)
  attention_kv: number; // key and value projections (shared by attention experts)
  attention_router: number;
  mlp_experts: number; // all routed MLP experts (or the dense MLP)
  mlp_shared: number; // shared MLP experts (always on; docs/design.md §16)
  mlp_router: number;
  total: number;
  /**
   * Routed expert parameters (docs/design.md §5): the Q/O of the experts of a routed attention block (MoA) and
   * the experts of a routed MLP (shared MLP experts included: they are part of the expert block, always run),
   * whatever the model kind; 0 for a dense model. An inference rule can skip these (hidden % is a share of
   * all the attention and MLP weights, not of these).
   */
  experts: number;
}

/** Per-layer shape facts the counts are made from. */
export interface LayerShape {
  d: number; // d_model
  qHeads: number; // query heads (all experts)
  kvHeads: number;
  headDim: number;
  attExperts: number; // 1 when attention is not routed
  headsPerExpert: number; // query heads per attention expert
  mlpExperts: number; // routed MLP experts: model.mlp.experts × segments
  hidden: number; // per routed MLP expert: model.mlp.hidden / segments
  segments: number; // model.mlp.segments (fine-grained experts, docs/design.md §16)
  sharedExperts: number; // model.mlp.shared: always-on MLP experts
  sharedHidden: number; // per shared expert: model.mlp.hidden
  routedAtt: boolean;
  routedMlp: boolean;
  /** Null experts each router also scores (router.null_experts; no parameters, no compute). */
  nullExperts: number;
}

/** The shape of one decoder block of `c`. */
export function layerShape(c: Readonly<Experiment>): LayerShape {
  const a = c.model.attention, m = c.model.mlp;
  const moa = a.kind === "moa";
  return {
    d: c.model.d_model,
    qHeads: moa ? a.experts * a.heads_per_expert : a.heads,
    kvHeads: moa ? a.heads_per_expert : a.kv_heads ?? a.heads,
    headDim: a.head_dim,
    attExperts: moa ? a.experts : 1,
    headsPerExpert: moa ? a.heads_per_expert : a.heads,
    mlpExperts: m.experts * m.segments,
    hidden: m.hidden / m.segments,
    segments: m.segments,
    sharedExperts: m.shared,
    sharedHidden: m.hidden,
    routedAtt: moa,
    routedMlp: m.experts > 1,
    nullExperts: c.router.null_experts,
  };
}

/**
 * A rule of the MLP routers in routed-expert units: with segments m (docs/design.md §16) top-k's k counts
 * full-size experts, so m·k segments run.
 */
export function segmentRule<R extends { kind: string; k: number }>(rule: R, segments: number): R {
  return segments === 1 ? rule : { ...rule, k: rule.k * segments };
}

/** Parameters of one router over `n` experts. */
export function routerParams(d: number, n: number, hidden: number): number {
  return hidden > 0 ? d * hidden + hidden + hidden * n + n : d * n;
}

/**
 * Counts every parameter of the model described by `c`.
 *
 * @example
 * ```ts ignore
 * countParams(config).total; // e.g. 1_270_016 for configs/dsmoe-tiny.yaml
 * ```
 */
export function countParams(c: Readonly<Experiment>): ParamCounts {
  const s = layerShape(c), L = c.model.layers, d = s.d, V = vocabSize(c.data);
  const normSize = c.model.norm === "layernorm" ? 2 * d : d;
  const qo = 2 * d * s.qHeads * s.headDim * L;
  const kv = 2 * d * s.kvHeads * s.headDim * L;
  // A router scores its null experts too (router.null_experts): their logits are its only parameters.
  const attRouter = s.routedAtt ? routerParams(d, s.attExperts + s.nullExperts, c.router.hidden) * L : 0;
  const mlp = 2 * d * s.hidden * s.mlpExperts * L, shared = 2 * d * s.sharedHidden * s.sharedExperts * L;
  const mlpRouter = s.routedMlp ? routerParams(d, s.mlpExperts + s.nullExperts, c.router.hidden) * L : 0;
  const counts = {
    embedding: V * d,
    position: c.model.position === "learned" ? c.data.seq_len * d : 0,
    lm_head: c.model.tie_embeddings ? 0 : V * d,
    norms: (2 * L + 1) * normSize,
    attention_qo: qo,
    attention_kv: kv,
    attention_router: attRouter,
    mlp_experts: mlp,
    mlp_shared: shared,
    mlp_router: mlpRouter,
    experts: (s.routedAtt ? qo : 0) + (s.routedMlp ? mlp + shared : 0),
  };
  const total = counts.embedding + counts.position + counts.lm_head + counts.norms + qo + kv + attRouter +
    mlp +
    shared +
    mlpRouter;
  return { ...counts, total };
}

/** Expected experts active per token under a rule, and whether that number is exact or an upper bound. */
export interface ActiveExperts {
  experts: number;
  exact: boolean;
}

/**
 * Experts a rule activates per token, known before training: exact for topk/dense, an upper bound for
 * threshold rules (Σ S_i = 1, so fewer than N/ε experts can have N·S_i > ε) and top_p (all N).
 */
export function expectedActive(rule: InferRule, n: number): ActiveExperts {
  switch (rule.kind) {
    case "dense":
      return { experts: n, exact: true };
    case "topk":
      return { experts: Math.min(rule.k, n), exact: true };
    case "threshold":
    case "threshold_topk":
      return { experts: rule.epsilon > 0 ? Math.min(n, Math.ceil(n / rule.epsilon) - 1) : n, exact: false };
    case "top_p":
      return { experts: n, exact: false };
    default:
      return rule.kind satisfies never;
  }
}

/**
 * Real experts a rule activates per token when the router also scores `nulls` null experts (docs/design.md
 * §16): the rule's count over all n + nulls, at most n; exact only for the dense rule (how often the null
 * experts are picked is learned), so an upper bound otherwise.
 */
export function expectedActiveReal(rule: InferRule, n: number, nulls: number): ActiveExperts {
  if (nulls === 0) return expectedActive(rule, n);
  return { experts: Math.min(n, expectedActive(rule, n + nulls).experts), exact: rule.kind === "dense" };
}

/**
 * Active and hidden parameters of a model at inference: the one definition of docs/design.md §5 that every
 * report uses (`run --dry-run`, `eval`, `generate`, the run store's `infer/…` and `generate/…` metrics, the
 * repro report, the dashboard, `bench --suite decode`), whatever the model kind (dense, SMoE, DS-MoE):
 * - hidden parameters: the weights of the attention and MLP blocks — Q, K, V, O projections and MLP w1/w2,
 *   routed or not (no embeddings, positions, norms, LM head or routers); the same denominator for every kind;
 * - routed expert parameters: the Q/O projections of the experts of every routed attention block (MoA) and the
 *   experts of every routed MLP block, the only hidden parameters a rule can skip; a block without a router
 *   (dense attention, MoA's shared K/V, a dense MLP) always runs;
 * - skipped: the routed expert parameters the inference rule does not run, per token (averaged over tokens);
 * - active: the parameters outside the embeddings, positions, norms and LM head, minus the skipped ones.
 */
export interface ParamShare {
  active: number; // per token: non-embedding parameters − skipped
  all: number; // non-embedding parameters (active with every expert running)
  total: number; // every parameter, embeddings, norms and LM head included (countParams().total)
  hidden: number; // hidden parameters: attention Q/K/V/O and MLP w1/w2, routed or not
  hiddenActive: number; // of them, run per token: hidden − skipped
  experts: number; // routed expert parameters (countParams().experts): the ones a rule can skip
  expertsActive: number; // of them, run per token: experts − skipped
  skipped: number; // routed expert parameters skipped per token
  hiddenPct: number; // 100 · hiddenActive / hidden (100 for a dense model)
  activePct: number; // 100 · active / all
  activePctAll: number; // 100 · (total − skipped) / total: the share of all parameters, embeddings included
}

/** Active-parameter estimate for inference under the config's own rules. */
export interface ActiveParams extends ParamShare {
  exact: boolean; // false: an upper bound that `deno task eval` replaces with a measurement
  attExperts: number; // attention experts active per token (per layer)
  mlpExperts: number; // MLP experts active per token (per layer)
}

/** Active parameters per token at inference (embeddings, norms and LM head excluded). */
export function activeParams(c: Readonly<Experiment>): ActiveParams {
  const s = layerShape(c);
  const attRule = c.router.infer_attention ?? c.router.infer;
  // With null experts (router.null_experts) the rule's count over N + N_null bounds the real experts.
  const att = s.routedAtt
    ? expectedActiveReal(attRule, s.attExperts, s.nullExperts)
    : { experts: 1, exact: true };
  const mlpRule = segmentRule(c.router.infer, s.segments);
  const mlp = s.routedMlp
    ? expectedActiveReal(mlpRule, s.mlpExperts, s.nullExperts)
    : { experts: 1, exact: true };
  // A ReLU-routed model runs only the selected experts whose gate is above 0: every count is a bound.
  const relu = c.router.train === "relu";
  return {
    ...activeWith(c, att.experts, mlp.experts),
    exact: att.exact && mlp.exact && !relu,
    attExperts: att.experts,
    mlpExperts: mlp.experts,
  };
}

/**
 * The {@linkcode ParamShare} when `attExperts` attention experts and `mlpExperts` MLP experts run per token
 * in each routed block (means over layers and tokens for measured activity). A block that is not routed runs
 * whole, whatever its argument says.
 *
 * @example
 * ```ts ignore
 * // Top-2 of 8 MLP experts, dense attention: 425,984 of 1,212,416 hidden parameters run (13/37).
 * activeWith(smoeTiny, 1, 2).hiddenPct; // 35.1…
 * ```
 */
export function activeWith(
  c: Readonly<Experiment>,
  attExperts: number,
  mlpExperts: number,
): ParamShare {
  const s = layerShape(c), p = countParams(c);
  // Shared MLP experts always run (docs/design.md §16).
  const qo = s.routedAtt ? (p.attention_qo / s.attExperts) * attExperts : p.attention_qo;
  const mlpActive = s.routedMlp ? (p.mlp_experts / s.mlpExperts) * mlpExperts + p.mlp_shared : p.mlp_experts;
  const expertsActive = (s.routedAtt ? qo : 0) + (s.routedMlp ? mlpActive : 0);
  return activeOfSkipped(c, p.experts - expertsActive);
}

/**
 * The {@linkcode ParamShare} when `skipped` routed expert parameters do not run per token (what
 * {@linkcode activeWith} computes from experts per block; also what the stored `active_params` of an older
 * evaluation gives, as the non-embedding parameters less it).
 */
export function activeOfSkipped(c: Readonly<Experiment>, skipped: number): ParamShare {
  const p = countParams(c);
  const hidden = p.attention_qo + p.attention_kv + p.mlp_experts + p.mlp_shared;
  const all = hidden + p.attention_router + p.mlp_router;
  return {
    active: all - skipped,
    all,
    total: p.total,
    hidden,
    hiddenActive: hidden - skipped,
    experts: p.experts,
    expertsActive: p.experts - skipped,
    skipped,
    hiddenPct: (100 * (hidden - skipped)) / hidden,
    activePct: (100 * (all - skipped)) / all,
    activePctAll: (100 * (p.total - skipped)) / p.total,
  };
}

/** Experts one routed layer ran per token, averaged over tokens (eval and generate measure it). */
export interface LayerExperts {
  kind: "attention" | "mlp";
  experts: number;
}

/**
 * The {@linkcode ParamShare} of measured activity: the experts each routed layer ran per token, averaged
 * over the layers of each kind (every layer of a kind has the same experts, so this is the mean over tokens
 * and layers of the parameters run). A kind without layers in `layers` runs all its experts.
 */
export function activeOfLayers(c: Readonly<Experiment>, layers: readonly LayerExperts[]): ParamShare {
  const s = layerShape(c);
  const mean = (kind: LayerExperts["kind"], all: number) => {
    const ls = layers.filter((l) => l.kind === kind);
    return ls.length === 0 ? all : ls.reduce((a, l) => a + l.experts, 0) / ls.length;
  };
  return activeWith(c, mean("attention", s.attExperts), mean("mlp", s.mlpExperts));
}

/** Forward FLOPs per token with `attExperts` attention experts and `mlpExperts` MLP experts computing. */
export function forwardFlops(c: Readonly<Experiment>, attExperts: number, mlpExperts: number): number {
  const s = layerShape(c), L = c.model.layers, d = s.d, V = vocabSize(c.data);
  const qHeadsActive = s.routedAtt ? attExperts * s.headsPerExpert : s.qHeads;
  const ctx = (c.data.seq_len + 1) / 2;
  const attProj = 2 * d * qHeadsActive * s.headDim * 2 + 2 * d * s.kvHeads * s.headDim * 2;
  const attScores = 2 * 2 * qHeadsActive * s.headDim * ctx;
  const mlp = 2 * 2 * d * (s.hidden * mlpExperts + s.sharedHidden * s.sharedExperts);
  const routers = 2 * ((s.routedAtt ? routerParams(d, s.attExperts + s.nullExperts, c.router.hidden) : 0) +
    (s.routedMlp ? routerParams(d, s.mlpExperts + s.nullExperts, c.router.hidden) : 0));
  return L * (attProj + attScores + mlp + routers) + 2 * d * V;
}

/**
 * Routed MLP experts the training rule computes per token, of `n` (docs/design.md §5, §16; with segments m,
 * k and capacity count full-size experts, so m·k segments): all of them (dense), k (topk), expert choice's mean N·C/T over the T tokens of a micro-batch, or for top-p and ReLU routing
 * all of them (an upper bound: the count depends on the router).
 */
export function trainExpertsPerToken(c: Readonly<Experiment>, n: number): number {
  const r = c.router;
  switch (r.train) {
    case "dense":
      return n;
    case "topk":
      return Math.min(r.k * c.model.mlp.segments, n);
    case "expert_choice": {
      const T = accumulationOf(c).microBatch * c.data.seq_len;
      return (n * expertChoiceTokens(T, n, routerSetting(r, "capacity") * c.model.mlp.segments)) / T;
    }
    case "top_p":
    case "relu":
      return n; // an upper bound: the count depends on the trained router
    default:
      return r.train satisfies never;
  }
}

/** Training and inference FLOPs per token. */
export interface Flops {
  train: number; // forward + backward, experts as the train rule computes them
  infer: number; // forward under the inference rules (an upper bound where active counts are)
  inferDense: number; // forward with every expert
}

/** FLOPs per token for training (3 × forward) and inference. */
export function flopsPerToken(c: Readonly<Experiment>): Flops {
  const s = layerShape(c), a = activeParams(c);
  const trainMlp = trainExpertsPerToken(c, s.mlpExperts);
  return {
    train: 3 * forwardFlops(c, s.attExperts, trainMlp),
    infer: forwardFlops(c, a.attExperts, a.mlpExperts),
    inferDense: forwardFlops(c, s.attExperts, s.mlpExperts),
  };
}

/** Estimated device memory in bytes. */
export interface MemoryEstimate {
  train: number; // weights + grads + Adam m, v + gradient accumulators + saved activations of one micro-batch
  infer: number; // weights + activations of one batch + KV cache
  parts: {
    weights: number;
    optimizer: number; // gradients and both Adam moments
    gradAccum: number; // accumulated gradients (0 without accumulation)
    activations: number; // saved for the backward pass, one micro-batch's
    kvCache: number;
  };
}

/**
 * Estimates device memory. Training saves, per token of a micro-batch and layer: two norm inputs, q/k/v,
 * attention output and log-sum-exp, router probabilities, and three hidden activations of width N·h
 * (pre-activation, activation, gated); plus logits and their gradient. f32 throughout.
 */
export function estimateMemory(c: Readonly<Experiment>): MemoryEstimate {
  const s = layerShape(c), p = countParams(c), L = c.model.layers, V = vocabSize(c.data);
  const acc = accumulationOf(c);
  const tokens = acc.microBatch * c.data.seq_len;
  const hd = s.headDim;
  const perLayer = 2 * s.d + (s.qHeads + 2 * s.kvHeads) * hd + s.qHeads * hd + s.qHeads + s.attExperts +
    s.mlpExperts + s.nullExperts * (Number(s.routedAtt) + Number(s.routedMlp)) + 3 * s.mlpExperts * s.hidden +
    3 * s.sharedExperts * s.sharedHidden;
  const activations = 4 * tokens * (L * perLayer + 2 * V + 2 * s.d);
  const weights = 4 * p.total, gradAccum = acc.steps > 1 ? weights : 0;
  // Inference runs train.batch sequences at once (eval's batches).
  const inferTokens = acc.batch * c.data.seq_len;
  const kvCache = 4 * inferTokens * L * 2 * s.kvHeads * hd;
  const inferActs = 4 * inferTokens *
    (s.d * 4 + s.mlpExperts * s.hidden + s.sharedExperts * s.sharedHidden + V);
  return {
    train: weights * 4 + gradAccum + activations,
    infer: weights + kvCache + inferActs,
    parts: { weights, optimizer: weights * 3, gradAccum, activations, kvCache },
  };
}

/**
 * Config → forward graph of the decoder (docs/design.md §2–§4): embeddings, pre-norm blocks with MoA
 * attention and a stacked-expert MoE MLP, the LM head, and the losses (cross-entropy, MI per router, Switch,
 * z).
 *
 * Dense training is the stacked-expert formulation: the MLP is one matmul of width N·h whose hidden block i
 * is scaled per token by the router probability S_i before W2; MoA is one grouped-query attention whose
 * query-head groups are scaled the same way before Wo. SMoE multiplies S by its top-k mask, so unselected
 * experts get neither output nor gradient.
 *
 * The routers of the literature (docs/design.md §16): top-k token choice with its options (`tokenChoice`:
 * capacity, jitter, renormalised gates, softmax after top-k, null experts, the aux-free bias) records its
 * selection statistics (`loads`); expert choice, top-p and ReLU gate through core/plan/router_zoo.ts; the
 * optimizer-free state of both (aux-free biases, ReLU's λ) is `routerState`. Shared MLP experts add a dense
 * branch to the routed sum, and segments make the routed experts finer (core/plan/counts.ts `layerShape`).
 *
 * Under gradient accumulation (`batchStats`), the batch-level router losses of a micro-batch's graph take
 * the whole batch's statistics as inputs: the MI loss the batch's p̄ (`mi_loss_global`), the Switch loss the
 * batch's routed shares f (`switch_loss_global`), and `mean_rows` nodes give the micro-batch's own
 * statistics, which a forward pass over every micro-batch averages into those inputs first.
 *
 * @module
 */
import { AUX_FREE_BIAS_RATE, type Experiment, routerSetting } from "../config/schema.ts";
import { Graph, type Value } from "../graph/ir.ts";
import { apply, apply1 } from "../graph/ops.ts";
import type { RouteRule } from "../graph/op_types.ts";
import { layerShape, segmentRule, vocabSize } from "./counts.ts";
import { isZooTrain, L1_LAMBDA, zooTrainGate } from "./router_zoo.ts";

/** How a parameter is initialized and optimized. */
export interface ParamSpec {
  value: Value;
  init: "normal" | "ones" | "zeros";
  std: number; // for normal
  decay: boolean; // weight decay applies (matrices, not norms or biases)
}

/** A router's probabilities, for metrics (load, entropy) and inference. */
export interface RouterTap {
  layer: number;
  kind: "attention" | "mlp";
  logits: Value; // (N, E)
  probs: Value; // (N, E)
  /**
   * 0/1 experts run per token under the inference rule (inference graphs; absent for the dense rule): the
   * real experts' columns only where the router also scores null experts.
   */
  mask?: Value;
  /** The real experts, where the router also scores router.null_experts null experts after them. */
  experts?: number;
  /**
   * The training gate (N, E) of a router of docs/design.md §16 (training graphs): a pair is routed iff its
   * gate is above 0; evaluation reads it for the per-expert load and the share of tokens no expert took.
   */
  trainGate?: Value;
}

/** The real experts of a router: its probabilities' width less its null experts (docs/design.md §16). */
export function tapExperts(t: Pick<RouterTap, "experts" | "probs">): number {
  return t.experts ?? t.probs.shape[1]!;
}

/** Inference routing rules of an inference graph, for MLP and attention routers separately. */
export interface InferRules {
  mlp: RouteRule;
  attention: RouteRule;
}

/**
 * A batch-level router statistic under gradient accumulation: a micro-batch's column means, and the input
 * of the training graph that takes their mean over the batch's micro-batches.
 */
export interface BatchStat {
  micro: Value; // (E,) mean_rows of the router's probabilities (p̄) or top-k mask (f)
  batch: Value; // (E,) input leaf read by mi_loss_global / switch_loss_global
}

/**
 * A routed block's top-k selection in training (router.train: topk; docs/design.md §16), for the per-step
 * router metrics (per-expert load, dropped share, null share) and the aux-free bias update.
 */
export interface RouterLoad {
  layer: number;
  kind: "attention" | "mlp";
  k: number; // experts each token selects
  /** (E,) column means of the top-k mask: the share of the graph's tokens that selected each expert. */
  selected: Value;
  /** Real experts N; the columns after them (to E = N + N_null) are null experts (router.null_experts). */
  experts: number;
  /** (N,) the real experts' share after the expert capacity (router.capacity_factor > 0): the tokens kept. */
  kept?: Value;
  /**
   * With router.balance: aux_free, the (E,) `state` leaf `h<l>.<attn|mlp>.router.balance_bias`: the
   * per-expert bias added to the selection scores, moved by the backend after every step (not trained; one
   * of `ModelGraph.routerState`).
   */
  bias?: Value;
}

/** The name prefix of the router of layer `l`'s `kind` block: `h<l>.attn.router` or `h<l>.mlp.router`. */
export function routerPrefix(l: number, kind: "attention" | "mlp"): string {
  return `h${l}.${kind === "attention" ? "attn" : "mlp"}.router`;
}

/**
 * Expert capacity (docs/design.md §16): C = ceil(factor · T · k / N) tokens per expert of the T tokens of
 * one graph execution (a micro-batch under accumulation).
 */
export function expertCapacity(factor: number, tokens: number, k: number, experts: number): number {
  return Math.ceil((factor * tokens * k) / experts);
}

/**
 * Optimizer-free router state (docs/design.md §16): a leaf of the training graph that the backends hold,
 * save in checkpoints (`router_state/<name>`, F32, its shape) and change after each finite step by
 * `update`, never by the optimizer (no gradient, no Adam moments, no weight decay).
 */
export interface RouterStateLeaf {
  /** Its name in checkpoints and backends: `l1_lambda`, or a bias leaf's `h<l>.<attn|mlp>.router.balance_bias`. */
  name: string;
  value: Value; // the leaf (λ: an input (1,); an aux-free bias: a state leaf (E,))
  init: number; // every element's value before the first step
  update: RouterStateUpdate;
}

/** How a {@linkcode RouterStateLeaf} changes after a finite step (each rule has a float64 twin and a kernel). */
export type RouterStateUpdate =
  /** λ of ReLU routing: times rate^sign(target − the step's mean `sparsity`). */
  | { kind: "l1_lambda"; sparsity: Value; target: number; rate: number }
  /**
   * An aux-free balancing bias: b_i += rate · sign(k·T − E·c_i), c_i = round(load_i · T) the step's T tokens
   * that selected expert i (`load` = its `RouterLoad.selected`, averaged over the micro-batches).
   */
  | { kind: "balance_bias"; load: Value; k: number; rate: number };

/** Options of {@linkcode buildModel}. */
export interface BuildOptions {
  /**
   * Batch-level router losses (MI, Switch) of a micro-batch against the batch's statistics, fed as inputs
   * (`ModelGraph.batchStats`); default false: against the graph's own tokens.
   */
  batchStats?: boolean;
}

/** The built model. */
export interface ModelGraph {
  graph: Graph;
  params: ParamSpec[];
  ids: Value; // (N,) u32 input tokens
  targets: Value; // (N,) u32 next tokens
  logits: Value; // (N, V)
  loss: Value; // scalar total loss
  lmLoss: Value; // scalar cross-entropy
  miLoss: { attention: Value[]; mlp: Value[] }; // per routed layer
  auxLoss: { switch: Value[]; z: Value[] };
  routers: RouterTap[];
  tokens: number; // N = batch · seq_len
  /** With `batchStats`: every router statistic the batch-level losses read (empty otherwise). */
  batchStats: BatchStat[];
  /** Training under router.train: topk: each routed block's selection statistics (empty otherwise). */
  loads: RouterLoad[];
  /**
   * Training with router.jitter > 0: per router, the (N, d) input leaf that multiplies its input (U(1−ε,
   * 1+ε) noise fed each micro-step from the run's seeded RNG, ones for evaluation); empty otherwise.
   */
  jitter: Value[];
  /** Scalars a training step also reports, logged as `train/<key>` (routers of docs/design.md §16). */
  scalars: { key: string; value: Value }[];
  /**
   * Optimizer-free router state of training graphs (docs/design.md §16): the aux-free balancing biases, in
   * `loads` order, then ReLU routing's λ; empty for most models.
   */
  routerState: RouterStateLeaf[];
}

/**
 * The one-token decoding graph of a model (docs/design.md §6, §10): KV caches as state, the position as an
 * input.
 */
export interface DecoderGraph {
  graph: Graph;
  params: ParamSpec[];
  ids: Value; // (1,) u32: the token at `pos`
  pos: Value; // (1,) u32: its position, < seq_len
  logits: Value; // (1, V): next-token logits
  caches: Value[]; // per layer: keys then values, (seq_len, kv_heads·head_dim) state leaves
  routers: RouterTap[];
}

/**
 * Builds the decoder of `c` under inference rules: one token per execution at a position fed as an input,
 * keys and values appended to per-layer caches, routed layers computing only their selected experts.
 */
export function buildDecoder(c: Readonly<Experiment>, rules: InferRules): DecoderGraph {
  return _decoderOf(new _Builder(c, 1, rules, true), c);
}

/** The decoder graph a decoding builder makes: embeddings, the blocks, the final norm and the logits. */
function _decoderOf(b: _Builder, c: Readonly<Experiment>): DecoderGraph {
  const wte = b.param("wte", [b.V, b.d], "normal");
  let x = apply1(b.g, "embedding", [b.ids, wte]);
  if (c.model.position === "learned") {
    x = apply1(b.g, "add", [x, apply1(b.g, "embedding", [b.pos!, b.param("wpe", [b.T, b.d], "normal")])]);
  }
  x = b.blocks(x);
  const xf = b.norm("lnf", x);
  const logits = c.model.tie_embeddings
    ? apply1(b.g, "matmul", [xf, wte], { transB: true })
    : apply1(b.g, "matmul", [xf, b.param("lm_head", [b.d, b.V], "normal")]);
  return {
    graph: b.g,
    params: b.params,
    ids: b.ids,
    pos: b.pos!,
    logits,
    caches: b.caches,
    routers: b.routers,
  };
}

/**
 * The batched decoding graph of a model (docs/design.md §10, "Batched decoding"): `batch` sequences decoded
 * together, one new token each per execution, each at its own position, with the caches of all sequences
 * stacked per layer.
 */
export interface BatchDecoderGraph extends DecoderGraph {
  batch: number; // B sequences
  // ids (B,) u32, pos (B,) u32 (each < seq_len), logits (B, V), caches (B·seq_len, kv_heads·head_dim)
}

/**
 * Builds the batched decoder of `c` under inference rules: B sequences, one token each per execution, row b
 * at its own position `pos[b]` with its own cache (rows b·seq_len … of each layer's stacked caches); every
 * token is routed on its own, so MoE MLPs run as grouped matmuls over the routed (token, expert) pairs
 * (`moe_mlp` at N = B) and MoA as `moa_attention_batch`. Row b's logits are those of a batch-1 decoder fed
 * row b's tokens. Refuses `threshold_topk` in a routed layer: its K is a mean over the batch, which would
 * make each row depend on the others.
 */
export function buildBatchDecoder(
  c: Readonly<Experiment>,
  rules: InferRules,
  batch: number,
): BatchDecoderGraph {
  if (!(Number.isSafeInteger(batch) && batch >= 1)) {
    throw new RangeError(`Cannot build a batched decoder of ${batch} sequences: needs a whole number ≥ 1`);
  }
  const s = layerShape(c);
  for (const [kind, routed] of [["mlp", s.routedMlp], ["attention", s.routedAtt]] as const) {
    if (routed && rules[kind].kind === "threshold_topk") {
      throw new RangeError(
        `Cannot decode ${batch} sequences together under threshold_topk (${kind} routers): its K is a mean ` +
          "over the batch, so sequences would change each other's experts; use threshold, topk or top_p",
      );
    }
  }
  return { ..._decoderOf(new _Builder(c, 1, rules, true, false, batch), c), batch };
}

/**
 * Builds the graph of `c` for `batch` sequences: the training forward and losses (autodiff adds backward),
 * or with `infer`, a forward whose routers gate by the inference rules (raw S on the selected experts).
 */
export function buildModel(
  c: Readonly<Experiment>,
  batch: number,
  infer?: InferRules,
  o: BuildOptions = {},
): ModelGraph {
  const b = new _Builder(c, batch, infer, false, o.batchStats ?? false);
  const wte = b.param("wte", [b.V, b.d], "normal");
  let x = apply1(b.g, "embedding", [b.ids, wte]);
  if (c.model.position === "learned") x = apply1(b.g, "add_rows", [x, b.param("wpe", [b.T, b.d], "normal")]);
  x = b.blocks(x);
  const xf = b.norm("lnf", x);
  const logits = c.model.tie_embeddings
    ? apply1(b.g, "matmul", [xf, wte], { transB: true })
    : apply1(b.g, "matmul", [xf, b.param("lm_head", [b.d, b.V], "normal")]);
  const lmLoss = apply1(b.g, "cross_entropy", [logits, b.targets]);
  const terms: Value[] = [lmLoss];
  const weighted = (vals: Value[], w: number) => {
    if (w > 0) { for (const v of vals) terms.push(apply1(b.g, "scale", [v], { alpha: w })); }
  };
  weighted(b.mi.attention, c.loss.mi.attention);
  weighted(b.mi.mlp, c.loss.mi.mlp);
  weighted(b.switch, c.loss.load_balance);
  weighted(b.z, c.loss.z);
  weighted(b.dynamic, c.loss.dynamic);
  terms.push(...b.l1); // weighted by their λ input
  const scalars = _scalars(b);
  const loss = terms.length === 1 ? lmLoss : apply1(b.g, "add_n", terms);
  return {
    graph: b.g,
    params: b.params,
    ids: b.ids,
    targets: b.targets,
    logits,
    loss,
    lmLoss,
    miLoss: b.mi,
    auxLoss: { switch: b.switch, z: b.z },
    routers: b.routers,
    tokens: b.N,
    batchStats: b.stats,
    loads: b.loads,
    jitter: b.jitter,
    scalars,
    routerState: _routerState(b, scalars),
  };
}

/**
 * The scalars a training step logs beside its losses (docs/design.md §16): `dynamic_loss`, the sum of the
 * top-p routers' entropies (unweighted); `l1_loss`, the sum of the ReLU routers' L1 terms (weighted by λ),
 * and `relu_sparsity`, their mean share of zero gates.
 */
function _scalars(b: _Builder): ModelGraph["scalars"] {
  const sum = (vs: Value[]) => vs.length === 1 ? vs[0]! : apply1(b.g, "add_n", vs);
  const out: ModelGraph["scalars"] = [];
  if (b.dynamic.length > 0) out.push({ key: "dynamic_loss", value: sum(b.dynamic) });
  if (b.l1.length > 0) {
    out.push({ key: "l1_loss", value: sum(b.l1) });
    const zeros = b.zeroShares, mean = apply1(b.g, "scale", [sum(zeros)], { alpha: 1 / zeros.length });
    out.push({ key: "relu_sparsity", value: mean });
  }
  return out;
}

/**
 * The router state of a training graph (docs/design.md §16): each aux-free balancing bias (moved from its
 * block's selection shares), then ReLU routing's λ (updated from the step's `relu_sparsity`).
 */
function _routerState(b: _Builder, scalars: ModelGraph["scalars"]): RouterStateLeaf[] {
  const r = b.c.router, rate = r.bias_rate ?? AUX_FREE_BIAS_RATE;
  const out: RouterStateLeaf[] = b.loads.flatMap((l) =>
    l.bias
      ? [{
        name: l.bias.name,
        value: l.bias,
        init: 0,
        update: { kind: "balance_bias" as const, load: l.selected, k: l.k, rate },
      }]
      : []
  );
  if (b.l1Lambda) {
    const sparsity = scalars.find((s) => s.key === "relu_sparsity")!.value;
    out.push({
      name: L1_LAMBDA,
      value: b.l1Lambda,
      init: b.c.loss.l1,
      update: {
        kind: "l1_lambda",
        sparsity,
        target: routerSetting(r, "target_sparsity"),
        rate: routerSetting(r, "l1_rate"),
      },
    });
  }
  return out;
}

class _Builder {
  readonly g = new Graph();
  readonly params: ParamSpec[] = [];
  readonly routers: RouterTap[] = [];
  /** Gates made together with their router's probabilities (route_gate), by the probabilities' id. */
  readonly fusedGates = new Map<number, Value>();
  /** Inference under a top-k rule with router.balance: aux_free: the balancing bias, by the probabilities' id. */
  readonly inferBias = new Map<number, Value>();
  readonly mi = { attention: [] as Value[], mlp: [] as Value[] };
  readonly switch: Value[] = [];
  readonly z: Value[] = [];
  /** The dynamic (entropy) losses of top-p routers (docs/design.md §16). */
  readonly dynamic: Value[] = [];
  /** ReLU routers' L1 terms and shares of zero gates, and the λ input they share (docs/design.md §16). */
  readonly l1: Value[] = [];
  readonly zeroShares: Value[] = [];
  l1Lambda: Value | undefined;
  readonly stats: BatchStat[] = [];
  readonly loads: RouterLoad[] = [];
  readonly jitter: Value[] = [];
  readonly batchStats: boolean;
  readonly c: Readonly<Experiment>;
  readonly s: ReturnType<typeof layerShape>;
  readonly V: number;
  readonly d: number;
  readonly T: number;
  readonly B: number;
  readonly N: number;
  readonly ids: Value;
  readonly targets: Value;
  readonly infer: InferRules | undefined;
  /** Decoding: one token at input position `pos`; attention reads and extends the per-layer `caches`. */
  readonly pos: Value | undefined;
  readonly caches: Value[] = [];
  /** Decoding: sequences decoded together, one token each (`buildBatchDecoder`; 1 for `buildDecoder`). */
  readonly rows: number;

  constructor(
    c: Readonly<Experiment>,
    batch: number,
    infer?: InferRules,
    decode = false,
    batchStats = false,
    rows = 1,
  ) {
    if (c.model.position === "rope") {
      throw new RangeError("Cannot plan model.position rope: not supported yet; use position: learned");
    }
    this.c = c;
    this.batchStats = batchStats && !infer && !decode;
    this.infer = infer;
    this.s = layerShape(c);
    this.V = vocabSize(c.data);
    this.d = c.model.d_model;
    this.T = c.data.seq_len;
    this.B = batch;
    this.rows = rows;
    this.N = decode ? rows : batch * this.T;
    this.ids = this.g.leaf("input", "ids", [this.N], "u32");
    this.targets = this.g.leaf("input", "targets", [this.N], "u32");
    this.pos = decode ? this.g.leaf("input", "pos", [rows], "u32") : undefined;
  }

  /** The decoder blocks: x += Attn(Norm(x)); x += MLP(Norm(x)). */
  blocks(x: Value): Value {
    for (let l = 0; l < this.c.model.layers; l++) {
      x = apply1(this.g, "add", [x, this.attention(l, this.norm(`h${l}.ln1`, x))]);
      x = apply1(this.g, "add", [x, this.mlp(l, this.norm(`h${l}.ln2`, x))]);
    }
    return x;
  }

  param(name: string, shape: number[], init: ParamSpec["init"], std = this.c.model.init_std): Value {
    const value = this.g.leaf("param", name, shape);
    this.params.push({ value, init, std, decay: init === "normal" && shape.length > 1 });
    return value;
  }

  /** Residual-branch output projections get std / sqrt(2·layers) (GPT-2), keeping the stream's scale. */
  get projStd(): number {
    return this.c.model.init_std / Math.sqrt(2 * this.c.model.layers);
  }

  norm(prefix: string, x: Value): Value {
    const gamma = this.param(`${prefix}.weight`, [this.d], "ones");
    const inputs = [x, gamma];
    if (this.c.model.norm === "layernorm") inputs.push(this.param(`${prefix}.bias`, [this.d], "zeros"));
    return apply(this.g, "norm", inputs, { kind: this.c.model.norm, eps: 1e-5 })[0]!;
  }

  router(l: number, kind: RouterTap["kind"], h: Value, experts: number): Value {
    const p = routerPrefix(l, kind);
    const hidden = this.c.router.hidden, real = experts;
    // Null experts (AdaMoE): the router scores them after the real ones; they compute nothing.
    experts += this.c.router.null_experts;
    h = this.jittered(p, h);
    let logits: Value;
    if (hidden > 0) {
      let r = apply1(this.g, "matmul", [h, this.param(`${p}.w1`, [this.d, hidden], "normal")]);
      r = apply1(this.g, "bias_add", [r, this.param(`${p}.b1`, [hidden], "zeros")]);
      r = apply1(this.g, "activation", [r], { kind: "gelu" });
      logits = apply1(this.g, "matmul", [r, this.param(`${p}.w2`, [hidden, experts], "normal")]);
      logits = apply1(this.g, "bias_add", [logits, this.param(`${p}.b2`, [experts], "zeros")]);
    } else {
      logits = apply1(this.g, "matmul", [h, this.param(`${p}.w`, [this.d, experts], "normal")]);
    }
    // Inference: softmax, the rule's mask and the gate in one op (one dispatch instead of three);
    // threshold_topk keeps its own ops (its K is a mean over the batch).
    const asked = this.infer?.[kind], rule = asked && segmentRule(asked, this.segmentsOf(kind));
    // The aux-free bias enters top-k selection at inference too (docs/design.md §16): no fused gate then.
    const biased = rule?.kind === "topk" && this.c.router.balance === "aux_free";
    let probs: Value;
    if (rule && this.c.router.train === "relu") {
      probs = this.reluInferRouter(l, kind, logits, rule);
    } else if (rule && rule.kind !== "dense" && rule.kind !== "threshold_topk" && !biased) {
      const [p, mask, gate] = apply(this.g, "route_gate", [logits], { ...rule });
      probs = p!;
      this.routers.push({ layer: l, kind, logits, probs, mask: mask!, ...this._nulls(real) });
      this.fusedGates.set(probs.id, gate!);
    } else {
      probs = apply1(this.g, "softmax", [logits]);
      this.routers.push({ layer: l, kind, logits, probs, ...this._nulls(real) });
      if (biased) {
        const bias = this.param(`${p}.balance_bias`, [logits.shape[1]!], "zeros");
        this.inferBias.set(probs.id, bias);
      }
    }
    this.mi[kind].push(
      this.batchStats
        ? apply1(this.g, "mi_loss_global", [probs, this.batchStat(`${p}.pbar`, probs)])
        : apply1(this.g, "mi_loss", [probs]),
    );
    if (this.c.loss.z > 0) this.z.push(apply1(this.g, "z_loss", [logits]));
    return probs;
  }

  /**
   * The router input h, multiplied in training by the (N, d) jitter input `${prefix}.jitter` when
   * router.jitter > 0 (docs/design.md §16); h itself otherwise (and at inference).
   */
  jittered(prefix: string, h: Value): Value {
    if (this.infer || this.pos || this.c.router.jitter <= 0) return h;
    const noise = this.g.leaf("input", `${prefix}.jitter`, h.shape);
    this.jitter.push(noise);
    return apply1(this.g, "mul", [h, noise]);
  }

  /**
   * The inference router of a ReLU-routed model (docs/design.md §16): gates g = ReLU(logits), the rule
   * applied to the normalized gates g / Σ g and kept where g > 0, gate g ⊙ mask (fused, `relu_route_gate`;
   * threshold_topk's batch-mean K through `route_mask`). Records the router; returns the normalized gates.
   */
  reluInferRouter(l: number, kind: RouterTap["kind"], logits: Value, rule: RouteRule): Value {
    const fused = rule.kind !== "threshold_topk";
    const [probs, positive, g] = apply(this.g, "relu_route_gate", [logits], {
      ...rule,
      kind: fused ? rule.kind : "dense",
    });
    let mask = positive!, gate = g!;
    if (!fused) {
      const m = apply1(this.g, "route_mask", [probs!], { ...rule });
      mask = apply1(this.g, "mul", [m, positive!]);
      gate = apply1(this.g, "mul", [g!, m]);
    }
    this.routers.push({ layer: l, kind, logits, probs: probs!, mask });
    this.fusedGates.set(probs!.id, gate);
    return probs!;
  }

  /** The input leaf `name` (E,) that takes the batch's mean of `x`'s column means; records the pair. */
  batchStat(name: string, x: Value): Value {
    const batch = this.g.leaf("input", name, [x.shape[1]!]);
    this.stats.push({ micro: apply1(this.g, "mean_rows", [x]), batch });
    return batch;
  }

  attention(l: number, h: Value): Value {
    const s = this.s, D = s.headDim;
    const wq = this.param(`h${l}.attn.wq`, [this.d, s.qHeads * D], "normal");
    const k = apply1(this.g, "matmul", [h, this.param(`h${l}.attn.wk`, [this.d, s.kvHeads * D], "normal")]);
    const v = apply1(this.g, "matmul", [h, this.param(`h${l}.attn.wv`, [this.d, s.kvHeads * D], "normal")]);
    const cache: Value[] = [];
    if (this.pos) {
      for (const kv of ["k", "v"]) {
        cache.push(this.g.leaf("state", `h${l}.attn.${kv}cache`, [this.rows * this.T, s.kvHeads * D]));
      }
      this.caches.push(...cache);
      cache.push(this.pos);
    }
    // A ReLU-routed model computes only the experts with g > 0 even under the dense rule (docs/design.md §16).
    const sparse = this.infer && (this.infer.attention.kind !== "dense" || this.c.router.train === "relu");
    if (sparse && s.routedAtt) {
      // Inference: only routed experts compute their query heads and output projection.
      const gate = this.inferGate(this.router(l, "attention", h, s.attExperts), "attention");
      const wo = this.param(`h${l}.attn.wo`, [s.qHeads * D, this.d], "normal", this.projStd);
      const attrs = { experts: s.attExperts, heads: s.kvHeads, head_dim: D, seq: this.T };
      // Batched decoding: each token attends over its own sequence's cache (docs/design.md §10).
      if (this.rows > 1) {
        return apply1(this.g, "moa_attention_batch", [h, gate, wq, k, v, wo, ...cache], attrs);
      }
      return apply1(this.g, "moa_attention", [h, gate, wq, k, v, wo, ...cache], attrs);
    }
    const q = apply1(this.g, "matmul", [h, wq]);
    let o2: Value;
    if (this.pos && this.rows > 1) {
      o2 = apply1(this.g, "attention_cached_batch", [q, k, v, ...cache], {
        heads: s.qHeads,
        kv_heads: s.kvHeads,
        head_dim: D,
        seq: this.T,
      });
    } else if (this.pos) {
      o2 = apply1(this.g, "attention_cached", [q, k, v, ...cache], {
        heads: s.qHeads,
        kv_heads: s.kvHeads,
        head_dim: D,
      });
    } else {
      const shape4 = (t: Value, heads: number) =>
        apply1(this.g, "reshape", [t], { shape: [this.B, this.T, heads, D] });
      const [o] = apply(this.g, "attention", [
        shape4(q, s.qHeads),
        shape4(k, s.kvHeads),
        shape4(v, s.kvHeads),
      ]);
      o2 = apply1(this.g, "reshape", [o!], { shape: [this.N, s.qHeads * D] });
    }
    if (s.routedAtt) {
      o2 = this.gate(o2, this.router(l, "attention", h, s.attExperts), s.attExperts, "attention");
    }
    const wo = this.param(`h${l}.attn.wo`, [s.qHeads * D, this.d], "normal", this.projStd);
    return apply1(this.g, "matmul", [o2, wo]);
  }

  /**
   * The MLP block: the routed experts (or the dense MLP), plus the shared experts (docs/design.md §16), which
   * every token runs with gate 1 in training and at inference alike.
   */
  mlp(l: number, h: Value): Value {
    const routed = this.routedMlp(l, h), s = this.s;
    if (s.sharedExperts === 0) return routed;
    const width = s.sharedExperts * s.sharedHidden, kind = this.c.model.mlp.activation;
    const u = apply1(this.g, "matmul", [h, this.param(`h${l}.mlp.shared.w1`, [this.d, width], "normal")]);
    const a = apply1(this.g, "activation", [u], { kind });
    const w2 = this.param(`h${l}.mlp.shared.w2`, [width, this.d], "normal", this.projStd);
    return apply1(this.g, "add", [routed, apply1(this.g, "matmul", [a, w2])]);
  }

  /** The routed experts of the MLP block (the dense MLP when it is not routed). */
  routedMlp(l: number, h: Value): Value {
    const s = this.s, width = s.mlpExperts * s.hidden;
    const w1 = this.param(`h${l}.mlp.w1`, [this.d, width], "normal");
    if (this.infer && s.routedMlp) {
      // Inference: only the routed experts compute (grouped over routed tokens on the GPU).
      const gate = this.inferGate(this.router(l, "mlp", h, s.mlpExperts), "mlp");
      const w2 = this.param(`h${l}.mlp.w2`, [width, this.d], "normal", this.projStd);
      return apply1(this.g, "moe_mlp", [h, gate, w1, w2], {
        experts: s.mlpExperts,
        activation: this.c.model.mlp.activation,
      });
    }
    const u = apply1(this.g, "matmul", [h, w1]), kind = this.c.model.mlp.activation;
    // Routed: the activation and the router gate run as one op (one pass over the hidden units).
    const a = s.routedMlp
      ? apply(this.g, "gated_activation", [
        u,
        this.gateValue(this.router(l, "mlp", h, s.mlpExperts), s.mlpExperts, "mlp"),
      ], {
        kind,
        blocks: s.mlpExperts,
      })[1]!
      : apply1(this.g, "activation", [u], { kind });
    return apply1(this.g, "matmul", [a, this.param(`h${l}.mlp.w2`, [width, this.d], "normal", this.projStd)]);
  }

  /** Segments per expert of a router's experts: model.mlp.segments for MLP routers, 1 for attention. */
  segmentsOf(kind: RouterTap["kind"]): number {
    return kind === "mlp" ? this.s.segments : 1;
  }

  /**
   * The Switch loss of a router (docs/design.md §4) over loss.load_balance_scope (§16): per sequence
   * (`switch_loss_seq`), over the graph's tokens (micro_batch, or global without accumulation), or global
   * under `batchStats`: against the batch's routed shares. k = 0: shares of the routed pairs (top-p).
   */
  switchLoss(probs: Value, mask: Value, k: number): Value {
    const scope = this.c.loss.load_balance_scope ?? "global";
    if (scope === "sequence") return apply1(this.g, "switch_loss_seq", [probs, mask], { k, seq: this.T });
    if (!this.batchStats || scope === "micro_batch") {
      return apply1(this.g, "switch_loss", [probs, mask], { k });
    }
    const r = this.routers.find((t) => t.probs === probs)!;
    const name = `h${r.layer}.${r.kind === "attention" ? "attn" : "mlp"}.router.switch_f`;
    return apply1(this.g, "switch_loss_global", [probs, this.batchStat(name, mask)], { k });
  }

  /**
   * The inference gate S ⊙ mask of the rule for `kind` (S itself for the dense rule); records the mask.
   * With null experts, the gate and the recorded mask are the real experts' columns: only they compute and
   * count as active.
   */
  inferGate(probs: Value, kind: RouterTap["kind"]): Value {
    const tap = this._tapOf(probs), fused = this.fusedGates.get(probs.id);
    let gate: Value;
    if (fused) gate = this.trainedGateForm(fused, probs);
    else {
      const rule = segmentRule(this.infer![kind], this.segmentsOf(kind));
      if (rule.kind === "dense") return this._realCols(tap, probs);
      const bias = this.inferBias.get(probs.id);
      const scores = bias ? apply1(this.g, "bias_add", [probs, bias]) : probs;
      tap.mask = apply1(this.g, "route_mask", [scores], { ...rule });
      gate = this.trainedGateForm(apply1(this.g, "mul", [probs, tap.mask]), probs);
    }
    tap.mask = this._realCols(tap, tap.mask!);
    return this._realCols(tap, gate);
  }

  /** `{ experts: real }` for a router that also scores null experts, else nothing. */
  private _nulls(real: number): Pick<RouterTap, "experts"> {
    return this.c.router.null_experts > 0 ? { experts: real } : {};
  }

  /** The real experts' columns of x (N, N + N_null) of `tap`'s router (x itself without null experts). */
  private _realCols(tap: RouterTap, x: Value): Value {
    return tap.experts === undefined ? x : apply1(this.g, "slice_cols", [x], { width: tap.experts });
  }

  /**
   * An inference gate S ⊙ mask in the form the model's gates had in training (docs/design.md §5): a top-k
   * model trained with softmax after top-k gets the softmax over the selected experts' logits, one trained
   * with renormalised gates the selected probabilities renormalised; any other model S ⊙ mask itself.
   */
  trainedGateForm(gate: Value, probs: Value): Value {
    const r = this.c.router, tap = this._tapOf(probs);
    if (r.train !== "topk" || !tap.mask) return gate;
    if (r.softmax_order === "after") return apply1(this.g, "masked_softmax", [tap.logits, tap.mask]);
    return r.renormalize ? apply1(this.g, "renormalize_rows", [gate]) : gate;
  }

  /**
   * Scales each expert's block by its gate: S for dense training, S ⊙ top-k mask for SMoE, and at
   * inference S ⊙ the rule's mask.
   */
  gate(x: Value, probs: Value, experts: number, kind: RouterTap["kind"]): Value {
    return apply1(this.g, "router_scale", [x, this.gateValue(probs, experts, kind)], { blocks: experts });
  }

  /**
   * The per-token expert gate (N, E): S for dense training, S ⊙ top-k mask for SMoE (recording the Switch
   * loss when asked), the gate of a router of docs/design.md §16 (core/plan/router_zoo.ts; recorded as the
   * router's `trainGate`), and at inference S ⊙ the rule's mask.
   */
  gateValue(probs: Value, experts: number, kind: RouterTap["kind"]): Value {
    if (this.infer) return this.inferGate(probs, kind);
    if (this.c.router.train === "topk") return this.tokenChoice(probs, experts, kind);
    if (isZooTrain(this.c)) {
      const tap = this._tapOf(probs);
      const lambda = () => this.l1Lambda ??= this.g.leaf("input", `router.${L1_LAMBDA}`, [1]);
      const z = zooTrainGate(this.g, this.c, tap, lambda, this.segmentsOf(kind));
      tap.trainGate = z.gate;
      if (z.l1) this.l1.push(z.l1);
      if (z.zeroShare) this.zeroShares.push(z.zeroShare);
      if (z.switchMask && this.c.loss.load_balance > 0) {
        this.switch.push(this.switchLoss(probs, z.switchMask, 0));
      }
      if (z.dynamic) this.dynamic.push(z.dynamic);
      return z.gate;
    }
    if (this.c.loss.load_balance > 0) {
      // DS-MoE with a Switch loss: a top-1 mask for the loss only (top-m with segments m, docs/design.md
      // §16); every expert stays gated by S.
      const k = Math.min(this.segmentsOf(kind), experts);
      const mask = apply1(this.g, "topk_mask", [probs], { k });
      this.switch.push(this.switchLoss(probs, mask, k));
    }
    return probs;
  }

  /**
   * Top-k token choice in training (docs/design.md §16): the mask of the k largest S_i; gates = the kept S_i
   * (renormalised to sum 1 with router.renormalize), or with router.softmax_order: after the softmax over
   * the kept logits; with router.capacity_factor > 0, each expert keeps only its first C tokens in token
   * order. Records the Switch loss (when weighted) and the selection statistics (`loads`).
   */
  tokenChoice(probs: Value, experts: number, kind: RouterTap["kind"]): Value {
    // With null experts, top-k runs over all N + N_null and the gates of the real N go on.
    const r = this.c.router,
      all = probs.shape[1]!,
      // With segments m an MLP router's k counts full-size experts: m·k segments (docs/design.md §16).
      k = Math.min(r.k * this.segmentsOf(kind), all),
      g = this.g,
      tap = this._tapOf(probs);
    // Aux-free balancing: the bias shifts the scores that select, not the gates (docs/design.md §16).
    const bias = r.balance === "aux_free"
      ? g.leaf("state", `${routerPrefix(tap.layer, kind)}.balance_bias`, [probs.shape[1]!])
      : undefined;
    const scores = bias ? apply1(g, "bias_add", [probs, bias]) : probs;
    const mask = apply1(g, "topk_mask", [scores], { k });
    let gate = r.softmax_order === "after"
      ? apply1(g, "masked_softmax", [this._tapOf(probs).logits, mask])
      : apply1(g, "mul", [probs, mask]);
    if (r.renormalize) gate = apply1(g, "renormalize_rows", [gate]);
    gate = this._realCols(tap, gate);
    let kept: Value | undefined;
    if (r.capacity_factor > 0) {
      // Null experts compute nothing and have no capacity; C counts all N + N_null experts.
      const capacity = expertCapacity(r.capacity_factor, this.N, k, all);
      kept = apply1(g, "capacity_mask", [this._realCols(tap, mask)], { capacity });
      gate = apply1(g, "mul", [gate, kept]);
    }
    if (this.c.loss.load_balance > 0) this.switch.push(this.switchLoss(probs, mask, k));
    this.loads.push({
      layer: tap.layer,
      kind,
      k,
      experts,
      selected: apply1(g, "mean_rows", [mask]),
      ...(kept ? { kept: apply1(g, "mean_rows", [kept]) } : {}),
      ...(bias ? { bias } : {}),
    });
    return gate;
  }

  /** The router tap whose probabilities are `probs`. */
  private _tapOf(probs: Value): RouterTap {
    return this.routers.find((t) => t.probs === probs)!;
  }
}

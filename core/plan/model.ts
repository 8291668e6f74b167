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
 * The routers of the literature (docs/design.md §16) gate through core/plan/router_zoo.ts (expert choice,
 * top-p, ReLU with its λ input, `routerState`); shared MLP experts add a dense branch to the routed sum, and
 * segments make the routed experts finer (core/plan/counts.ts `layerShape`).
 *
 * Under gradient accumulation (`batchStats`), the batch-level router losses of a micro-batch's graph take
 * the whole batch's statistics as inputs: the MI loss the batch's p̄ (`mi_loss_global`), the Switch loss the
 * batch's routed shares f (`switch_loss_global`), and `mean_rows` nodes give the micro-batch's own
 * statistics, which a forward pass over every micro-batch averages into those inputs first.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
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
  /** 0/1 experts run per token under the inference rule (inference graphs; absent for the dense rule). */
  mask?: Value;
  /**
   * The training gate (N, E) of a router of docs/design.md §16 (training graphs): a pair is routed iff its
   * gate is above 0; evaluation reads it for the per-expert load and the share of tokens no expert took.
   */
  trainGate?: Value;
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
 * Optimizer-free router state (docs/design.md §16): an input leaf of the training graph that the backends
 * hold, save in checkpoints (`router_state/<name>`) and change after each step by `update`.
 */
export interface RouterStateLeaf {
  name: string;
  value: Value; // the input leaf
  init: number; // its value before the first step
  /** λ of ReLU routing: times rate^sign(target − the step's mean `sparsity`), after a finite step. */
  update: { kind: "l1_lambda"; sparsity: Value; target: number; rate: number };
}

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
  /** Scalars a training step also reports, logged as `train/<key>` (routers of docs/design.md §16). */
  scalars: { key: string; value: Value }[];
  /** Optimizer-free router state of training graphs (empty for most models). */
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
  const b = new _Builder(c, 1, rules, true);
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

/** The router state of a training graph: ReLU routing's λ, updated from the step's `relu_sparsity`. */
function _routerState(b: _Builder, scalars: ModelGraph["scalars"]): RouterStateLeaf[] {
  if (!b.l1Lambda) return [];
  const sparsity = scalars.find((s) => s.key === "relu_sparsity")!.value;
  const r = b.c.router;
  return [{
    name: L1_LAMBDA,
    value: b.l1Lambda,
    init: b.c.loss.l1,
    update: { kind: "l1_lambda", sparsity, target: r.target_sparsity, rate: r.l1_rate },
  }];
}

class _Builder {
  readonly g = new Graph();
  readonly params: ParamSpec[] = [];
  readonly routers: RouterTap[] = [];
  /** Gates made together with their router's probabilities (route_gate), by the probabilities' id. */
  readonly fusedGates = new Map<number, Value>();
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

  constructor(
    c: Readonly<Experiment>,
    batch: number,
    infer?: InferRules,
    decode = false,
    batchStats = false,
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
    this.N = decode ? 1 : batch * this.T;
    this.ids = this.g.leaf("input", "ids", [this.N], "u32");
    this.targets = this.g.leaf("input", "targets", [this.N], "u32");
    this.pos = decode ? this.g.leaf("input", "pos", [1], "u32") : undefined;
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
    const p = `h${l}.${kind === "attention" ? "attn" : "mlp"}.router`;
    const hidden = this.c.router.hidden;
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
    let probs: Value;
    if (rule && this.c.router.train === "relu") {
      probs = this.reluInferRouter(l, kind, logits, rule);
    } else if (rule && rule.kind !== "dense" && rule.kind !== "threshold_topk") {
      const [p, mask, gate] = apply(this.g, "route_gate", [logits], { ...rule });
      probs = p!;
      this.routers.push({ layer: l, kind, logits, probs, mask: mask! });
      this.fusedGates.set(probs.id, gate!);
    } else {
      probs = apply1(this.g, "softmax", [logits]);
      this.routers.push({ layer: l, kind, logits, probs });
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
        cache.push(this.g.leaf("state", `h${l}.attn.${kv}cache`, [this.T, s.kvHeads * D]));
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
      return apply1(this.g, "moa_attention", [h, gate, wq, k, v, wo, ...cache], {
        experts: s.attExperts,
        heads: s.kvHeads,
        head_dim: D,
        seq: this.T,
      });
    }
    const q = apply1(this.g, "matmul", [h, wq]);
    let o2: Value;
    if (this.pos) {
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

  /** The Switch loss of a router: against the batch's routed shares under `batchStats`. */
  switchLoss(probs: Value, mask: Value, k: number): Value {
    if (!this.batchStats) return apply1(this.g, "switch_loss", [probs, mask], { k });
    const r = this.routers.find((t) => t.probs === probs)!;
    const name = `h${r.layer}.${r.kind === "attention" ? "attn" : "mlp"}.router.switch_f`;
    return apply1(this.g, "switch_loss_global", [probs, this.batchStat(name, mask)], { k });
  }

  /** The inference gate S ⊙ mask of the rule for `kind` (S itself for the dense rule); records the mask. */
  inferGate(probs: Value, kind: RouterTap["kind"]): Value {
    const fused = this.fusedGates.get(probs.id);
    if (fused) return fused;
    const rule = this.infer![kind];
    if (rule.kind === "dense") return probs;
    const mask = apply1(this.g, "route_mask", [probs], { ...rule });
    this.routers.at(-1)!.mask = mask;
    return apply1(this.g, "mul", [probs, mask]);
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
    if (isZooTrain(this.c)) {
      const tap = this.routers.find((t) => t.probs === probs)!;
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
    let gate = probs;
    const topk = this.c.router.train === "topk";
    if (topk || this.c.loss.load_balance > 0) {
      // With segments m (docs/design.md §16) an MLP router's k counts full-size experts: m·k segments.
      const k = Math.min((topk ? this.c.router.k : 1) * this.segmentsOf(kind), experts);
      const mask = apply1(this.g, "topk_mask", [probs], { k });
      if (topk) gate = apply1(this.g, "mul", [probs, mask]);
      if (this.c.loss.load_balance > 0) this.switch.push(this.switchLoss(probs, mask, k));
    }
    return gate;
  }
}

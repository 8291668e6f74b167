/**
 * The list of graph operations: every op's name and the attributes its nodes carry ({@linkcode OpAttrs}),
 * with the parameter types that the float64 references (core/ref), the CPU executor (cpu_ops.ts) and the
 * GPU kernels (gpu/) all take (activation and norm kinds, the routing rule, the reductions). It imports
 * nothing, so that every one of them may import it.
 *
 * An op is declared here first; `deno check` then names every table that lacks it: its output shapes and
 * gradient rule (`OPS`, core/graph/ops.ts), its float64 twin (`CPU_OPS`, core/graph/cpu_ops.ts) and its
 * WebGPU implementation (`GPU_IMPLS`, gpu/graph_ops.ts).
 *
 * @module
 */

/** Activation names of the config. */
export type ActivationKind = "gelu" | "relu" | "silu";

/** Norm kinds of the config. */
export type NormKind = "layernorm" | "rmsnorm";

/**
 * Kinds of leaf: parameters are trained, inputs are fed each step, constants never change, and state
 * (a decoder's KV cache) persists between executions and is changed in place by the ops that own it.
 */
export type LeafKind = "param" | "input" | "const" | "state";

/** A routing rule; only the field its kind names is read. */
export interface RouteRule {
  kind: "threshold" | "topk" | "threshold_topk" | "top_p" | "dense";
  epsilon: number;
  k: number;
  p: number;
}

/** The rule stored in a `route_mask` or `route_gate` node's attributes. */
export function routeRuleOf(n: { readonly attrs: Readonly<RouteRule> }): RouteRule {
  const a = n.attrs;
  return { kind: a.kind, epsilon: a.epsilon, k: a.k, p: a.p };
}

/**
 * `fused_gemv` (decoding, docs/performance.md "Dispatches per decoded token"): an optional norm of the
 * input recomputed inside the product, `weights` products of that one row, an optional activation of the
 * (single) product and an optional residual added to it.
 */
export interface FusedGemvAttrs {
  readonly norm: NormKind | "none";
  readonly eps: number;
  /** W_1 … W_n, after x (and the norm's gamma, and beta for a LayerNorm) among the inputs. */
  readonly weights: number;
  readonly activation: ActivationKind | "none";
  /** A last input r added to the product (one weight only). */
  readonly residual: boolean;
  /** Output 0 is the normalized input (read by other ops), before the products. */
  readonly normOut: boolean;
  /** The (one) weight is stored transposed, (n, d): the tied LM head (x · wteᵀ). */
  readonly transB?: boolean;
}

/**
 * `fused_route_gate` (decoding): a router's logits computed inside its gate, from the input or, with
 * `norm`, the input normalized there; the rule's attributes as `route_gate`'s.
 */
export interface FusedRouteGateAttrs extends RouteRule {
  readonly norm: NormKind | "none";
  readonly eps: number;
  /** The normalized input is a last output. */
  readonly normOut: boolean;
}

/**
 * `fused_matmul` (batched decoding): a product x · W of a parameter with its epilogue — the activation, then
 * the residual (a last input) added — in one dispatch.
 */
export interface FusedMatmulAttrs {
  readonly activation: ActivationKind | "none";
  readonly residual: boolean;
}

/** A reduction. */
export type ReduceOp = "sum" | "mean" | "max";

/** The attributes of an op that has none (passing any is a type error). */
export type NoAttrs = Readonly<Record<string, never>>;

/** `norm` and `norm_backward`. */
export interface NormAttrs {
  readonly kind: NormKind;
  readonly eps: number;
}

/** `activation` and `activation_backward`. */
export interface ActivationAttrs {
  readonly kind: ActivationKind;
}

/** `gated_activation` and its backward: the activation, and the experts (blocks) the gate scales. */
export interface GatedActivationAttrs {
  readonly kind: ActivationKind;
  readonly blocks: number;
}

/**
 * The Switch losses and their backward: the top-k of the mask; 0 for a mask with a varying number of experts
 * per token (top-p routing, docs/design.md §16), whose column means are then divided by their sum.
 */
export interface SwitchLossAttrs {
  readonly k: number;
}

/** The per-sequence Switch loss and its backward: the top-k of the mask and the tokens per sequence. */
export interface SwitchLossSeqAttrs {
  readonly k: number;
  readonly seq: number;
}

/**
 * Every graph operation by name → the attributes of its nodes. Attributes are plain data (numbers,
 * strings, booleans, arrays of numbers). The meaning of each op, its inputs and outputs is documented at its
 * entry of `OPS` (core/graph/ops.ts).
 */
export interface OpAttrs {
  /** A leaf value (graph input, parameter, constant or state); made by `Graph.leaf`. */
  leaf: { readonly kind: LeafKind };
  fill: { readonly shape: readonly number[]; readonly value: number };
  embedding: NoAttrs;
  embedding_grad: { readonly vocab: number };
  embedding_pair: NoAttrs;
  add_rows: NoAttrs;
  sum_rows_mod: { readonly period: number };
  bias_add: NoAttrs;
  sum_rows: NoAttrs;
  add: NoAttrs;
  add_n: NoAttrs;
  mul: NoAttrs;
  dot: NoAttrs;
  mul_scalar: NoAttrs;
  scale: { readonly alpha: number };
  reshape: { readonly shape: readonly number[] };
  matmul: { readonly transA?: boolean; readonly transB?: boolean };
  norm: NormAttrs;
  norm_backward: NormAttrs;
  activation: ActivationAttrs;
  activation_backward: ActivationAttrs;
  gated_activation: GatedActivationAttrs;
  gated_activation_backward: GatedActivationAttrs;
  softmax: NoAttrs;
  softmax_backward: NoAttrs;
  attention: NoAttrs;
  attention_backward: NoAttrs;
  /** blocks: the experts, recorded by the model; the implementations take E from the gate's width. */
  router_scale: { readonly blocks?: number };
  router_scale_ds: { readonly blocks: number };
  topk_mask: { readonly k: number };
  /** tokens: C, the tokens each expert takes (expert-choice routing, docs/design.md §16). */
  expert_choice_mask: { readonly tokens: number };
  /** p: the probability mass the kept experts reach (dynamic top-p routing, docs/design.md §16). */
  topp_mask: { readonly p: number };
  /** The inference router of ReLU-routed models (docs/design.md §16): the rule, as route_gate's. */
  relu_route_gate: Readonly<RouteRule>;
  zero_share: NoAttrs;
  route_mask: Readonly<RouteRule>;
  route_gate: Readonly<RouteRule>;
  /** residual: a last input r added to the output (decoding's fusion of the block's residual add). */
  moe_mlp: { readonly experts: number; readonly activation: ActivationKind; readonly residual?: boolean };
  attention_cached: { readonly heads: number; readonly kv_heads: number; readonly head_dim: number };
  moa_attention: {
    readonly experts: number;
    readonly heads: number;
    readonly head_dim: number;
    readonly seq: number;
    /** A last input r added to the output (decoding's fusion of the block's residual add). */
    readonly residual?: boolean;
  };
  fused_gemv: FusedGemvAttrs;
  fused_route_gate: Readonly<FusedRouteGateAttrs>;
  fused_matmul: Readonly<FusedMatmulAttrs>;
  // Batched decoding (docs/design.md §10): B sequences, one new token each, stacked (B·seq, …) caches.
  attention_cached_batch: {
    readonly heads: number;
    readonly kv_heads: number;
    readonly head_dim: number;
    readonly seq: number;
  };
  moa_attention_batch: {
    readonly experts: number;
    readonly heads: number;
    readonly head_dim: number;
    readonly seq: number;
    /** A last input r added to the output (batched decoding's fusion of the block's residual add). */
    readonly residual?: boolean;
  };
  cross_entropy: NoAttrs;
  cross_entropy_backward: NoAttrs;
  mi_loss: NoAttrs;
  mi_loss_backward: NoAttrs;
  mi_loss_global: NoAttrs;
  mi_loss_global_backward: NoAttrs;
  mean_rows: NoAttrs;
  switch_loss: SwitchLossAttrs;
  switch_loss_backward: SwitchLossAttrs;
  switch_loss_global: SwitchLossAttrs;
  switch_loss_global_backward: SwitchLossAttrs;
  z_loss: NoAttrs;
  z_loss_backward: NoAttrs;
  // Top-k token choice (docs/design.md §16): expert capacity, renormalised gates, softmax after top-k.
  capacity_mask: { readonly capacity: number };
  renormalize_rows: NoAttrs;
  renormalize_rows_backward: NoAttrs;
  masked_softmax: NoAttrs;
  // The Switch loss per sequence (loss.load_balance_scope: sequence, docs/design.md §16).
  switch_loss_seq: SwitchLossSeqAttrs;
  switch_loss_seq_backward: SwitchLossSeqAttrs;
  // Null experts (docs/design.md §16): the real experts' columns of a router's N + N_null.
  slice_cols: { readonly width: number };
  slice_cols_backward: { readonly cols: number };
  entropy_loss: NoAttrs;
  entropy_loss_backward: NoAttrs;
  l1_loss: NoAttrs;
  l1_loss_backward: NoAttrs;
}

/** The name of a graph operation: the one list every op table is checked against. */
export type OpName = keyof OpAttrs;

/** The inputs of a `fused_gemv` node (or of its values on any backend), by role. */
export interface FusedGemvParts<T> {
  x: T;
  gamma: T | undefined;
  beta: T | undefined;
  weights: T[];
  residual: T | undefined;
}

/** Splits a `fused_gemv` node's inputs [x, gamma?, beta?, W_1 … W_n, r?] by role. */
export function fusedGemvParts<T>(inputs: readonly T[], a: FusedGemvAttrs): FusedGemvParts<T> {
  const norms = a.norm === "none" ? 0 : a.norm === "layernorm" ? 2 : 1;
  return {
    x: inputs[0]!,
    gamma: norms > 0 ? inputs[1] : undefined,
    beta: norms > 1 ? inputs[2] : undefined,
    weights: inputs.slice(1 + norms, 1 + norms + a.weights),
    residual: a.residual ? inputs[1 + norms + a.weights] : undefined,
  };
}

/** Splits a `fused_route_gate` node's inputs [x, gamma?, beta?, W] by role. */
export function fusedRouterParts<T>(
  inputs: readonly T[],
  a: Pick<FusedRouteGateAttrs, "norm">,
): { x: T; gamma: T | undefined; beta: T | undefined; w: T } {
  const norms = a.norm === "none" ? 0 : a.norm === "layernorm" ? 2 : 1;
  return {
    x: inputs[0]!,
    gamma: norms > 0 ? inputs[1] : undefined,
    beta: norms > 1 ? inputs[2] : undefined,
    w: inputs[1 + norms]!,
  };
}

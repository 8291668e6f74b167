/**
 * The op table: for every op of core/graph/op_types.ts, its output shapes (validated against its inputs) and
 * its backward rule, or why it has none ({@linkcode NoGrad}).
 * Backward rules build graph nodes, so one executor per backend runs forward and backward alike.
 * Gradients summing at fan-out is autodiff's job (core/graph/autodiff.ts), not the rules'.
 *
 * Shapes: N = tokens (batch·seq), d = model width, V = vocabulary, E = experts, h = per-expert width.
 *
 * @module
 */
import { type DType, type Graph, numel, type OpNode, type Value } from "./ir.ts";
import { fusedGemvParts, fusedRouterParts, type OpAttrs, type OpName } from "./op_types.ts";

/** Output shape (and dtype) of one node output. */
export interface OutSpec {
  shape: readonly number[];
  dtype?: DType;
}

/** Gradients of a node's inputs (null where an input gets none) given its outputs' gradients. */
export type GradRule<K extends OpName = OpName> = (
  g: Graph,
  node: OpNode<K>,
  dOut: readonly (Value | null)[],
) => (Value | null | undefined)[];

/**
 * Why an op has no backward rule. Autodiff stops gradients at such an op (its outputs do not depend on the
 * parameters), and refuses a gradient that reaches it ("No gradient rule for op …").
 * - `leaf`: leaves are where gradients arrive, not an op;
 * - `constant`: its output depends on no input (`fill`);
 * - `backward`: it is part of another op's backward rule, and no second derivatives are taken;
 * - `discrete`: a 0/1 selection, whose derivative is zero almost everywhere (`topk_mask`);
 * - `statistic`: a batch statistic fed back as an input, not differentiated through (`mean_rows`);
 * - `inference`: an inference-only op (sparse experts, routing rules, KV-cache decoding).
 */
export type NoGrad = "leaf" | "constant" | "backward" | "discrete" | "statistic" | "inference";

/** One op: output shapes from input shapes and attributes, and its backward rule or why it has none. */
export interface OpDef<K extends OpName = OpName> {
  outputs: (inputs: readonly Value[], attrs: OpAttrs[K]) => OutSpec[];
  grad: GradRule<K> | NoGrad;
}

/** A definition for every op of core/graph/op_types.ts (`deno check` names a missing one). */
export type OpTable = { readonly [K in OpName]: OpDef<K> };

/** The backward rule of `node`'s op in `table`, or why it has none. */
export function gradRuleOf<K extends OpName>(table: OpTable, node: OpNode<K>): GradRule<K> | NoGrad {
  return table[node.op].grad;
}

/** The attribute argument of {@linkcode apply}: optional when the op has no required attribute. */
export type AttrsArg<K extends OpName> = Record<never, never> extends OpAttrs[K] ? [attrs?: OpAttrs[K]]
  : [attrs: OpAttrs[K]];

/** Adds a node through the table (validating shapes) and returns its outputs. */
export function apply<K extends OpName>(
  g: Graph,
  op: K,
  inputs: readonly Value[],
  ...attrs: AttrsArg<K>
): Value[];
export function apply(g: Graph, op: OpName, inputs: readonly Value[], attrs: OpAttrs[OpName] = {}): Value[] {
  return applyIn(OPS, g, op, inputs, attrs);
}

/** Like {@linkcode apply} for single-output ops. */
export function apply1<K extends OpName>(
  g: Graph,
  op: K,
  inputs: readonly Value[],
  ...attrs: AttrsArg<K>
): Value {
  return apply(g, op, inputs, ...attrs)[0]!;
}

/** Like {@linkcode apply}, with the shapes of `table` (autodiff differentiates with a table it is given). */
export function applyIn<K extends OpName>(
  table: OpTable,
  g: Graph,
  op: K,
  inputs: readonly Value[],
  attrs: OpAttrs[K],
): Value[] {
  const def: OpDef<K> | undefined = table[op];
  if (!def) throw new TypeError(`Unknown op "${op}"`);
  return g.addNode(op, inputs, attrs, def.outputs(inputs, attrs)).outputs;
}

function _same(x: Value): OutSpec[] {
  return [{ shape: x.shape, dtype: x.dtype }];
}

function _check(cond: boolean, op: string, msg: string): void {
  if (!cond) throw new RangeError(`Cannot build ${op}: ${msg}`);
}

function _dims2(v: Value, op: string): [number, number] {
  _check(v.shape.length === 2, op, `expected a matrix, got shape [${v.shape}] for ${v.name}`);
  return [v.shape[0]!, v.shape[1]!];
}

const SCALAR: OutSpec[] = [{ shape: [1] }];

/** The table: every op of core/graph/op_types.ts. Keep each rule next to its forward definition. */
export const OPS: OpTable = {
  leaf: { outputs: () => [], grad: "leaf" },
  /** A constant tensor: every element = attrs.value (the seed gradient of a loss is fill 1). */
  fill: { outputs: (_, a) => [{ shape: a.shape }], grad: "constant" },

  /** ids (N,) u32, W (V, d) → (N, d). */
  embedding: {
    outputs: ([ids, w]) => [{ shape: [ids!.shape[0]!, w!.shape[1]!] }],
    grad: (
      g,
      n,
      [dy],
    ) => [null, apply1(g, "embedding_grad", [n.inputs[0]!, dy!], { vocab: n.inputs[1]!.shape[0]! })],
  },
  /**
   * Decoding's embeddings in one op (core/plan/fuse_decode.ts): ids (N,), wte (V, d), pos (N,), wpe (T, d)
   * → wte[ids] + wpe[pos] (N, d). Inference only.
   */
  embedding_pair: {
    outputs: ([ids, wte, pos, wpe]) => {
      _check(
        ids!.shape[0] === pos!.shape[0] && wte!.shape[1] === wpe!.shape[1],
        "embedding_pair",
        "needs rows of one width",
      );
      return [{ shape: [ids!.shape[0]!, wte!.shape[1]!] }];
    },
    grad: "inference",
  },
  /** ids (N,), dy (N, d) → dW (V, d), rows of dy summed by id. */
  embedding_grad: { outputs: ([, dy], a) => [{ shape: [a.vocab, dy!.shape[1]!] }], grad: "backward" },

  /** x (N, d) + p (period, d) broadcast: y[n] = x[n] + p[n mod period]. */
  add_rows: {
    outputs: ([x, p]) => {
      _check(x!.shape[0]! % p!.shape[0]! === 0 && x!.shape[1] === p!.shape[1], "add_rows", "rows must tile");
      return _same(x!);
    },
    grad: (g, n, [dy]) => [dy, apply1(g, "sum_rows_mod", [dy!], { period: n.inputs[1]!.shape[0]! })],
  },
  /** dy (N, d) → (period, d): rows summed by n mod period. */
  sum_rows_mod: { outputs: ([x], a) => [{ shape: [a.period, x!.shape[1]!] }], grad: "backward" },

  /** x (N, d) + b (d). */
  bias_add: {
    outputs: ([x, b]) => {
      _check(
        b!.shape.length === 1 && b!.shape[0] === x!.shape.at(-1),
        "bias_add",
        "bias must match last dim",
      );
      return _same(x!);
    },
    grad: (g, _n, [dy]) => [dy, apply1(g, "sum_rows", [dy!])],
  },
  /** x (N, d) → (d): column sums. */
  sum_rows: { outputs: ([x]) => [{ shape: [x!.shape.at(-1)!] }], grad: "backward" },

  /** Element-wise a + b. */
  add: {
    outputs: ([a, b]) => {
      _check(numel(a!.shape) === numel(b!.shape), "add", `[${a!.shape}] vs [${b!.shape}]`);
      return _same(a!);
    },
    grad: (_g, _n, [dy]) => [dy, dy],
  },
  /** Sum of any number of same-size values (loss totals, gradient accumulation). */
  add_n: {
    outputs: (xs) => _same(xs[0]!),
    grad: (_g, n, [dy]) => n.inputs.map(() => dy!),
  },
  /** Element-wise a ⊙ b. */
  mul: {
    outputs: ([a]) => _same(a!),
    grad: (g, n, [dy]) => [apply1(g, "mul", [dy!, n.inputs[1]!]), apply1(g, "mul", [dy!, n.inputs[0]!])],
  },
  /** Σ a ⊙ b → scalar (turns any value into a loss for gradient checks). */
  dot: {
    outputs: () => SCALAR,
    grad: (
      g,
      n,
      [dl],
    ) => [apply1(g, "mul_scalar", [n.inputs[1]!, dl!]), apply1(g, "mul_scalar", [n.inputs[0]!, dl!])],
  },
  /** x · s for a scalar value s (1,). */
  mul_scalar: {
    outputs: ([x]) => _same(x!),
    grad: (
      g,
      n,
      [dy],
    ) => [apply1(g, "mul_scalar", [dy!, n.inputs[1]!]), apply1(g, "dot", [dy!, n.inputs[0]!])],
  },
  /** alpha · x. */
  scale: {
    outputs: ([x]) => _same(x!),
    grad: (g, n, [dy]) => [apply1(g, "scale", [dy!], { alpha: n.attrs.alpha })],
  },
  /** Same data, new shape. */
  reshape: {
    outputs: ([x], a) => {
      const shape = a.shape;
      _check(numel(shape) === numel(x!.shape), "reshape", `[${x!.shape}] to [${shape}]`);
      return [{ shape, dtype: x!.dtype }];
    },
    grad: (g, n, [dy]) => [apply1(g, "reshape", [dy!], { shape: n.inputs[0]!.shape })],
  },

  /** op(a) · op(b), op = transpose when transA / transB: (M, K)·(K, N) → (M, N). */
  matmul: {
    outputs: ([a, b], at) => {
      const [a0, a1] = _dims2(a!, "matmul"), [b0, b1] = _dims2(b!, "matmul");
      const [m, k] = at.transA ? [a1, a0] : [a0, a1], [k2, nn] = at.transB ? [b1, b0] : [b0, b1];
      _check(k === k2, "matmul", `inner dims ${k} vs ${k2} (${a!.name} · ${b!.name})`);
      return [{ shape: [m, nn] }];
    },
    grad: (g, n, [dy]) => {
      const [a, b] = n.inputs as [Value, Value], tA = !!n.attrs.transA, tB = !!n.attrs.transB;
      // C = A·B: dA = dC·Bᵀ, dB = Aᵀ·dC; with transposes the operands swap roles.
      const dA = tA
        ? apply1(g, "matmul", [b, dy!], { transA: tB, transB: true })
        : apply1(g, "matmul", [dy!, b], { transA: false, transB: !tB });
      const dB = tB
        ? apply1(g, "matmul", [dy!, a], { transA: true, transB: tA })
        : apply1(g, "matmul", [a, dy!], { transA: !tA, transB: false });
      return [dA, dB];
    },
  },

  /** LayerNorm (x, gamma, beta) or RMSNorm (x, gamma): → [y (N, d), mean (N), rstd (N)]. */
  norm: {
    outputs: ([x]) => {
      const [rows] = _dims2(x!, "norm");
      return [{ shape: x!.shape }, { shape: [rows] }, { shape: [rows] }];
    },
    grad: (g, n, [dy]) => {
      const [x, gamma, beta] = n.inputs as [Value, Value, Value | undefined];
      const outs = apply(g, "norm_backward", [x, gamma, n.outputs[1]!, n.outputs[2]!, dy!], n.attrs);
      return beta ? [outs[0]!, outs[1]!, outs[2]!] : [outs[0]!, outs[1]!];
    },
  },
  /** (x, gamma, mean, rstd, dy) → [dx, dgamma, dbeta]. */
  norm_backward: {
    outputs: ([x, gamma]) => [{ shape: x!.shape }, { shape: gamma!.shape }, { shape: gamma!.shape }],
    grad: "backward",
  },

  /** activation kind ∈ gelu | relu | silu. */
  activation: {
    outputs: ([x]) => _same(x!),
    grad: (g, n, [dy]) => [apply1(g, "activation_backward", [n.inputs[0]!, dy!], n.attrs)],
  },
  /** (x, dy) → dx. */
  activation_backward: { outputs: ([x]) => _same(x!), grad: "backward" },

  /**
   * A dense-trained expert layer's activation and router gate in one pass: (u (N, E·h), s (N, E)) →
   * [a = act(u), y = s ⊙ a per expert block]; attrs kind, blocks = E. a is kept for the router's gradient.
   */
  gated_activation: {
    outputs: ([u, s], a) => {
      _check(
        u!.shape[1]! % a.blocks === 0 && s!.shape[1] === a.blocks,
        "gated_activation",
        `width ${u!.shape[1]} or gate [${s!.shape}] does not fit ${a.blocks} experts`,
      );
      return [_same(u!)[0]!, _same(u!)[0]!];
    },
    grad: (g, n, [da, dy]) => {
      const [u, s] = n.inputs as [Value, Value];
      // dy reaches u through the gate and the activation in one kernel; a gradient of a itself adds.
      const parts: Value[] = [];
      if (dy) parts.push(apply1(g, "gated_activation_backward", [u, s, dy], n.attrs));
      if (da) parts.push(apply1(g, "activation_backward", [u, da], { kind: n.attrs.kind }));
      const du = parts.length === 2 ? apply1(g, "add", parts) : parts[0];
      const ds = dy
        ? apply1(g, "router_scale_ds", [n.outputs[0]!, dy], { blocks: n.attrs.blocks })
        : undefined;
      return [du, ds];
    },
  },
  /** (u, s, dy) → du = act'(u) ⊙ (s ⊙ dy per expert block). */
  gated_activation_backward: { outputs: ([u]) => _same(u!), grad: "backward" },

  /** Softmax over the last dim of (rows, L). */
  softmax: {
    outputs: ([x]) => _same(x!),
    grad: (g, n, [dy]) => [apply1(g, "softmax_backward", [n.outputs[0]!, dy!])],
  },
  /** (y, dy) → dx = y ⊙ (dy − Σ dy⊙y). */
  softmax_backward: { outputs: ([y]) => _same(y!), grad: "backward" },

  /** Causal GQA: q (B, T, Hq, D), k, v (B, T, Hkv, D) → [o (B, T, Hq, D), lse (B, Hq, T)]. */
  attention: {
    outputs: ([q, k, v]) => {
      _check(q!.shape.length === 4 && k!.shape.length === 4, "attention", "expected (B, T, H, D) tensors");
      const [B, T, Hq, D] = q!.shape as [number, number, number, number];
      _check(
        Hq % k!.shape[2]! === 0,
        "attention",
        `query heads ${Hq} not a multiple of kv heads ${k!.shape[2]}`,
      );
      _check(k!.shape[3] === D && v!.shape[3] === D, "attention", "head dims differ");
      return [{ shape: q!.shape }, { shape: [B, Hq, T] }];
    },
    grad: (g, n, [dO]) => {
      const [q, k, v] = n.inputs as [Value, Value, Value];
      const [dq, dk, dv] = apply(
        g,
        "attention_backward",
        [q, k, v, n.outputs[0]!, n.outputs[1]!, dO!],
        n.attrs,
      );
      return [dq!, dk!, dv!];
    },
  },
  /** (q, k, v, o, lse, dO) → [dq, dk, dv]. */
  attention_backward: {
    outputs: ([q, k, v]) => [{ shape: q!.shape }, { shape: k!.shape }, { shape: v!.shape }],
    grad: "backward",
  },

  /** x (N, E·h) scaled per block by s (N, E): y[t, i·h + j] = s[t, i] · x[t, i·h + j]. */
  router_scale: {
    outputs: ([x, s]) => {
      _check(
        x!.shape[1]! % s!.shape[1]! === 0,
        "router_scale",
        `width ${x!.shape[1]} not divisible by ${s!.shape[1]}`,
      );
      return _same(x!);
    },
    grad: (g, n, [dy]) => {
      const [x, s] = n.inputs as [Value, Value];
      return [
        apply1(g, "router_scale", [dy!, s]),
        apply1(g, "router_scale_ds", [x, dy!], { blocks: s.shape[1]! }),
      ];
    },
  },
  /** (x, dy) → ds (N, E): ds[t, i] = Σ_j x[t, i·h+j]·dy[t, i·h+j]; E from attrs.blocks. */
  router_scale_ds: { outputs: ([x], a) => [{ shape: [x!.shape[0]!, a.blocks] }], grad: "backward" },

  /** probs (N, E) → 0/1 mask of the top-k per row (no gradient: selection is discrete). */
  topk_mask: { outputs: ([s]) => _same(s!), grad: "discrete" },
  /**
   * Expert-choice routing (docs/design.md §16): probs (N, E) → 0/1 mask where each expert (column) takes
   * its `tokens` most probable tokens (ties to the lower token index); a token may be taken by none. No
   * gradient (a discrete selection); the gate S ⊙ mask carries S's gradient on the taken pairs.
   */
  expert_choice_mask: {
    outputs: ([s], a) => {
      const [n] = _dims2(s!, "expert_choice_mask");
      _check(a.tokens >= 1 && a.tokens <= n, "expert_choice_mask", `tokens ${a.tokens} not in 1…${n}`);
      return _same(s!);
    },
    grad: "discrete",
  },
  /**
   * Dynamic top-p routing in training (docs/design.md §16): probs (N, E) → 0/1 mask of the fewest experts,
   * by rank (ties to the lower index), whose mass reaches attrs.p (at least one). No gradient (discrete).
   */
  topp_mask: { outputs: ([s]) => _same(s!), grad: "discrete" },
  /**
   * The inference router of a ReLU-routed model (docs/design.md §16): logits (N, E) → [ĝ = g / Σ_i g_i, the
   * rule's mask of ĝ (route_mask's attrs; not threshold_topk) kept only where g > 0, gate = g ⊙ mask], with
   * g = ReLU(logits); ĝ is 0 for a token whose gates are all 0. No gradient.
   */
  relu_route_gate: { outputs: ([z]) => [..._same(z!), ..._same(z!), ..._same(z!)], grad: "inference" },
  /** x (N, E) → (1,): the share of entries ≤ 0 (the sparsity of ReLU gates). A statistic, no gradient. */
  zero_share: { outputs: () => SCALAR, grad: "statistic" },
  /** probs (N, E) → 0/1 mask of an inference rule (attrs kind, epsilon, k, p; core/ref/routing.ts). */
  route_mask: { outputs: ([s]) => _same(s!), grad: "inference" },
  /**
   * Inference router in one op: logits (N, E) → probs = softmax(logits), mask of the rule (attrs as
   * route_mask; not threshold_topk, whose K is a batch mean), gate = probs ⊙ mask. No gradient.
   */
  route_gate: { outputs: ([z]) => [..._same(z!), ..._same(z!), ..._same(z!)], grad: "inference" },
  /**
   * Inference MoE MLP that computes only routed experts: (x (N, d), gate (N, E), w1 (d, E·h), w2 (E·h, d))
   * → Σ_e gate[:, e] · act(x·W1_e)·W2_e; attrs experts, activation. No gradient (inference only).
   */
  moe_mlp: { outputs: ([x]) => _same(x!), grad: "inference" },
  /**
   * Batched decoding's product with its epilogue: x (M, d), W (d, n) (, r (M, n) with attrs residual) →
   * act(x · W) (+ r); attrs activation ("none" for none), residual. Inference only.
   */
  fused_matmul: {
    outputs: ([x, w, r], a) => {
      _check(x!.shape[1] === w!.shape[0], "fused_matmul", "x is (M, d) and W (d, n)");
      const y = { shape: [x!.shape[0]!, w!.shape[1]!] };
      _check(
        !a.residual || (r!.shape[0] === y.shape[0] && r!.shape[1] === y.shape[1]),
        "fused_matmul",
        "r is (M, n)",
      );
      return [y];
    },
    grad: "inference",
  },
  /**
   * Decoding's fused product of one row (docs/performance.md "Dispatches per decoded token"): inputs x
   * (M, d), the norm's gamma (and beta for a LayerNorm) unless attrs norm is "none", W_1 … W_n (d, n_i),
   * or with attrs transB one W (n, d) used as Wᵀ, and with attrs residual r (M, n_1). h = norm(x) (x itself without a norm); y_i = act(h·W_i) (+ r) →
   * [h when attrs normOut], y_1 … y_n. Inference only.
   */
  fused_gemv: {
    outputs: (inputs, a) => {
      const p = fusedGemvParts(inputs, a), [m, d] = p.x.shape as [number, number];
      _check(p.weights.length === a.weights && a.weights > 0, "fused_gemv", "needs its weights");
      const width = (w: Value) => a.transB ? w.shape[0]! : w.shape[1]!;
      _check(!a.transB || a.weights === 1, "fused_gemv", "needs one weight when transposed");
      _check(
        p.weights.every((w) => (a.transB ? w.shape[1] : w.shape[0]) === d),
        "fused_gemv",
        "needs weights of d rows",
      );
      _check(!a.residual || a.weights === 1, "fused_gemv", "needs a residual with one weight");
      _check(
        !p.residual || p.residual.shape[1] === p.weights[0]!.shape[1],
        "fused_gemv",
        "needs residual width",
      );
      _check(a.activation === "none" || a.weights === 1, "fused_gemv", "needs an activation with one weight");
      return [
        ...(a.normOut ? _same(p.x) : []),
        ...p.weights.map((w) => ({ shape: [m, width(w)] })),
      ];
    },
    grad: "inference",
  },
  /**
   * Decoding's router in one op: logits z = h·W of h = norm(x) (x itself with attrs norm "none"; inputs
   * x (M, d), gamma, beta as fused_gemv's, W (d, E)), then route_gate's probs, mask and gate (attrs rule as
   * route_gate's) → probs, mask, gate, z, and h last with attrs normOut. Inference only.
   */
  fused_route_gate: {
    outputs: (inputs, a) => {
      const p = fusedRouterParts(inputs, a), m = p.x.shape[0]!, E = p.w.shape[1]!;
      _check(p.w.shape[0] === p.x.shape[1], "fused_route_gate", "needs a weight of d rows");
      const z = { shape: [m, E] };
      return [z, z, z, z, ...(a.normOut ? _same(p.x) : [])];
    },
    grad: "inference",
  },
  /**
   * Decoding attention with a KV cache: (q (N, H·D), k, v (N, Hkv·D), kcache, vcache (T, Hkv·D), pos (1,) u32)
   * → o (N, H·D). Writes k, v into cache rows pos…pos+N−1 (the caches are state leaves, changed in place),
   * then row t attends over cache rows 0…pos+t. Attrs heads, kv_heads, head_dim. Inference only.
   */
  attention_cached: {
    outputs: ([q, k, _v, kc], a) => {
      const D = a.head_dim, H = a.heads, Hkv = a.kv_heads;
      _check(q!.shape[1] === H * D && k!.shape[1] === Hkv * D, "attention_cached", "head widths");
      _check(kc!.shape[1] === Hkv * D, "attention_cached", "cache rows are Hkv·D wide");
      return _same(q!);
    },
    grad: "inference",
  },
  /**
   * Sparse MoA (mixture of attention heads) at inference: only routed experts compute their query heads and
   * output projection; keys and values are shared. Inputs x (N, d), gate (N, E), wq (d, E·G·D), k, v
   * (N, G·D), wo (E·G·D, d), and when decoding kcache, vcache (T, G·D), pos (1,) u32 (as attention_cached).
   * → y (N, d). Attrs experts, heads (G, per expert), head_dim, seq (T). Inference only.
   */
  moa_attention: {
    outputs: ([x, gate, wq, k], a) => {
      const E = a.experts, w = a.heads * a.head_dim;
      _check(gate!.shape[1] === E && wq!.shape[1] === E * w, "moa_attention", "expert widths");
      _check(k!.shape[1] === w, "moa_attention", "keys are G·D wide");
      return _same(x!);
    },
    grad: "inference",
  },
  /**
   * Batched decoding attention (docs/design.md §10): B sequences, one new token each. Inputs q (B, H·D),
   * k, v (B, Hkv·D), kcache, vcache (B·T, Hkv·D) stacked per sequence (sequence b owns rows b·T…), pos (B,)
   * u32 each sequence's position (< T) → o (B, H·D). Writes row b of k, v into cache row b·T + pos[b], then
   * row b attends over its sequence's rows b·T … b·T + pos[b]. Attrs heads, kv_heads, head_dim, seq (T).
   * Inference only.
   */
  attention_cached_batch: {
    outputs: ([q, k, _v, kc, _vc, pos], a) => {
      const D = a.head_dim, H = a.heads, Hkv = a.kv_heads, B = q!.shape[0]!;
      _check(q!.shape[1] === H * D && k!.shape[1] === Hkv * D, "attention_cached_batch", "head widths");
      _check(
        k!.shape[0] === B && pos!.shape[0] === B,
        "attention_cached_batch",
        "one key row and position per sequence",
      );
      _check(
        kc!.shape[0] === B * a.seq && kc!.shape[1] === Hkv * D,
        "attention_cached_batch",
        "caches are (B·seq, Hkv·D)",
      );
      return _same(q!);
    },
    grad: "inference",
  },
  /**
   * Sparse MoA of batched decoding (docs/design.md §10): `moa_attention`'s routed query heads and output
   * projection per token, attending over that token's own sequence cache as `attention_cached_batch` does.
   * Inputs x (B, d), gate (B, E), wq (d, E·G·D), k, v (B, G·D), wo (E·G·D, d), kcache, vcache (B·T, G·D),
   * pos (B,) u32 (, r (B, d) with attrs residual) → y (B, d) (+ r). Attrs experts, heads (G), head_dim, seq
   * (T), residual (batched decoding's fusion of the block's residual add). Inference only.
   */
  moa_attention_batch: {
    outputs: ([x, gate, wq, k, _v, _wo, kc, _vc, pos], a) => {
      const E = a.experts, w = a.heads * a.head_dim, B = x!.shape[0]!;
      _check(gate!.shape[1] === E && wq!.shape[1] === E * w, "moa_attention_batch", "expert widths");
      _check(k!.shape[1] === w && k!.shape[0] === B, "moa_attention_batch", "keys are (B, G·D)");
      _check(pos!.shape[0] === B, "moa_attention_batch", "one position per sequence");
      _check(
        kc!.shape[0] === B * a.seq && kc!.shape[1] === w,
        "moa_attention_batch",
        "caches are (B·seq, G·D)",
      );
      return _same(x!);
    },
    grad: "inference",
  },

  /** Mean cross-entropy of logits (N, V) against u32 targets (N,) → scalar. */
  cross_entropy: {
    outputs: ([logits, targets]) => {
      _check(targets!.shape[0] === logits!.shape[0], "cross_entropy", "one target per row");
      return SCALAR;
    },
    grad: (g, n, [dl]) => [apply1(g, "cross_entropy_backward", [n.inputs[0]!, n.inputs[1]!, dl!]), null],
  },
  /** (logits, targets, dloss) → dlogits = dloss · (softmax − onehot) / N. */
  cross_entropy_backward: { outputs: ([logits]) => _same(logits!), grad: "backward" },

  /** Mutual-information loss of router probabilities S (N, E) → scalar. */
  mi_loss: {
    outputs: () => SCALAR,
    grad: (g, n, [dl]) => [apply1(g, "mi_loss_backward", [n.inputs[0]!, dl!])],
  },
  /** (S, dL) → dS. */
  mi_loss_backward: { outputs: ([s]) => _same(s!), grad: "backward" },

  /**
   * The MI loss of a micro-batch against the whole batch's p̄ (gradient accumulation): (S (N, E), pbar (E))
   * → F(pbar) + Σ_i c_i·(p̄_S,i − pbar_i) + (1/N) Σ_t H(S_t), F(p) = Σ_i p_i log(p_i + ε) = −H(p), c = ∇F(pbar).
   * F linearized at the batch's p̄: its gradient in S is the batch loss's, and the mean of it over the
   * micro-batches of a batch whose p̄ is pbar is the batch's MI loss. pbar gets no gradient (a statistic).
   */
  mi_loss_global: {
    outputs: ([s, pbar]) => {
      _check(pbar!.shape.length === 1 && pbar!.shape[0] === s!.shape[1], "mi_loss_global", "pbar is (E,)");
      return SCALAR;
    },
    grad: (g, n, [dl]) => [apply1(g, "mi_loss_global_backward", [n.inputs[0]!, n.inputs[1]!, dl!]), null],
  },
  /** (S, pbar, dL) → dS = (dL/N)·[c(pbar) − log(S + ε) − S/(S + ε)]. */
  mi_loss_global_backward: { outputs: ([s]) => _same(s!), grad: "backward" },

  /** x (N, E) → (E): column means (a micro-batch's router statistics for the batch-level losses). */
  mean_rows: { outputs: ([x]) => [{ shape: [x!.shape.at(-1)!] }], grad: "statistic" },

  /** Switch load-balance loss of probabilities S (N, E) and routing mask (N, E) → scalar. */
  switch_loss: {
    outputs: () => SCALAR,
    grad: (
      g,
      n,
      [dl],
    ) => [apply1(g, "switch_loss_backward", [n.inputs[0]!, n.inputs[1]!, dl!], n.attrs), null],
  },
  /** (S, mask, dL) → dS. */
  switch_loss_backward: { outputs: ([s]) => _same(s!), grad: "backward" },

  /**
   * The Switch loss of a micro-batch against the whole batch's routed shares (gradient accumulation):
   * (S (N, E), f (E): column means of the batch's top-k mask) → E · Σ_i (f_i/k)·P_i, P = column means of S.
   * Linear in P, so the mean over the micro-batches is the batch's loss, and so is the gradient. Attrs k.
   */
  switch_loss_global: {
    outputs: ([s, f]) => {
      _check(f!.shape.length === 1 && f!.shape[0] === s!.shape[1], "switch_loss_global", "f is (E,)");
      return SCALAR;
    },
    grad: (
      g,
      n,
      [dl],
    ) => [apply1(g, "switch_loss_global_backward", [n.inputs[0]!, n.inputs[1]!, dl!], n.attrs), null],
  },
  /** (S, f, dL) → dS = dL · E · f_i / (k · N). */
  switch_loss_global_backward: { outputs: ([s]) => _same(s!), grad: "backward" },

  /** Router z-loss of logits (N, E) → scalar. */
  z_loss: {
    outputs: () => SCALAR,
    grad: (g, n, [dl]) => [apply1(g, "z_loss_backward", [n.inputs[0]!, dl!])],
  },
  /** (logits, dL) → dlogits. */
  z_loss_backward: { outputs: ([x]) => _same(x!), grad: "backward" },

  /**
   * Expert capacity (docs/design.md §16): a 0/1 routing mask (N, E) → the kept mask, per expert the first
   * attrs.capacity of its tokens in token order (the rest are dropped for that expert). No gradient.
   */
  capacity_mask: {
    outputs: ([m], a) => {
      _dims2(m!, "capacity_mask");
      _check(Number.isInteger(a.capacity) && a.capacity >= 0, "capacity_mask", `capacity ${a.capacity}`);
      return _same(m!);
    },
    grad: "discrete",
  },
  /** Gates renormalised per token: x (N, E) → x / Σ_row x (a row summing to 0 stays 0). */
  renormalize_rows: {
    outputs: ([x]) => (_dims2(x!, "renormalize_rows"), _same(x!)),
    grad: (g, n, [dy]) => [apply1(g, "renormalize_rows_backward", [n.inputs[0]!, dy!])],
  },
  /** (x, dy) → dx = (dy − Σ dy ⊙ y) / Σ_row x, y = x / Σ_row x (0 where the row sums to 0). */
  renormalize_rows_backward: { outputs: ([x]) => _same(x!), grad: "backward" },
  /**
   * Softmax after top-k: (logits (N, E), mask (N, E)) → softmax over each row's kept logits, 0 elsewhere
   * (a row with nothing kept is 0). Its gradient is the softmax gradient at the output; the mask gets none.
   */
  masked_softmax: {
    outputs: ([z, m]) => {
      _check(
        _dims2(z!, "masked_softmax").join() === _dims2(m!, "masked_softmax").join(),
        "masked_softmax",
        `logits [${z!.shape}] and mask [${m!.shape}] differ`,
      );
      return _same(z!);
    },
    grad: (g, n, [dy]) => [apply1(g, "softmax_backward", [n.outputs[0]!, dy!]), null],
  },

  /**
   * The Switch loss per sequence (docs/design.md §16): (S (N, E), mask (N, E)) over B = N / attrs.seq
   * sequences of attrs.seq tokens → (1/B) Σ_b E · Σ_i (f_b,i / k) · P_b,i, f_b and P_b the column means of
   * the mask and of S over sequence b. The mask gets no gradient.
   */
  switch_loss_seq: {
    outputs: ([s, m], a) => {
      const [N] = _dims2(s!, "switch_loss_seq");
      _check(N % a.seq === 0, "switch_loss_seq", `${N} tokens are not sequences of ${a.seq}`);
      _check(m!.shape.join() === s!.shape.join(), "switch_loss_seq", "mask and S differ in shape");
      return SCALAR;
    },
    grad: (g, n, [dl]) => [
      apply1(g, "switch_loss_seq_backward", [n.inputs[0]!, n.inputs[1]!, dl!], n.attrs),
      null,
    ],
  },
  /** (S, mask, dL) → dS[t, i] = dL · E · f_b(t),i / (k · seq · B). */
  switch_loss_seq_backward: { outputs: ([s]) => _same(s!), grad: "backward" },

  /** x (N, W) → its first attrs.width columns (N, width): the real experts' gates of N + N_null. */
  slice_cols: {
    outputs: ([x], a) => {
      const [n, w] = _dims2(x!, "slice_cols");
      _check(a.width >= 1 && a.width <= w, "slice_cols", `width ${a.width} of ${w} columns`);
      return [{ shape: [n, a.width] }];
    },
    grad: (g, n, [dy]) => [apply1(g, "slice_cols_backward", [dy!], { cols: n.inputs[0]!.shape[1]! })],
  },
  /** dy (N, w) → (N, attrs.cols): dy in the first w columns, zeros after. */
  slice_cols_backward: {
    outputs: ([dy], a) => [{ shape: [_dims2(dy!, "slice_cols_backward")[0], a.cols] }],
    grad: "backward",
  },

  /**
   * The dynamic loss of top-p routing (docs/design.md §16): router probabilities S (N, E) → the mean
   * per-token entropy (1/N) Σ_t H(S_t), H(p) = −Σ_i p_i log(p_i + ε).
   */
  entropy_loss: {
    outputs: ([s]) => {
      _dims2(s!, "entropy_loss");
      return SCALAR;
    },
    grad: (g, n, [dl]) => [apply1(g, "entropy_loss_backward", [n.inputs[0]!, dl!])],
  },
  /** (S, dL) → dS = −(dL/N)·[log(S + ε) + S/(S + ε)]. */
  entropy_loss_backward: { outputs: ([s]) => _same(s!), grad: "backward" },

  /**
   * The L1 term of ReLU routing (docs/design.md §16): (g (N, E) gates, λ (1,)) → λ · (1/N) Σ_t Σ_i g_t,i.
   * λ is optimizer-free state fed as an input: it gets no gradient.
   */
  l1_loss: {
    outputs: ([x, lambda]) => {
      _dims2(x!, "l1_loss");
      _check(lambda!.shape.length === 1 && lambda!.shape[0] === 1, "l1_loss", "λ is (1,)");
      return SCALAR;
    },
    grad: (g, n, [dl]) => [apply1(g, "l1_loss_backward", [n.inputs[0]!, n.inputs[1]!, dl!]), null],
  },
  /** (g, λ, dL) → dg = dL · λ / N everywhere. */
  l1_loss_backward: { outputs: ([x]) => _same(x!), grad: "backward" },
};

/**
 * Routing diagnostics of a trained model (docs/design.md §5, "Routing diagnostics"): pure float64 functions
 * over the router probabilities S (T tokens × E experts, row-major), the inference rule's 0/1 mask of the
 * experts each token runs, and per-token labels such as the domain of each byte of `synthetic:multidomain`:
 *
 * - {@linkcode top1}: each token's most probable expert (ties to the lower index, as `topk`);
 * - {@linkcode expertLoad}: the share of tokens whose top-1 is each expert (Switch's f_i);
 * - {@linkcode activeShare}: the share of tokens each expert runs for under the rule;
 * - {@linkcode routingEntropy}: mean over tokens of H(S_t) = −Σ_i S_ti ln S_ti in nats (0 · ln 0 = 0);
 * - {@linkcode top1Changed}: routing stability, the share of tokens whose top-1 expert differs between two
 *   evaluations of the same tokens (e.g. two checkpoints);
 * - {@linkcode coactivation}: the E×E matrix C_ij = share of tokens for which experts i and j both run
 *   (normalised by the tokens; the diagonal is {@linkcode activeShare});
 * - {@linkcode mutualInformationBits}: I(expert; label) in bits from the joint counts of top-1 expert and label
 *   ({@linkcode jointCounts}), with {@linkcode entropyBits} of the labels as its upper bound.
 *
 * {@linkcode RoutingTally} accumulates the same quantities batch by batch, so that `eval --diagnostics`
 * need not hold every token's probabilities.
 *
 * @module
 */

/** Rows of a row-major (T, E) array, checking that `E` divides its length. */
function _rows(a: ArrayLike<number>, E: number, what: string): number {
  if (!Number.isSafeInteger(E) || E < 1 || a.length % E !== 0) {
    throw new RangeError(`${what}: ${a.length} values are not rows of ${E} experts`);
  }
  return a.length / E;
}

/**
 * Each token's most probable expert (ties to the lower index).
 *
 * @example
 * ```ts
 * import { top1 } from "./diagnostics.ts";
 * console.log(Array.from(top1([0.2, 0.8, 0.5, 0.5], 2))); // [1, 0]
 * ```
 */
export function top1(probs: ArrayLike<number>, E: number): Uint16Array {
  const T = _rows(probs, E, "top1"), out = new Uint16Array(T);
  for (let t = 0; t < T; t++) {
    let best = 0;
    for (let i = 1; i < E; i++) if (probs[t * E + i]! > probs[t * E + best]!) best = i;
    out[t] = best;
  }
  return out;
}

/** Share of the tokens assigned to each of `E` experts (`assign[t]` is token t's expert). */
export function expertLoad(assign: ArrayLike<number>, E: number): Float64Array {
  const out = new Float64Array(E);
  for (let t = 0; t < assign.length; t++) out[assign[t]!]! += 1;
  return _divide(out, assign.length);
}

/** Share of the tokens each expert runs for: the column means of a 0/1 mask (T, E). */
export function activeShare(mask: ArrayLike<number>, E: number): Float64Array {
  const T = _rows(mask, E, "activeShare"), out = new Float64Array(E);
  for (let t = 0; t < T; t++) for (let i = 0; i < E; i++) out[i]! += mask[t * E + i]! > 0 ? 1 : 0;
  return _divide(out, T);
}

/** −Σ p ln p of one distribution, in nats (0 · ln 0 = 0). */
function _entropy(p: ArrayLike<number>, from: number, n: number): number {
  let h = 0;
  for (let i = from; i < from + n; i++) if (p[i]! > 0) h -= p[i]! * Math.log(p[i]!);
  return h;
}

/** Mean over tokens of the routing entropy H(S_t) = −Σ_i S_ti ln S_ti, in nats (NaN for no tokens). */
export function routingEntropy(probs: ArrayLike<number>, E: number): number {
  const T = _rows(probs, E, "routingEntropy");
  let sum = 0;
  for (let t = 0; t < T; t++) sum += _entropy(probs, t * E, E);
  return sum / T;
}

/**
 * Routing stability: the share of tokens whose top-1 expert differs between two evaluations `a` and `b` of
 * the same tokens (0: the same routing; 1 − 1/E: as if drawn at random).
 */
export function top1Changed(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new RangeError(`top1Changed: ${a.length} tokens against ${b.length}`);
  let changed = 0;
  for (let t = 0; t < a.length; t++) if (a[t] !== b[t]) changed++;
  return changed / a.length;
}

/**
 * Expert co-activation: C (E×E, row-major) with C_ij the share of tokens for which experts i and j both run
 * under a 0/1 mask (T, E). Symmetric; its diagonal is {@linkcode activeShare}.
 */
export function coactivation(mask: ArrayLike<number>, E: number): Float64Array {
  const T = _rows(mask, E, "coactivation"), out = new Float64Array(E * E);
  _addCoactivation(out, mask, E, T);
  return _divide(out, T);
}

function _addCoactivation(out: Float64Array, mask: ArrayLike<number>, E: number, T: number): void {
  const on: number[] = [];
  for (let t = 0; t < T; t++) {
    on.length = 0;
    for (let i = 0; i < E; i++) if (mask[t * E + i]! > 0) on.push(i);
    for (const i of on) for (const j of on) out[i * E + j]! += 1;
  }
}

/**
 * Joint counts (E×D, row-major) of token t's expert `assign[t]` and its label `labels[t]` (e.g. its domain);
 * a label ≥ D (unlabelled) is left out.
 */
export function jointCounts(
  assign: ArrayLike<number>,
  labels: ArrayLike<number>,
  E: number,
  D: number,
): Float64Array {
  if (assign.length !== labels.length) {
    throw new RangeError(`jointCounts: ${assign.length} experts against ${labels.length} labels`);
  }
  const out = new Float64Array(E * D);
  for (let t = 0; t < assign.length; t++) if (labels[t]! < D) out[assign[t]! * D + labels[t]!]! += 1;
  return out;
}

/** Entropy in bits of the distribution proportional to `counts` (0 when they are all 0). */
export function entropyBits(counts: ArrayLike<number>): number {
  let n = 0, h = 0;
  for (let i = 0; i < counts.length; i++) n += counts[i]!;
  for (let i = 0; i < counts.length; i++) {
    const p = counts[i]! / n;
    if (p > 0) h -= p * Math.log2(p);
  }
  return n > 0 ? h : 0;
}

/**
 * Mutual information in bits of the two variables whose joint counts are `joint` (E×D, row-major):
 * Σ p(e, d) log₂(p(e, d) / (p(e) p(d))), with p the counts over their total (0 when there are none). At most
 * min(H(expert), H(label)).
 *
 * @example
 * ```ts
 * import { mutualInformationBits } from "./diagnostics.ts";
 * // Expert = domain, two equally likely domains: one bit. Independent: zero.
 * console.log(mutualInformationBits([5, 0, 0, 5], 2, 2), mutualInformationBits([1, 1, 1, 1], 2, 2)); // 1 0
 * ```
 */
export function mutualInformationBits(joint: ArrayLike<number>, E: number, D: number): number {
  if (joint.length !== E * D) {
    throw new RangeError(`mutualInformationBits: ${joint.length} counts, not ${E}×${D}`);
  }
  const rows = new Float64Array(E), cols = new Float64Array(D);
  let n = 0;
  for (let e = 0; e < E; e++) {
    for (let d = 0; d < D; d++) {
      const c = joint[e * D + d]!;
      rows[e]! += c, cols[d]! += c, n += c;
    }
  }
  if (n === 0) return 0;
  let mi = 0;
  for (let e = 0; e < E; e++) {
    for (let d = 0; d < D; d++) {
      const c = joint[e * D + d]!;
      if (c > 0) mi += (c / n) * Math.log2((c * n) / (rows[e]! * cols[d]!));
    }
  }
  return Math.max(0, mi); // rounding can leave −1e-17 for independent variables
}

function _divide(a: Float64Array, n: number): Float64Array {
  for (let i = 0; i < a.length; i++) a[i] = a[i]! / n;
  return a;
}

/** The diagnostics of one router over the evaluated tokens. */
export interface RouterDiagnostics {
  layer: number;
  kind: "attention" | "mlp";
  experts: number;
  tokens: number;
  /** Share of tokens whose most probable expert is each expert. */
  load_top1: number[];
  /** Share of tokens each expert runs for under the rule (all 1 under the dense rule). */
  load_active: number[];
  /** Mean per-token routing entropy, nats. */
  entropy: number;
  /** E×E: share of tokens for which experts i and j both run. */
  coactivation: number[][];
  /** I(top-1 expert; domain) in bits over the labelled tokens; null without labels. */
  mi_domain_bits: number | null;
  /** H(domain) in bits over the same tokens: the most the MI can be; null without labels. */
  domain_entropy_bits: number | null;
  /** Share of tokens whose top-1 expert differs in the other evaluation; null when there is none. */
  top1_changed: number | null;
}

/**
 * Accumulates one router's diagnostics over batches: `add` each batch's probabilities (T, E), the rule's mask
 * (null: every expert runs) and per-token labels (null: none), then `finish`. Equal to the functions above
 * over all the batches' tokens at once.
 */
export class RoutingTally {
  #tokens = 0;
  #entropy = 0;
  readonly #top1Counts: Float64Array;
  readonly #active: Float64Array;
  readonly #coact: Float64Array;
  readonly #joint: Float64Array | null;
  readonly #assign: number[] = [];

  constructor(
    readonly layer: number,
    readonly kind: "attention" | "mlp",
    readonly experts: number,
    readonly labels: number, // label values 0 … labels − 1 (0: no labels)
  ) {
    this.#top1Counts = new Float64Array(experts);
    this.#active = new Float64Array(experts);
    this.#coact = new Float64Array(experts * experts);
    this.#joint = labels > 0 ? new Float64Array(experts * labels) : null;
  }

  /** Adds a batch: `probs` (T, E); `mask` (T, E) or null for all experts; `labels` (T,) or null. */
  add(probs: ArrayLike<number>, mask: ArrayLike<number> | null, labels: ArrayLike<number> | null): void {
    const E = this.experts, T = _rows(probs, E, "RoutingTally.add");
    const assign = top1(probs, E);
    for (let t = 0; t < T; t++) {
      this.#entropy += _entropy(probs, t * E, E);
      this.#top1Counts[assign[t]!]! += 1;
      this.#assign.push(assign[t]!);
    }
    const m = mask ?? new Float64Array(T * E).fill(1);
    if (m.length !== T * E) throw new RangeError(`RoutingTally.add: mask of ${m.length} for ${T}×${E}`);
    for (let t = 0; t < T; t++) for (let i = 0; i < E; i++) this.#active[i]! += m[t * E + i]! > 0 ? 1 : 0;
    _addCoactivation(this.#coact, m, E, T);
    if (this.#joint && labels) {
      const j = jointCounts(assign, labels, E, this.labels);
      for (let i = 0; i < j.length; i++) this.#joint[i]! += j[i]!;
    }
    this.#tokens += T;
  }

  /** Each token's top-1 expert so far, in the order added (for {@linkcode top1Changed}). */
  top1(): Uint16Array {
    return Uint16Array.from(this.#assign);
  }

  /** The diagnostics of the tokens added; `other` (the same tokens' top-1 elsewhere) gives top1_changed. */
  finish(other?: ArrayLike<number>): RouterDiagnostics {
    const E = this.experts, T = this.#tokens;
    const share = (a: Float64Array) => Array.from(a, (v) => v / T);
    const coact = share(this.#coact);
    let labelled = 0;
    for (const c of this.#joint ?? []) labelled += c;
    const j = this.#joint && labelled > 0 ? this.#joint : null;
    const domains = j ? Array.from({ length: this.labels }, (_, d) => _colSum(j, E, this.labels, d)) : null;
    return {
      layer: this.layer,
      kind: this.kind,
      experts: E,
      tokens: T,
      load_top1: share(this.#top1Counts),
      load_active: share(this.#active),
      entropy: this.#entropy / T,
      coactivation: Array.from({ length: E }, (_, i) => coact.slice(i * E, (i + 1) * E)),
      mi_domain_bits: j ? mutualInformationBits(j, E, this.labels) : null,
      domain_entropy_bits: domains ? entropyBits(domains) : null,
      top1_changed: other ? top1Changed(this.top1(), other) : null,
    };
  }
}

function _colSum(a: Float64Array, rows: number, cols: number, c: number): number {
  let s = 0;
  for (let r = 0; r < rows; r++) s += a[r * cols + c]!;
  return s;
}

/** Means over a model's routers of its diagnostics (null where no router has the value). */
export interface RoutingSummary {
  entropy: number;
  mi_domain_bits: number | null;
  domain_entropy_bits: number | null;
  top1_changed: number | null;
}

/** The {@linkcode RoutingSummary} of `routers` (NaN entropy for none). */
export function summarizeRouting(routers: readonly RouterDiagnostics[]): RoutingSummary {
  const mean = (f: (r: RouterDiagnostics) => number | null) => {
    const xs = routers.map(f).filter((x): x is number => x !== null);
    return xs.length === 0 ? null : xs.reduce((a, b) => a + b, 0) / xs.length;
  };
  return {
    entropy: mean((r) => r.entropy) ?? NaN,
    mi_domain_bits: mean((r) => r.mi_domain_bits),
    domain_entropy_bits: mean((r) => r.domain_entropy_bits),
    top1_changed: mean((r) => r.top1_changed),
  };
}

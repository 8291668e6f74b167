/**
 * Float64 references of inference attention (docs/design.md §3 and §10): attention against a KV cache for
 * decoding, and sparse MoA, where only a token's routed attention experts compute their query heads and
 * output projection while keys and values are shared.
 *
 * Layout: rows of width H·D (queries) or Hkv·D (keys, values, cache); query head h reads KV head h mod Hkv,
 * so head j of MoA expert e (query head e·Hkv + j) reads KV head j. Scale 1/sqrt(D).
 *
 * Where a token's keys are, {@linkcode KeyWindow}: in a sequence batch (B sequences of T tokens) token t
 * sees rows b·T … t of the batch's own keys; when decoding, N new tokens at positions pos … pos+N−1 are
 * first written into cache rows pos …, then token t sees cache rows 0 … pos+t.
 *
 * @module
 */

/** Which key rows token t attends to: rows first … first+len−1. */
export type KeyWindow = (t: number) => { first: number; len: number };

/** The causal window of token t in a batch of sequences of `T` tokens. */
export function sequenceWindow(T: number): KeyWindow {
  return (t) => ({ first: t - (t % T), len: (t % T) + 1 });
}

/** The window of new token t decoded at position pos + t (cache rows 0 … pos+t). */
export function cacheWindow(pos: number): KeyWindow {
  return (t) => ({ first: 0, len: pos + t + 1 });
}

/**
 * Writes rows k, v (N, Hkv·D) into cache rows pos … pos+N−1 (in place). Throws past the cache's end.
 *
 * @example
 * ```ts
 * import { kvWriteRef } from "./cached_attention.ts";
 * const kc = new Float64Array(4), vc = new Float64Array(4);
 * kvWriteRef([1, 2], [3, 4], kc, vc, 1, 2);
 * if (kc[2] !== 1 || vc[3] !== 4) throw new Error("row 1 not written");
 * ```
 */
export function kvWriteRef(
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  kcache: Float64Array,
  vcache: Float64Array,
  pos: number,
  width: number,
): void {
  if (pos * width + k.length > kcache.length) {
    throw new RangeError(
      `kvWriteRef: ${k.length / width} rows at position ${pos} overflow a cache of ${kcache.length / width}`,
    );
  }
  kcache.set(Array.from(k), pos * width);
  vcache.set(Array.from(v), pos * width);
}

/** Sizes of {@linkcode cachedAttentionRef}: N query rows of H heads, Hkv KV heads, head width D. */
export interface CachedAttentionDims {
  N: number;
  H: number;
  Hkv: number;
  D: number;
}

/** Attention of head `h` of query row `qo` (offset) over `keys`/`values` rows of `window`, into `out`. */
function _attendHead(
  q: ArrayLike<number>,
  qo: number,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  first: number,
  len: number,
  kvCol: number,
  width: number,
  D: number,
  out: Float64Array,
  oo: number,
  weight: number,
): void {
  const scale = 1 / Math.sqrt(D), p = new Float64Array(len);
  let max = -Infinity;
  for (let s = 0; s < len; s++) {
    const ko = (first + s) * width + kvCol;
    let dot = 0;
    for (let j = 0; j < D; j++) dot += q[qo + j]! * keys[ko + j]!;
    p[s] = dot * scale;
    max = Math.max(max, p[s]!);
  }
  let sum = 0;
  for (let s = 0; s < len; s++) sum += p[s] = Math.exp(p[s]! - max);
  for (let s = 0; s < len; s++) {
    const vo = (first + s) * width + kvCol, w = (weight * p[s]!) / sum;
    for (let j = 0; j < D; j++) out[oo + j]! += w * values[vo + j]!;
  }
}

/**
 * o (N, H·D): every query head of every row attends over the rows of `keys`, `values` (R, Hkv·D) that
 * `window` gives it.
 *
 * @example
 * ```ts
 * import { cachedAttentionRef, cacheWindow } from "./cached_attention.ts";
 * // One head of width 1; the new token at position 1 sees cache rows 0 and 1 with equal keys.
 * const o = cachedAttentionRef([1], [0, 0], [2, 4], { N: 1, H: 1, Hkv: 1, D: 1 }, cacheWindow(1));
 * if (o[0] !== 3) throw new Error(String(o[0]));
 * ```
 */
export function cachedAttentionRef(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  s: CachedAttentionDims,
  window: KeyWindow,
): Float64Array {
  const { N, H, Hkv, D } = s, o = new Float64Array(N * H * D);
  for (let t = 0; t < N; t++) {
    const { first, len } = window(t);
    for (let h = 0; h < H; h++) {
      const qo = (t * H + h) * D;
      _attendHead(q, qo, keys, values, first, len, (h % Hkv) * D, Hkv * D, D, o, qo, 1);
    }
  }
  return o;
}

/** Sizes of {@linkcode moaAttentionRef}: N tokens of width d, E experts of G heads of width D. */
export interface MoaDims {
  N: number;
  d: number;
  E: number;
  G: number;
  D: number;
}

/**
 * Sparse MoA: y[t] = Σ_e gate[t, e] · attn(x[t]·Wq_e over KV heads 0…G−1) · Wo_e over the experts whose
 * gate is non-zero. x (N, d), gate (N, E), wq (d, E·G·D) with expert e in columns e·G·D…, keys and values
 * (R, G·D), wo (E·G·D, d) with expert e in rows e·G·D…. Unrouted experts' weights are never read; with every
 * gate non-zero this equals the dense MoA layer (router-scaled head groups before Wo).
 */
export function moaAttentionRef(
  x: ArrayLike<number>,
  gate: ArrayLike<number>,
  wq: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  wo: ArrayLike<number>,
  s: MoaDims,
  window: KeyWindow,
): Float64Array {
  const { N, d, E, G, D } = s, w = G * D, width = E * w;
  const y = new Float64Array(N * d), q = new Float64Array(w), o = new Float64Array(w);
  for (let t = 0; t < N; t++) {
    const { first, len } = window(t);
    for (let e = 0; e < E; e++) {
      const g = gate[t * E + e]!;
      if (!(g > 0)) continue;
      q.fill(0);
      o.fill(0);
      for (let k = 0; k < d; k++) {
        const xv = x[t * d + k]!;
        for (let j = 0; j < w; j++) q[j]! += xv * wq[k * width + e * w + j]!;
      }
      for (let j = 0; j < G; j++) _attendHead(q, j * D, keys, values, first, len, j * D, w, D, o, j * D, g);
      for (let j = 0; j < w; j++) {
        const row = (e * w + j) * d;
        for (let c = 0; c < d; c++) y[t * d + c]! += o[j]! * wo[row + c]!;
      }
    }
  }
  return y;
}

/**
 * Drawing the next token on the GPU, so decoding needs no read-back per token: the sampler reads the
 * logits, writes the token into the decoder's input id (the next step embeds it) and into a list of
 * generated tokens, and advances its own counter. The draw is the same function as
 * `sampleToken` in core/infer/generate.ts: greedy at temperature 0; otherwise the `topK` most likely tokens
 * (ties to the lower id; 0 keeps all), weights exp((logit − max) / temperature), of those the fewest most
 * likely whose weight reaches `topP` of theirs (nucleus sampling; 1 keeps all), and the first token in id
 * order whose running weight passes u · Σ weights, with u = {@linkcode samplingUniform}(seed, counter).
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { type Binding, headedKernel, simpleKernel, type UniformFields } from "./common.ts";

/** hash32 (core/util/rng.ts) in WGSL: the same bits for the same u32 inputs. */
const _HASH = `fn hashMix(h0: u32, v: u32) -> u32 {
  var h = (h0 ^ v) * 0x85ebca6bu;
  h = h ^ (h >> 13u);
  h = h * 0xc2b2ae35u;
  return h ^ (h >> 16u);
}`;

/** Threads of the sampler's one workgroup. */
const _THREADS = 256;

/**
 * How the sampler finds the tokens top-k and top-p keep, when it must (not greedy, not "all"): `scan` counts
 * each token's rank (and the weight ahead of it) over the whole vocabulary, V²/256 steps per thread, for
 * small vocabularies; `search` finds the last kept token by binary searches over the logits' order (about
 * 110 passes of V/256 steps: counts and sums reduced across the workgroup), for large ones.
 */
export type SamplerSearch = "scan" | "search";

/** Binary-search passes over the vocabulary in the `search` method, at most (see {@linkcode _sampler}). */
const _SEARCH_PASSES = 110;

/** Whether the `search` method's loops over V tokens stay under llvmpipe's budget per invocation. */
function _searchFits(V: number): boolean {
  const c = Math.ceil(V / _THREADS);
  return 3 * c + _THREADS + _SEARCH_PASSES * (c + 12) <= 60000;
}

/**
 * How {@linkcode sampleTokenGpu} handles a vocabulary of `V` under `s`, or null where it cannot (the host
 * samples then): greedy, top-k 1 and "all" take O(V / 256) steps per thread; other top-k and any top-p
 * below 1 take `scan` while its V²/256 steps per thread fit, else `search`. Every method keeps an
 * invocation's loops under the 65,535 iterations llvmpipe allows (beyond that it ends the loop early).
 */
export function gpuSamplingMethod(
  V: number,
  s: { temperature: number; topK: number; topP?: number },
): "simple" | SamplerSearch | null {
  const greedy = s.temperature <= 0 || s.topK === 1;
  const simple = greedy || ((s.topK === 0 || s.topK >= V) && (s.topP ?? 1) >= 1);
  if (simple) return V <= 65535 * _THREADS ? "simple" : null;
  if (Math.ceil(V / _THREADS) * V <= 60000) return "scan";
  return _searchFits(V) ? "search" : null;
}

/** Whether {@linkcode sampleTokenGpu} handles a vocabulary of `V` under `s` ({@linkcode gpuSamplingMethod}). */
export function gpuSamplingFits(V: number, s: { temperature: number; topK: number; topP?: number }): boolean {
  return gpuSamplingMethod(V, s) !== null;
}

/**
 * Samples token `counter` of a generation: `logits` (V,) f32 → `ids[0]` and `out[counter]` (u32), then
 * `counter` + 1 (state[0]). One workgroup of 256 threads, each over a contiguous slice of the vocabulary:
 * the argmax by a tree (ties to the lower id); the kept tokens' weights summed per slice, an exclusive
 * prefix over the slices in id order, and the one slice where u · Σ weights falls walks its tokens. Float
 * sums run per slice then across slices, so a draw can differ from the host's sequential float64 sum only
 * where u · Σ weights lies within rounding of a token boundary. See {@linkcode gpuSamplingFits}.
 */
export function sampleTokenGpu(_ctx: GpuContext, o: SamplerOptions): KernelCall {
  return _sampler(o, 0);
}

/** Options of {@linkcode sampleTokenGpu} and {@linkcode sampleTokensGpu}. */
export interface SamplerOptions {
  logits: GpuTensor;
  ids: GpuTensor;
  out: GpuTensor;
  state: GpuTensor;
  temperature: number;
  topK: number;
  topP?: number; // nucleus: 1 (default) keeps all
  seed: number;
  /** The method for top-k and top-p (tests); default {@linkcode gpuSamplingMethod}'s. */
  method?: SamplerSearch;
}

/**
 * {@linkcode sampleTokenGpu} for the B rows of a batched decoder (docs/design.md §10, "Batched decoding"):
 * `logits` (B, V) → `ids[b]` and `out[counter_b · B + b]`, then `state[b]` (row b's counter) + 1. One
 * workgroup per row; row b draws with seed `seed + b`, so its tokens are those {@linkcode sampleTokenGpu}
 * seeded with `seed + b` draws from the same logits.
 */
export function sampleTokensGpu(_ctx: GpuContext, o: SamplerOptions & { rows: number }): KernelCall {
  if (!(Number.isSafeInteger(o.rows) && o.rows >= 1) || o.logits.size % o.rows !== 0) {
    throw new RangeError(`Cannot sample ${o.rows} rows from logits of ${o.logits.size}`);
  }
  if (o.ids.size !== o.rows || o.state.size !== o.rows) {
    throw new RangeError(
      `Cannot sample ${o.rows} rows: ids and state hold ${o.ids.size} and ${o.state.size}`,
    );
  }
  return _sampler(o, o.rows);
}

/** The sampler's kernel: one row (`rows` 0: the batch-1 kernel) or `rows` rows, a workgroup each. */
function _sampler(o: SamplerOptions, rows: number): KernelCall {
  const V = rows > 0 ? o.logits.size / rows : o.logits.size, T = _THREADS, topP = o.topP ?? 1;
  // Logit j of this workgroup's row: L[rb + j] with rb the row's first element (batched), else L[j].
  const at = (j: string) => rows > 0 ? `L[rb + ${j}]` : `L[${j}]`, Lj = at("j"), Lq = at("q");
  if (!(o.temperature >= 0) || !Number.isInteger(o.topK) || o.topK < 0) {
    throw new RangeError(`Cannot sample: temperature ${o.temperature} and topK ${o.topK} must be ≥ 0`);
  }
  if (!(topP > 0 && topP <= 1)) throw new RangeError(`Cannot sample: topP ${topP} must be in (0, 1]`);
  const fits = gpuSamplingMethod(V, o);
  if (fits === null) {
    throw new RangeError(`Cannot sample ${V} tokens with top-k ${o.topK} on the GPU (see gpuSamplingFits)`);
  }
  const search = (o.method ?? (fits === "search" ? "search" : "scan")) === "search";
  if (search && !_searchFits(V)) {
    throw new RangeError(`Cannot sample ${V} tokens by search on the GPU (see gpuSamplingFits)`);
  }
  const fields: UniformFields = [
    ["V", "u32", V],
    ["cap", "u32", rows > 0 ? Math.floor(o.out.size / rows) : o.out.size],
    ["topK", "u32", o.topK],
    ["seedLo", "u32", o.seed >>> 0],
    ["seedHi", "u32", Math.floor(o.seed / 2 ** 32) >>> 0],
    ["temp", "f32", o.temperature],
    ["topP", "f32", topP],
    ...(rows > 0 ? [["rows", "u32", rows] as const] : []),
  ];
  const bindings: Binding[] = [
    { name: "L", tensor: o.logits },
    { name: "ids", tensor: o.ids, write: true },
    { name: "out", tensor: o.out, write: true },
    { name: "st", tensor: o.state, write: true },
  ];
  // Whether token j is drawn from: the scan's rank test, or the search's cutoff (the last kept token).
  const keep = (scan: string) => search ? `inCut(j, ${Lj}, cutoff)` : scan;
  const code = `${_HASH}
${rows > 0 ? "var<private> rb: u32;" : ""}
var<workgroup> bestV: array<f32, ${T}>;
var<workgroup> bestI: array<u32, ${T}>;
var<workgroup> part: array<f32, ${T}>;
var<workgroup> goal: f32;
var<workgroup> cut: f32;
var<workgroup> pick: atomic<u32>;
var<workgroup> lastKept: atomic<u32>;

// Whether token j is among the topK most likely: fewer than topK tokens come before it in
// (logit desc, id asc) order.
fn kept(j: u32, every: bool) -> bool {
  if (every) { return true; }
  let x = ${Lj};
  var ahead = 0u;
  for (var q = 0u; q < u.V; q = q + 1u) {
    let y = ${Lq};
    if (y > x || (y == x && q < j)) { ahead = ahead + 1u; }
  }
  return ahead < u.topK;
}

// Top-k and top-p: j is kept by top-k, and the weight of the tokens before it in (logit desc, id asc)
// order is under cut (topP of the top-k tokens' weight): the fewest most likely tokens reaching topP.
fn nucleus(j: u32, every: bool, mv: f32) -> bool {
  let x = ${Lj};
  var ahead = 0u;
  var mass = 0.0;
  for (var q = 0u; q < u.V; q = q + 1u) {
    let y = ${Lq};
    if (y > x || (y == x && q < j)) { ahead = ahead + 1u; mass = mass + exp((y - mv) / u.temp); }
  }
  return (every || ahead < u.topK) && mass < cut;
}

fn chosen(j: u32, every: bool, nuc: bool, mv: f32) -> bool {
  if (nuc) { return nucleus(j, every, mv); }
  return kept(j, every);
}
${search ? _searchWgsl(T, at) : ""}
@compute @workgroup_size(${T})
${
    rows > 0
      ? `fn main(@builtin(local_invocation_index) t: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let row = wid.x;
  rb = row * u.V;
  let seedLo = u.seedLo + row;
  let seedHi = u.seedHi + select(0u, 1u, seedLo < u.seedLo);`
      : `fn main(@builtin(local_invocation_index) t: u32) {
  let row = 0u;
  let seedLo = u.seedLo;
  let seedHi = u.seedHi;`
  }
  let n = st[row];
  let c = (u.V + ${T - 1}u) / ${T}u;
  let j0 = min(t * c, u.V);
  let j1 = min(j0 + c, u.V);
  var bv = -3.0e38; var bi = u.V;
  for (var j = j0; j < j1; j = j + 1u) { let x = ${Lj}; if (bi == u.V || x > bv) { bv = x; bi = j; } }
  bestV[t] = bv; bestI[t] = bi;
  if (t == 0u) { atomicStore(&pick, u.V); atomicStore(&lastKept, 0u); }
  workgroupBarrier();
  for (var s = ${T / 2}u; s > 0u; s = s >> 1u) {
    if (t < s) {
      let ov = bestV[t + s]; let oi = bestI[t + s];
      if (oi != u.V && (bestI[t] == u.V || ov > bestV[t] || (ov == bestV[t] && oi < bestI[t]))) {
        bestV[t] = ov; bestI[t] = oi;
      }
    }
    workgroupBarrier();
  }
  let mv = bestV[0];
  var tok = bestI[0];
  if (u.temp > 0.0 && u.topK != 1u) {
    let every = u.topK == 0u || u.topK >= u.V;
    let nuc = u.topP < 1.0;${search ? "\n    let cutoff = lastKeptToken(t, every, nuc, mv);" : ""}
    var sum = 0.0;
    for (var j = j0; j < j1; j = j + 1u) {
      if (${keep("kept(j, every)")}) {
        sum = sum + exp((${Lj} - mv) / u.temp);${
    search ? " atomicMax(&lastKept, j);" : " if (!nuc) { atomicMax(&lastKept, j); }"
  }
      }
    }
    part[t] = sum;
    workgroupBarrier();
    if (${search ? "false" : "nuc"}) {
      if (t == 0u) {
        var z = 0.0;
        for (var q = 0u; q < ${T}u; q = q + 1u) { z = z + part[q]; }
        cut = u.topP * z;
      }
      workgroupBarrier();
      var kept2 = 0.0;
      for (var j = j0; j < j1; j = j + 1u) {
        if (nucleus(j, every, mv)) { kept2 = kept2 + exp((${Lj} - mv) / u.temp); atomicMax(&lastKept, j); }
      }
      part[t] = kept2;
      workgroupBarrier();
    }
    if (t == 0u) {
      var acc = 0.0;
      for (var q = 0u; q < ${T}u; q = q + 1u) { let v = part[q]; part[q] = acc; acc = acc + v; }
      let h = hashMix(hashMix(hashMix(0x9e3779b9u, seedLo), seedHi), n);
      goal = (f32(h) / 4294967296.0) * acc;
    }
    workgroupBarrier();
    var left = goal - part[t];
    if (left >= 0.0) {
      for (var j = j0; j < j1; j = j + 1u) {
        if (${keep("chosen(j, every, nuc, mv)")}) {
          left = left - exp((${Lj} - mv) / u.temp);
          if (left < 0.0) { atomicMin(&pick, j); break; }
        }
      }
    }
    workgroupBarrier();
    let p = atomicLoad(&pick);
    tok = select(p, atomicLoad(&lastKept), p == u.V);
  }
  if (t == 0u) {
    ids[row] = tok;
    if (n < u.cap) { out[${rows > 0 ? "n * u.rows + row" : "n"}] = tok; }
    st[row] = n + 1u;
  }
}`;
  return headedKernel({
    label: rows > 0 ? "sample_tokens" : "sample_token",
    bindings,
    fields,
    code,
    workgroups: [Math.max(1, rows)],
  });
}

/**
 * Adds Σ masks[i] (the experts a routed layer chose, summed over its rows) to `counts[first + i]`, for every
 * mask in one dispatch (one invocation: a few hundred values at most). At most
 * {@linkcode countExpertsPerCall} masks; {@linkcode countExpertsCalls} splits a longer list.
 */
export function countExperts(
  ctx: GpuContext,
  o: { masks: readonly GpuTensor[]; counts: GpuTensor; first: number },
): KernelCall {
  const most = countExpertsPerCall(ctx);
  if (o.masks.length === 0 || o.masks.length > most) {
    throw new RangeError(`countExperts takes 1 to ${most} masks here, not ${o.masks.length}`);
  }
  if (o.first + o.masks.length > o.counts.size) {
    throw new RangeError(`countExperts: counts holds ${o.counts.size}, not ${o.first + o.masks.length}`);
  }
  return simpleKernel(ctx, {
    label: "count_experts",
    bindings: [
      ...o.masks.map((mask, i) => ({ name: `m${i}`, tensor: mask })),
      { name: "c", tensor: o.counts, write: true },
    ],
    fields: [["first", "u32", o.first]],
    invocations: 1,
    workgroup: 1,
    body: o.masks.map((mask, i) =>
      `  {
    var s = 0.0;
    for (var e = 0u; e < ${mask.size}u; e = e + 1u) { s = s + m${i}[e]; }
    c[u.first + ${i}u] = c[u.first + ${i}u] + s;
  }`
    ).join("\n"),
  });
}

/** Masks one {@linkcode countExperts} dispatch sums: the adapter's storage bindings less the counts, ≤ 15. */
export function countExpertsPerCall(ctx: GpuContext): number {
  return Math.max(1, Math.min(15, ctx.limits.maxStorageBuffersPerShaderStage - 1));
}

/** {@linkcode countExperts} over any number of masks: as few dispatches as the binding limit allows. */
export function countExpertsCalls(
  ctx: GpuContext,
  masks: readonly GpuTensor[],
  counts: GpuTensor,
): KernelCall[] {
  const per = countExpertsPerCall(ctx), calls: KernelCall[] = [];
  for (let first = 0; first < masks.length; first += per) {
    calls.push(countExperts(ctx, { masks: masks.slice(first, first + per), counts, first }));
  }
  return calls;
}

/**
 * The `search` method's WGSL: {@linkcode _sampler}'s top-k and top-p set is a prefix of the tokens in (logit
 * desc, id asc) order, so it is known from its last token, a cutoff (key, id): token j is kept when its
 * key is above the cutoff's, or equal with j below the id. Keys are the logits' bits mapped to u32 in the
 * logits' order (−0 as +0). The cutoff comes from binary searches, each step one pass of the workgroup over
 * the vocabulary (strided) and a reduction: for top-k, the largest key with at least k tokens at or above
 * it, then, among the tokens at that key, the id below which the k-th falls; for top-p, over those, the
 * smallest key K whose top-k tokens above K weigh less than the cut (the host's "weight ahead under the
 * cut" then holds for every token above K, and for the first m at K in id order, m from the weight at K),
 * then that m-th token's id. Sums are f32 in another order than the host's float64, so a cutoff can differ
 * only where a weight ahead lies within rounding of the cut.
 */
function _searchWgsl(T: number, at: (j: string) => string): string {
  const Lj = at("j");
  // The workgroup's sum of v, the same in every invocation (uniform: loops and barriers may depend on it).
  const reduce = (name: string, type: string, red: string, out: string) =>
    `fn ${name}(v: ${type}, t: u32) -> ${type} {
  ${red}[t] = v;
  workgroupBarrier();
  for (var s = ${T / 2}u; s > 0u; s = s >> 1u) {
    if (t < s) { ${red}[t] = ${red}[t] + ${red}[t + s]; }
    workgroupBarrier();
  }
  if (t == 0u) { ${out} = ${red}[0]; }
  return workgroupUniformLoad(&${out});
}`;
  return `var<workgroup> redU: array<u32, ${T}>;
var<workgroup> redF: array<f32, ${T}>;
var<workgroup> outU: u32;
var<workgroup> outF: f32;

fn keyOf(x: f32) -> u32 {
  let b = bitcast<u32>(select(x, 0.0, x == 0.0));
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}
fn valueOf(k: u32) -> f32 {
  return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}
fn inCut(j: u32, x: f32, c: vec2<u32>) -> bool {
  let k = keyOf(x);
  return k > c.x || (k == c.x && j < c.y);
}
${reduce("sumU", "u32", "redU", "outU")}
${reduce("sumF", "f32", "redF", "outF")}
// Tokens whose key is at least k.
fn countFrom(t: u32, k: u32) -> u32 {
  var n = 0u;
  for (var j = t; j < u.V; j = j + ${T}u) { if (keyOf(${Lj}) >= k) { n = n + 1u; } }
  return sumU(n, t);
}
// Tokens of cutoff c whose key is k and id below p.
fn countAt(t: u32, k: u32, p: u32, c: vec2<u32>) -> u32 {
  var n = 0u;
  for (var j = t; j < min(p, u.V); j = j + ${T}u) {
    let x = ${Lj};
    if (keyOf(x) == k && inCut(j, x, c)) { n = n + 1u; }
  }
  return sumU(n, t);
}
// The weight of the tokens of cutoff c whose key is above k (every one of them with k = none).
fn weightAbove(t: u32, k: u32, none: bool, c: vec2<u32>, mv: f32) -> f32 {
  var w = 0.0;
  for (var j = t; j < u.V; j = j + ${T}u) {
    let x = ${Lj};
    if (inCut(j, x, c) && (none || keyOf(x) > k)) { w = w + exp((x - mv) / u.temp); }
  }
  return sumF(w, t);
}
// The smallest p (1 ≤ p ≤ V) with at least m tokens of cutoff c at key k below id p.
fn idCut(t: u32, k: u32, m: u32, c: vec2<u32>) -> u32 {
  var lo = 1u; var hi = u.V;
  for (var it = 0u; it < 32u; it = it + 1u) {
    if (lo < hi) {
      let mid = lo + (hi - lo) / 2u;
      if (countAt(t, k, mid, c) >= m) { hi = mid; } else { lo = mid + 1u; }
    }
  }
  return lo;
}
// The last token top-k and top-p keep, as a cutoff (key, id).
fn lastKeptToken(t: u32, every: bool, nuc: bool, mv: f32) -> vec2<u32> {
  var c = vec2<u32>(0u, u.V); // every token
  if (!every) {
    var lo = 0u; var hi = 0xffffffffu; // count(key ≥ lo) ≥ k > count(key ≥ hi + 1)
    for (var it = 0u; it < 32u; it = it + 1u) {
      if (lo < hi) {
        let mid = lo + (hi - lo) / 2u + 1u;
        if (countFrom(t, mid) >= u.topK) { lo = mid; } else { hi = mid - 1u; }
      }
    }
    var above = 0u; // tokens above the k-th token's key (a pass only where a key above exists)
    if (lo < 0xffffffffu) { above = countFrom(t, lo + 1u); }
    c = vec2<u32>(lo, idCut(t, lo, u.topK - above, c));
  }
  if (nuc) {
    let cut = u.topP * weightAbove(t, 0u, true, c, mv);
    var lo = c.x; var hi = 0xffffffffu; // the smallest key whose kept tokens above it weigh under the cut
    for (var it = 0u; it < 32u; it = it + 1u) {
      if (lo < hi) {
        let mid = lo + (hi - lo) / 2u;
        if (weightAbove(t, mid, false, c, mv) < cut) { hi = mid; } else { lo = mid + 1u; }
      }
    }
    let ahead = weightAbove(t, lo, false, c, mv);
    let ties = countAt(t, lo, u.V, c);
    let w = exp((valueOf(lo) - mv) / u.temp);
    let q = ceil((cut - ahead) / w);
    let m = select(max(1u, u32(q)), ties, q >= f32(ties));
    c = vec2<u32>(lo, idCut(t, lo, m, c));
  }
  return c;
}`;
}

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
 * Whether {@linkcode sampleTokenGpu} handles a vocabulary of `V` under `s`: greedy, top-k 1 and "all" take
 * O(V / 256) steps per thread; other top-k and any top-p below 1 count each token's rank (and the weight
 * ahead of it), V²/256 steps per thread, kept under the 65,535 iterations llvmpipe allows one loop of an
 * invocation (beyond that it ends the loop early).
 */
export function gpuSamplingFits(V: number, s: { temperature: number; topK: number; topP?: number }): boolean {
  const greedy = s.temperature <= 0 || s.topK === 1;
  const simple = greedy || ((s.topK === 0 || s.topK >= V) && (s.topP ?? 1) >= 1);
  return simple ? V <= 65535 * _THREADS : Math.ceil(V / _THREADS) * V <= 60000;
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
  if (!gpuSamplingFits(V, o)) {
    throw new RangeError(`Cannot sample ${V} tokens with top-k ${o.topK} on the GPU (see gpuSamplingFits)`);
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
    let nuc = u.topP < 1.0;
    var sum = 0.0;
    for (var j = j0; j < j1; j = j + 1u) {
      if (kept(j, every)) { sum = sum + exp((${Lj} - mv) / u.temp); if (!nuc) { atomicMax(&lastKept, j); } }
    }
    part[t] = sum;
    workgroupBarrier();
    if (nuc) {
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
        if (chosen(j, every, nuc, mv)) {
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

/**
 * Attention for decoding with a KV cache (docs/design.md §10): the new tokens' keys and values are written
 * into the cache at their positions, then each (token, query head) attends over cache rows 0 … its position.
 * Float64 twin: core/ref/cached_attention.ts. The position lives in a GPU buffer (`pos`), so one prepared
 * graph decodes every position without rebuilding, and no host value sits between layers.
 *
 * On a software adapter (`cpu-simd` profile), one invocation per (token, head) with an online softmax over
 * the key rows: a decode step has only H query heads, so there is nothing to tile; the query row and the
 * accumulator stay in registers. On a real GPU (`gpu` profile) one invocation's serial walk over the keys is
 * latency-bound (measured on an H200: 170 µs per call at d 512), so a workgroup of 64 threads shares each
 * (token, head): scores by key lane into workgroup memory, max and sum by tree, output by (key group, column).
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import {
  simpleKernel,
  type UniformFields,
  workgroupPerItem,
  type WorkgroupPerItemOptions,
  workgroupReduceWgsl,
} from "./common.ts";

/**
 * WGSL `fn attend(qo, first, len, kc, oo, g)`: head of width D at `${q}[qo…]` attends over key rows
 * first … first+len−1 of `K`/`Vals` (rows `u.width` wide, head columns from kc), and writes g · result to
 * `${out}[oo…]`. `q` and `out` may name the same read_write buffer (each call reads its head before
 * writing it).
 */
export function attendWgsl(D: number, q: string, out: string): string {
  return `fn attend(qo: u32, first: u32, len: u32, kc: u32, oo: u32, g: f32) {
  var qv: array<f32, ${D}>;
  var acc: array<f32, ${D}>;
  let scale = ${1 / Math.sqrt(D)};
  for (var c = 0u; c < ${D}u; c = c + 1u) { qv[c] = ${q}[qo + c] * scale; acc[c] = 0.0; }
  var m = -3.0e38;
  var l = 0.0;
  for (var s = 0u; s < len; s = s + 1u) {
    let r = (first + s) * u.width + kc;
    var sc = 0.0;
    for (var c = 0u; c < ${D}u; c = c + 1u) { sc = sc + qv[c] * K[r + c]; }
    let mn = max(m, sc);
    let a = exp(m - mn);
    let p = exp(sc - mn);
    l = l * a + p;
    for (var c = 0u; c < ${D}u; c = c + 1u) { acc[c] = acc[c] * a + p * Vals[r + c]; }
    m = mn;
  }
  let w = g / l;
  for (var c = 0u; c < ${D}u; c = c + 1u) { ${out}[oo + c] = acc[c] * w; }
}`;
}

/** Threads of the workgroup that shares one (token, head) in {@linkcode attendGroupWgsl}. */
const _ATTEND_THREADS = 64;
/** The threads of {@linkcode attendGroupKernel}'s workgroup (for bodies that share work among them). */
export const ATTEND_GROUP_THREADS = _ATTEND_THREADS;

/**
 * Whether {@linkcode attendGroupWgsl} fits the device: its workgroup memory holds the scores of `T` cache
 * rows, the query head of width D, and 64 partial sums.
 */
export function attendGroupFits(ctx: GpuContext, T: number, D: number): boolean {
  return (T + D + _ATTEND_THREADS + 1) * 4 <= ctx.limits.maxComputeWorkgroupStorageSize;
}

/**
 * WGSL `fn attendGroup(qo, first, len, kc, oo, g, t)`: {@linkcode attendWgsl}'s attention, computed by all
 * 64 threads of a workgroup together (thread `t`; every thread must call it, with the same arguments, in
 * uniform control flow). Thread t scores keys t, t + 64, … into workgroup memory; max and sum are tree
 * reductions in a fixed order; the output column c is summed by 64 / D key groups (D dividing 64) or by one
 * thread per column. `T` is the cache length (the most keys), `q`/`out` as in attendWgsl.
 */
export function attendGroupWgsl(D: number, T: number, q: string, out: string): string {
  const W = _ATTEND_THREADS, G = D <= W && W % D === 0 ? W / D : 1;
  const output = G > 1
    ? `  let c = t % ${D}u; let grp = t / ${D}u;
  var acc = 0.0;
  for (var s = grp; s < len; s = s + ${G}u) { acc = acc + a_s[s] * Vals[(first + s) * u.width + kc + c]; }
  a_red[t] = acc;
  workgroupBarrier();
  if (t < ${D}u) {
    var o = 0.0;
    for (var k = 0u; k < ${G}u; k = k + 1u) { o = o + a_red[k * ${D}u + t]; }
    ${out}[oo + t] = o * w;
  }`
    : `  for (var c = t; c < ${D}u; c = c + ${W}u) {
    var acc = 0.0;
    for (var s = 0u; s < len; s = s + 1u) { acc = acc + a_s[s] * Vals[(first + s) * u.width + kc + c]; }
    ${out}[oo + c] = acc * w;
  }`;
  return `var<workgroup> a_q: array<f32, ${D}>;
var<workgroup> a_s: array<f32, ${T}>;
var<workgroup> a_red: array<f32, ${W}>;
${workgroupReduceWgsl("a_max", W, "a_red", "max")}
${workgroupReduceWgsl("a_sum", W, "a_red", "sum")}
fn attendGroup(qo: u32, first: u32, len: u32, kc: u32, oo: u32, g: f32, t: u32) {
  for (var c = t; c < ${D}u; c = c + ${W}u) { a_q[c] = ${q}[qo + c] * ${1 / Math.sqrt(D)}; }
  workgroupBarrier();
  var m = -3.0e38;
  for (var s = t; s < len; s = s + ${W}u) {
    let r = (first + s) * u.width + kc;
    var sc = 0.0;
    for (var c = 0u; c < ${D}u; c = c + 1u) { sc = sc + a_q[c] * K[r + c]; }
    a_s[s] = sc;
    m = max(m, sc);
  }
  let mx = a_max(m, t);
  var l = 0.0;
  for (var s = t; s < len; s = s + ${W}u) { let p = exp(a_s[s] - mx); a_s[s] = p; l = l + p; }
  let w = g / a_sum(l, t);
${output}
}`;
}

/**
 * A kernel with a workgroup per item (`items`, the first uniform field `n`) whose `body` calls attendGroup:
 * it sees `wi` (the item) and `t` (the thread). `prelude` adds workgroup variables or helpers.
 */
export function attendGroupKernel(
  ctx: GpuContext,
  o: Omit<WorkgroupPerItemOptions, "threads"> & { D: number; T: number; q: string; out: string },
): KernelCall {
  return workgroupPerItem(ctx, {
    ...o,
    threads: _ATTEND_THREADS,
    prelude: `${attendGroupWgsl(o.D, o.T, o.q, o.out)}\n${o.prelude ?? ""}`,
  });
}

/**
 * Copies rows k, v (N, width) into cache rows pos … pos+N−1; rows past the cache's end are dropped (the
 * caller keeps pos + N ≤ T).
 */
export function kvWrite(
  ctx: GpuContext,
  o: { k: GpuTensor; v: GpuTensor; kcache: GpuTensor; vcache: GpuTensor; pos: GpuTensor },
): KernelCall {
  const width = o.k.shape.at(-1)!, total = o.kcache.size;
  if (o.v.size !== o.k.size || o.vcache.size !== total || o.kcache.shape.at(-1) !== width) {
    throw new RangeError(
      `Cannot write the KV cache: k [${o.k.shape}], v [${o.v.shape}], caches [${o.kcache.shape}] and ` +
        `[${o.vcache.shape}] disagree`,
    );
  }
  return simpleKernel(ctx, {
    label: "kv_write",
    bindings: [
      { name: "k", tensor: o.k },
      { name: "v", tensor: o.v },
      { name: "kc", tensor: o.kcache, write: true },
      { name: "vc", tensor: o.vcache, write: true },
      { name: "pos", tensor: o.pos },
    ],
    fields: [["n", "u32", o.k.size], ["width", "u32", width], ["total", "u32", total]],
    invocations: o.k.size,
    body: `  let at = pos[0] * u.width + i;
  if (at < u.total) { kc[at] = k[i]; vc[at] = v[i]; }`,
  });
}

/** Options of {@linkcode attentionCached}. */
export interface CachedAttentionOptions {
  q: GpuTensor; // (N, H·D)
  k: GpuTensor; // (N, Hkv·D) new rows
  v: GpuTensor;
  kcache: GpuTensor; // (T, Hkv·D), written at pos…
  vcache: GpuTensor;
  pos: GpuTensor; // (1,) u32: position of the first new row
  o: GpuTensor; // (N, H·D), written
  H: number;
  Hkv: number;
  D: number;
}

/**
 * Writes the new keys and values into the caches, then o = attention of every (token, head) over the cached
 * rows up to its position: one dispatch for one token (the attention writes the row it reads), two for more
 * (kv_write, then the attention).
 *
 * @example
 * ```ts ignore
 * const calls = attentionCached(ctx, { q, k, v, kcache, vcache, pos, o, H: 8, Hkv: 2, D: 16 });
 * ```
 */
export function attentionCached(ctx: GpuContext, o: CachedAttentionOptions): KernelCall[] {
  const { H, Hkv, D } = o, N = o.q.shape[0]!;
  if (o.q.size !== N * H * D || o.o.size !== N * H * D || o.k.size !== N * Hkv * D) {
    throw new RangeError(
      `Cannot run cached attention: q [${o.q.shape}], k [${o.k.shape}], o [${o.o.shape}] do not fit ` +
        `H ${H}, Hkv ${Hkv}, D ${D}`,
    );
  }
  const T = o.kcache.size / (Hkv * D);
  // One token (decoding): the attention dispatch writes the new cache row itself (see _rowWriteWgsl).
  const fold = N === 1;
  const bindings = [
    { name: "Q", tensor: o.q },
    { name: "K", tensor: o.kcache, write: fold },
    { name: "Vals", tensor: o.vcache, write: fold },
    { name: "pos", tensor: o.pos },
    { name: "O", tensor: o.o, write: true },
    ...(fold ? [{ name: "Knew", tensor: o.k }, { name: "Vnew", tensor: o.v }] : []),
  ];
  const fields: UniformFields = [["n", "u32", N * H], ["H", "u32", H], ["Hkv", "u32", Hkv], [
    "width",
    "u32",
    Hkv * D,
  ], ["T", "u32", T]];
  const group = ctx.profile === "gpu" && attendGroupFits(ctx, T, D);
  const attend = group
    ? attendGroupKernel(ctx, {
      label: "attention_cached",
      bindings,
      fields,
      items: N * H,
      D,
      T,
      q: "Q",
      out: "O",
      body: `  let tok = wi / u.H; let h = wi % u.H;
${fold ? `${_rowWriteWgsl(D, "t", _ATTEND_THREADS)}\n  storageBarrier();` : ""}
  attendGroup(wi * ${D}u, 0u, pos[0] + tok + 1u, (h % u.Hkv) * ${D}u, wi * ${D}u, 1.0, t);`,
    })
    : simpleKernel(ctx, {
      label: "attention_cached",
      bindings,
      fields,
      invocations: N * H,
      workgroup: 32,
      prelude: attendWgsl(D, "Q", "O"),
      body: `  let t = i / u.H; let h = i % u.H;
${fold ? _rowWriteWgsl(D, "0u", 1) : ""}
  attend(i * ${D}u, 0u, pos[0] + t + 1u, (h % u.Hkv) * ${D}u, i * ${D}u, 1.0);`,
    });
  return fold ? [attend] : [kvWrite(ctx, o), attend];
}

/**
 * WGSL writing the one new token's key and value columns of query head h's kv head into cache row pos (from
 * `Knew`/`Vnew`), columns first, first + step, …: each invocation (cpu-simd) or workgroup (gpu, then a
 * storage barrier) writes the very columns it reads next, so the kv_write dispatch is not needed. Query heads
 * sharing a kv head write the same values to the same places.
 */
function _rowWriteWgsl(D: number, first: string, step: number): string {
  return `  if (pos[0] < u.T) {
    let kv = (h % u.Hkv) * ${D}u;
    for (var c = ${first}; c < ${D}u; c = c + ${step}u) {
      K[pos[0] * u.width + kv + c] = Knew[kv + c]; Vals[pos[0] * u.width + kv + c] = Vnew[kv + c];
    }
  }`;
}

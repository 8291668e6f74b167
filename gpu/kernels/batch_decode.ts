/**
 * Batched decoding (docs/design.md §10, "Batched decoding"): B sequences decoded together, one new token per
 * sequence per step, each at its own position and with its own KV cache. Float64 twin:
 * core/ref/batch_decode.ts.
 *
 * The caches of the B sequences are stacked, (B·T, width): sequence b owns rows b·T …. Positions live in a
 * GPU buffer `pos` (B,) u32, so one prepared graph decodes every step.
 *
 * - {@linkcode attentionCachedBatch}: one invocation (cpu-simd) or one 64-thread workgroup (gpu) per (token,
 *   query head): it first writes its KV head's columns of the token's key and value into cache row
 *   b·T + pos[b] (query heads sharing a KV head write the same values), then attends over rows b·T …
 *   b·T + pos[b]. One dispatch.
 * - {@linkcode moaAttentionBatch}: sparse MoA over the B tokens. `kv_write_batch` fills the caches, then the
 *   pair-list pipeline of the sparse MoE MLP (moe_sparse.ts: compaction, grouped matmuls by indirect
 *   dispatch) with `moa_attend_batch` between its matmuls: each routed (token, expert) pair's heads attend
 *   over that token's own sequence cache, scaled by the gate. Unrouted experts' weights are never read.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { ATTEND_GROUP_THREADS, attendGroupFits, attendGroupKernel, attendWgsl } from "./cached_attention.ts";
import { type Binding, simpleKernel, type UniformFields } from "./common.ts";
import type { MoeScratch, MoeTile, RouteLayout } from "./moe_common.ts";
import { sparsePipeline } from "./moe_sparse.ts";

/** The stacked caches of a batched decoding step and the sequences' positions. */
export interface BatchCache {
  kcache: GpuTensor; // (B·T, width)
  vcache: GpuTensor;
  pos: GpuTensor; // (B,) u32, each < T
  T: number; // rows per sequence
}

/** Throws unless k, v (B, width) and the caches (B·T, width) and pos (B,) agree. */
function _checkCache(what: string, k: GpuTensor, v: GpuTensor, c: BatchCache, width: number): number {
  const B = c.pos.size;
  const ok = k.size === B * width && v.size === B * width && c.kcache.size === B * c.T * width &&
    c.vcache.size === c.kcache.size && c.pos.dtype === "u32" && Number.isInteger(c.T) && c.T >= 1;
  if (!ok) {
    throw new RangeError(
      `Cannot run ${what}: k [${k.shape}], v [${v.shape}], caches [${c.kcache.shape}] and [${c.vcache.shape}], ` +
        `pos [${c.pos.shape}] do not fit B ${B} sequences of T ${c.T} rows of width ${width}`,
    );
  }
  return B;
}

/**
 * `kv_write_batch`: row b of k, v (B, width) into cache row b·T + pos[b]; a position ≥ T writes nothing
 * (the caller keeps pos < T).
 */
export function kvWriteBatch(
  ctx: GpuContext,
  o: { k: GpuTensor; v: GpuTensor } & BatchCache,
): KernelCall {
  const width = o.k.shape.at(-1)!;
  _checkCache("kv_write_batch", o.k, o.v, o, width);
  return simpleKernel(ctx, {
    label: "kv_write_batch",
    bindings: [
      { name: "k", tensor: o.k },
      { name: "v", tensor: o.v },
      { name: "kc", tensor: o.kcache, write: true },
      { name: "vc", tensor: o.vcache, write: true },
      { name: "pos", tensor: o.pos },
    ],
    fields: [["n", "u32", o.k.size], ["width", "u32", width], ["T", "u32", o.T]],
    invocations: o.k.size,
    body: `  let b = i / u.width; let p = pos[b];
  if (p < u.T) { let at = (b * u.T + p) * u.width + i % u.width; kc[at] = k[i]; vc[at] = v[i]; }`,
  });
}

/** Options of {@linkcode attentionCachedBatch}. */
export interface CachedAttentionBatchOptions extends BatchCache {
  q: GpuTensor; // (B, H·D)
  k: GpuTensor; // (B, Hkv·D) new rows
  v: GpuTensor;
  o: GpuTensor; // (B, H·D), written
  H: number;
  Hkv: number;
  D: number;
}

/**
 * WGSL writing query head h's KV-head columns of token b's key and value (`Knew`/`Vnew` row b) into cache
 * row b·T + p, columns first, first + step, …: the columns this invocation (or workgroup, after a storage
 * barrier) reads next.
 */
function _rowWriteWgsl(D: number, first: string, step: number): string {
  return `  if (p < u.T) {
    let kv = (h % u.Hkv) * ${D}u;
    for (var c = ${first}; c < ${D}u; c = c + ${step}u) {
      let at = (b * u.T + p) * u.width + kv + c;
      K[at] = Knew[b * u.width + kv + c]; Vals[at] = Vnew[b * u.width + kv + c];
    }
  }`;
}

/**
 * Batched decoding attention: each token's key and value enter its sequence's cache at its position, then
 * every (token, head) attends over its sequence's rows up to that position. One dispatch.
 *
 * @example
 * ```ts ignore
 * const calls = attentionCachedBatch(ctx, { q, k, v, kcache, vcache, pos, T: 64, o, H: 8, Hkv: 2, D: 16 });
 * ```
 */
export function attentionCachedBatch(ctx: GpuContext, o: CachedAttentionBatchOptions): KernelCall[] {
  const { H, Hkv, D, T } = o, width = Hkv * D;
  const B = _checkCache("batched cached attention", o.k, o.v, o, width);
  if (o.q.size !== B * H * D || o.o.size !== B * H * D) {
    throw new RangeError(
      `Cannot run batched cached attention: q [${o.q.shape}], o [${o.o.shape}] are not (B ${B}, H·D ${
        H * D
      })`,
    );
  }
  const bindings: Binding[] = [
    { name: "Q", tensor: o.q },
    { name: "K", tensor: o.kcache, write: true },
    { name: "Vals", tensor: o.vcache, write: true },
    { name: "pos", tensor: o.pos },
    { name: "O", tensor: o.o, write: true },
    { name: "Knew", tensor: o.k },
    { name: "Vnew", tensor: o.v },
  ];
  const fields: UniformFields = [
    ["n", "u32", B * H],
    ["H", "u32", H],
    ["Hkv", "u32", Hkv],
    ["width", "u32", width],
    ["T", "u32", T],
  ];
  // Rows b·T … b·T + min(p, T − 1): a position past the end (never fed) cannot read another sequence.
  const window = `b * u.T, min(p, u.T - 1u) + 1u, (h % u.Hkv) * ${D}u`;
  if (ctx.profile === "gpu" && attendGroupFits(ctx, T, D)) {
    return [attendGroupKernel(ctx, {
      label: "attention_cached_batch",
      bindings,
      fields,
      items: B * H,
      D,
      T,
      q: "Q",
      out: "O",
      body: `  let b = wi / u.H; let h = wi % u.H; let p = pos[b];
${_rowWriteWgsl(D, "t", ATTEND_GROUP_THREADS)}
  storageBarrier();
  attendGroup(wi * ${D}u, ${window}, wi * ${D}u, 1.0, t);`,
    })];
  }
  return [simpleKernel(ctx, {
    label: "attention_cached_batch",
    bindings,
    fields,
    invocations: B * H,
    workgroup: 32,
    prelude: attendWgsl(D, "Q", "O"),
    body: `  let b = i / u.H; let h = i % u.H; let p = pos[b];
${_rowWriteWgsl(D, "0u", 1)}
  attend(i * ${D}u, ${window}, i * ${D}u, 1.0);`,
  })];
}

/** Options of {@linkcode moaAttentionBatch}. */
export interface MoaBatchOptions {
  x: GpuTensor; // (B, d)
  gate: GpuTensor; // (B, E): probability ⊙ mask; 0 = not routed
  wq: GpuTensor; // (d, E·G·D)
  wo: GpuTensor; // (E·G·D, d)
  k: GpuTensor; // (B, G·D): the tokens' keys (shared by every expert)
  v: GpuTensor;
  y: GpuTensor; // (B, d), written
  /** (B, d), added to y by the gather (batched decoding's fused residual add). */
  residual?: GpuTensor;
  E: number;
  G: number; // heads per expert (= KV heads)
  D: number;
  cache: BatchCache;
  /** As for the sparse MoE MLP (gpu/kernels/moe_common.ts), with N = B and h = G·D. */
  scratch: MoeScratch;
  tile?: MoeTile;
}

/**
 * Sparse MoA of a batched decoding step: the keys and values enter the caches (`kv_write_batch`), then the
 * routed pairs' query heads (grouped matmul over the pair list), `moa_attend_batch`, and the output
 * projection of the routed pairs only, summed per token in expert order.
 *
 * @example
 * ```ts ignore
 * const scratch = moeScratch(ctx, { N: B, d, E, h: G * D });
 * const calls = moaAttentionBatch(ctx, { x, gate, wq, wo, k, v, y, E, G, D, cache, scratch });
 * ```
 */
export function moaAttentionBatch(ctx: GpuContext, o: MoaBatchOptions): KernelCall[] {
  const w = o.G * o.D;
  const B = _checkCache("batched sparse MoA", o.k, o.v, o.cache, w);
  if (o.gate.shape[0] !== B) {
    throw new RangeError(`Cannot run batched sparse MoA: gate [${o.gate.shape}] is not (B ${B}, E ${o.E})`);
  }
  const calls = sparsePipeline(
    ctx,
    {
      x: o.x,
      gate: o.gate,
      w1: o.wq,
      w2: o.wo,
      y: o.y,
      E: o.E,
      h: w,
      scratch: o.scratch,
      tile: o.tile,
      ...(o.residual ? { residual: o.residual } : {}),
    },
    "MoA",
    (L) => _attend(ctx, o, L),
  );
  return [kvWriteBatch(ctx, { k: o.k, v: o.v, ...o.cache }), ...calls];
}

/**
 * `moa_attend_batch`: per (pair, head), the pair's token and expert from the pair list; its query head
 * attends over the token's sequence cache rows up to its position and is scaled by the gate, in place. On
 * the `gpu` profile a 64-thread workgroup per (pair, head), whose early return past the routed pairs is
 * read through workgroup memory so that it is uniform (barriers follow).
 */
function _attend(ctx: GpuContext, o: MoaBatchOptions, L: RouteLayout): KernelCall {
  const { E, G, D } = o, w = G * D, B = o.gate.shape[0]!, T = o.cache.T;
  const bindings: Binding[] = [
    { name: "QO", tensor: o.scratch.hidden, write: true },
    { name: "K", tensor: o.cache.kcache },
    { name: "Vals", tensor: o.cache.vcache },
    { name: "R", tensor: o.scratch.route },
    { name: "gate", tensor: o.gate },
    { name: "pos", tensor: o.cache.pos },
  ];
  const fields: UniformFields = [
    ["n", "u32", B * E * G],
    ["E", "u32", E],
    ["G", "u32", G],
    ["width", "u32", w],
    ["T", "u32", T],
    ["eoff", "u32", L.eoff],
    ["tok", "u32", L.tok],
  ];
  // The pair's token and expert (found in the expert segments of the pair list).
  const find = `let tok = R[u.tok + p];
  var e = 0u;
  while (e + 1u < u.E && R[u.eoff + e + 1u] <= p) { e = e + 1u; }`;
  if (ctx.profile === "gpu" && attendGroupFits(ctx, T, D)) {
    return attendGroupKernel(ctx, {
      label: "moa_attend_batch",
      bindings,
      fields,
      items: B * E * G,
      D,
      T,
      q: "QO",
      out: "QO",
      prelude: "var<workgroup> a_pair: vec4<u32>;\nvar<workgroup> a_gate: f32;",
      body: `  let p = wi / u.G; let j = wi % u.G;
  if (t == 0u) {
    if (p < R[u.eoff + u.E]) {
      ${find}
      a_pair = vec4<u32>(1u, tok, min(pos[tok], u.T - 1u) + 1u, 0u);
      a_gate = gate[tok * u.E + e];
    } else {
      a_pair = vec4<u32>(0u);
    }
  }
  let pair = workgroupUniformLoad(&a_pair);
  let g = workgroupUniformLoad(&a_gate);
  if (pair.x == 0u) { return; }
  let at = p * u.width + j * ${D}u;
  attendGroup(at, pair.y * u.T, pair.z, j * ${D}u, at, g, t);`,
    });
  }
  return simpleKernel(ctx, {
    label: "moa_attend_batch",
    bindings,
    fields,
    invocations: B * E * G,
    workgroup: 32,
    prelude: attendWgsl(D, "QO", "QO"),
    body: `  let p = i / u.G; let j = i % u.G;
  if (p >= R[u.eoff + u.E]) { return; }
  ${find}
  let at = p * u.width + j * ${D}u;
  attend(at, tok * u.T, min(pos[tok], u.T - 1u) + 1u, j * ${D}u, at, gate[tok * u.E + e]);`,
  });
}

/**
 * Causal grouped-query attention: query head h reads KV head h mod Hkv. Layout q, o (B, T, Hq, D);
 * k, v (B, T, Hkv, D); lse (B, Hq, T). Forward: one invocation per query row with an online softmax, the
 * row of o held in registers. Backward: delta = dO·o per row, then dq per query row and dk/dv per key row
 * (summing over the query heads that share it) — deterministic, no atomics. On a software adapter each
 * invocation takes a block of rows that share every row it loads, with the same arithmetic per row.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { GpuLimitError } from "../errors.ts";
import { type Binding, loopBudget, simpleKernel, type UniformFields } from "./common.ts";

/** Largest head dimension the register-held rows support. */
export const MAX_HEAD_DIM = 256;

function _dims(q: GpuTensor, k: GpuTensor): UniformFields {
  const [B, T, Hq, D] = q.shape as [number, number, number, number];
  if (D > MAX_HEAD_DIM) {
    throw new GpuLimitError(`Cannot run attention: head_dim ${D} exceeds ${MAX_HEAD_DIM}`);
  }
  return [["n", "u32", B * Hq * T], ["T", "u32", T], ["Hq", "u32", Hq], ["Hkv", "u32", k.shape[2]!], [
    "scale",
    "f32",
    1 / Math.sqrt(D),
  ]];
}

// i = ((b·Hq + h)·T + t): neighbouring invocations share (b, h).
const _ROW = `  let t = i % u.T; let h = (i / u.T) % u.Hq; let bb = i / (u.T * u.Hq); let kh = h % u.Hkv;
  let qo = ((bb * u.T + t) * u.Hq + h) * D;`;

/**
 * How rows of D floats are read: on cpu-simd with D % 4 = 0 as D/4 vec4s (llvmpipe pays per load, not per
 * float), else as floats. In the kernels `D` is the row length in these units, `V` their type.
 */
interface _Rows {
  V: "f32" | "vec4<f32>";
  DV: number;
  dot: (a: string, b: string) => string;
  prelude: string;
  /** WGSL type of one row held in private memory (DV values of type V). */
  row: string;
}

function _rows(ctx: GpuContext, D: number): _Rows {
  const vec = ctx.profile !== "gpu" && D % 4 === 0;
  const V = vec ? "vec4<f32>" : "f32", DV = vec ? D / 4 : D;
  return {
    V,
    DV,
    dot: vec ? (a, b) => `dot(${a}, ${b})` : (a, b) => `${a} * ${b}`,
    prelude: `const D = ${DV}u;`,
    row: `array<${V}, ${DV}>`,
  };
}

/** The forward's bindings: q, k, v read as rows of V; o and lse written. */
function _forwardBindings(
  o: { q: GpuTensor; k: GpuTensor; v: GpuTensor; o: GpuTensor; lse: GpuTensor },
  V: "f32" | "vec4<f32>",
): Binding[] {
  return [
    { name: "q", tensor: o.q, type: V },
    { name: "k", tensor: o.k, type: V },
    { name: "v", tensor: o.v, type: V },
    { name: "o", tensor: o.o, write: true, type: V },
    { name: "lse", tensor: o.lse, write: true },
  ];
}

/** o and lse from q, k, v. */
export function attention(
  ctx: GpuContext,
  o: { q: GpuTensor; k: GpuTensor; v: GpuTensor; o: GpuTensor; lse: GpuTensor },
): KernelCall {
  const D = o.q.shape[3]!, fields = _dims(o.q, o.k), R = _rows(ctx, D), V = R.V;
  if (_blocked(ctx, D)) return _attentionBlocked(ctx, o);
  _attentionBudget(ctx, "attention", o.q, o.k, 2 * D + 1);
  return simpleKernel(ctx, {
    label: "attention",
    bindings: _forwardBindings(o, V),
    fields,
    invocations: fields[0]![2],
    workgroup: _wg(ctx),
    prelude: R.prelude,
    body: `${_ROW}
  var qr: ${R.row}; var acc: ${R.row};
  for (var j = 0u; j < D; j = j + 1u) { qr[j] = q[qo + j] * u.scale; acc[j] = ${V}(0.0); }
  var m = -3.0e38; var s = 0.0;
  for (var s_u = 0u; s_u <= t; s_u = s_u + 1u) {
    let ko = ((bb * u.T + s_u) * u.Hkv + kh) * D;
    var sc = 0.0;
    for (var j = 0u; j < D; j = j + 1u) { sc = sc + ${R.dot("qr[j]", "k[ko + j]")}; }
    let mn = max(m, sc); let corr = exp(m - mn); let p = exp(sc - mn);
    s = s * corr + p;
    for (var j = 0u; j < D; j = j + 1u) { acc[j] = acc[j] * corr + p * v[ko + j]; }
    m = mn;
  }
  let inv = 1.0 / s;
  for (var j = 0u; j < D; j = j + 1u) { o[qo + j] = acc[j] * inv; }
  lse[i] = m + log(s);`,
  });
}

/** dk/dv of key row ko: the key and value rows in registers and zeroed accumulators. */
const _dkvInit = (R: _Rows) =>
  `  var kr: ${R.row}; var vr: ${R.row}; var dk_acc: ${R.row}; var dv_acc: ${R.row};
  for (var j = 0u; j < D; j = j + 1u) { kr[j] = k[ko + j]; vr[j] = v[ko + j]; dk_acc[j] = ${R.V}(0.0); dv_acc[j] = ${R.V}(0.0); }`;
/** dk/dv of key row ko: one query row (t, head h) added to the accumulators of {@linkcode _dkvInit}. */
const _dkvRow = (R: _Rows) =>
  `    let qo = ((bb * u.T + t) * u.Hq + h) * D; let row = (bb * u.Hq + h) * u.T + t;
    var sc = 0.0; var dp = 0.0;
    for (var j = 0u; j < D; j = j + 1u) { sc = sc + ${R.dot("q[qo + j]", "kr[j]")}; dp = dp + ${
    R.dot("dO[qo + j]", "vr[j]")
  }; }
    let p = exp(sc * u.scale - lse[row]);
    let ds = p * (dp - delta[row]) * u.scale;
    for (var j = 0u; j < D; j = j + 1u) { dk_acc[j] = dk_acc[j] + ds * q[qo + j]; dv_acc[j] = dv_acc[j] + p * dO[qo + j]; }`;

/** Options of {@linkcode attentionBackward}. */
export interface AttentionBackwardOptions {
  q: GpuTensor;
  k: GpuTensor;
  v: GpuTensor;
  o: GpuTensor;
  lse: GpuTensor;
  dO: GpuTensor;
  dq: GpuTensor;
  dk: GpuTensor;
  dv: GpuTensor;
  delta: GpuTensor;
  /**
   * Scratch of {@linkcode attentionDkvScratch} elements: with it (on the `gpu` profile), dk and dv are
   * summed from per-(query head, query chunk) partials instead of one invocation per key row.
   */
  partial?: GpuTensor;
}

/** dq, dk, dv from the forward's o and lse and the output gradient dO; delta is scratch (B, Hq, T). */
export function attentionBackward(ctx: GpuContext, o: AttentionBackwardOptions): KernelCall[] {
  const D = o.q.shape[3]!, fields = _dims(o.q, o.k);
  // The gpu profile's split dk/dv reads and writes floats; the rest follow _rows.
  const R = _rows(ctx, D);
  const blocked = _blocked(ctx, D), split = ctx.profile === "gpu" && !!o.partial;
  if (!blocked) _attentionBudget(ctx, "attention_backward_dq", o.q, o.k, 3 * D + 1);
  if (!blocked && !split) {
    _attentionBudget(ctx, "attention_backward_dkv", o.q, o.k, (2 * D + 1) * (o.q.shape[2]! / o.k.shape[2]!));
  }
  const delta = _deltaKernel(ctx, o, fields, R);
  const reads = _gradReads(o, R.V);
  if (blocked) return [delta, _dqBlocked(ctx, o, reads), _dkvBlocked(ctx, o, reads)];
  const dq = _dqKernel(ctx, o, fields, reads, R);
  if (split) return [delta, dq, ..._dkvSplit(ctx, o, fields, reads, R)];
  return [delta, dq, _dkvKernel(ctx, o, fields, reads, R)];
}

/** `attention_backward_delta`: delta = dO·o per query row. */
function _deltaKernel(
  ctx: GpuContext,
  o: AttentionBackwardOptions,
  fields: UniformFields,
  R: _Rows,
): KernelCall {
  const V = R.V;
  return simpleKernel(ctx, {
    label: "attention_backward_delta",
    bindings: [{ name: "o", tensor: o.o, type: V }, { name: "dO", tensor: o.dO, type: V }, {
      name: "delta",
      tensor: o.delta,
      write: true,
    }],
    fields,
    invocations: fields[0]![2],
    workgroup: _wg(ctx),
    prelude: R.prelude,
    body: `${_ROW}
  var acc = 0.0;
  for (var j = 0u; j < D; j = j + 1u) { acc = acc + ${R.dot("o[qo + j]", "dO[qo + j]")}; }
  delta[i] = acc;`,
  });
}

/** The six tensors both gradient kernels read: q, k, v, lse, dO, delta. */
function _gradReads(o: AttentionBackwardOptions, V: "f32" | "vec4<f32>"): Binding[] {
  return [
    { name: "q", tensor: o.q, type: V },
    { name: "k", tensor: o.k, type: V },
    { name: "v", tensor: o.v, type: V },
    { name: "lse", tensor: o.lse },
    { name: "dO", tensor: o.dO, type: V },
    { name: "delta", tensor: o.delta },
  ];
}

/** `attention_backward_dq`, one query row per invocation: its row of dq summed over the key rows up to it. */
function _dqKernel(
  ctx: GpuContext,
  o: AttentionBackwardOptions,
  fields: UniformFields,
  reads: readonly Binding[],
  R: _Rows,
): KernelCall {
  const V = R.V;
  return simpleKernel(ctx, {
    label: "attention_backward_dq",
    bindings: [...reads, { name: "dq", tensor: o.dq, write: true, type: V }],
    fields,
    invocations: fields[0]![2],
    workgroup: _wg(ctx),
    prelude: R.prelude,
    body: `${_ROW}
  var qr: ${R.row}; var dor: ${R.row}; var acc: ${R.row};
  for (var j = 0u; j < D; j = j + 1u) { qr[j] = q[qo + j]; dor[j] = dO[qo + j]; acc[j] = ${V}(0.0); }
  let l = lse[i]; let dl = delta[i];
  for (var s_u = 0u; s_u <= t; s_u = s_u + 1u) {
    let ko = ((bb * u.T + s_u) * u.Hkv + kh) * D;
    var sc = 0.0; var dp = 0.0;
    for (var j = 0u; j < D; j = j + 1u) { sc = sc + ${R.dot("qr[j]", "k[ko + j]")}; dp = dp + ${
      R.dot("dor[j]", "v[ko + j]")
    }; }
    let ds = exp(sc * u.scale - l) * (dp - dl) * u.scale;
    for (var j = 0u; j < D; j = j + 1u) { acc[j] = acc[j] + ds * k[ko + j]; }
  }
  for (var j = 0u; j < D; j = j + 1u) { dq[qo + j] = acc[j]; }`,
  });
}

/**
 * `attention_backward_dkv`, one key row per invocation: its rows of dk and dv summed over the query heads
 * sharing its kv head, then the query rows from it on.
 */
function _dkvKernel(
  ctx: GpuContext,
  o: AttentionBackwardOptions,
  fields: UniformFields,
  reads: readonly Binding[],
  R: _Rows,
): KernelCall {
  const V = R.V, [B, T] = o.q.shape as [number, number];
  const kvRows = B * o.k.shape[2]! * T;
  return simpleKernel(ctx, {
    label: "attention_backward_dkv",
    bindings: [...reads, { name: "dk", tensor: o.dk, write: true, type: V }, {
      name: "dv",
      tensor: o.dv,
      write: true,
      type: V,
    }],
    fields: [["n", "u32", kvRows], ...fields.slice(1)],
    invocations: kvRows,
    workgroup: 8,
    prelude: R.prelude,
    body: `  let s_u = i % u.T; let kh = (i / u.T) % u.Hkv; let bb = i / (u.T * u.Hkv);
  let ko = ((bb * u.T + s_u) * u.Hkv + kh) * D;
${_dkvInit(R)}
  for (var h = kh; h < u.Hq; h = h + u.Hkv) {
    for (var t = s_u; t < u.T; t = t + 1u) {
${_dkvRow(R)}
    }
  }
  for (var j = 0u; j < D; j = j + 1u) { dk[ko + j] = dk_acc[j]; dv[ko + j] = dv_acc[j]; }`,
  });
}

/**
 * Checks one invocation's loop count, T rows of `perRow` iterations (plus the row loads and stores, unless
 * `unrolled`: the blocked kernels write the row loops out), against llvmpipe's loop limit.
 */
function _attentionBudget(
  ctx: GpuContext,
  what: string,
  q: GpuTensor,
  k: GpuTensor,
  perRow: number,
  unrolled = false,
): void {
  const [, T, , D] = q.shape as [number, number, number, number];
  loopBudget(
    ctx,
    T * perRow + (unrolled ? 0 : 3 * D),
    `${what} (T ${T}, head_dim ${D}, ${q.shape[2]} query / ${k.shape[2]} kv heads)`,
    "Lower data.seq_len or the head dimension",
  );
}

/** Invocations per workgroup of the row kernels: 8 lanes on cpu-simd, two warps on a real GPU. */
function _wg(ctx: GpuContext): number {
  return ctx.profile === "gpu" ? 64 : 8;
}

/** Query rows per chunk of the split dk/dv kernel. */
const _DKV_CHUNK = 16;

/**
 * Elements of the dk/dv partials for q (B, T, Hq, D): two planes (dk, dv) of one (B, T, Hq, D) block per
 * chunk of {@linkcode _DKV_CHUNK} query rows.
 */
export function attentionDkvScratch(qShape: readonly number[]): number {
  const [B, T, Hq, D] = qShape as [number, number, number, number];
  return 2 * Math.ceil(T / _DKV_CHUNK) * B * T * Hq * D;
}

/**
 * dk and dv on a real GPU. A key row's gradient sums over every later query row of every query head that
 * reads it; one invocation per key row (the cpu-simd form) leaves a GPU with B·Hkv·T threads, the first
 * ones walking all T queries. Here `attention_backward_dkv_part` runs one invocation per (chunk of 16
 * query rows, batch, key row, query head) into `partial`, and `attention_backward_dkv_sum` adds the
 * chunks and the heads sharing the key head, in a fixed order.
 */
function _dkvSplit(
  ctx: GpuContext,
  o: { q: GpuTensor; k: GpuTensor; dk: GpuTensor; dv: GpuTensor; partial?: GpuTensor },
  fields: UniformFields,
  reads: readonly Binding[],
  R: _Rows,
): KernelCall[] {
  if (o.partial!.size < attentionDkvScratch(o.q.shape)) {
    throw new RangeError(
      `Cannot run attention backward: partial ("${o.partial!.label}") has ${
        o.partial!.size
      } elements, needs ${attentionDkvScratch(o.q.shape)}`,
    );
  }
  return [_dkvPartKernel(ctx, o, fields, reads, R), _dkvSumKernel(ctx, o)];
}

/** The sizes of the split dk/dv: query chunks, and the elements of one (B, T, Hq, D) plane of partials. */
function _dkvSplitDims(o: { q: GpuTensor; k: GpuTensor }) {
  const [B, T, Hq, D] = o.q.shape as [number, number, number, number], Hkv = o.k.shape[2]!;
  return { B, T, Hq, D, Hkv, chunks: Math.ceil(T / _DKV_CHUNK), plane: B * T * Hq * D };
}

/**
 * `attention_backward_dkv_part`: one invocation per (chunk, batch, key row, query head) sums that query
 * head's rows of the chunk into its dk and dv partials (planes dk, then dv, of `partial`).
 */
function _dkvPartKernel(
  ctx: GpuContext,
  o: { q: GpuTensor; k: GpuTensor; partial?: GpuTensor },
  fields: UniformFields,
  reads: readonly Binding[],
  R: _Rows,
): KernelCall {
  const { B, T, Hq, D, chunks, plane } = _dkvSplitDims(o);
  return simpleKernel(ctx, {
    label: "attention_backward_dkv_part",
    bindings: [...reads, { name: "P", tensor: o.partial!, write: true }],
    fields: [["n", "u32", chunks * B * T * Hq], ...fields.slice(1), ["chunks", "u32", chunks], [
      "plane",
      "u32",
      plane,
    ]],
    invocations: chunks * B * T * Hq,
    workgroup: 64,
    prelude: `const D = ${D}u;`,
    // i = ((c·B + b)·T + s)·Hq + h: neighbours share the key row and read neighbouring query heads.
    body:
      `  let h = i % u.Hq; let s_u = (i / u.Hq) % u.T; let bb = (i / (u.Hq * u.T)) % (u.n / (u.Hq * u.T * u.chunks));
  let c = i / (u.n / u.chunks);
  let kh = h % u.Hkv;
  let ko = ((bb * u.T + s_u) * u.Hkv + kh) * D;
  let po = ((c * (u.n / (u.Hq * u.T * u.chunks)) + bb) * u.T + s_u) * u.Hq * D + h * D;
  let t0 = max(s_u, c * ${_DKV_CHUNK}u); let t1 = min(u.T, (c + 1u) * ${_DKV_CHUNK}u);
${_dkvInit(R)}
  for (var t = t0; t < t1; t = t + 1u) {
${_dkvRow(R)}
  }
  for (var j = 0u; j < D; j = j + 1u) { P[po + j] = dk_acc[j]; P[u.plane * u.chunks + po + j] = dv_acc[j]; }`,
  });
}

/**
 * `attention_backward_dkv_sum`: one invocation per element of dk and dv adds its partials over the chunks
 * and the query heads sharing its kv head, in a fixed order.
 */
function _dkvSumKernel(
  ctx: GpuContext,
  o: { q: GpuTensor; k: GpuTensor; dk: GpuTensor; dv: GpuTensor; partial?: GpuTensor },
): KernelCall {
  const { B, T, Hq, D, Hkv, chunks, plane } = _dkvSplitDims(o);
  return simpleKernel(ctx, {
    label: "attention_backward_dkv_sum",
    bindings: [{ name: "P", tensor: o.partial! }, { name: "dk", tensor: o.dk, write: true }, {
      name: "dv",
      tensor: o.dv,
      write: true,
    }],
    fields: [
      ["n", "u32", B * T * Hkv * D],
      ["Hq", "u32", Hq],
      ["Hkv", "u32", Hkv],
      ["chunks", "u32", chunks],
      ["plane", "u32", plane],
    ],
    invocations: B * T * Hkv * D,
    workgroup: 64,
    prelude: `const D = ${D}u;`,
    // i = ((b·T + s)·Hkv + kh)·D + j, the layout of dk and dv.
    body: `  let j = i % D; let kh = (i / D) % u.Hkv; let row = i / (D * u.Hkv); // row = b·T + s
  var a = 0.0; var b = 0.0;
  for (var c = 0u; c < u.chunks; c = c + 1u) {
    for (var h = kh; h < u.Hq; h = h + u.Hkv) {
      let po = c * u.plane + (row * u.Hq + h) * D + j;
      a = a + P[po]; b = b + P[u.plane * u.chunks + po];
    }
  }
  dk[i] = a; dv[i] = b;`,
  });
}

// ---- cpu-simd: blocks of query (or key) rows per invocation ----------------------------------------------

/**
 * Rows of one (batch, head) per invocation in the cpu-simd kernels, for rows of DV vec4s: each key (or
 * query) row read from memory serves this many query (key) rows. llvmpipe pays per load, and these kernels
 * are load-bound: at T 128, head_dim 32 on llvmpipe, blocks of 2, 4 and 8 rows ran the three kernels
 * 1.4×, 2× and 2.3–2.6× as fast as one row per invocation. Long rows take smaller blocks (the shader is
 * written out, block × row).
 */
function _block(DV: number): number {
  return DV <= 8 ? 8 : DV <= 16 ? 4 : 2;
}

/** `stmt(j)` for j = 0 … n−1, written out with constant indices (no loop for llvmpipe's limiter to count). */
const _each = (n: number, stmt: (j: string) => string) =>
  Array.from({ length: n }, (_, j) => stmt(`${j}u`)).join(" ");

/** Whether the blocked cpu-simd kernels serve these rows: vec4 rows on a software adapter. */
function _blocked(ctx: GpuContext, D: number): boolean {
  return ctx.profile !== "gpu" && D % 4 === 0;
}

/** Fields of the blocked kernels: n = B·heads·TB invocations, TB blocks of RB rows along T. */
function _blockFields(q: GpuTensor, k: GpuTensor, heads: number, RB: number): UniformFields {
  const [B, T] = q.shape as [number, number];
  const TB = Math.ceil(T / RB), f = _dims(q, k);
  return [["n", "u32", B * heads * TB], ...f.slice(1), ["TB", "u32", TB]];
}

/**
 * The block header: invocation i → batch bb, head h (query heads, or kv heads for dk/dv) and block tb of
 * RB rows from tf; row r of the block is tf + r, clamped to the last row (a clamped row is computed again
 * and not written).
 *
 * Along T (`acrossHeads` false), i = ((b·H + h)·TB + tb): the 8 lanes of a workgroup take 8 blocks of one
 * head, whose causal loops differ in length, and a lane that is done waits for the longest. Across heads,
 * i = k·(B·H) + (b·H + h): the lanes take one block of 8 heads, loops of one length, and the block order
 * k → tb = 0, TB − 1, 1, TB − 2, … pairs short and long blocks, because llvmpipe gives each thread one
 * contiguous range of the workgroups (docs/llvmpipe.md). Across heads the lanes read different rows, which
 * costs more than it saves once rows are long: on llvmpipe (2 threads, 2026-12-07, the same results) at
 * head_dim 16 the three kernels ran 1.2–1.46× as fast across heads (B·T·H·Hkv 16·64·8·8 and 16·64·8·2); at
 * 32 the forward 1.1–1.18×, dq 0.93–1.09× and dk/dv 0.78–1.16×; at 64 the forward 1.03×, dq 0.95× and dk/dv
 * 0.76×. So the forward goes across heads up to head_dim 32, dq and dk/dv up to 16.
 */
const _blockHead = (H: string, RB: number, acrossHeads: boolean) =>
  acrossHeads
    ? `  let bhn = u.n / u.TB; let bh = i % bhn; let kb = i / bhn;
  let tb = select(u.TB - 1u - kb / 2u, kb / 2u, kb % 2u == 0u);
  let h = bh % u.${H}; let bb = bh / u.${H};
  let tf = tb * ${RB}u; let tl = min(tf + ${RB - 1}u, u.T - 1u);`
    : `  let tb = i % u.TB; let h = (i / u.TB) % u.${H}; let bb = i / (u.TB * u.${H});
  let tf = tb * ${RB}u; let tl = min(tf + ${RB - 1}u, u.T - 1u);`;

const _blockRows = (RB: number, stmt: (r: number) => string) =>
  Array.from({ length: RB }, (_, r) => stmt(r)).join("\n");

/** Row r of a query block: its (clamped) row t<r> and the offset qo<r> of its q (and o, dO, dq) row. */
const _queryRow = (r: number) =>
  `  let t${r} = min(tf + ${r}u, u.T - 1u); let qo${r} = ((bb * u.T + t${r}) * u.Hq + h) * D;`;

/** The walk over key rows 0…tl of a query block, each key and value row loaded once into kr and vr. */
const _keyLoopHead = (R: _Rows, DV: number) =>
  `  var kr: ${R.row}; var vr: ${R.row};
  for (var s_u = 0u; s_u <= tl; s_u = s_u + 1u) {
    let ko = ((bb * u.T + s_u) * u.Hkv + kh) * D;
    ${_each(DV, (j) => `kr[${j}] = k[ko + ${j}]; vr[${j}] = v[ko + ${j}];`)}`;

/** What a blocked kernel's body is written from. */
interface _BlockShape {
  R: _Rows;
  V: "f32" | "vec4<f32>";
  DV: number;
  RB: number;
}

/**
 * One blocked cpu-simd kernel: B·heads·⌈T/RB⌉ invocations of `body`, after the loop-budget check (`loops`
 * iterations per row: the rows are written out).
 */
function _blockedCall(
  ctx: GpuContext,
  q: GpuTensor,
  k: GpuTensor,
  o: {
    label: string;
    heads: number;
    loops: number;
    bindings: (V: "f32" | "vec4<f32>") => Binding[];
    body: (b: _BlockShape) => string;
  },
): KernelCall {
  const D = q.shape[3]!, R = _rows(ctx, D), V = R.V, DV = R.DV, RB = _block(DV);
  const fields = _blockFields(q, k, o.heads, RB);
  _attentionBudget(ctx, o.label, q, k, o.loops, true);
  return simpleKernel(ctx, {
    label: o.label,
    bindings: o.bindings(V),
    fields,
    invocations: fields[0]![2],
    workgroup: _wg(ctx),
    prelude: R.prelude,
    body: o.body({ R, V, DV, RB }),
  });
}

/**
 * The forward, a block of query rows per invocation: each key and value row is loaded once for the block.
 * Every row's online softmax runs the statements of the one-row kernel in the same order (same results).
 */
function _attentionBlocked(
  ctx: GpuContext,
  o: { q: GpuTensor; k: GpuTensor; v: GpuTensor; o: GpuTensor; lse: GpuTensor },
): KernelCall {
  return _blockedCall(ctx, o.q, o.k, {
    label: "attention",
    heads: o.q.shape[2]!,
    loops: 1,
    bindings: (V) => _forwardBindings(o, V),
    body: ({ R, V, DV, RB }) =>
      `${_blockHead("Hq", RB, DV <= 8)}
  let kh = h % u.Hkv;
${
        _blockRows(RB, (r) =>
          `${_queryRow(r)}
  var qr${r}: ${R.row}; var acc${r}: ${R.row}; var m${r} = -3.0e38; var s${r} = 0.0;
  ${_each(DV, (j) => `qr${r}[${j}] = q[qo${r} + ${j}] * u.scale; acc${r}[${j}] = ${V}(0.0);`)}`)
      }
${_keyLoopHead(R, DV)}
${
        _blockRows(RB, (r) =>
          `    if (s_u <= t${r}) {
      var sc = 0.0;
      ${_each(DV, (j) => `sc = sc + ${R.dot(`qr${r}[${j}]`, `kr[${j}]`)};`)}
      let mn = max(m${r}, sc); let corr = exp(m${r} - mn); let p = exp(sc - mn);
      s${r} = s${r} * corr + p;
      ${_each(DV, (j) => `acc${r}[${j}] = acc${r}[${j}] * corr + p * vr[${j}];`)}
      m${r} = mn;
    }`)
      }
  }
${
        _blockRows(RB, (r) =>
          `  if (tf + ${r}u < u.T) {
    let inv = 1.0 / s${r};
    ${_each(DV, (j) => `o[qo${r} + ${j}] = acc${r}[${j}] * inv;`)}
    lse[(bb * u.Hq + h) * u.T + t${r}] = m${r} + log(s${r});
  }`)
      }`,
  });
}

/** dq, a block of query rows per invocation sharing each key and value row's loads. */
function _dqBlocked(
  ctx: GpuContext,
  o: { q: GpuTensor; k: GpuTensor; dq: GpuTensor },
  reads: readonly Binding[],
): KernelCall {
  return _blockedCall(ctx, o.q, o.k, {
    label: "attention_backward_dq",
    heads: o.q.shape[2]!,
    loops: 1,
    bindings: (V) => [...reads, { name: "dq", tensor: o.dq, write: true, type: V }],
    body: ({ R, V, DV, RB }) =>
      `${_blockHead("Hq", RB, DV <= 4)}
  let kh = h % u.Hkv;
${
        _blockRows(RB, (r) =>
          `${_queryRow(r)}
  let row${r} = (bb * u.Hq + h) * u.T + t${r}; let l${r} = lse[row${r}]; let dl${r} = delta[row${r}];
  var qr${r}: ${R.row}; var dor${r}: ${R.row}; var acc${r}: ${R.row};
  ${
            _each(
              DV,
              (j) =>
                `qr${r}[${j}] = q[qo${r} + ${j}]; dor${r}[${j}] = dO[qo${r} + ${j}]; acc${r}[${j}] = ${V}(0.0);`,
            )
          }`)
      }
${_keyLoopHead(R, DV)}
${
        _blockRows(RB, (r) =>
          `    if (s_u <= t${r}) {
      var sc = 0.0; var dp = 0.0;
      ${
            _each(DV, (j) =>
              `sc = sc + ${R.dot(`qr${r}[${j}]`, `kr[${j}]`)}; dp = dp + ${
                R.dot(`dor${r}[${j}]`, `vr[${j}]`)
              };`)
          }
      let ds = exp(sc * u.scale - l${r}) * (dp - dl${r}) * u.scale;
      ${
            _each(DV, (j) => `acc${r}[${j}] = acc${r}[${j}] + ds * kr[${j}];`)
          }
    }`)
      }
  }
${
        _blockRows(
          RB,
          (r) => `  if (tf + ${r}u < u.T) { ${_each(DV, (j) => `dq[qo${r} + ${j}] = acc${r}[${j}];`)} }`,
        )
      }`,
  });
}

/**
 * dk and dv, a block of key rows of one kv head per invocation: each query row (and its dO row) read serves
 * the block. Per key row the sum runs over query heads, then query rows, in the one-row kernel's order.
 */
function _dkvBlocked(
  ctx: GpuContext,
  o: { q: GpuTensor; k: GpuTensor; dk: GpuTensor; dv: GpuTensor },
  reads: readonly Binding[],
): KernelCall {
  return _blockedCall(ctx, o.q, o.k, {
    label: "attention_backward_dkv",
    heads: o.k.shape[2]!,
    loops: o.q.shape[2]! / o.k.shape[2]!,
    bindings: (V) => [
      ...reads,
      { name: "dk", tensor: o.dk, write: true, type: V },
      { name: "dv", tensor: o.dv, write: true, type: V },
    ],
    // Here h of the block header is the kv head; the query heads reading it are h, h + Hkv, …
    body: ({ R, V, DV, RB }) =>
      `${_blockHead("Hkv", RB, DV <= 4)}
  let kh = h;
${
        _blockRows(RB, (r) =>
          `  let s${r} = min(tf + ${r}u, u.T - 1u); let ko${r} = ((bb * u.T + s${r}) * u.Hkv + kh) * D;
  var kr${r}: ${R.row}; var vr${r}: ${R.row}; var dk${r}: ${R.row}; var dv${r}: ${R.row};
  ${
            _each(
              DV,
              (j) =>
                `kr${r}[${j}] = k[ko${r} + ${j}]; vr${r}[${j}] = v[ko${r} + ${j}]; dk${r}[${j}] = ${V}(0.0); dv${r}[${j}] = ${V}(0.0);`,
            )
          }`)
      }
  var qrow: ${R.row}; var dorow: ${R.row};
  for (var hq = kh; hq < u.Hq; hq = hq + u.Hkv) {
    for (var t = tf; t < u.T; t = t + 1u) {
      let qo = ((bb * u.T + t) * u.Hq + hq) * D; let row = (bb * u.Hq + hq) * u.T + t;
      ${_each(DV, (j) => `qrow[${j}] = q[qo + ${j}]; dorow[${j}] = dO[qo + ${j}];`)}
      let l = lse[row]; let dl = delta[row];
${
        _blockRows(RB, (r) =>
          `      if (t >= s${r}) {
        var sc = 0.0; var dp = 0.0;
        ${
            _each(DV, (j) =>
              `sc = sc + ${R.dot(`qrow[${j}]`, `kr${r}[${j}]`)}; dp = dp + ${
                R.dot(`dorow[${j}]`, `vr${r}[${j}]`)
              };`)
          }
        let p = exp(sc * u.scale - l);
        let ds = p * (dp - dl) * u.scale;
        ${
            _each(
              DV,
              (j) =>
                `dk${r}[${j}] = dk${r}[${j}] + ds * qrow[${j}]; dv${r}[${j}] = dv${r}[${j}] + p * dorow[${j}];`,
            )
          }
      }`)
      }
    }
  }
${
        _blockRows(
          RB,
          (r) =>
            `  if (tf + ${r}u < u.T) { ${
              _each(DV, (j) => `dk[ko${r} + ${j}] = dk${r}[${j}]; dv[ko${r} + ${j}] = dv${r}[${j}];`)
            } }`,
        )
      }`,
  });
}

/**
 * The grouped matmuls of the sparse-expert kernels (gpu/kernels/moe.ts, dispatches 4 and 5), dispatched
 * indirectly over the row tiles of the pair list (gpu/kernels/moe_route.ts):
 *
 * - `moe_up`: H[p] = act(x[tok(p)]·W1_e) · gate[tok(p), e] per routed pair p (rows of x gathered through the
 *   pair list); without a gate (MoA's queries), the raw product.
 * - `moe_down`: P[p] = H[p]·W2_e, the same tiles.
 *
 * They use the matmul.ts structure: a register tile of tm pairs of one expert × tn columns per invocation,
 * each tile's rows uniform across the workgroup; on `cpu-simd` big tiles (32 pairs × 32 columns) and 8 lanes
 * along the columns, on `gpu` small tiles (4×4) and 64-lane workgroups (gpu/kernels/moe_common.ts `moeTile`).
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { KernelCall } from "../dispatch.ts";
import type { ActivationKind } from "./activation.ts";
import { packUniform, rowUpdates, sumOf4, texel, type UniformFields, VEC4_LANES } from "./common.ts";
import { ACT_VEC4, lines, type MoeBind, moeDecls, range, type RouteLayout } from "./moe_common.ts";

/** Options of {@linkcode groupedMatmul}. */
export interface GroupedOptions {
  up: boolean; // moe_up (rows of x gathered by token; with gate, an act · gate epilogue) or moe_down
  a: GpuTensor;
  b: GpuTensor;
  c: GpuTensor;
  gate?: GpuTensor;
  route: GpuTensor;
  args: GpuTensor;
  k: number;
  n: number;
  E: number;
  h: number;
  ncg: number;
  tm: number;
  /**
   * A shorter row tile for the tiles whose expert has at most this many pairs left: a second copy of the
   * loop, taken by the whole workgroup, that loads and computes only those rows (few tokens per expert:
   * batched decoding). Unset: every tile computes tm rows.
   */
  tmShort?: number;
  tn: number;
  wx: number;
  L: RouteLayout;
  activation?: ActivationKind;
  /**
   * B's `rgba32float` texture copy (a frozen weight, gpu/buffers.ts `textureMirror`: W1 as (d, E·h), W2 as
   * (E·h, d)), read instead of `b`; needs vec4 columns (n divisible by 4).
   */
  bTex?: GPUTextureView | null;
  /**
   * B read from a texture copy of `b` made before every dispatch (W1 as (d, E·h), W2 as (E·h, d): `rows` ×
   * `cols`), for weights that change (matmul.ts `matmulCopiesB`); the same reads as `bTex`.
   */
  bCopy?: { rows: number; cols: number } | null;
  /** A pass's loads of A before its multiply-adds (Mesa 23.0 and later: matmul.ts `matmulLoadsFirst`). */
  aFirst?: boolean;
  /**
   * A read from a texture copy made before every dispatch (its first `rows` rows of k: x's N rows for
   * `moe_up`, H's N·E for `moe_down`), texel (K/4, row): on llvmpipe a texel fetch loads a lane's vec4
   * where a storage load loops over the lanes (docs/llvmpipe.md "The grouped matmuls' A through a texture
   * copy"); needs k divisible by 64 (a copy's rows are multiples of 256 bytes) and n by 4.
   */
  aCopy?: { rows: number } | null;
}

/** Which operands load as vec4s: B and C along the columns when n allows, A along K when k allows too. */
interface _Form {
  vec: boolean;
  /** A as vec4s along K, 4 steps of K per pass (as matmul's outer form: one load loop for 4 values). */
  aVec: boolean;
  /** Elements per B and C load: 4 with `vec`, else 1. */
  q: number;
  /** vec4 accumulators per tile row. */
  tn4: number;
  /** B read from a texture: a frozen weight's (`bTex`) or a copy made before each dispatch (`bCopy`). */
  tex: boolean;
  /** A read from its texture copy (`aCopy`): texel (q, row) instead of A[row · k/4 + q]. */
  aTex: boolean;
}

/**
 * One grouped matmul over the row tiles of the pair list, dispatched indirectly. Element (p, j) of expert
 * e's block of B is B[e·bStride + p·ldb + j] (W1: bStride h, ldb E·h; W2: bStride h·d, ldb d), in vec4
 * units when the column count allows vec4 loads.
 */
export function groupedMatmul(o: GroupedOptions): KernelCall {
  const vec = o.n % 4 === 0, tex = !!(o.bTex || o.bCopy);
  if (tex && !vec) throw new RangeError(`Cannot read B from a texture: n (${o.n}) is not divisible by 4`);
  const aTex = !!o.aCopy;
  if (aTex && !groupedACopyable(o.k, o.n)) {
    throw new RangeError(
      `Cannot read A from a texture copy: k (${o.k}) is not divisible by 64 or n (${o.n}) by 4`,
    );
  }
  const f: _Form = { vec, aVec: vec && o.k % 4 === 0, q: vec ? 4 : 1, tn4: o.tn / 4, tex, aTex };
  const fields = _fields(o, f), binds = _binds(o, f);
  const body = (tm: number) => {
    const t = { ...o, tm };
    return `${_rowIndices(t, f)}
${_accumulators(tm, f.tn4)}
${f.aVec ? _kLoopVec4(t, f) : _kLoopScalar(t, f)}
${_stores(t, f)}`;
  };
  const short = o.tmShort !== undefined && o.tmShort < o.tm ? o.tmShort : undefined;
  const code = `${moeDecls(binds, fields)}
${o.gate ? ACT_VEC4[o.activation ?? "gelu"] : ""}

${_tileDecode(o.wx, o.tn, tex)}
${_columnIndices(o.tn, f)}
${
    short === undefined ? body(o.tm) : `  if (pend - p0 <= ${short}u) {
${body(short)}
  } else {
${body(o.tm)}
  }`
  }
}
`;
  const copies = [
    ...(o.aCopy ? [{ binding: 0, rows: o.aCopy.rows, cols: o.k }] : []),
    ...(o.bCopy && !o.bTex ? [{ binding: 1, ...o.bCopy }] : []),
  ];
  return {
    label: o.up ? "moe_up" : "moe_down",
    code,
    bindings: binds.map((b) => b.t),
    uniform: packUniform(fields),
    workgroups: [0],
    indirect: { buffer: o.args, offset: o.up ? 0 : 12 },
    ...(copies.length > 0 ? { textureCopies: copies } : {}),
  };
}

/**
 * Whether a grouped matmul can read its A (rows of k) from a texture copy (`aCopy`): k a multiple of 64 (a
 * copy's rows are multiples of 256 bytes) and vec4 columns (n a multiple of 4).
 */
export function groupedACopyable(k: number, n: number): boolean {
  return k % 64 === 0 && n % 4 === 0;
}

/** Uniform fields: sizes, B's expert stride and row stride (in load units), and the route words read. */
function _fields(o: GroupedOptions, f: _Form): UniformFields {
  const bStride = (o.up ? o.h : o.h * o.n) / f.q, ldb = (o.up ? o.E * o.h : o.n) / f.q;
  // From the texture, expert e's block starts at texel (e·tx, e·ty): W1's experts side by side, W2's stacked.
  const tex: UniformFields = f.tex ? [["tx", "u32", o.up ? o.h / 4 : 0], ["ty", "u32", o.up ? 0 : o.h]] : [];
  return [
    ...tex,
    ["k", "u32", o.k],
    ["n", "u32", o.n],
    ["E", "u32", o.E],
    ["ncg", "u32", o.ncg],
    ["bStride", "u32", bStride],
    ["ldb", "u32", ldb],
    ["eoff", "u32", o.L.eoff],
    ["nt", "u32", o.L.nt],
    ["tiles", "u32", o.L.tiles],
    ["tok", "u32", o.L.tok],
  ];
}

/** Bindings A (rows of pairs or tokens), B (stacked expert weights), R (route), C (written), G (gate). */
function _binds(o: GroupedOptions, f: _Form): MoeBind[] {
  const V = f.vec ? "vec4<f32>" : "f32";
  return [
    { name: "A", decl: f.aVec ? "vec4<f32>" : "f32", t: o.a, texture: f.aTex },
    { name: "B", decl: V, t: o.bTex ?? o.b, texture: !!o.bCopy },
    { name: "R", decl: "u32", t: o.route },
    { name: "C", decl: V, t: o.c, write: true },
    ...(o.gate ? [{ name: "G", decl: "f32", t: o.gate }] : []),
  ];
}

/**
 * The entry point's head: the linear workgroup id → row tile t (its first pair p0, expert e and the end of
 * e's pairs) and column group cg (this lane's first column j0); workgroups past the tiles return.
 */
function _tileDecode(wx: number, tn: number, bTex: boolean): string {
  return `@compute @workgroup_size(${wx})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lane: u32) {
  let g = wid.x + wid.y * nwg.x;
  if (g >= R[u.nt] * u.ncg) { return; }
  let cg = g % u.ncg;
  let t = g / u.ncg;
  let p0 = R[u.tiles + 2u * t]; // first pair of the tile (the same for every lane)
  let e = R[u.tiles + 2u * t + 1u];
  let pend = R[u.eoff + e + 1u]; // end of expert e's pairs
  let j0 = (cg * ${wx}u + lane) * ${tn}u;
  if (j0 >= u.n) { return; }
  ${bTex ? "let bx = e * u.tx; let by = e * u.ty;" : "let bBase = e * u.bStride;"}`;
}

/**
 * The A row of each of the tile's pairs (clamped to the expert's last pair): for `moe_up` the pair's token
 * row of x (token tk_r), for `moe_down` the pair's own row of H.
 */
function _rowIndices(o: GroupedOptions, f: _Form): string {
  return lines(o.tm, (r) => {
    const p = `min(p0 + ${r}u, pend - 1u)`;
    const k = f.aTex ? "1u" : f.aVec ? "(u.k / 4u)" : "u.k";
    return o.up
      ? `  let tk${r} = R[u.tok + ${p}]; let ar${r} = tk${r} * ${k};`
      : `  let ar${r} = ${p} * ${k};`;
  });
}

/** The B column of each of the lane's columns (vec4 groups when `vec`), clamped to the last column. */
function _columnIndices(tn: number, f: _Form): string {
  return f.vec
    ? lines(f.tn4, (c) => `  let bc${c} = min(j0 / 4u + ${c}u, u.n / 4u - 1u);`)
    : lines(tn, (c) => `  let bc${c} = min(j0 + ${c}u, u.n - 1u);`);
}

/** Zeroed vec4 accumulators c{r}_{c}: tm rows of tn4 vec4s. */
function _accumulators(tm: number, tn4: number): string {
  return lines(tm, (r) => `  ${range(tn4).map((c) => `var c${r}_${c} = vec4<f32>(0.0);`).join(" ")}`);
}

/** The K loop with A as vec4s: per pass B's 4 rows, and per accumulator one sum of 4 products. */
function _kLoopVec4(o: GroupedOptions, f: _Form): string {
  const { tn4 } = f;
  const load = (e: number, c: number) =>
    f.tex ? texel("B", `bx + bc${c}`, `by + 4u * q + ${e}u`) : `B[bBase + (4u * q + ${e}u) * u.ldb + bc${c}]`;
  return `  for (var q = 0u; q < u.k / 4u; q = q + 1u) {
${lines(4, (e) => lines(tn4, (c) => `    let b${e}_${c} = ${load(e, c)};`))}
${
    rowUpdates(
      o.tm,
      !!o.aFirst,
      (r) => f.aTex ? texel("A", "q", `ar${r}`) : `A[ar${r} + q]`,
      (r, a) =>
        range(tn4).map((c) => `c${r}_${c} += ${sumOf4((e) => `${a}.${VEC4_LANES[e]}`, (e) => `b${e}_${c}`)};`)
          .join(" "),
    )
  }
  }`;
}

/** The K loop with A as scalars: per step one row of B (vec4s, or 4 scalars gathered), one A per row. */
function _kLoopScalar(o: GroupedOptions, f: _Form): string {
  const { tn4 } = f;
  const bLoads = f.tex
    ? lines(tn4, (c) => `    let b${c} = ${texel("B", `bx + bc${c}`, "by + p")};`)
    : f.vec
    ? lines(tn4, (c) => `    let b${c} = B[bo + bc${c}];`)
    : lines(
      tn4,
      (c) => `    let b${c} = vec4<f32>(${range(4).map((e) => `B[bo + bc${4 * c + e}]`).join(", ")});`,
    );
  return `  for (var p = 0u; p < u.k; p = p + 1u) {
    ${f.tex ? "" : "let bo = bBase + p * u.ldb;"}
${bLoads}
${
    rowUpdates(
      o.tm,
      !!o.aFirst,
      (r) => `A[ar${r} + p]`,
      (r, a) => range(tn4).map((c) => `c${r}_${c} += ${a} * b${c};`).join(" "),
    )
  }
  }`;
}

/**
 * The epilogue: `moe_up` with a gate applies act and the token's gate; rows past the expert's segment and
 * columns past n are not stored.
 */
function _stores(o: GroupedOptions, f: _Form): string {
  const { tn4 } = f;
  const value = (r: number, c: number) => (o.gate ? `act(c${r}_${c}) * G[tk${r} * u.E + e]` : `c${r}_${c}`);
  return lines(o.tm, (r) => {
    const body = f.vec
      ? lines(tn4, (c) => `    if (j0 + ${4 * c}u < u.n) { C[co / 4u + ${c}u] = ${value(r, c)}; }`)
      : lines(
        tn4,
        (c) =>
          `    { let v = ${value(r, c)}; ${
            range(4).map((e) => `if (j0 + ${4 * c + e}u < u.n) { C[co + ${4 * c + e}u] = v[${e}]; }`).join(
              " ",
            )
          } }`,
      );
    return `  if (p0 + ${r}u < pend) {\n    let co = (p0 + ${r}u) * u.n + j0;\n${body}\n  }`;
  });
}

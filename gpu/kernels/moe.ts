/**
 * Sparse MoE MLP forward (docs/design.md §10): only routed (token, expert) pairs are
 * computed, with no host readback. Float64 twin: core/ref/moe.ts. Stacked-expert layout as in training:
 * W1 (d, E·h) with expert e in columns e·h…, W2 (E·h, d) with expert e in rows e·h…; gate (N, E) is the
 * router probability times the 0/1 routing mask, and a pair is routed iff its gate is > 0.
 *
 * Six dispatches, all on the GPU:
 * 1. `moe_count`: tokens are cut into blocks; one invocation per (block, expert) counts routed tokens.
 * 2. `moe_scan`: one invocation turns the counts into offsets (expert-major, then block), the expert
 *    segments of the pair list, a list of row tiles (each inside one expert's segment) and the args of
 *    the two indirect dispatches. E and the block count are small, so a serial scan is cheaper than a
 *    parallel one with barriers (docs/llvmpipe.md, rule 3).
 * 3. `moe_place`: one invocation per (block, expert) writes its tokens, in token order, at its offset,
 *    and the token→pair index. Pairs are ordered by expert, then token: no atomics, so the order (and
 *    every float sum below) is the same on every run.
 * 4. `moe_up` (indirect): H[p] = act(x[tok(p)]·W1_e) · gate[tok(p), e] per routed pair p, one register tile
 *    of pairs of one expert per workgroup (rows gathered through the pair list).
 * 5. `moe_down` (indirect): P[p] = H[p]·W2_e, the same tiles.
 * 6. `moe_gather`: y[t] = Σ_e P[pair(t, e)] over the token's routed experts in expert order (zero when
 *    none): a deterministic gather-sum, so no float atomics.
 *
 * The grouped matmuls use the matmul.ts structure: on `cpu-simd` big register tiles (32 pairs × 32
 * columns), 8 lanes along the columns, each tile's rows uniform across the workgroup; on `gpu` small
 * tiles (4×4) and 64-lane workgroups.
 *
 * @module
 */
import { createIndirectTensor, createTensor, type GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import {
  columnSums,
  entry,
  packUniform,
  simpleKernel,
  sumOf4,
  type UniformFields,
  VEC4_LANES,
  vecGroup,
} from "./common.ts";
import { matmulTile } from "./matmul.ts";
import type { ActivationKind } from "./activation.ts";
import { grid } from "../dispatch.ts";
import { attendGroupFits, attendGroupKernel, attendWgsl, kvWrite } from "./cached_attention.ts";

/** Sizes of a sparse MoE MLP: N tokens, model width d, E experts of hidden width h. */
export interface MoeShape {
  N: number;
  d: number;
  E: number;
  h: number;
}

/** Row tile (pairs per workgroup) and column tiles of the two grouped matmuls. */
export interface MoeTile {
  /** Routed pairs per row tile (one expert per tile). */
  tm: number;
  /** Columns per invocation of `moe_up` (over h) and `moe_down` (over d). */
  tnUp: number;
  tnDown: number;
  /** Lanes per workgroup of `moe_up` and `moe_down`. */
  wxUp: number;
  wxDown: number;
}

/** Work buffers of {@linkcode moeMlpSparse}, sized for the worst case (every pair routed). */
export interface MoeScratch {
  route: GpuTensor; // u32 (moeRouteWords): block counts, offsets, expert segments, tiles, pair tokens, token→pair
  hidden: GpuTensor; // (N·E, h) f32: H rows of routed pairs, in pair order
  partial: GpuTensor; // (N·E, d) f32: P rows of routed pairs
  args: GpuTensor; // 6 u32 with INDIRECT usage: workgroups of moe_up, then of moe_down
}

/** Options of {@linkcode moeMlpSparse}. */
export interface MoeMlpOptions {
  x: GpuTensor; // (N, d)
  gate: GpuTensor; // (N, E): probability ⊙ mask; 0 = not routed
  w1: GpuTensor; // (d, E·h)
  w2: GpuTensor; // (E·h, d)
  y: GpuTensor; // (N, d), written
  E: number;
  h: number;
  activation: ActivationKind;
  scratch: MoeScratch;
  /** Overrides the tiles chosen for the profile (tests and tuning). */
  tile?: MoeTile;
}

const _NONE = 0xffffffff;

/**
 * The tiles for a shape: on `cpu-simd` 32-pair row tiles and matmul.ts's column tiling for the width; on
 * `gpu` 4×4 per invocation with up to 64 lanes (per-invocation tiles of 32×32 would spill there).
 */
export function moeTile(ctx: GpuContext, s: MoeShape): MoeTile {
  if (ctx.profile === "gpu") {
    const lanes = (n: number) => {
      let wx = 64;
      while (wx > 1 && wx * 4 >= 2 * n) wx /= 2;
      return wx;
    };
    return { tm: 4, tnUp: 4, tnDown: 4, wxUp: lanes(s.h), wxDown: lanes(s.d) };
  }
  const up = matmulTile(1024, s.h), down = matmulTile(1024, s.d);
  return { tm: 32, tnUp: up.tn, tnDown: down.tn, wxUp: up.wx, wxDown: down.wx };
}

// Word offsets inside `route`: tokens are counted in NB blocks of TB tokens.
interface _Layout {
  TB: number;
  NB: number;
  bc: number; // (NB, E) routed tokens per block and expert
  bo: number; // (NB, E) first pair of each (block, expert)
  eoff: number; // E + 1 expert segment starts, then the pair count
  nt: number; // 1: number of row tiles
  tiles: number; // (maxTiles, 2): first pair and expert of each row tile
  tok: number; // N·E: token of each pair
  idx: number; // (N, E): pair of each (token, expert), or 0xffffffff
  words: number;
}

function _layout(s: MoeShape, tm: number): _Layout {
  // Blocks of ≥ 64 tokens, at most ~256 blocks, so the serial scan stays short at any N.
  const TB = Math.max(64, Math.ceil(s.N / 256)), NB = Math.ceil(s.N / TB), P = s.N * s.E;
  const maxTiles = Math.floor(P / tm) + s.E; // Σ_e ⌈cnt_e / tm⌉ ≤ P/tm + E
  const bc = 0, bo = NB * s.E, eoff = 2 * NB * s.E, nt = eoff + s.E + 1, tiles = nt + 1;
  const tok = tiles + 2 * maxTiles, idx = tok + P;
  return { TB, NB, bc, bo, eoff, nt, tiles, tok, idx, words: idx + P };
}

/** Words of the `route` scratch for a shape and row tile. */
export function moeRouteWords(s: MoeShape, tm: number): number {
  return _layout(s, tm).words;
}

/**
 * Allocates the scratch of {@linkcode moeMlpSparse} for `s` (with the tiles of {@linkcode moeTile} unless
 * `tile` is given; pass the same `tile` to the call).
 *
 * @example
 * ```ts ignore
 * const scratch = moeScratch(ctx, { N: 1024, d: 256, E: 8, h: 256 });
 * ```
 */
export function moeScratch(ctx: GpuContext, s: MoeShape, tile: MoeTile = moeTile(ctx, s)): MoeScratch {
  const P = s.N * s.E;
  return {
    route: createTensor(ctx, [moeRouteWords(s, tile.tm)], "u32", undefined, "moe.route"),
    hidden: createTensor(ctx, [P, s.h], "f32", undefined, "moe.hidden"),
    partial: createTensor(ctx, [P, s.d], "f32", undefined, "moe.partial"),
    args: createIndirectTensor(ctx, 6, "moe.args"),
  };
}

/**
 * Encodes y = Σ over routed experts of gate · act(x·W1_e)·W2_e; the calls run in order in one step.
 *
 * @example
 * ```ts ignore
 * const scratch = moeScratch(ctx, { N, d, E, h });
 * const calls = moeMlpSparse(ctx, { x, gate, w1, w2, y, E, h, activation: "gelu", scratch });
 * await runCalls(ctx, calls).done();
 * ```
 */
export function moeMlpSparse(ctx: GpuContext, o: MoeMlpOptions): KernelCall[] {
  if (o.gate.shape[0] === 1) return _oneToken(ctx, o);
  return _sparse(ctx, o, "MoE");
}

/**
 * One token (batch-1 decoding): no pair lists. `moe_up1` runs one invocation per group of hidden columns
 * of one expert, and those of unrouted experts return before reading their weights; `moe_down1` sums over
 * the routed experts' rows of W2 only. Two dispatches instead of six; vec4 loads where widths allow.
 */
function _oneToken(ctx: GpuContext, o: MoeMlpOptions): KernelCall[] {
  const { E, h } = o, d = o.x.size, s: MoeShape = { N: 1, d, E, h };
  _check(o, s, o.tile ?? moeTile(ctx, s), "MoE");
  if (ctx.profile === "gpu") {
    // A real GPU: 16 hidden columns × 16 lanes over d per workgroup, so d·E·h multiply-adds spread over
    // E·h/16 workgroups instead of a few hundred lone threads; unrouted experts' columns stop at once.
    const up = columnSums(ctx, {
      label: "moe_up1",
      bindings: [
        { name: "x", tensor: o.x },
        { name: "gate", tensor: o.gate },
        { name: "W1", tensor: o.w1 },
        { name: "H", tensor: o.scratch.hidden, write: true },
      ],
      fields: [["n", "u32", E * h], ["rows", "u32", d], ["h", "u32", h]],
      prelude: _ACT[o.activation],
      perRow: "if (gate[i / u.h] <= 0.0) { break; }",
      terms: ["x[r] * W1[r * u.n + i]"],
      finish: "let g = gate[i / u.h]; if (g > 0.0) { H[i] = act(vec4<f32>(s0)).x * g; }",
    });
    return [up, _downOne(ctx, "moe_down1", o.gate, o.scratch.hidden, o.w2, o.y, E, h)];
  }
  const up = _upOne(ctx, "moe_up1", o.x, o.gate, o.w1, o.scratch.hidden, E, h, o.activation);
  return [up, _downOne(ctx, "moe_down1", o.gate, o.scratch.hidden, o.w2, o.y, E, h)];
}

/**
 * H[c] = X · W[:, c] for the columns c of routed experts (width columns per expert; unrouted experts'
 * invocations return before reading W), on cpu-simd: one invocation per group of up to 16 columns. With
 * `activation`, H[c] = act(X · W[:, c]) · gate[expert] (the MLP's up projection); without, the raw product
 * (MoA's queries).
 */
function _upOne(
  ctx: GpuContext,
  label: string,
  x: GpuTensor,
  gate: GpuTensor,
  w: GpuTensor,
  out: GpuTensor,
  E: number,
  width: number,
  activation?: ActivationKind,
): KernelCall {
  const d = x.size, c4 = vecGroup(width), q = c4 > 0 ? 4 : 1, per = Math.max(1, c4) * q; // columns per invocation
  const V = q === 4 ? "vec4<f32>" : "f32";
  const accs = _range(Math.max(1, c4)), xVec = d % 4 === 0;
  const value = (v: number) =>
    activation ? (q === 4 ? `act(a${v}) * g` : `act(vec4<f32>(a${v})).x * g`) : `a${v}`;
  return simpleKernel(ctx, {
    label,
    bindings: [
      { name: "x", tensor: x, type: xVec ? "vec4<f32>" : "f32" },
      { name: "gate", tensor: gate },
      { name: "W", tensor: w, type: V },
      { name: "H", tensor: out, write: true, type: V },
    ],
    fields: [["n", "u32", (E * width) / per], ["h", "u32", width], ["d", "u32", d], [
      "ld",
      "u32",
      (E * width) / q,
    ]],
    invocations: (E * width) / per,
    workgroup: 8,
    prelude: activation ? _ACT[activation] : "",
    body: `  let c0 = i * ${accs.length}u; // first column (in ${V} units) of this invocation's group
  let g = gate[(c0 * ${q}u) / u.h];
  if (g <= 0.0) { return; }
  ${accs.map((v) => `var a${v} = ${V}(0.0);`).join(" ")}
${_gemvLoop("x", "W", "0u", "u.d", accs.length, "a", xVec)}
  ${accs.map((v) => `H[c0 + ${v}u] = ${value(v)};`).join(" ")}`,
  });
}

/**
 * y[c] = Σ over routed experts e, rows j < w of A[e·w + j] · W[(e·w + j)·d + c]: one invocation per group
 * of output columns, reading only the routed experts' rows of W.
 */
function _downOne(
  ctx: GpuContext,
  label: string,
  gate: GpuTensor,
  a: GpuTensor,
  w: GpuTensor,
  y: GpuTensor,
  E: number,
  width: number,
): KernelCall {
  if (ctx.profile === "gpu") {
    return columnSums(ctx, {
      label,
      bindings: [
        { name: "gate", tensor: gate },
        { name: "A", tensor: a },
        { name: "W", tensor: w },
        { name: "y", tensor: y, write: true },
      ],
      fields: [["n", "u32", y.size], ["rows", "u32", E * width], ["w", "u32", width]],
      perRow: "if (gate[r / u.w] <= 0.0) { continue; }",
      terms: ["A[r] * W[r * u.n + i]"],
      finish: "y[i] = s0;",
    });
  }
  const d = y.size, c4 = vecGroup(d), q = c4 > 0 ? 4 : 1, per = Math.max(1, c4) * q;
  const V = q === 4 ? "vec4<f32>" : "f32", accs = _range(Math.max(1, c4)), aVec = width % 4 === 0;
  return simpleKernel(ctx, {
    label,
    bindings: [
      { name: "gate", tensor: gate },
      { name: "A", tensor: a, type: aVec ? "vec4<f32>" : "f32" },
      { name: "W", tensor: w, type: V },
      { name: "y", tensor: y, write: true, type: V },
    ],
    fields: [["n", "u32", d / per], ["E", "u32", E], ["w", "u32", width], ["ld", "u32", d / q]],
    invocations: d / per,
    workgroup: 8,
    body: `  let c0 = i * ${accs.length}u;
  ${accs.map((v) => `var a${v} = ${V}(0.0);`).join(" ")}
  for (var e = 0u; e < u.E; e = e + 1u) {
    if (gate[e] <= 0.0) { continue; }
${_gemvLoop("A", "W", "e * u.w", "(e + 1u) * u.w", accs.length, "a", aVec)}
  }
  ${accs.map((v) => `y[c0 + ${v}u] = a${v};`).join(" ")}`,
  });
}

/**
 * The K loop of a one-token product on cpu-simd: acc_v += X[j] · W[j·u.ld + c0 + v] for j in [from, to).
 * With `xVec` (X bound as vec4s, from and to multiples of 4) each pass takes 4 rows: one load of X for
 * four values, one sum of 4 products per accumulator (each storage load is a loop over the SIMD lanes on
 * llvmpipe, so fewer loads are what counts).
 */
function _gemvLoop(
  X: string,
  W: string,
  from: string,
  to: string,
  accs: number,
  acc: string,
  xVec = true,
): string {
  if (!xVec) {
    return `    for (var j = ${from}; j < ${to}; j = j + 1u) {
      let xv = ${X}[j]; let r = j * u.ld + c0;
      ${_range(accs).map((v) => `${acc}${v} = ${acc}${v} + xv * ${W}[r + ${v}u];`).join(" ")}
    }`;
  }
  return `    for (var j4 = (${from}) / 4u; j4 < (${to}) / 4u; j4 = j4 + 1u) {
      let xv = ${X}[j4]; let r = 4u * j4 * u.ld + c0;
      ${
    _range(accs).map((v) =>
      `${acc}${v} = ${acc}${v} + ${
        sumOf4((e) => `xv.${VEC4_LANES[e]}`, (e) => `${W}[r + ${e}u * u.ld + ${v}u]`)
      };`
    ).join("\n      ")
  }
    }`;
}

/** The pair lists, both grouped matmuls and the gather; `middle` (if any) runs on H between them. */
function _sparse(
  ctx: GpuContext,
  o: Omit<MoeMlpOptions, "activation"> & { activation?: ActivationKind },
  what: string,
  middle?: (L: _Layout, s: MoeShape) => KernelCall,
): KernelCall[] {
  const N = o.gate.shape[0]!, E = o.E, h = o.h, d = o.x.size / Math.max(1, N);
  const s: MoeShape = { N, d, E, h };
  const tile = o.tile ?? moeTile(ctx, s);
  _check(o, s, tile, what);
  const L = _layout(s, tile.tm);
  const ncgUp = Math.ceil(h / (tile.wxUp * tile.tnUp)), ncgDown = Math.ceil(d / (tile.wxDown * tile.tnDown));
  const { route, hidden, partial, args } = o.scratch;
  const blocks: UniformFields = [
    ["n", "u32", L.NB * E],
    ["E", "u32", E],
    ["TB", "u32", L.TB],
    [
      "N",
      "u32",
      N,
    ],
    ["bo", "u32", L.bo],
    ["tok", "u32", L.tok],
    ["idx", "u32", L.idx],
  ];
  const gateB = { name: "gate", decl: "f32", t: o.gate }, routeW = { name: "route", decl: "u32", t: route };
  const count = _call(
    ctx,
    "moe_count",
    [gateB, { ...routeW, write: true }],
    blocks,
    L.NB * E,
    8,
    `
  let b = i / u.E; let e = i % u.E;
  var c = 0u;
  for (var t = b * u.TB; t < min((b + 1u) * u.TB, u.N); t = t + 1u) {
    c = c + select(0u, 1u, gate[t * u.E + e] > 0.0);
  }
  route[i] = c;`,
  );
  const scan = _call(
    ctx,
    "moe_scan",
    [{ ...routeW, write: true }, { name: "args", decl: "u32", t: args, write: true }],
    [
      ["n", "u32", 1],
      ["NB", "u32", L.NB],
      ["E", "u32", E],
      ["tm", "u32", tile.tm],
      ["ncgUp", "u32", ncgUp],
      [
        "ncgDown",
        "u32",
        ncgDown,
      ],
      ["maxDim", "u32", ctx.limits.maxComputeWorkgroupsPerDimension],
      ["bo", "u32", L.bo],
      [
        "eoff",
        "u32",
        L.eoff,
      ],
      ["nt", "u32", L.nt],
      ["tiles", "u32", L.tiles],
    ],
    1,
    1,
    `
  var off = 0u;
  for (var e = 0u; e < u.E; e = e + 1u) {
    route[u.eoff + e] = off;
    for (var b = 0u; b < u.NB; b = b + 1u) { route[u.bo + b * u.E + e] = off; off = off + route[b * u.E + e]; }
  }
  route[u.eoff + u.E] = off;
  var nt = 0u;
  for (var e = 0u; e < u.E; e = e + 1u) {
    for (var p = route[u.eoff + e]; p < route[u.eoff + e + 1u]; p = p + u.tm) {
      route[u.tiles + 2u * nt] = p; route[u.tiles + 2u * nt + 1u] = e; nt = nt + 1u;
    }
  }
  route[u.nt] = nt;
  fold(nt * u.ncgUp, 0u);
  fold(nt * u.ncgDown, 3u);`,
    // Workgroups folded into 2-D as grid() does; the kernels skip the linear ids past the tile count.
    `fn fold(total: u32, at: u32) {
  let x = min(total, u.maxDim);
  args[at] = x; args[at + 1u] = select(1u, (total + x - 1u) / max(x, 1u), x > 0u); args[at + 2u] = 1u;
}`,
  );
  const place = _call(
    ctx,
    "moe_place",
    [gateB, { ...routeW, write: true }],
    blocks,
    L.NB * E,
    8,
    `
  let b = i / u.E; let e = i % u.E;
  var c = route[u.bo + i];
  for (var t = b * u.TB; t < min((b + 1u) * u.TB, u.N); t = t + 1u) {
    let ix = t * u.E + e;
    if (gate[ix] > 0.0) { route[u.tok + c] = t; route[u.idx + ix] = c; c = c + 1u; }
    else { route[u.idx + ix] = ${_NONE}u; }
  }`,
  );
  const up = _grouped({
    up: true,
    a: o.x,
    b: o.w1,
    c: hidden,
    gate: middle ? undefined : o.gate,
    route,
    k: d,
    n: h,
    E,
    h,
    ncg: ncgUp,
    tm: tile.tm,
    tn: tile.tnUp,
    wx: tile.wxUp,
    L,
    activation: o.activation,
    args,
  });
  const down = _grouped({
    up: false,
    a: hidden,
    b: o.w2,
    c: partial,
    route,
    k: h,
    n: d,
    E,
    h,
    ncg: ncgDown,
    tm: tile.tm,
    tn: tile.tnDown,
    wx: tile.wxDown,
    L,
    args,
  });
  const v = d % 4 === 0, dq = v ? d / 4 : d, V = v ? "vec4<f32>" : "f32";
  // cpu-simd: each invocation sums G consecutive elements of a token's row, so the token's E route
  // lookups (each a per-lane load loop on llvmpipe) serve G loads; a real GPU keeps one per thread.
  const G = ctx.profile === "gpu" ? 1 : [4, 2, 1].find((g) => dq % g === 0)!;
  const gs = _range(G);
  const gather = _call(
    ctx,
    "moe_gather",
    [{ name: "part", decl: V, t: partial }, routeW, { name: "y", decl: V, t: o.y, write: true }],
    [["n", "u32", (N * dq) / G], ["dq", "u32", dq], ["E", "u32", E], ["idx", "u32", L.idx]],
    (N * dq) / G,
    64,
    `
  let t = i / (u.dq / ${G}u);
  let c0 = (i % (u.dq / ${G}u)) * ${G}u;
  ${gs.map((j) => `var acc${j} = ${V}(0.0);`).join(" ")}
  for (var e = 0u; e < u.E; e = e + 1u) {
    let p = route[u.idx + t * u.E + e];
    if (p != ${_NONE}u) {
      let o = p * u.dq + c0;
      ${gs.map((j) => `acc${j} = acc${j} + part[o + ${j}u];`).join(" ")}
    }
  }
  ${gs.map((j) => `y[t * u.dq + c0 + ${j}u] = acc${j};`).join(" ")}`,
  );
  return [count, scan, place, up, ...(middle ? [middle(L, s)] : []), down, gather];
}

function _check(o: Omit<MoeMlpOptions, "activation">, s: MoeShape, t: MoeTile, what: string): void {
  const { N, d, E, h } = s;
  for (const [name, v] of [["N", N], ["d", d], ["E", E], ["h", h]] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new RangeError(`Cannot run sparse ${what}: ${name} (${v}) must be a positive integer`);
    }
  }
  const need: [string, GpuTensor, number, string][] = [
    ["x", o.x, N * d, "f32"],
    ["gate", o.gate, N * E, "f32"],
    ["w1", o.w1, d * E * h, "f32"],
    ["w2", o.w2, E * h * d, "f32"],
    ["y", o.y, N * d, "f32"],
    ["scratch.route", o.scratch.route, moeRouteWords(s, t.tm), "u32"],
    ["scratch.hidden", o.scratch.hidden, N * E * h, "f32"],
    ["scratch.partial", o.scratch.partial, N * E * d, "f32"],
    ["scratch.args", o.scratch.args, 6, "u32"],
  ];
  for (const [name, tensor, n, dtype] of need) {
    if (tensor.size < n || tensor.dtype !== dtype) {
      throw new RangeError(
        `Cannot run sparse ${what}: ${name} ("${tensor.label}") is ${tensor.dtype} × ${tensor.size}, needs ${dtype} × ${n}`,
      );
    }
  }
  if (o.x.shape.length !== 2 || o.x.shape[1] !== d || o.x.size !== N * d) {
    throw new RangeError(`Cannot run sparse ${what}: x shape [${o.x.shape}] is not (N ${N}, d)`);
  }
  const ok = [1, 2, 4, 8, 16, 32, 64].includes(t.tm) && [4, 8, 16, 32].includes(t.tnUp) &&
    [4, 8, 16, 32].includes(t.tnDown) && [1, 2, 4, 8, 16, 32, 64].includes(t.wxUp) &&
    [1, 2, 4, 8, 16, 32, 64].includes(t.wxDown);
  if (!ok) throw new RangeError(`Cannot run sparse ${what}: unsupported tile ${JSON.stringify(t)}`);
}

interface _Bind {
  name: string;
  decl: string; // WGSL element type
  t: GpuTensor;
  write?: boolean;
}

/** A one-invocation-per-item kernel (guarded by the first uniform field `n`) with typed bindings. */
function _call(
  ctx: GpuContext,
  label: string,
  binds: readonly _Bind[],
  fields: UniformFields,
  invocations: number,
  workgroup: number,
  body: string,
  prelude = "",
): KernelCall {
  const code = `${_decls(binds, fields)}
${prelude}
${entry(workgroup, `  if (i >= u.n) { return; }\n${body}`)}`;
  return {
    label,
    code,
    bindings: binds.map((b) => b.t),
    uniform: packUniform(fields),
    workgroups: grid(ctx, Math.max(1, Math.ceil(invocations / workgroup))),
  };
}

function _decls(binds: readonly _Bind[], fields: UniformFields): string {
  const lines = binds.map((b, i) =>
    `@group(0) @binding(${i}) var<storage, ${b.write ? "read_write" : "read"}> ${b.name}: array<${b.decl}>;`
  );
  lines.push(
    `struct U { ${fields.map(([n, t]) => `${n}: ${t}`).join(", ")} }`,
    `@group(0) @binding(${binds.length}) var<uniform> u: U;`,
  );
  return lines.join("\n");
}

// Activations on vec4 (same formulas as gpu/kernels/activation.ts and core/ref/activation.ts).
const _ACT: Record<ActivationKind, string> = {
  gelu: `fn act(x: vec4<f32>) -> vec4<f32> {
  return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}`,
  relu: `fn act(x: vec4<f32>) -> vec4<f32> { return max(x, vec4<f32>(0.0)); }`,
  silu: `fn act(x: vec4<f32>) -> vec4<f32> { return x / (1.0 + exp(-x)); }`,
};

interface _GroupedOptions {
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
  tn: number;
  wx: number;
  L: _Layout;
  activation?: ActivationKind;
}

const _range = (n: number) => Array.from({ length: n }, (_, i) => i);
const _lines = (n: number, f: (i: number) => string) => _range(n).map(f).join("\n");

/**
 * One grouped matmul over the row tiles of the pair list, dispatched indirectly. Element (p, j) of expert
 * e's block of B is B[e·bStride + p·ldb + j] (W1: bStride h, ldb E·h; W2: bStride h·d, ldb d), in vec4
 * units when the column count allows vec4 loads.
 */
function _grouped(o: _GroupedOptions): KernelCall {
  const { tm, tn, wx, L } = o, tn4 = tn / 4;
  const vec = o.n % 4 === 0, q = vec ? 4 : 1;
  // A as vec4s along K, 4 steps of K per pass (as matmul's outer form: one load loop for 4 values).
  const aVec = vec && o.k % 4 === 0;
  const bStride = (o.up ? o.h : o.h * o.n) / q, ldb = (o.up ? o.E * o.h : o.n) / q;
  const fields: UniformFields = [
    ["k", "u32", o.k],
    ["n", "u32", o.n],
    ["E", "u32", o.E],
    ["ncg", "u32", o.ncg],
    ["bStride", "u32", bStride],
    ["ldb", "u32", ldb],
    ["eoff", "u32", L.eoff],
    ["nt", "u32", L.nt],
    ["tiles", "u32", L.tiles],
    ["tok", "u32", L.tok],
  ];
  const V = vec ? "vec4<f32>" : "f32";
  const binds: _Bind[] = [
    { name: "A", decl: aVec ? "vec4<f32>" : "f32", t: o.a },
    { name: "B", decl: V, t: o.b },
    { name: "R", decl: "u32", t: o.route },
    { name: "C", decl: V, t: o.c, write: true },
    ...(o.gate ? [{ name: "G", decl: "f32", t: o.gate }] : []),
  ];
  const rows = _lines(tm, (r) => {
    const p = `min(p0 + ${r}u, pend - 1u)`;
    const k = aVec ? "(u.k / 4u)" : "u.k";
    return o.up
      ? `  let tk${r} = R[u.tok + ${p}]; let ar${r} = tk${r} * ${k};`
      : `  let ar${r} = ${p} * ${k};`;
  });
  const cols = vec
    ? _lines(tn4, (c) => `  let bc${c} = min(j0 / 4u + ${c}u, u.n / 4u - 1u);`)
    : _lines(tn, (c) => `  let bc${c} = min(j0 + ${c}u, u.n - 1u);`);
  const accs = _lines(tm, (r) => `  ${_range(tn4).map((c) => `var c${r}_${c} = vec4<f32>(0.0);`).join(" ")}`);
  const bLoads = vec
    ? _lines(tn4, (c) => `    let b${c} = B[bo + bc${c}];`)
    : _lines(tn4, (c) =>
      `    let b${c} = vec4<f32>(${_range(4).map((e) => `B[bo + bc${4 * c + e}]`).join(", ")});`);
  const loop = aVec
    ? `  for (var q = 0u; q < u.k / 4u; q = q + 1u) {
${_lines(4, (e) => _lines(tn4, (c) => `    let b${e}_${c} = B[bBase + (4u * q + ${e}u) * u.ldb + bc${c}];`))}
${
      _lines(tm, (r) =>
        `    { let a = A[ar${r} + q]; ${
          _range(tn4).map((c) => `c${r}_${c} += ${sumOf4((e) => `a.${VEC4_LANES[e]}`, (e) => `b${e}_${c}`)};`)
            .join(" ")
        } }`)
    }
  }`
    : `  for (var p = 0u; p < u.k; p = p + 1u) {
    let bo = bBase + p * u.ldb;
${bLoads}
${
      _lines(
        tm,
        (r) =>
          `    { let a = A[ar${r} + p]; ${_range(tn4).map((c) => `c${r}_${c} += a * b${c};`).join(" ")} }`,
      )
    }
  }`;
  // Epilogue: moe_up with a gate applies act and the token's gate; rows past the expert's segment and columns past n
  // are not stored.
  const value = (r: number, c: number) => (o.gate ? `act(c${r}_${c}) * G[tk${r} * u.E + e]` : `c${r}_${c}`);
  const stores = _lines(tm, (r) => {
    const body = vec
      ? _lines(tn4, (c) => `    if (j0 + ${4 * c}u < u.n) { C[co / 4u + ${c}u] = ${value(r, c)}; }`)
      : _lines(
        tn4,
        (c) =>
          `    { let v = ${value(r, c)}; ${
            _range(4).map((e) => `if (j0 + ${4 * c + e}u < u.n) { C[co + ${4 * c + e}u] = v[${e}]; }`).join(
              " ",
            )
          } }`,
      );
    return `  if (p0 + ${r}u < pend) {\n    let co = (p0 + ${r}u) * u.n + j0;\n${body}\n  }`;
  });
  const code = `${_decls(binds, fields)}
${o.gate ? _ACT[o.activation ?? "gelu"] : ""}

@compute @workgroup_size(${wx})
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
  let bBase = e * u.bStride;
${rows}
${cols}
${accs}
${loop}
${stores}
}
`;
  return {
    label: o.up ? "moe_up" : "moe_down",
    code,
    bindings: binds.map((b) => b.t),
    uniform: packUniform(fields),
    workgroups: [0],
    indirect: { buffer: o.args, offset: o.up ? 0 : 12 },
  };
}

/** Options of {@linkcode moaAttentionSparse}. */
export interface MoaOptions {
  x: GpuTensor; // (N, d)
  gate: GpuTensor; // (N, E): probability ⊙ mask; 0 = not routed
  wq: GpuTensor; // (d, E·G·D)
  wo: GpuTensor; // (E·G·D, d)
  k: GpuTensor; // (N, G·D): the tokens' keys (shared by every expert)
  v: GpuTensor;
  y: GpuTensor; // (N, d), written
  E: number;
  G: number; // heads per expert (= KV heads)
  D: number;
  /** Sequence batches: tokens are sequences of T; token t attends over its sequence's rows up to t. */
  T?: number;
  /** Decoding: k, v are written into the caches at pos, and token t attends over cache rows 0…pos+t. */
  cache?: { kcache: GpuTensor; vcache: GpuTensor; pos: GpuTensor };
  /** As for {@linkcode moeMlpSparse}, with h = G·D. */
  scratch: MoeScratch;
  tile?: MoeTile;
}

/**
 * Sparse MoA: y[t] = Σ over routed experts e of gate · attn(x[t]·Wq_e)·Wo_e, with shared keys and values
 * (docs/design.md §10: only routed query/output head groups compute). The pair lists and grouped matmuls are
 * the MoE MLP's (`moe_up` without epilogue gives the pairs' query heads), with one kernel between them: each
 * (pair, head) attends over its token's key rows and scales by the gate, in place. When decoding, the new
 * keys and values are written into the caches first.
 *
 * @example
 * ```ts ignore
 * const scratch = moeScratch(ctx, { N, d, E, h: G * D });
 * const calls = moaAttentionSparse(ctx, { x, gate, wq, wo, k, v, y, E, G, D, T, scratch });
 * ```
 */
export function moaAttentionSparse(ctx: GpuContext, o: MoaOptions): KernelCall[] {
  const { E, G, D } = o, w = G * D, N = o.gate.shape[0]!;
  if ((o.T === undefined) === (o.cache === undefined)) {
    throw new RangeError("Cannot run sparse MoA: give either T (sequence batches) or cache (decoding)");
  }
  if (o.k.size !== N * w || o.v.size !== N * w) {
    throw new RangeError(
      `Cannot run sparse MoA: k [${o.k.shape}] and v [${o.v.shape}] are not (N ${N}, G·D ${w})`,
    );
  }
  if (o.cache && N === 1) {
    return [kvWrite(ctx, { k: o.k, v: o.v, ...o.cache }), ..._moaOneToken(ctx, o, o.cache.pos)];
  }
  const keys = o.cache ? o.cache.kcache : o.k, vals = o.cache ? o.cache.vcache : o.v;
  const attend = (L: _Layout): KernelCall =>
    simpleKernel(ctx, {
      label: "moa_attend",
      bindings: [
        { name: "QO", tensor: o.scratch.hidden, write: true },
        { name: "K", tensor: keys },
        { name: "Vals", tensor: vals },
        { name: "R", tensor: o.scratch.route },
        { name: "gate", tensor: o.gate },
        ...(o.cache ? [{ name: "pos", tensor: o.cache.pos }] : []),
      ],
      fields: [
        ["n", "u32", N * E * G],
        ["E", "u32", E],
        ["G", "u32", G],
        ["width", "u32", w],
        ["T", "u32", o.T ?? 1],
        ["eoff", "u32", L.eoff],
        ["tok", "u32", L.tok],
      ],
      invocations: N * E * G,
      workgroup: 32,
      prelude: attendWgsl(D, "QO", "QO"),
      body: `  let p = i / u.G; let j = i % u.G;
  if (p >= R[u.eoff + u.E]) { return; }
  let t = R[u.tok + p];
  var e = 0u;
  while (e + 1u < u.E && R[u.eoff + e + 1u] <= p) { e = e + 1u; }
  ${
        o.cache
          ? "let first = 0u; let len = pos[0] + t + 1u;"
          : "let first = t - t % u.T; let len = t % u.T + 1u;"
      }
  attend(p * u.width + j * ${D}u, first, len, j * ${D}u, p * u.width + j * ${D}u, gate[t * u.E + e]);`,
    });
  const calls = _sparse(
    ctx,
    { x: o.x, gate: o.gate, w1: o.wq, w2: o.wo, y: o.y, E, h: w, scratch: o.scratch, tile: o.tile },
    "MoA",
    attend,
  );
  return o.cache ? [kvWrite(ctx, { k: o.k, v: o.v, ...o.cache }), ...calls] : calls;
}

/**
 * One decoded token: `moa_attend1` runs one invocation per (expert, head) — unrouted experts return before
 * reading their query columns — computing the head's query and its attention over the cache; `moa_out1`
 * projects through the routed experts' rows of Wo only. Two dispatches instead of seven.
 */
function _moaOneToken(ctx: GpuContext, o: MoaOptions, pos: GpuTensor): KernelCall[] {
  const { E, G, D } = o, w = G * D, d = o.x.size;
  _check(
    { ...o, w1: o.wq, w2: o.wo, h: w },
    { N: 1, d, E, h: w },
    o.tile ?? moeTile(ctx, { N: 1, d, E, h: w }),
    "MoA",
  );
  if (ctx.profile === "gpu") return _moaOneTokenGpu(ctx, o, pos);
  // The routed heads' queries over all lanes and threads (moa_query1), then one invocation per routed
  // (expert, head) attends over the cache from its query, in place.
  const query = _upOne(ctx, "moa_query1", o.x, o.gate, o.wq, o.scratch.hidden, E, w);
  const attend = simpleKernel(ctx, {
    label: "moa_attend1",
    bindings: [
      { name: "gate", tensor: o.gate },
      { name: "K", tensor: o.cache!.kcache },
      { name: "Vals", tensor: o.cache!.vcache },
      { name: "pos", tensor: pos },
      { name: "QO", tensor: o.scratch.hidden, write: true },
    ],
    fields: [["n", "u32", E * G], ["G", "u32", G], ["width", "u32", w]],
    invocations: E * G,
    workgroup: 8,
    prelude: attendWgsl(D, "QO", "QO"),
    body: `  let e = i / u.G; let j = i % u.G;
  let g = gate[e];
  if (g <= 0.0) { return; }
  let col = e * u.width + j * ${D}u;
  attend(col, 0u, pos[0] + 1u, j * ${D}u, col, g);`,
  });
  return [query, attend, _downOne(ctx, "moa_out1", o.gate, o.scratch.hidden, o.wo, o.y, E, w)];
}

/**
 * {@linkcode _moaOneToken} on a real GPU: the routed experts' query columns as column sums over d
 * (`moa_query1`, 16 columns × 16 lanes per workgroup; unrouted experts' columns stop at once), then a
 * workgroup per routed (expert, head) for the attention over the cache (`moa_attend1`, attendGroupWgsl),
 * then `moa_out1`.
 */
function _moaOneTokenGpu(ctx: GpuContext, o: MoaOptions, pos: GpuTensor): KernelCall[] {
  const { E, G, D } = o, w = G * D, d = o.x.size;
  const query = columnSums(ctx, {
    label: "moa_query1",
    bindings: [
      { name: "x", tensor: o.x },
      { name: "gate", tensor: o.gate },
      { name: "Wq", tensor: o.wq },
      { name: "QO", tensor: o.scratch.hidden, write: true },
    ],
    fields: [["n", "u32", E * w], ["rows", "u32", d], ["width", "u32", w]],
    perRow: "if (gate[i / u.width] <= 0.0) { break; }",
    terms: ["x[r] * Wq[r * u.n + i]"],
    finish: "if (gate[i / u.width] > 0.0) { QO[i] = s0; }",
  });
  const bindings = [
    { name: "gate", tensor: o.gate },
    { name: "K", tensor: o.cache!.kcache },
    { name: "Vals", tensor: o.cache!.vcache },
    { name: "pos", tensor: pos },
    { name: "QO", tensor: o.scratch.hidden, write: true },
  ];
  const fields: UniformFields = [["n", "u32", E * G], ["G", "u32", G], ["width", "u32", w]];
  const T = o.cache!.kcache.size / w;
  // A workgroup per (expert, head) when the scores of every cache row fit its memory; the gate is read
  // through workgroup memory so that the early return of an unrouted expert is uniform (barriers follow).
  const attend: KernelCall = attendGroupFits(ctx, T, D)
    ? attendGroupKernel(ctx, {
      label: "moa_attend1",
      bindings,
      fields,
      items: E * G,
      D,
      T,
      q: "QO",
      out: "QO",
      prelude: "var<workgroup> a_gate: f32;",
      body: `  let e = wi / u.G; let j = wi % u.G;
  if (t == 0u) { a_gate = gate[e]; }
  let g = workgroupUniformLoad(&a_gate);
  if (g <= 0.0) { return; }
  let col = e * u.width + j * ${D}u;
  attendGroup(col, 0u, pos[0] + 1u, j * ${D}u, col, g, t);`,
    })
    : simpleKernel(ctx, {
      label: "moa_attend1",
      bindings,
      fields,
      invocations: E * G,
      workgroup: 32,
      prelude: attendWgsl(D, "QO", "QO"),
      body: `  let e = i / u.G; let j = i % u.G;
  let g = gate[e];
  if (g <= 0.0) { return; }
  let col = e * u.width + j * ${D}u;
  attend(col, 0u, pos[0] + 1u, j * ${D}u, col, g);`,
    });
  return [query, attend, _downOne(ctx, "moa_out1", o.gate, o.scratch.hidden, o.wo, o.y, E, w)];
}

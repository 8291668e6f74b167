/**
 * Sparse MoE MLP forward (DESIGN.md §5, "Sparse execution on GPU"): only routed (token, expert) pairs are
 * computed, with no host readback. Float64 twin: core/ref/moe.ts. Stacked-expert layout as in training:
 * W1 (d, E·h) with expert e in columns e·h…, W2 (E·h, d) with expert e in rows e·h…; gate (N, E) is the
 * router probability times the 0/1 routing mask, and a pair is routed iff its gate is > 0.
 *
 * Six dispatches, all on the GPU:
 * 1. `moe_count`: tokens are cut into blocks; one invocation per (block, expert) counts routed tokens.
 * 2. `moe_scan`: one invocation turns the counts into offsets (expert-major, then block), the expert
 *    segments of the pair list, a list of row tiles (each inside one expert's segment) and the args of
 *    the two indirect dispatches. E and the block count are small, so a serial scan is cheaper than a
 *    parallel one with barriers (shared/LLVMPIPE_NOTES.md rule 3).
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
import { entry, packUniform, type UniformFields } from "./common.ts";
import { matmulTile } from "./matmul.ts";
import type { ActivationKind } from "./activation.ts";
import { grid } from "../dispatch.ts";

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
  const N = o.gate.shape[0]!, E = o.E, h = o.h, d = o.x.size / Math.max(1, N);
  const s: MoeShape = { N, d, E, h };
  const tile = o.tile ?? moeTile(ctx, s);
  _check(o, s, tile);
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
    gate: o.gate,
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
  const gather = _call(
    ctx,
    "moe_gather",
    [{ name: "part", decl: V, t: partial }, routeW, { name: "y", decl: V, t: o.y, write: true }],
    [["n", "u32", N * dq], ["dq", "u32", dq], ["E", "u32", E], ["idx", "u32", L.idx]],
    N * dq,
    64,
    `
  let t = i / u.dq;
  var acc = ${V}(0.0);
  for (var e = 0u; e < u.E; e = e + 1u) {
    let p = route[u.idx + t * u.E + e];
    if (p != ${_NONE}u) { acc = acc + part[p * u.dq + i % u.dq]; }
  }
  y[i] = acc;`,
  );
  return [count, scan, place, up, down, gather];
}

function _check(o: MoeMlpOptions, s: MoeShape, t: MoeTile): void {
  const { N, d, E, h } = s;
  for (const [name, v] of [["N", N], ["d", d], ["E", E], ["h", h]] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new RangeError(`Cannot run sparse MoE: ${name} (${v}) must be a positive integer`);
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
        `Cannot run sparse MoE: ${name} ("${tensor.label}") is ${tensor.dtype} × ${tensor.size}, needs ${dtype} × ${n}`,
      );
    }
  }
  if (o.x.shape.length !== 2 || o.x.shape[1] !== d || o.x.size !== N * d) {
    throw new RangeError(`Cannot run sparse MoE: x shape [${o.x.shape}] is not (N ${N}, d)`);
  }
  const ok = [1, 2, 4, 8, 16, 32, 64].includes(t.tm) && [4, 8, 16, 32].includes(t.tnUp) &&
    [4, 8, 16, 32].includes(t.tnDown) && [1, 2, 4, 8, 16, 32, 64].includes(t.wxUp) &&
    [1, 2, 4, 8, 16, 32, 64].includes(t.wxDown);
  if (!ok) throw new RangeError(`Cannot run sparse MoE: unsupported tile ${JSON.stringify(t)}`);
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
  up: boolean; // moe_up (rows of x gathered by token, act · gate epilogue) or moe_down
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
    { name: "A", decl: "f32", t: o.a },
    { name: "B", decl: V, t: o.b },
    { name: "R", decl: "u32", t: o.route },
    { name: "C", decl: V, t: o.c, write: true },
    ...(o.up ? [{ name: "G", decl: "f32", t: o.gate! }] : []),
  ];
  const rows = _lines(tm, (r) => {
    const p = `min(p0 + ${r}u, pend - 1u)`;
    return o.up ? `  let tk${r} = R[u.tok + ${p}]; let ar${r} = tk${r} * u.k;` : `  let ar${r} = ${p} * u.k;`;
  });
  const cols = vec
    ? _lines(tn4, (c) => `  let bc${c} = min(j0 / 4u + ${c}u, u.n / 4u - 1u);`)
    : _lines(tn, (c) => `  let bc${c} = min(j0 + ${c}u, u.n - 1u);`);
  const accs = _lines(tm, (r) => `  ${_range(tn4).map((c) => `var c${r}_${c} = vec4<f32>(0.0);`).join(" ")}`);
  const bLoads = vec
    ? _lines(tn4, (c) => `    let b${c} = B[bo + bc${c}];`)
    : _lines(tn4, (c) =>
      `    let b${c} = vec4<f32>(${_range(4).map((e) => `B[bo + bc${4 * c + e}]`).join(", ")});`);
  const fmas = _lines(
    tm,
    (r) => `    { let a = A[ar${r} + p]; ${_range(tn4).map((c) => `c${r}_${c} += a * b${c};`).join(" ")} }`,
  );
  // Epilogue: moe_up applies act and the token's gate; rows past the expert's segment and columns past n
  // are not stored.
  const value = (r: number, c: number) => (o.up ? `act(c${r}_${c}) * G[tk${r} * u.E + e]` : `c${r}_${c}`);
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
${o.up ? _ACT[o.activation ?? "gelu"] : ""}

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
  for (var p = 0u; p < u.k; p = p + 1u) {
    let bo = bBase + p * u.ldb;
${bLoads}
${fmas}
  }
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

/**
 * What every stage of the sparse-expert kernels (gpu/kernels/moe.ts) shares: the shapes, tiles, options and
 * scratch of a sparse MoE MLP or MoA, the word layout of the `route` scratch (block counts, offsets, expert
 * segments, row tiles, pair tokens, token→pair), the argument checks, and a small kernel template with typed
 * bindings.
 *
 * @module
 */
import { createIndirectTensor, createTensor, type GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import { grid, type KernelCall } from "../dispatch.ts";
import type { ActivationKind } from "./activation.ts";
import { entry, packUniform, type UniformFields, WEIGHT_TEXTURE } from "./common.ts";
import { matmulTile } from "./matmul.ts";

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
  /** A shorter row tile for an expert's last tile when it holds at most this many pairs (optional). */
  tmShort?: number;
  /** Columns per invocation of `moe_up` (over h) and `moe_down` (over d). */
  tnUp: number;
  tnDown: number;
  /** Lanes per workgroup of `moe_up` and `moe_down`. */
  wxUp: number;
  wxDown: number;
}

/** Work buffers of `moeMlpSparse` (gpu/kernels/moe_sparse.ts), sized for the worst case (every pair routed). */
export interface MoeScratch {
  route: GpuTensor; // u32 (moeRouteWords): block counts, offsets, expert segments, tiles, pair tokens, token→pair
  hidden: GpuTensor; // (N·E, h) f32: H rows of routed pairs, in pair order
  partial: GpuTensor; // (N·E, d) f32: P rows of routed pairs
  args: GpuTensor; // 6 u32 with INDIRECT usage: workgroups of moe_up, then of moe_down
}

/** Options of `moeMlpSparse` (gpu/kernels/moe_sparse.ts). */
export interface MoeMlpOptions {
  x: GpuTensor; // (N, d)
  gate: GpuTensor; // (N, E): probability ⊙ mask; 0 = not routed
  w1: GpuTensor; // (d, E·h)
  w2: GpuTensor; // (E·h, d)
  y: GpuTensor; // (N, d), written
  E: number;
  h: number;
  activation: ActivationKind;
  /** Added to y (decoding's fused residual add: the one-token kernels, or the gather of the pair pipeline). */
  residual?: GpuTensor;
  scratch: MoeScratch;
  /** Overrides the tiles chosen for the profile (tests and tuning). */
  tile?: MoeTile;
}

/** Options of `moaAttentionSparse` (gpu/kernels/moa.ts). */
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
  /** Added to y (decoding's fused residual add; one decoded token only). */
  residual?: GpuTensor;
  /** As for `moeMlpSparse`, with h = G·D. */
  scratch: MoeScratch;
  tile?: MoeTile;
}

/** The token→pair word of a (token, expert) that is not routed. */
export const NO_PAIR = 0xffffffff;

/**
 * The tiles for a shape: on `cpu-simd` 32-pair row tiles and matmul.ts's column tiling for the width; on
 * `gpu` 4×4 per invocation with up to 64 lanes (per-invocation tiles of 32×32 would spill there). With few
 * tokens (batched decoding, 1 < N ≤ 8E) the cpu-simd row tile shrinks to about the most pairs an expert gets
 * under top-2 routing (1.5 × the mean 2N/E, rounded up to a power of 2, from 4 to 16): a tile's rows past its
 * expert's segment are computed and dropped, while each tile reads its expert's weights once, and on
 * llvmpipe the loads cost more than the multiply-adds, so one tile per expert, not much taller than its
 * pairs, is the cheapest (docs/performance.md, "Batched decoding"). Such a tile also takes 16 columns per
 * lane, not 32, and a half-height copy of its loop for an expert's last tile when that holds at most tm/2
 * pairs (`tmShort`): 4–12% less time per batched step at d512, B = 32, in three of four interleaved runs.
 * At B = 64 (N = 8E) 16-pair tiles took 6.5–7.6 ms for both grouped matmuls against 9.1–9.2 ms with the
 * 32×32 ones, weights read as textures (two interleaved runs, 2026-12-07). One token keeps 32.
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
  if (s.N === 1 || s.N > 8 * s.E) {
    return { tm: 32, tnUp: up.tn, tnDown: down.tn, wxUp: up.wx, wxDown: down.wx };
  }
  const tm = Math.min(16, Math.max(4, 2 ** Math.ceil(Math.log2((3 * s.N) / s.E))));
  return {
    tm,
    ...(tm >= 8 ? { tmShort: tm / 2 } : {}),
    tnUp: Math.min(16, up.tn),
    tnDown: Math.min(16, down.tn),
    wxUp: up.wx,
    wxDown: down.wx,
  };
}

/** Word offsets inside `route`: tokens are counted in NB blocks of TB tokens. */
export interface RouteLayout {
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

/** The layout of the `route` scratch for a shape and row tile. */
export function routeLayout(s: MoeShape, tm: number): RouteLayout {
  // Blocks of ≥ 64 tokens, at most ~256 blocks, so the serial scan stays short at any N.
  const TB = Math.max(64, Math.ceil(s.N / 256)), NB = Math.ceil(s.N / TB), P = s.N * s.E;
  const maxTiles = Math.floor(P / tm) + s.E; // Σ_e ⌈cnt_e / tm⌉ ≤ P/tm + E
  const bc = 0, bo = NB * s.E, eoff = 2 * NB * s.E, nt = eoff + s.E + 1, tiles = nt + 1;
  const tok = tiles + 2 * maxTiles, idx = tok + P;
  return { TB, NB, bc, bo, eoff, nt, tiles, tok, idx, words: idx + P };
}

/** Words of the `route` scratch for a shape and row tile. */
export function moeRouteWords(s: MoeShape, tm: number): number {
  return routeLayout(s, tm).words;
}

/**
 * Allocates the scratch of `moeMlpSparse` for `s` (with the tiles of {@linkcode moeTile} unless `tile` is
 * given; pass the same `tile` to the call).
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
 * Throws a RangeError naming `what` (MoE or MoA) unless the sizes are positive integers, every tensor and
 * scratch buffer is large enough and of its dtype, x is (N, d), and the tile is one the templates support.
 */
export function checkMoe(
  o: Omit<MoeMlpOptions, "activation">,
  s: MoeShape,
  t: MoeTile,
  what: string,
): void {
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

/** A storage binding of the pair-list kernels, with its WGSL element type spelled out. */
export interface MoeBind {
  name: string;
  decl: string; // WGSL element type
  t: GpuTensor | GPUTextureView; // a view: an rgba32float texture (a frozen weight's copy), `decl` unused
  write?: boolean;
  /** A tensor read through the texture copy made before each dispatch (dispatch.ts `textureCopies`). */
  texture?: boolean;
}

/** A one-invocation-per-item kernel (guarded by the first uniform field `n`) with typed bindings. */
export function moeKernel(
  ctx: GpuContext,
  label: string,
  binds: readonly MoeBind[],
  fields: UniformFields,
  invocations: number,
  workgroup: number,
  body: string,
  prelude = "",
): KernelCall {
  const code = `${moeDecls(binds, fields)}
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

/** WGSL declarations of `binds` (in order) and of the uniform struct `u` of `fields` after them. */
export function moeDecls(binds: readonly MoeBind[], fields: UniformFields): string {
  const lines = binds.map((b, i) =>
    b.t instanceof GPUTextureView || b.texture
      ? `@group(0) @binding(${i}) var ${b.name}: ${WEIGHT_TEXTURE};`
      : `@group(0) @binding(${i}) var<storage, ${
        b.write ? "read_write" : "read"
      }> ${b.name}: array<${b.decl}>;`
  );
  lines.push(
    `struct U { ${fields.map(([n, t]) => `${n}: ${t}`).join(", ")} }`,
    `@group(0) @binding(${binds.length}) var<uniform> u: U;`,
  );
  return lines.join("\n");
}

export { ACT_VEC4 } from "./activation.ts";

export { lines, range } from "./common.ts";

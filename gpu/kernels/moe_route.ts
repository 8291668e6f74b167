/**
 * Routing and compaction of the sparse-expert kernels (gpu/kernels/moe.ts, dispatches 1–3): from the gates
 * (N, E) to the pair list in the `route` scratch (layout: {@linkcode RouteLayout}), with no host readback
 * and no atomics.
 *
 * - `moe_count`: tokens are cut into blocks; one invocation per (block, expert) counts routed tokens.
 * - `moe_scan`: one invocation turns the counts into offsets (expert-major, then block), the expert
 *   segments of the pair list, a list of row tiles (each inside one expert's segment) and the args of the
 *   two indirect dispatches. E and the block count are small, so a serial scan is cheaper than a parallel
 *   one with barriers (docs/llvmpipe.md, rule 3).
 * - `moe_place`: one invocation per (block, expert) writes its tokens, in token order, at its offset, and
 *   the token→pair index. Pairs are ordered by expert, then token, so the order (and every float sum
 *   after it) is the same on every run.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import type { UniformFields } from "./common.ts";
import { type MoeBind, moeKernel, NO_PAIR, type RouteLayout } from "./moe_common.ts";

/** Inputs of {@linkcode pairListKernels}. */
export interface PairListOptions {
  /** (N, E) gates; a pair is routed iff its gate is > 0. */
  gate: GpuTensor;
  /** The `route` scratch, written. */
  route: GpuTensor;
  /** The 6 indirect-dispatch words of `moe_up` and `moe_down`, written. */
  args: GpuTensor;
  L: RouteLayout;
  N: number;
  E: number;
  /** Routed pairs per row tile. */
  tm: number;
  /** Column groups (workgroups per row tile) of `moe_up` and `moe_down`. */
  ncgUp: number;
  ncgDown: number;
}

/**
 * The most (token, expert) slots {@linkcode pairListKernels} compacts in one invocation (`moe_pairs`): a few
 * thousand serial reads, less than two dispatches cost (tens of µs on llvmpipe, a few on a real GPU).
 */
export const ONE_DISPATCH_PAIRS = 2048;

/**
 * The pair list, its row tiles and the indirect dispatch args: `moe_count`, `moe_scan` and `moe_place`, or
 * for one block of at most {@linkcode ONE_DISPATCH_PAIRS} slots the three in one dispatch (`moe_pairs`).
 */
export function pairListKernels(ctx: GpuContext, o: PairListOptions): KernelCall[] {
  if (o.L.NB === 1 && o.N * o.E <= ONE_DISPATCH_PAIRS) {
    return [_pairsInOne(ctx, o)];
  }
  return [
    _perBlockExpert(ctx, o, "moe_count", _COUNT),
    _scan(ctx, o),
    _perBlockExpert(ctx, o, "moe_place", _PLACE),
  ];
}

/** The gate binding (read) and the route binding of the pair-list kernels. */
function _binds(o: PairListOptions): { gateB: MoeBind; routeW: MoeBind } {
  return {
    gateB: { name: "gate", decl: "f32", t: o.gate },
    routeW: { name: "route", decl: "u32", t: o.route },
  };
}

/** Uniform fields of the per-(block, expert) kernels `moe_count` and `moe_place`. */
function _blockFields(o: PairListOptions): UniformFields {
  const { L, E, N } = o;
  return [
    ["n", "u32", L.NB * E],
    ["E", "u32", E],
    ["TB", "u32", L.TB],
    ["N", "u32", N],
    ["bo", "u32", L.bo],
    ["tok", "u32", L.tok],
    ["idx", "u32", L.idx],
  ];
}

/** Uniform fields `moe_scan`'s body reads besides E and bo: the tiling and where the scan writes. */
function _scanFields(ctx: GpuContext, o: PairListOptions): UniformFields {
  const { L } = o;
  return [
    ["NB", "u32", L.NB],
    ["tm", "u32", o.tm],
    ["ncgUp", "u32", o.ncgUp],
    ["ncgDown", "u32", o.ncgDown],
    ["maxDim", "u32", ctx.limits.maxComputeWorkgroupsPerDimension],
    ["eoff", "u32", L.eoff],
    ["nt", "u32", L.nt],
    ["tiles", "u32", L.tiles],
  ];
}

/**
 * A kernel of one invocation per (block, expert), reading the gates and writing `route`: `moe_count` (routed
 * tokens of each, at word b·E + e) and `moe_place` (its tokens at its offset, and every token→pair word).
 */
function _perBlockExpert(ctx: GpuContext, o: PairListOptions, label: string, body: string): KernelCall {
  const { gateB, routeW } = _binds(o);
  return moeKernel(ctx, label, [gateB, { ...routeW, write: true }], _blockFields(o), o.L.NB * o.E, 8, body);
}

/**
 * `moe_scan`, one invocation: block offsets and expert segments from the counts, the row tiles of each
 * segment, and the workgroup counts of the two grouped matmuls (folded into 2-D as grid() does; the kernels
 * skip the linear ids past the tile count).
 */
function _scan(ctx: GpuContext, o: PairListOptions): KernelCall {
  const { routeW } = _binds(o), { L } = o;
  return moeKernel(
    ctx,
    "moe_scan",
    [{ ...routeW, write: true }, { name: "args", decl: "u32", t: o.args, write: true }],
    [["n", "u32", 1], ["E", "u32", o.E], ["bo", "u32", L.bo], ..._scanFields(ctx, o)],
    1,
    1,
    _SCAN,
    _FOLD,
  );
}

/**
 * `moe_pairs`: `moe_count`, `moe_scan` and `moe_place` in one invocation, in that order, for a pair list of
 * one block and at most {@linkcode ONE_DISPATCH_PAIRS} (token, expert) slots (batched decoding): the same
 * words as the three dispatches, for two fewer.
 */
function _pairsInOne(ctx: GpuContext, o: PairListOptions): KernelCall {
  const { gateB, routeW } = _binds(o);
  const each = (body: string) =>
    `  for (var i = 0u; i < u.NB * u.E; i = i + 1u) {${body}
  }`;
  return moeKernel(
    ctx,
    "moe_pairs",
    [gateB, { ...routeW, write: true }, { name: "args", decl: "u32", t: o.args, write: true }],
    [..._blockFields(o).filter(([n]) => n !== "n"), ["n", "u32", 1], ..._scanFields(ctx, o)],
    1,
    1,
    `${each(_COUNT)}
${_SCAN}
${each(_PLACE)}`,
    _FOLD,
  );
}

/** `moe_count`'s body for (block, expert) i: its routed tokens, at word i of `route`. */
const _COUNT = `
  let b = i / u.E; let e = i % u.E;
  var c = 0u;
  for (var t = b * u.TB; t < min((b + 1u) * u.TB, u.N); t = t + 1u) {
    c = c + select(0u, 1u, gate[t * u.E + e] > 0.0);
  }
  route[i] = c;`;

/** `moe_scan`'s body: offsets, expert segments, row tiles and the indirect args (`fold`). */
const _SCAN = `
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
  fold(nt * u.ncgDown, 3u);`;

/** WGSL `fold`: a workgroup count as the 2-D grid grid() makes (the kernels skip ids past the tiles). */
const _FOLD = `fn fold(total: u32, at: u32) {
  let x = min(total, u.maxDim);
  args[at] = x; args[at + 1u] = select(1u, (total + x - 1u) / max(x, 1u), x > 0u); args[at + 2u] = 1u;
}`;

/** `moe_place`'s body for (block, expert) i: its tokens at its offset, and its token→pair words. */
const _PLACE = `
  let b = i / u.E; let e = i % u.E;
  var c = route[u.bo + i];
  for (var t = b * u.TB; t < min((b + 1u) * u.TB, u.N); t = t + 1u) {
    let ix = t * u.E + e;
    if (gate[ix] > 0.0) { route[u.tok + c] = t; route[u.idx + ix] = c; c = c + 1u; }
    else { route[u.idx + ix] = ${NO_PAIR}u; }
  }`;

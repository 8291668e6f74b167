/**
 * The sparse MoE MLP (gpu/kernels/moe.ts): the six-dispatch pipeline over the pair list — routing and
 * compaction (moe_route.ts), the two grouped matmuls (moe_grouped.ts), the gather (moe_gather.ts) — that
 * MoA (moa.ts) runs too, with its attention between the matmuls; and {@linkcode moeMlpSparse}, which takes
 * the one-token kernels (moe_one_token.ts) for a single token.
 *
 * @module
 */
import { textureCopyFits, textureMirror } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import type { ActivationKind } from "./activation.ts";
import {
  checkMoe,
  type MoeMlpOptions,
  type MoeShape,
  moeTile,
  type RouteLayout,
  routeLayout,
} from "./moe_common.ts";
import { gatherKernel } from "./moe_gather.ts";
import { groupedACopyable, groupedMatmul } from "./moe_grouped.ts";
import { matmulCopiesB, matmulLoadsFirst } from "./matmul.ts";
import { moeMlpOneToken } from "./moe_one_token.ts";
import { pairListKernels } from "./moe_route.ts";

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
  if (o.gate.shape[0] === 1) return moeMlpOneToken(ctx, o);
  return sparsePipeline(ctx, o, "MoE");
}

/** Options of {@linkcode sparsePipeline}: an MoE MLP's, the activation optional (none: MoA's queries). */
export type SparseOptions = Omit<MoeMlpOptions, "activation"> & { activation?: ActivationKind };

/**
 * The pair lists, both grouped matmuls and the gather (adding `o.residual` when given); `middle` (if any)
 * runs on H between them. `what` (MoE or MoA) names the operation in errors.
 */
export function sparsePipeline(
  ctx: GpuContext,
  o: SparseOptions,
  what: string,
  middle?: (L: RouteLayout, s: MoeShape) => KernelCall,
): KernelCall[] {
  const N = o.gate.shape[0]!, E = o.E, h = o.h, d = o.x.size / Math.max(1, N);
  const s: MoeShape = { N, d, E, h };
  const tile = o.tile ?? moeTile(ctx, s);
  checkMoe(o, s, tile, what);
  if (o.residual && o.residual.size !== N * d) {
    throw new RangeError(
      `Cannot add the residual to the ${what}: it has ${o.residual.size} elements, not ${N * d}`,
    );
  }
  const L = routeLayout(s, tile.tm);
  const ncgUp = Math.ceil(h / (tile.wxUp * tile.tnUp)), ncgDown = Math.ceil(d / (tile.wxDown * tile.tnDown));
  const { route, hidden, partial, args } = o.scratch;
  // Frozen weights (a decoder's) read from texture copies on a software adapter: 1.7× on both grouped
  // matmuls at d512, B = 32 (docs/llvmpipe.md, "Weights as textures"); others, where matmul's B would be
  // (matmulCopiesB), from a copy made before each dispatch.
  const tex = (w: typeof o.w1, rows: number, cols: number, n: number) => {
    if (ctx.profile !== "cpu-simd" || n % 4 !== 0) return {};
    const bTex = textureMirror(ctx, w, rows, cols);
    if (bTex) return { bTex };
    return matmulCopiesB(ctx) && textureCopyFits(ctx, w, rows, cols) ? { bCopy: { rows, cols } } : {};
  };
  // A (x, then H) too, on a software adapter, from a copy made before each dispatch: 1.2–1.5× on both grouped
  // matmuls at d512, B = 32 (docs/llvmpipe.md, "The grouped matmuls' A through a texture copy").
  const aCopy = (a: typeof o.x, rows: number, k: number, n: number) =>
    ctx.profile === "cpu-simd" && groupedACopyable(k, n) && textureCopyFits(ctx, a, rows, k)
      ? { aCopy: { rows } }
      : {};
  const lists = pairListKernels(ctx, { gate: o.gate, route, args, L, N, E, tm: tile.tm, ncgUp, ncgDown });
  const up = groupedMatmul({
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
    tmShort: tile.tmShort,
    tn: tile.tnUp,
    wx: tile.wxUp,
    L,
    activation: o.activation,
    args,
    ...tex(o.w1, d, E * h, h),
    aFirst: matmulLoadsFirst(ctx),
    ...aCopy(o.x, N, d, h),
  });
  const down = groupedMatmul({
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
    tmShort: tile.tmShort,
    tn: tile.tnDown,
    wx: tile.wxDown,
    L,
    args,
    ...tex(o.w2, E * h, d, d),
    aFirst: matmulLoadsFirst(ctx),
    ...aCopy(hidden, N * E, h, d),
  });
  const gather = gatherKernel(ctx, {
    partial,
    route,
    y: o.y,
    L,
    N,
    d,
    E,
    ...(o.residual ? { residual: o.residual } : {}),
  });
  return [...lists, up, ...(middle ? [middle(L, s)] : []), down, gather];
}

/**
 * Matmul C (M, N) = alpha · op(A) · op(B) (+ C when accumulate), op = optional transpose, any sizes.
 *
 * Each invocation computes a TM×TN register tile. On a `cpu-simd` adapter (llvmpipe) the tile is large and
 * the workgroup is 8 lanes along N with the tile's rows taken from the workgroup id, so A's loads are the
 * same address across lanes (LLVMPIPE_NOTES); on a `gpu` adapter tiles are 4×4 with 64-lane workgroups.
 * Interior tiles run without bounds checks; edge tiles clamp their loads and guard their stores.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import { grid, type KernelCall } from "../dispatch.ts";
import { packUniform } from "./common.ts";

/** Tile shape of one invocation and lanes per workgroup. */
export interface MatmulTile {
  tm: number;
  tn: number;
  lanes: number;
}

/** The tile for an adapter profile. */
export function matmulTile(ctx: Pick<GpuContext, "profile">): MatmulTile {
  return ctx.profile === "cpu-simd" ? { tm: 8, tn: 8, lanes: 8 } : { tm: 4, tn: 4, lanes: 64 };
}

/** Options of {@linkcode matmul}; m, k, n are the logical sizes of op(A) (m, k) and op(B) (k, n). */
export interface MatmulOptions {
  a: GpuTensor;
  b: GpuTensor;
  c: GpuTensor;
  m: number;
  k: number;
  n: number;
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  accumulate?: boolean;
  tile?: MatmulTile;
}

function _wgsl(t: MatmulTile, transA: boolean, transB: boolean, accumulate: boolean): string {
  const aIdx = (r: string, k: string) => (transA ? `(${k}) * u.M + ${r}` : `(${r}) * u.K + ${k}`);
  const bIdx = (k: string, c: string) => (transB ? `(${c}) * u.K + ${k}` : `(${k}) * u.N + ${c}`);
  const store = accumulate ? "c[o] + u.alpha * acc[r][j]" : "u.alpha * acc[r][j]";
  return `@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
struct U { M: u32, K: u32, N: u32, alpha: f32, colTiles: u32 }
@group(0) @binding(3) var<uniform> u: U;
const TM = ${t.tm}u;
const TN = ${t.tn}u;

@compute @workgroup_size(${t.lanes})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let rowTile = wid.y + wid.z * nwg.y;
  let r0 = rowTile * TM;
  let c0 = (wid.x * ${t.lanes}u + lid) * TN;
  if (r0 >= u.M || c0 >= u.N) { return; }
  var acc: array<array<f32, ${t.tn}>, ${t.tm}>;
  let full = r0 + TM <= u.M && c0 + TN <= u.N;
  if (full) {
    for (var kk = 0u; kk < u.K; kk = kk + 1u) {
      var bv: array<f32, ${t.tn}>;
      for (var j = 0u; j < TN; j = j + 1u) { bv[j] = b[${bIdx("kk", "c0 + j")}]; }
      for (var r = 0u; r < TM; r = r + 1u) {
        let av = a[${aIdx("r0 + r", "kk")}];
        for (var j = 0u; j < TN; j = j + 1u) { acc[r][j] = acc[r][j] + av * bv[j]; }
      }
    }
  } else {
    let rEnd = min(TM, u.M - r0); let cEnd = min(TN, u.N - c0);
    for (var kk = 0u; kk < u.K; kk = kk + 1u) {
      var bv: array<f32, ${t.tn}>;
      for (var j = 0u; j < cEnd; j = j + 1u) { bv[j] = b[${bIdx("kk", "c0 + j")}]; }
      for (var r = 0u; r < rEnd; r = r + 1u) {
        let av = a[${aIdx("r0 + r", "kk")}];
        for (var j = 0u; j < cEnd; j = j + 1u) { acc[r][j] = acc[r][j] + av * bv[j]; }
      }
    }
  }
  for (var r = 0u; r < TM; r = r + 1u) {
    if (r0 + r >= u.M) { break; }
    for (var j = 0u; j < TN; j = j + 1u) {
      if (c0 + j >= u.N) { break; }
      let o = (r0 + r) * u.N + c0 + j;
      c[o] = ${store};
    }
  }
}`;
}

/**
 * One matmul dispatch. Throws a RangeError when a tensor is too small for the stated sizes.
 *
 * @example
 * ```ts ignore
 * const call = matmul(ctx, { a, b, c, m: 64, k: 32, n: 16, transB: true });
 * ```
 */
export function matmul(ctx: GpuContext, o: MatmulOptions): KernelCall {
  const t = o.tile ?? matmulTile(ctx);
  for (
    const [name, tensor, need] of [["a", o.a, o.m * o.k], ["b", o.b, o.k * o.n], [
      "c",
      o.c,
      o.m * o.n,
    ]] as const
  ) {
    if (tensor.size < need) {
      throw new RangeError(
        `Cannot matmul: ${name} ("${tensor.label}") has ${tensor.size} elements, needs ${need}`,
      );
    }
  }
  const colTiles = Math.ceil(o.n / t.tn), colGroups = Math.ceil(colTiles / t.lanes);
  const rowTiles = Math.ceil(o.m / t.tm);
  const [y, z] = grid(ctx, rowTiles);
  const uniform = packUniform([["M", "u32", o.m], ["K", "u32", o.k], ["N", "u32", o.n], [
    "alpha",
    "f32",
    o.alpha ?? 1,
  ], [
    "colTiles",
    "u32",
    colTiles,
  ]]);
  return {
    label: `matmul${o.transA ? "_tA" : ""}${o.transB ? "_tB" : ""}`,
    code: _wgsl(t, !!o.transA, !!o.transB, !!o.accumulate),
    bindings: [o.a, o.b, o.c],
    uniform,
    workgroups: [Math.max(1, colGroups), y, z],
  };
}

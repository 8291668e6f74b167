/**
 * Matrix multiply: C = alpha · op(A) · op(B) (+ C when `accumulate`), op = optional transpose, with an
 * optional batch (a stride per batch, or one B broadcast across the batch).
 *
 * Two template families, picked by `ctx.profile`:
 * - `cpu-simd` (llvmpipe and other software adapters, docs/llvmpipe.md): no shared memory, no
 *   barriers; each invocation holds a TM×TN register tile in vec4 accumulators, workgroups of ≤ 8 lanes
 *   side by side along N, the tile's rows taken from `workgroup_id` so A's addresses are the same for every
 *   lane. B not transposed ("outer" form): per k, one A scalar per row times vec4s of B's row. B transposed
 *   ("dot" form, A·Bᵀ): vec4s along K of both sides into one vec4 accumulator per output, summed at the end.
 *   Out-of-range rows/columns are clamped on load (no branch in the K loop) and skipped on store, so any
 *   size works; vec4 loads need the vec4 axis (N, or K for the dot form) divisible by 4, else the same
 *   template loads scalars.
 * - `gpu` (real GPUs): 16×16 (or 8×8) threads, 4×4 outputs each in vec4 registers, K staged 16 at a time in
 *   workgroup memory with coalesced loads for every layout and zero fill, any size; a small output with a
 *   long K (weight gradients) splits K across workgroups and sums the slices in a second dispatch
 *   ({@linkcode matmulCalls}, {@linkcode matmulPlan}).
 *
 * Workgroups are numbered linearly over (batch, row tiles, column groups) and folded into 2-D with
 * {@linkcode grid}, so a huge M (or batch) never exceeds the 65535-per-dimension limit.
 *
 * @module
 */
import { assertBindable, type GpuTensor, textureCopyFits, textureMirror } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import { grid, type KernelCall } from "../dispatch.ts";
import { mesaAtLeast } from "../mesa.ts";
import { ACT_VEC4, type ActivationKind } from "./activation.ts";
import {
  lines,
  loopBudget,
  packUniform,
  range,
  rowUpdates,
  sumOf4,
  texel,
  VEC4_LANES,
  WEIGHT_TEXTURE,
} from "./common.ts";

/** Options of {@linkcode matmul}. Logical sizes: op(A) is (m, k), op(B) is (k, n), C is (m, n). */
export interface MatmulOptions {
  a: GpuTensor; // (batch, m, k), or (batch, k, m) with transA
  b: GpuTensor; // (batch, k, n), or (batch, n, k) with transB; without the batch axis when broadcastB
  c: GpuTensor; // (batch, m, n), written (or added to, with accumulate)
  m: number;
  k: number;
  n: number;
  /** Independent products, each `m·k`, `k·n`, `m·n` elements after the previous one. Default 1. */
  batch?: number;
  transA?: boolean;
  transB?: boolean;
  /** One B shared by every batch entry. */
  broadcastB?: boolean;
  /** Scale of the product. Default 1. */
  alpha?: number;
  /** Add to C's current content instead of overwriting it. */
  accumulate?: boolean;
  /** Overrides the register tile chosen for the shape (cpu-simd profile; tests and tuning). */
  tile?: MatmulTile;
  /** Overrides the block tile chosen for the shape (gpu profile; tests and tuning). */
  gpuTile?: GpuMatmulTile;
  /** Overrides where the loads of A go in the loop (cpu-simd profile; tests and tuning): {@linkcode matmulLoadsFirst}. */
  aFirst?: boolean;
  /**
   * Overrides whether B is read from a texture copy made before each run (cpu-simd profile; tests and
   * tuning): {@linkcode matmulCopiesB}. Ignored where the copy cannot be made (a frozen B, a batch of Bs, B's
   * rows not a multiple of 64 floats, sides past the texture limit).
   */
  bCopy?: boolean;
  /**
   * How A and B are stored (C is f32 either way): f32 (the default), or f16 halves two per 32-bit word
   * (gpu/kernels/f16.ts's `castF16` writes them) read as `array<f16>` (`f16`, needs the device's
   * `shader-f16`) or unpacked with `unpack2x16float` (`f16-packed`, any adapter: the same values and the
   * same f32 sums in the same order, so it tests the f16 kernel's numerics where shader-f16 is missing).
   * Both run the `gpu` family's template on every profile. docs/performance.md "Half precision".
   */
  operands?: MatmulOperands;
  /** What each output goes through before it is stored (not with `accumulate`). */
  epilogue?: MatmulEpilogue;
}

/**
 * A product's epilogue (batched decoding's fusions, core/plan/fuse_decode.ts): C = R + act(alpha · op(A) ·
 * op(B)), the activation first, then the residual R (C's shape) added, as the unfused ops would.
 */
export interface MatmulEpilogue {
  activation?: ActivationKind;
  residual?: GpuTensor;
}

/** Storage of a matmul's operands (see {@linkcode MatmulOptions.operands}). */
export type MatmulOperands = "f32" | "f16" | "f16-packed";

/** Options of {@linkcode matmulCalls}: a matmul plus the scratch its K split needs. */
export interface MatmulCallsOptions extends MatmulOptions {
  /** K slices; default from {@linkcode matmulPlan}. More than 1 needs `partial`. */
  splits?: number;
  /** Scratch of at least splits·batch·m·n elements for the partial products (see {@linkcode matmulScratch}). */
  partial?: GpuTensor;
}

/** A cpu-simd register tile: each invocation computes tm×tn outputs; `wx` lanes per workgroup along N. */
export interface MatmulTile {
  tm: number;
  tn: number;
  wx: number;
}

/** What fixes one generated source: the tile, the layout, and which operands load as vec4. */
export interface MatmulSpec extends MatmulTile {
  transA: boolean;
  transB: boolean;
  /** vec4 loads along the vec4 axis (N for the outer form, K for the dot form). */
  vec: boolean;
  /**
   * Outer form: A loads as vec4 — along K (4 steps of K per pass of the loop, A not transposed) or
   * along M (4 rows per load, A transposed). Needs `vec`, and K (or M and tm) divisible by 4.
   */
  aVec?: boolean;
  /** K divisible by 4: with `aVec`, every pass of the loop takes 4 steps of K (both A layouts). */
  k4?: boolean;
  /** C stored as vec4 (N divisible by 4). */
  vecC: boolean;
  /** The epilogue's activation, and whether a residual R is bound (after C) and added. */
  act?: ActivationKind;
  res?: boolean;
  /**
   * With `vec`: B is read from an `rgba32float` texture copy (a frozen weight's, gpu/buffers.ts
   * `textureMirror`, or one made before each run, {@linkcode matmulCopiesB}) instead of its buffer: texel
   * (column/4, row) in the outer form, (k/4, column) in the dot form (B stored (n, k)).
   */
  bTex?: boolean;
  /**
   * Every load of A for a pass of the loop comes before that pass's multiply-adds, instead of each row's
   * load beside its own (see {@linkcode matmulLoadsFirst}).
   */
  aFirst?: boolean;
}

const _UNIFORM_FIELDS = 16;

/**
 * Encodes C = alpha · op(A) · op(B) (+ C) as one dispatch.
 *
 * @example
 * ```ts ignore
 * const call = matmul(ctx, { a, b, c, m: 64, k: 32, n: 16, transB: true });
 * await runCalls(ctx, [call]).done();
 * ```
 */
export function matmul(ctx: GpuContext, o: MatmulOptions): KernelCall {
  const { m, k, n } = o, batch = o.batch ?? 1;
  for (const [name, v] of [["m", m], ["k", k], ["n", n], ["batch", batch]] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new RangeError(`Cannot matmul: ${name} (${v}) must be a positive integer`);
    }
  }
  const bSize = (o.broadcastB ? 1 : batch) * k * n, half = (o.operands ?? "f32") !== "f32";
  _needs(o.a, batch * m * k, "a", half);
  _needs(o.b, bSize, "b", half);
  _needs(o.c, batch * m * n, "c");
  for (const [t, what] of [[o.a, "a"], [o.b, "b"], [o.c, "c"]] as const) {
    assertBindable(ctx, t.buffer.size, `matmul ${what} ("${t.label}")`);
  }
  _checkEpilogue(o, batch * m * n);
  const transA = !!o.transA, transB = !!o.transB;
  const label = _label(transA, transB);
  const bStride = o.broadcastB ? 0 : k * n;
  if (ctx.profile === "gpu" || half) {
    return _gpuCall(ctx, o, o.gpuTile ?? matmulPlan(ctx, m, k, n, batch).tile, 1, o.c);
  }
  const tile = o.tile ?? matmulTile(m, n, batch, transB, Math.min(4, Math.max(1, ctx.threads)));
  _checkTile(tile, transB);
  const vec = transB ? k % 4 === 0 : n % 4 === 0;
  loopBudget(
    ctx,
    transB ? Math.floor(k / 4) + (vec ? 0 : k % 4) : k,
    `${label} (${m}×${k}×${n})`,
    `Its inner size K = ${k} is the number of tokens for weight gradients: lower train.micro_batch × data.seq_len (the tokens one micro-step sums over)`,
  );
  // Strides in the units of each binding's element (vec4 where that operand loads as vec4).
  const aVec = transB ? vec && !transA : _outerAVec(m, k, n, tile.tm, transA);
  // A frozen weight is read from its texture copy where one can be made: 1.2–1.4× on batched decoding's
  // products on llvmpipe (docs/llvmpipe.md, "Weights as textures").
  const oneB = vec && (batch === 1 || !!o.broadcastB);
  // B's rows and columns as stored: (k, n), or (n, k) transposed.
  const [bRows, bCols] = transB ? [n, k] : [k, n];
  // The dot form reads a frozen B's texture (n, k) where it would copy one that changes.
  const bTex = oneB && (!transB || matmulCopiesB(ctx)) ? textureMirror(ctx, o.b, bRows, bCols) : null;
  // B that changes between runs: a copy to a texture before each run where that pays (matmulCopiesB).
  const bCopy = oneB && !bTex && (o.bCopy ?? matmulCopiesB(ctx)) && textureCopyFits(ctx, o.b, bRows, bCols);
  const bVec = vec, vecC = n % 4 === 0;
  const strides = [aVec ? (m * k) / 4 : m * k, bVec ? bStride / 4 : bStride, m * n];
  const ncg = Math.ceil(n / (tile.wx * tile.tn)), nrt = Math.ceil(m / tile.tm);
  const groups = batch * nrt * ncg;
  const ep = o.epilogue, res = ep?.residual;
  return {
    label: `${label}${_epilogueLabel(ep)}`,
    code: _matmulWgsl({
      ...tile,
      transA,
      transB,
      vec,
      vecC,
      aVec: !transB && aVec,
      k4: k % 4 === 0,
      ...(ep?.activation ? { act: ep.activation } : {}),
      ...(res ? { res: true } : {}),
      ...(bTex || bCopy ? { bTex: true } : {}),
      ...(o.aFirst ?? matmulLoadsFirst(ctx) ? { aFirst: true } : {}),
    }),
    bindings: [o.a, bTex ?? o.b, o.c, ...(res ? [res] : [])],
    uniform: _uniform(m, k, n, strides, ncg, nrt, groups, !!o.accumulate, o.alpha ?? 1, 1, k),
    workgroups: grid(ctx, groups),
    ...(bCopy ? { textureCopies: [{ binding: 1, rows: bRows, cols: bCols }] } : {}),
  };
}

/**
 * Whether the cpu-simd products read a B that is not frozen from a texture copy made before each run
 * (`copyBufferToTexture`: 12–50 GB/s on llvmpipe) instead of from its buffer: on Mesa releases from 23.0 on.
 * A texel fetch loads a lane's 4 values at once where a storage load loops over the lanes, with a bounds
 * check per lane under 25.0.7. Measured there with the copy (docs/llvmpipe.md, "Mesa 25"): 1.2–1.4× on the
 * train block's outer-form products and 1024³, 1.1× on 2048³, and 1.35× on its dot form on one thread; under
 * 22.3.6 mixed (2048³ 1.15× slower, (2048×256)ᵀ·2048×256 2.4× slower through Vulkan), so 22.x reads its
 * buffers as before.
 */
export function matmulCopiesB(ctx: GpuContext): boolean {
  return ctx.profile === "cpu-simd" && mesaLoadsFirst(ctx.mesa);
}

/**
 * Whether the cpu-simd kernels load all of a pass's A before its multiply-adds: on Mesa releases from 23.0 on.
 * Measured on one llvmpipe thread (docs/llvmpipe.md, "Mesa 25"): under Mesa 25.0.7 the train block's five
 * products took 1.4–2.6× less time with the loads first (A's loads, whose address every lane shares, branch
 * on their bounds there, and each branch between multiply-adds made LLVM copy the spilled accumulators);
 * under 22.3.6 as long or longer (up to 1.5× in one sample). Releases between the two were not measured; an unknown release (not
 * Mesa, or not read) keeps the 22.3 form.
 *
 * @example
 * ```ts
 * import { mesaLoadsFirst } from "./matmul.ts";
 * if (mesaLoadsFirst("22.3.6") || !mesaLoadsFirst("25.0.7") || mesaLoadsFirst(null)) throw new Error();
 * ```
 */
export function mesaLoadsFirst(release: string | null): boolean {
  return mesaAtLeast(release, 23);
}

/** {@linkcode mesaLoadsFirst} for the Mesa release `ctx` computes on, on the cpu-simd profile. */
export function matmulLoadsFirst(ctx: GpuContext): boolean {
  return ctx.profile === "cpu-simd" && mesaLoadsFirst(ctx.mesa);
}

/**
 * The cpu-simd register tile for a shape: as big as docs/llvmpipe.md found fastest (32×32 outer form,
 * 32×16 dot form, 8 lanes), shrunk so that a workgroup does not mostly hang past N or M, and so that
 * there are `minGroups` workgroups for the CPU threads to share (the adapter's threads, at most 4: on 2
 * threads, 32×4096·4096×512 — batched decoding's down projection at B = 32 — took 5.5 ms in 2 workgroups of
 * 32×32 against 8.2 ms in 4 of 16×32, medians of 9 alternated rounds, 2026-12-07).
 */
export function matmulTile(m: number, n: number, batch = 1, transB = false, minGroups = 4): MatmulTile {
  // The dot form (B transposed) holds 32 rows × 16 columns: 1.05–1.8× its former 16×16 at 256³–1024³
  // and the training shapes (4096×256×1024, 2048×256×1024, 256×1024×256), one llvmpipe run, 2026-11-26.
  const maxTn = transB ? 16 : 32, maxTm = 32;
  let wx = 8, tn = maxTn;
  while (tn > 4 && wx * tn > Math.max(n, 4 * wx)) tn /= 2;
  while (wx > 1 && wx * tn >= 2 * n) wx /= 2;
  let tm = maxTm;
  while (tm > 1 && tm >= 2 * m) tm /= 2;
  const groups = () => batch * Math.ceil(m / tm) * Math.ceil(n / (wx * tn));
  while (groups() < minGroups && tm > 8) tm /= 2;
  while (groups() < minGroups && tn > 8) tn /= 2;
  return { tm, tn, wx };
}

/**
 * Whether the outer form (B not transposed) loads A as vec4s: along K when A is not transposed, along M
 * (4 rows at once) when it is. On llvmpipe the loads, not the multiply-adds, set the time: a 2048×256×1024
 * product took 28 ms, 13 ms with B's loads replaced by constants, 18 ms with A's, 6 ms with both
 * (2026-11-26), and A's loads cost that much although every lane of a workgroup reads the same address
 * (Mesa's storage loads loop over the SIMD lanes). A vec4 brings 4 values per load: 1.25–1.5× on the
 * train block's four outer-form products (docs/performance.md).
 */
function _outerAVec(m: number, k: number, n: number, tm: number, transA: boolean): boolean {
  return n % 4 === 0 && (transA ? m % 4 === 0 && tm % 4 === 0 : k % 4 === 0);
}

function _checkTile(t: MatmulTile, transB: boolean): void {
  const ok = [1, 2, 4, 8, 16, 32].includes(t.tm) && [4, 8, 16, 32].includes(t.tn) &&
    [1, 2, 4, 8, 16, 32, 64].includes(t.wx) && (!transB || t.tm * t.tn <= 512);
  if (!ok) throw new RangeError(`Cannot matmul: unsupported tile ${JSON.stringify(t)}`);
}

/** `t` holds `elements` values: f32 ones, or with `half` f16 ones two per 32-bit element. */
function _needs(t: GpuTensor, elements: number, what: string, half = false): void {
  const has = half ? 2 * t.size : t.size;
  if (has < elements) {
    const unit = half ? "f16 values" : "elements";
    throw new RangeError(`Cannot matmul: ${what} ("${t.label}") has ${has} ${unit}, needs ${elements}`);
  }
}

/** An epilogue's residual holds C's `elements`; an epilogue excludes accumulate. */
function _checkEpilogue(o: MatmulOptions, elements: number): void {
  if (!o.epilogue) return;
  if (o.accumulate) throw new RangeError("Cannot matmul: an epilogue and accumulate together");
  const r = o.epilogue.residual;
  if (r && r.size !== elements) {
    throw new RangeError(`Cannot matmul: the residual ("${r.label}") has ${r.size} elements, C ${elements}`);
  }
}

/** The label suffix of an epilogue (`_gelu`, `_res`, `_gelu_res`). */
function _epilogueLabel(ep: MatmulEpilogue | undefined): string {
  return `${ep?.activation ? `_${ep.activation}` : ""}${ep?.residual ? "_res" : ""}`;
}

/**
 * WGSL of the value an epilogue stores for product `x` (alpha applied): act(x) then R[ix] + that; `v4` when
 * x is a vec4 (the activations are vec4 functions).
 */
function _epilogueWgsl(
  act: ActivationKind | undefined,
  res: boolean,
  x: string,
  ix: string,
  v4: boolean,
): string {
  const a = act ? (v4 ? `act(${x})` : `act(vec4<f32>(${x})).x`) : x;
  return res ? `R[${ix}] + ${a}` : a;
}

// Uniform layout shared by both families (16 × 4 bytes); splits and kChunk are the gpu family's K split.
const _UNIFORM_WGSL = `struct U { m: u32, k: u32, n: u32, aStride: u32, bStride: u32, cStride: u32,
  ncg: u32, nrt: u32, groups: u32, acc: u32, alpha: f32, splits: u32, kChunk: u32, p0: u32, p1: u32, p2: u32 }`;

function _uniform(
  m: number,
  k: number,
  n: number,
  strides: readonly number[],
  ncg: number,
  nrt: number,
  groups: number,
  accumulate: boolean,
  alpha: number,
  splits: number,
  kChunk: number,
): ArrayBuffer {
  const buf = new ArrayBuffer(_UNIFORM_FIELDS * 4), u = new Uint32Array(buf);
  u.set([m, k, n, strides[0]!, strides[1]!, strides[2]!, ncg, nrt, groups, accumulate ? 1 : 0]);
  new Float32Array(buf)[10] = alpha;
  u.set([splits, kChunk], 11);
  return buf;
}

/**
 * C = alpha · op(A) · op(B) (+ C) as the calls the shape needs: one dispatch, or on a real GPU with K
 * split (see {@linkcode matmulPlan}) the sliced product into `partial` and a dispatch summing the slices.
 * Without `partial` the product runs unsplit.
 *
 * @example
 * ```ts ignore
 * const splits = matmulPlan(ctx, 64, 1024, 64).splits;
 * const partial = splits > 1 ? createTensor(ctx, [matmulScratch(64, 64, splits)], "f32") : undefined;
 * await runCalls(ctx, matmulCalls(ctx, { a, b, c, m: 64, k: 1024, n: 64, transA: true, partial })).done();
 * ```
 */
export function matmulCalls(ctx: GpuContext, o: MatmulCallsOptions): KernelCall[] {
  if (ctx.profile !== "gpu") return [matmul(ctx, o)];
  const batch = o.batch ?? 1, plan = matmulPlan(ctx, o.m, o.k, o.n, batch);
  const splits = o.partial ? (o.splits ?? plan.splits) : 1;
  if (!Number.isInteger(splits) || splits < 1) {
    throw new RangeError(`Cannot matmul: splits (${splits}) must be a positive integer`);
  }
  if (splits === 1) return [matmul(ctx, o)];
  _needs(o.partial!, matmulScratch(o.m, o.n, splits, batch), "partial");
  _checkEpilogue(o, batch * o.m * o.n);
  const ep = o.epilogue, res = ep?.residual;
  const total = batch * o.m * o.n;
  const sum = packUniform([
    ["total", "u32", total],
    ["plane", "u32", o.m * o.n],
    ["splits", "u32", splits],
    ["acc", "u32", o.accumulate ? 1 : 0],
    ["alpha", "f32", o.alpha ?? 1],
  ]);
  return [
    _gpuCall(
      ctx,
      { ...o, alpha: 1, accumulate: false, epilogue: undefined },
      o.gpuTile ?? plan.tile,
      splits,
      o.partial!,
    ),
    {
      label: `matmul_split_sum${_epilogueLabel(ep)}`,
      code: _splitSumWgsl(ep?.activation, !!res),
      bindings: res ? [o.partial!, o.c, res] : [o.partial!, o.c],
      uniform: sum,
      workgroups: grid(ctx, Math.ceil(total / 256)),
    },
  ];
}

/** Elements of the scratch a K split into `splits` slices needs. */
export function matmulScratch(m: number, n: number, splits: number, batch = 1): number {
  return splits * batch * m * n;
}

/** One gpu-family dispatch writing K slice s of batch entry b to plane b·splits + s of `out`. */
function _gpuCall(
  ctx: GpuContext,
  o: MatmulOptions,
  tile: GpuMatmulTile,
  splits: number,
  out: GpuTensor,
): KernelCall {
  _checkGpuTile(tile);
  const { m, k, n } = o, batch = o.batch ?? 1, transA = !!o.transA, transB = !!o.transB;
  const bm = tile.wy * tile.tm, bn = tile.wx * tile.tn;
  const ncg = Math.ceil(n / bn), nrt = Math.ceil(m / bm), groups = batch * splits * nrt * ncg;
  const kChunk = Math.ceil(k / splits / tile.bk) * tile.bk;
  const operands = o.operands ?? "f32";
  const epilogue = o.epilogue, res = epilogue?.residual;
  return {
    label: `${_label(transA, transB)}${operands === "f32" ? "" : `_${operands.replace("-", "_")}`}${
      _epilogueLabel(epilogue)
    }`,
    code: _matmulGpuWgsl(tile, transA, transB, operands, epilogue?.activation, !!res),
    bindings: res ? [o.a, o.b, out, res] : [o.a, o.b, out],
    uniform: _uniform(
      m,
      k,
      n,
      [m * k, o.broadcastB ? 0 : k * n, m * n],
      ncg,
      nrt,
      groups,
      !!o.accumulate,
      o.alpha ?? 1,
      splits,
      kChunk,
    ),
    workgroups: grid(ctx, groups),
  };
}

const _label = (transA: boolean, transB: boolean) => `matmul_${transA ? "t" : "n"}${transB ? "t" : "n"}`;

/** WGSL of the cpu-simd family for one {@linkcode MatmulSpec}. */
export function _matmulWgsl(s: MatmulSpec): string {
  return s.transB ? _dotWgsl(s) : _outerWgsl(s);
}

/**
 * cpu-simd family: the bindings, the uniform and the entry point's head, decoding the linear workgroup id
 * into (batch, row tile, column group), this lane's first column j0 and the tile's first row i0.
 */
function _prologue(s: MatmulSpec, aType: string, bType: string, cType: string): string {
  const bDecl = s.bTex ? `var B: ${WEIGHT_TEXTURE}` : `var<storage, read> B: array<${bType}>`;
  return `@group(0) @binding(0) var<storage, read> A: array<${aType}>;
@group(0) @binding(1) ${bDecl};
@group(0) @binding(2) var<storage, read_write> C: array<${cType}>;
${s.res ? `@group(0) @binding(3) var<storage, read> R: array<${cType}>;\n` : ""}${_UNIFORM_WGSL}
@group(0) @binding(${s.res ? 4 : 3}) var<uniform> u: U;
${s.act ? ACT_VEC4[s.act] : ""}

@compute @workgroup_size(${s.wx})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lane: u32) {
  let g = wid.x + wid.y * nwg.x;
  if (g >= u.groups) { return; }
  let cg = g % u.ncg;
  let rt = (g / u.ncg) % u.nrt;
  let bi = g / (u.ncg * u.nrt);
  let j0 = (cg * ${s.wx}u + lane) * ${s.tn}u; // first column of this invocation
  if (j0 >= u.n) { return; }
  let i0 = rt * ${s.tm}u; // first row (the same for every lane)
  let aBase = bi * u.aStride;
  let bBase = bi * u.bStride;`;
}

/**
 * cpu-simd family epilogue: alpha, optional accumulate, stores guarded by row and column. `vec4At(r, c4)`
 * gives row r's c4-th vec4 of outputs when C is stored as vec4, else `at(r, c)` gives one output.
 */
function _stores(
  s: MatmulSpec,
  vec4At: ((r: number, c4: number) => string) | null,
  at: (r: number, c: number) => string,
): string {
  const epilogue = !!(s.act || s.res);
  const put = (ix: string, x: string, v4: boolean) =>
    epilogue
      ? `let ix = ${ix}; C[ix] = ${_epilogueWgsl(s.act, !!s.res, `u.alpha * (${x})`, "ix", v4)};`
      : `let x = u.alpha * (${x}); let ix = ${ix}; if (u.acc != 0u) { C[ix] = C[ix] + x; } else { C[ix] = x; }`;
  const rows = range(s.tm).map((r) => {
    const cols = vec4At
      ? lines(
        s.tn / 4,
        (c) => `      if (j0 + ${4 * c}u < u.n) { ${put(`co / 4u + ${c}u`, vec4At(r, c), true)} }`,
      )
      : lines(s.tn, (c) => `      if (j0 + ${c}u < u.n) { ${put(`co + ${c}u`, at(r, c), false)} }`);
    return `  if (i0 + ${r}u < u.m) {\n    let co = cBase + (i0 + ${r}u) * u.n + j0;\n${cols}\n  }`;
  });
  return `  let cBase = bi * u.cStride;\n${rows.join("\n")}`;
}

/**
 * B not transposed: per k, A scalars (one per row, uniform over lanes) times vec4s along B's row. With
 * `aVec`, A comes as vec4s: along K (each pass takes 4 steps of K, B's 4 rows, and one sum of 4 products
 * per accumulator) or, A transposed, along M (4 rows' scalars for one step of K).
 */
function _outerWgsl(s: MatmulSpec): string {
  const bType = s.vec ? "vec4<f32>" : "f32";
  const loop = s.aVec && (!s.transA || s.k4) ? _outerLoopK4(s) : _outerLoopK1(s);
  const cVec = s.vec ? (r: number, c: number) => `c${r}_${c}` : null;
  const scalar = (r: number, c: number) => `c${r}_${c >> 2}[${c & 3}]`;
  return `${_prologue(s, s.aVec ? "vec4<f32>" : "f32", bType, s.vec ? "vec4<f32>" : "f32")}
${_outerRows(s)}
${_outerCols(s)}
${_vec4Accumulators(s.tm, s.tn / 4)}
${loop}
${_stores(s, cVec, scalar)}
}
`;
}

/**
 * Outer form: where each of the tile's rows of A starts (clamped to the last row): `ar{r}` per row, or with
 * A transposed and loaded as vec4s, `ag{h}` per group of 4 rows.
 */
function _outerRows(s: MatmulSpec): string {
  const aRow = (r: number) =>
    s.transA ? `aBase + min(i0 + ${r}u, u.m - 1u)` : `aBase + min(i0 + ${r}u, u.m - 1u) * u.k`;
  return s.aVec
    ? s.transA
      ? lines(s.tm / 4, (h) => `  let ag${h} = aBase + min(i0 / 4u + ${h}u, u.m / 4u - 1u);`)
      : lines(s.tm, (r) => `  let ar${r} = aBase + min(i0 + ${r}u, u.m - 1u) * (u.k / 4u);`)
    : lines(s.tm, (r) => `  let ar${r} = ${aRow(r)};`);
}

/** Outer form: the invocation's columns of B (vec4 groups when `vec`), clamped to the last column. */
function _outerCols(s: MatmulSpec): string {
  return s.vec
    ? lines(s.tn / 4, (c) => `  let bc${c} = min(j0 / 4u + ${c}u, u.n / 4u - 1u);`)
    : lines(s.tn, (c) => `  let bc${c} = min(j0 + ${c}u, u.n - 1u);`);
}

/** Zeroed vec4 accumulators `c{r}_{c}`: tm rows of tn4 vec4s (both families). */
function _vec4Accumulators(tm: number, tn4: number): string {
  return lines(tm, (r) => `  ${range(tn4).map((c) => `var c${r}_${c} = vec4<f32>(0.0);`).join(" ")}`);
}

/**
 * Outer form: the invocation's tn4 vec4s of B's row starting at `bo{suffix}`, as `b{suffix}{c}` (vec4
 * loads, or 4 scalars each); from the texture, row `br{suffix}`.
 */
function _outerBLoads(s: MatmulSpec, suffix: string): string {
  const tn4 = s.tn / 4;
  if (s.bTex) {
    return lines(tn4, (c) => `    let b${suffix}${c} = ${texel("B", `bc${c}`, `br${suffix}`)};`);
  }
  return s.vec
    ? lines(tn4, (c) => `    let b${suffix}${c} = B[bo${suffix} + bc${c}];`)
    : lines(tn4, (c) =>
      `    let b${suffix}${c} = vec4<f32>(${
        range(4).map((e) => `B[bo${suffix} + bc${4 * c + e}]`).join(", ")
      });`);
}

/**
 * Outer form, A as vec4s with K divisible by 4 (or A not transposed): 4 steps of K per pass, B's 4 rows,
 * and per accumulator one sum of 4 products.
 */
function _outerLoopK4(s: MatmulSpec): string {
  const tn4 = s.tn / 4;
  const sum4 = (r: number, c: number, a: (e: number) => string) =>
    `c${r}_${c} += ${sumOf4(a, (e) => `b${e}_${c}`)};`;
  const updates = !s.transA
    ? rowUpdates(
      s.tm,
      !!s.aFirst,
      (r) => `A[ar${r} + q]`,
      (r, a) => range(tn4).map((c) => sum4(r, c, (e) => `${a}.${VEC4_LANES[e]}`)).join(" "),
    )
    : s.aFirst
    ? lines(
      s.tm / 4,
      (h) =>
        `    ${range(4).map((e) => `let a${h}_${e} = A[(4u * q + ${e}u) * (u.m / 4u) + ag${h}];`).join(" ")}`,
    ) + "\n" +
      lines(
        s.tm / 4,
        (h) =>
          lines(4, (i) =>
            `    ${range(tn4).map((c) => sum4(4 * h + i, c, (e) => `a${h}_${e}[${i}]`)).join(" ")}`),
      )
    : lines(
      s.tm / 4,
      (h) =>
        `    { ${range(4).map((e) => `let a${e} = A[(4u * q + ${e}u) * (u.m / 4u) + ag${h}];`).join(" ")}
` +
        lines(
          4,
          (i) => `      ${range(tn4).map((c) => sum4(4 * h + i, c, (e) => `a${e}[${i}]`)).join(" ")}`,
        ) +
        "\n    }",
    );
  const row = (e: number) =>
    s.bTex ? `    let br${e}_ = 4u * q + ${e}u;` : `    let bo${e}_ = bBase + (4u * q + ${e}u) * (u.n / 4u);`;
  return `  for (var q = 0u; q < u.k / 4u; q = q + 1u) {
${lines(4, row)}
${range(4).map((e) => _outerBLoads(s, `${e}_`)).join("\n")}
${updates}
  }`;
}

/**
 * Outer form, one step of K per pass: B's row, then per row of the tile one A scalar (or, A transposed and
 * loaded as vec4s, one vec4 for 4 rows) times it.
 */
function _outerLoopK1(s: MatmulSpec): string {
  const tn4 = s.tn / 4;
  const bRow = s.vec ? "bBase + p * (u.n / 4u)" : "bBase + p * u.n";
  const perRow = (r: number, a: string) => range(tn4).map((c) => `c${r}_${c} += ${a} * b${c};`).join(" ");
  const fmas = !s.aVec
    ? rowUpdates(s.tm, !!s.aFirst, (r) => `A[${s.transA ? `ap + ar${r}` : `ar${r} + p`}]`, perRow)
    : s.aFirst
    ? lines(s.tm / 4, (h) => `    let a4_${h} = A[ap + ag${h}];`) + "\n" +
      lines(s.tm / 4, (h) => lines(4, (e) => `    ${perRow(4 * h + e, `a4_${h}[${e}]`)}`))
    : lines(s.tm / 4, (h) =>
      `    { let a4 = A[ap + ag${h}];\n` +
      lines(4, (e) => `      { let a = a4[${e}]; ${perRow(4 * h + e, "a")} }`) + "\n    }");
  const ap = s.transA ? `\n    let ap = p * ${s.aVec ? "(u.m / 4u)" : "u.m"};` : "";
  return `  for (var p = 0u; p < u.k; p = p + 1u) {
    ${s.bTex ? "let br = p;" : `let bo = ${bRow};`}${ap}
${_outerBLoads(s, "")}
${fmas}
  }`;
}

/**
 * B transposed (A·Bᵀ): vec4s along K of A's row and B's row, one dot() into a scalar accumulator per
 * output: one accumulator write per 4 products, and a quarter of the registers of vec4 accumulators
 * (1.3× at 2048×256×1024 with the same 32×16 tile, and a shorter compile: llvmpipe, 2026-11-26).
 */
function _dotWgsl(s: MatmulSpec): string {
  const aVec = s.vec && !s.transA;
  const kq = s.vec ? "u.k / 4u" : "u.k";
  const rows = lines(
    s.tm,
    (r) =>
      s.transA
        ? `  let ar${r} = aBase + min(i0 + ${r}u, u.m - 1u);`
        : `  let ar${r} = aBase + min(i0 + ${r}u, u.m - 1u) * ${aVec ? kq : "u.k"};`,
  );
  const cols = s.bTex
    ? lines(s.tn, (c) => `  let bc${c} = min(j0 + ${c}u, u.n - 1u);`)
    : lines(s.tn, (c) => `  let bc${c} = bBase + min(j0 + ${c}u, u.n - 1u) * ${kq};`);
  const accs = lines(s.tm, (r) => `  ${range(s.tn).map((c) => `var c${r}_${c} = 0.0;`).join(" ")}`);
  // Loads of the 4 K values starting at 4q (q in vec4 units when vec).
  const aLoad = (r: number) =>
    aVec
      ? `A[ar${r} + q]`
      : s.transA
      ? `vec4<f32>(${range(4).map((e) => `A[(4u * q + ${e}u) * u.m + ar${r}]`).join(", ")})`
      : `vec4<f32>(${range(4).map((e) => `A[ar${r} + 4u * q + ${e}u]`).join(", ")})`;
  const bLoad = (c: number) =>
    s.bTex
      ? texel("B", "q", `bc${c}`)
      : s.vec
      ? `B[bc${c} + q]`
      : `vec4<f32>(${range(4).map((e) => `B[bc${c} + 4u * q + ${e}u]`).join(", ")})`;
  const step = (la: (r: number) => string, lb: (c: number) => string, op: (c: number, a: string) => string) =>
    `${lines(s.tn, (c) => `    let b${c} = ${lb(c)};`)}
${
      rowUpdates(s.tm, !!s.aFirst, la, (r, a) =>
        range(s.tn).map((c) =>
          `c${r}_${c} += ${op(c, a)};`
        ).join(" "))
    }`;
  // Scalar K tail (k % 4 != 0): one product per step.
  const tail = s.vec ? "" : `  for (var p = (u.k / 4u) * 4u; p < u.k; p = p + 1u) {
${
    step(
      (r) => `A[${s.transA ? `p * u.m + ar${r}` : `ar${r} + p`}]`,
      (c) => `B[bc${c} + p]`,
      (c, a) => `${a} * b${c}`,
    )
  }
  }`;
  const at = (r: number, c: number) => `c${r}_${c}`;
  const cVec = (r: number, c4: number) => `vec4<f32>(${range(4).map((e) => at(r, 4 * c4 + e)).join(", ")})`;
  return `${
    _prologue(s, aVec ? "vec4<f32>" : "f32", s.vec ? "vec4<f32>" : "f32", s.vecC ? "vec4<f32>" : "f32")
  }
${rows}
${cols}
${accs}
  for (var q = 0u; q < u.k / 4u; q = q + 1u) {
${step(aLoad, bLoad, (c, a) => `dot(${a}, b${c})`)}
  }
${tail}
${_stores(s, s.vecC ? cVec : null, at)}
}
`;
}

/**
 * A `gpu`-family tile: a workgroup of wx×wy threads, each computing tm×tn outputs (so a block of
 * (wy·tm)×(wx·tn)), staging K in steps of bk through workgroup memory.
 */
export interface GpuMatmulTile {
  tm: number;
  tn: number;
  wx: number;
  wy: number;
  bk: number;
}

/** 128×128 blocks of 256 threads, 8×8 outputs each; K staged 8 at a time (big products). */
export const GPU_TILE_XL: GpuMatmulTile = { tm: 8, tn: 8, wx: 16, wy: 16, bk: 8 };
/** 64×64 blocks of 256 threads, 4×4 outputs each; K staged 16 at a time. */
export const GPU_TILE_LARGE: GpuMatmulTile = { tm: 4, tn: 4, wx: 16, wy: 16, bk: 16 };
/** 32×32 blocks of 64 threads for outputs too small to give the large tile enough blocks. */
export const GPU_TILE_SMALL: GpuMatmulTile = { tm: 4, tn: 4, wx: 8, wy: 8, bk: 16 };

/** Blocks of output a real GPU wants in flight before K is split across workgroups. */
const _GPU_MIN_BLOCKS = 256;
/** A K slice of a split is at least this long. */
const _GPU_MIN_K_SLICE = 128;
/** The most slices K is split into. */
const _GPU_MAX_SPLITS = 32;

/**
 * The `gpu`-family plan for a shape: the block tile, and how many K slices (split-K) run as separate
 * workgroups, their partial products summed by a second kernel. Weight gradients (Xᵀ·dY: a small
 * output, K = the tokens) would otherwise run a handful of workgroups each walking all of K.
 * `splits` is 1 on `cpu-simd`.
 *
 * @example
 * ```ts ignore
 * const { tile, splits } = matmulPlan(ctx, 64, 1024, 64); // 64×64 blocks, K split 8 ways
 * ```
 */
export function matmulPlan(
  ctx: GpuContext,
  m: number,
  k: number,
  n: number,
  batch = 1,
): { tile: GpuMatmulTile; splits: number } {
  const blocks = (t: GpuMatmulTile) => batch * Math.ceil(m / (t.wy * t.tm)) * Math.ceil(n / (t.wx * t.tn));
  if (ctx.profile !== "gpu") return { tile: GPU_TILE_LARGE, splits: 1 };
  // Measured on an H200 (2026-11-26, a tuning sweep, see docs/performance.md): 128×128 blocks win
  // from 2048² outputs, 64×64 below; a 64×64 block with K split beats 32×32 blocks unsplit (256×2048×1024
  // Xᵀ·dY: 0.79 vs 1.32 ms), so 32×32 only serves outputs narrower than 64.
  const tile = blocks(GPU_TILE_XL) >= _GPU_MIN_BLOCKS
    ? GPU_TILE_XL
    : Math.min(m, n) >= 64
    ? GPU_TILE_LARGE
    : GPU_TILE_SMALL;
  const b = blocks(tile);
  const splits = b >= _GPU_MIN_BLOCKS ? 1 : Math.max(
    1,
    Math.min(_GPU_MAX_SPLITS, Math.ceil(_GPU_MIN_BLOCKS / b), Math.floor(k / _GPU_MIN_K_SLICE)),
  );
  return { tile, splits };
}

function _checkGpuTile(t: GpuMatmulTile): void {
  const threads = t.wx * t.wy, bm = t.wy * t.tm, bn = t.wx * t.tn;
  const ok = [4, 8].includes(t.tm) && [4, 8].includes(t.tn) && [4, 8, 16, 32].includes(t.wx) &&
    [4, 8, 16, 32].includes(t.wy) && [4, 8, 16, 32].includes(t.bk) && threads <= 256 &&
    (bm * t.bk) % threads === 0 && (bn * t.bk) % threads === 0;
  if (!ok) throw new RangeError(`Cannot matmul: unsupported gpu tile ${JSON.stringify(t)}`);
}

/**
 * WGSL of the `gpu` family: each thread keeps tm×tn outputs in vec4 registers; per K step of bk the
 * workgroup stages a (wy·tm)×bk slice of A and a bk×(wx·tn) slice of B in workgroup memory as vec4s
 * (consecutive threads load consecutive addresses of whichever axis is contiguous in that layout, zero
 * beyond the edges), then each thread reads tm/4 + tn/4 vec4s per k for tm·tn multiply-adds. Workgroups
 * are numbered over (batch, K slice, row block, column block); a slice's partial result goes to its own
 * (m, n) plane of C (the scratch when split), so with one slice C is the output itself.
 */
export function _matmulGpuWgsl(
  t: GpuMatmulTile,
  transA: boolean,
  transB: boolean,
  operands: MatmulOperands = "f32",
  act?: ActivationKind,
  res = false,
): string {
  const g = _gpuDims(t);
  return `${_gpuDecls(t, g, operands, res)}
${act ? ACT_VEC4[act] : ""}

${_gpuIndices(t, g)}
${_vec4Accumulators(t.tm, g.tn4)}
  for (var k0 = kBegin; k0 < kEnd; k0 = k0 + ${t.bk}u) {
${_gpuStage(t, g, "A", transA, transB, operands)}
${_gpuStage(t, g, "B", transA, transB, operands)}
    workgroupBarrier();
    for (var kk = 0u; kk < ${t.bk}u; kk = kk + 1u) {
${_gpuInner(t, g, operands)}
    }
    workgroupBarrier();
  }
  if (!live) { return; }
  let cBase = (bi * u.splits + ks) * u.cStride;
${_gpuStores(t, act, res)}
}
`;
}

/** Sizes derived from a `gpu`-family tile. */
interface _GpuDims {
  /** Threads per workgroup. */
  T: number;
  /** Rows and columns of the workgroup's output block. */
  BM: number;
  BN: number;
  /**
   * Row strides of the staged tiles in vec4s, padded by one so that threads storing along K (A not
   * transposed, B transposed) spread over the memory banks instead of hitting one.
   */
  BM4: number;
  BN4: number;
  /** vec4s of a thread's rows and columns. */
  tm4: number;
  tn4: number;
}

/** The block and staging sizes of a `gpu`-family tile. */
function _gpuDims(t: GpuMatmulTile): _GpuDims {
  const BM = t.wy * t.tm, BN = t.wx * t.tn;
  return { T: t.wx * t.wy, BM, BN, BM4: BM / 4 + 1, BN4: BN / 4 + 1, tm4: t.tm / 4, tn4: t.tn / 4 };
}

/**
 * `gpu` family: the bindings, the uniform and the two staged tiles in workgroup memory. With f16 operands
 * (`f16`: `enable f16;`, the operands and the staged tiles in f16; `f16-packed`: the operands as u32 words of
 * two halves, the tiles in f32) the sums stay f32.
 */
function _gpuDecls(t: GpuMatmulTile, g: _GpuDims, operands: MatmulOperands, res: boolean): string {
  const el = operands === "f32" ? "f32" : operands === "f16" ? "f16" : "u32";
  const tile = operands === "f16" ? "vec4<f16>" : "vec4<f32>";
  return `${
    operands === "f16" ? "enable f16;\n" : ""
  }@group(0) @binding(0) var<storage, read> A: array<${el}>;
@group(0) @binding(1) var<storage, read> B: array<${el}>;
@group(0) @binding(2) var<storage, read_write> C: array<f32>;
${res ? "@group(0) @binding(3) var<storage, read> R: array<f32>;\n" : ""}${_UNIFORM_WGSL}
@group(0) @binding(${res ? 4 : 3}) var<uniform> u: U;
var<workgroup> As: array<${tile}, ${t.bk * g.BM4}>; // [k][rows / 4], one vec4 of padding per k
var<workgroup> Bs: array<${tile}, ${t.bk * g.BN4}>; // [k][columns / 4], one vec4 of padding per k`;
}

/** `gpu` family: the WGSL reading operand element `idx` of `which` as the staged tiles' scalar type. */
function _gpuLoad(which: "A" | "B", idx: string, operands: MatmulOperands): string {
  return operands === "f16-packed"
    ? `unpack2x16float(${which}[(${idx}) >> 1u])[(${idx}) & 1u]`
    : `${which}[${idx}]`;
}

/**
 * `gpu` family: the entry point's head, decoding the linear workgroup id into (batch, K slice, row block,
 * column block), the slice's K range and the operands' bases.
 */
function _gpuIndices(t: GpuMatmulTile, g: _GpuDims): string {
  return `@compute @workgroup_size(${t.wx}, ${t.wy})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let g = wid.x + wid.y * nwg.x; // uniform: every thread of a workgroup takes the same branch
  let live = g < u.groups;
  let cg = g % u.ncg;
  let rt = (g / u.ncg) % u.nrt;
  let rest = g / (u.ncg * u.nrt);
  let ks = rest % u.splits;
  let bi = rest / u.splits;
  let kBegin = ks * u.kChunk;
  let kEnd = min(kBegin + u.kChunk, u.k);
  let aBase = bi * u.aStride;
  let bBase = bi * u.bStride;
  let row0 = rt * ${g.BM}u;
  let col0 = cg * ${g.BN}u;`;
}

/**
 * `gpu` family: the thread's share of one K step's tile of A or B into workgroup memory, element e at (kk, r)
 * with the layout's contiguous axis fastest (coalesced loads), zero beyond the edges.
 */
function _gpuStage(
  t: GpuMatmulTile,
  g: _GpuDims,
  which: "A" | "B",
  transA: boolean,
  transB: boolean,
  operands: MatmulOperands = "f32",
): string {
  const trans = which === "A" ? transA : transB, span = which === "A" ? g.BM : g.BN;
  const per = (span * t.bk) / g.T;
  // A is (m, k) row-major, or (k, m) when transposed; B is (k, n), or (n, k) when transposed.
  const alongSpan = which === "A" ? transA : !transB;
  const idx = which === "A"
    ? (trans ? "aBase + p * u.m + x" : "aBase + x * u.k + p")
    : (trans ? "bBase + x * u.k + p" : "bBase + p * u.n + x");
  const lim = which === "A" ? "u.m" : "u.n", first = which === "A" ? "row0" : "col0";
  return lines(per, (e) => {
    const s = `(t + ${e * g.T}u)`;
    const [kk, r] = alongSpan
      ? [`${s} / ${span}u`, `${s} % ${span}u`]
      : [`${s} % ${t.bk}u`, `${s} / ${t.bk}u`];
    return `    {
      let kk = ${kk}; let r = ${r}; let p = k0 + kk; let x = ${first} + r;
      var v = ${operands === "f16" ? "0.0h" : "0.0"};
      if (live && p < kEnd && x < ${lim}) { v = ${_gpuLoad(which, idx, operands)}; }
      ${which}s[kk * ${which === "A" ? g.BM4 : g.BN4}u + r / 4u][r % 4u] = v;
    }`;
  });
}

/** `gpu` family: one staged k, tm/4 + tn/4 vec4 reads from workgroup memory for tm·tn multiply-adds. */
function _gpuInner(t: GpuMatmulTile, g: _GpuDims, operands: MatmulOperands = "f32"): string {
  const { tm4, tn4, BM4, BN4 } = g;
  // f16 tiles widen to f32 as they are read: the products and sums are f32 (exact products of halves).
  const read = (x: string) => (operands === "f16" ? `vec4<f32>(${x})` : x);
  return `      ${
    range(tm4).map((q) => `let a${q} = ${read(`As[kk * ${BM4}u + lid.y * ${tm4}u + ${q}u]`)};`).join(" ")
  }
      ${range(tn4).map((c) => `let b${c} = ${read(`Bs[kk * ${BN4}u + lid.x * ${tn4}u + ${c}u]`)};`).join(" ")}
${
    lines(t.tm, (r) =>
      "      " + range(tn4).map((c) =>
        `c${r}_${c} = fma(vec4<f32>(a${r >> 2}[${r & 3}]), b${c}, c${r}_${c});`
      )
        .join(" "))
  }`;
}

/**
 * `gpu` family epilogue: alpha, optional accumulate (or the product's epilogue: `act`, a residual `res`),
 * each output stored if inside (m, n).
 */
function _gpuStores(t: GpuMatmulTile, act?: ActivationKind, res = false): string {
  const put = act || res
    ? `let ix = cBase + i * u.n + j; C[ix] = ${_epilogueWgsl(act, res, "u.alpha * v", "ix", false)};`
    : `let x = u.alpha * v; let ix = cBase + i * u.n + j; if (u.acc != 0u) { C[ix] = C[ix] + x; } else { C[ix] = x; }`;
  return lines(t.tm, (r) =>
    `  { let i = row0 + lid.y * ${t.tm}u + ${r}u;
    if (i < u.m) {
${
      lines(t.tn, (c) =>
        `      { let j = col0 + lid.x * ${t.tn}u + ${c}u; if (j < u.n) { let v = c${r}_${c >> 2}[${
          c & 3
        }]; ${put} } }`)
    }
    }
  }`);
}

/**
 * WGSL summing the split-K planes: C[b, e] = alpha · Σ_s P[b, s, e] (+ C), or with an epilogue
 * R[b, e] + act(alpha · Σ_s P[b, s, e]).
 */
function _splitSumWgsl(act: ActivationKind | undefined, res: boolean): string {
  const store = act || res
    ? `C[e] = ${_epilogueWgsl(act, res, "u.alpha * s", "e", false)};`
    : "let x = u.alpha * s;\n  if (u.acc != 0u) { C[e] = C[e] + x; } else { C[e] = x; }";
  return `@group(0) @binding(0) var<storage, read> P: array<f32>;
@group(0) @binding(1) var<storage, read_write> C: array<f32>;
${
    res
      ? "@group(0) @binding(2) var<storage, read> R: array<f32>;\n"
      : ""
  }struct S { total: u32, plane: u32, splits: u32, acc: u32, alpha: f32, p0: u32, p1: u32, p2: u32 }
@group(0) @binding(${res ? 3 : 2}) var<uniform> u: S;
${act ? ACT_VEC4[act] : ""}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = (wid.x + wid.y * nwg.x) * 256u + lid;
  if (e >= u.total) { return; }
  let b = e / u.plane;
  let o = (b * u.splits) * u.plane + e % u.plane;
  var s = 0.0;
  for (var q = 0u; q < u.splits; q = q + 1u) { s = s + P[o + q * u.plane]; }
  ${store}
}
`;
}

/**
 * Matrix multiply: C = alpha · op(A) · op(B) (+ C when `accumulate`), op = optional transpose, with an
 * optional batch (a stride per batch, or one B broadcast across the batch).
 *
 * Two template families, picked by `ctx.profile`:
 * - `cpu-simd` (llvmpipe and other software adapters, shared/LLVMPIPE_NOTES.md): no shared memory, no
 *   barriers; each invocation holds a TM×TN register tile in vec4 accumulators, workgroups of ≤ 8 lanes
 *   side by side along N, the tile's rows taken from `workgroup_id` so A's addresses are the same for every
 *   lane. B not transposed ("outer" form): per k, one A scalar per row times vec4s of B's row. B transposed
 *   ("dot" form, A·Bᵀ): vec4s along K of both sides into one vec4 accumulator per output, summed at the end.
 *   Out-of-range rows/columns are clamped on load (no branch in the K loop) and skipped on store, so any
 *   size works; vec4 loads need the vec4 axis (N, or K for the dot form) divisible by 4, else the same
 *   template loads scalars.
 * - `gpu` (real GPUs): 8×8 threads, 4×4 outputs each, K tiles of 8 staged in workgroup memory; scalar loads
 *   with zero fill, any layout and size.
 *
 * Workgroups are numbered linearly over (batch, row tiles, column groups) and folded into 2-D with
 * {@linkcode grid}, so a huge M (or batch) never exceeds the 65535-per-dimension limit.
 *
 * @module
 */
import { assertBindable, type GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import { grid, type KernelCall } from "../dispatch.ts";

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
  /** C stored as vec4 (N divisible by 4). */
  vecC: boolean;
}

const _UNIFORM_FIELDS = 12;

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
  const bSize = (o.broadcastB ? 1 : batch) * k * n;
  _needs(o.a, batch * m * k, "a");
  _needs(o.b, bSize, "b");
  _needs(o.c, batch * m * n, "c");
  for (const [t, what] of [[o.a, "a"], [o.b, "b"], [o.c, "c"]] as const) {
    assertBindable(ctx, t.buffer.size, `matmul ${what} ("${t.label}")`);
  }
  const transA = !!o.transA, transB = !!o.transB;
  const label = `matmul_${transA ? "t" : "n"}${transB ? "t" : "n"}`;
  const bStride = o.broadcastB ? 0 : k * n;
  if (ctx.profile === "gpu") {
    const groups = batch * Math.ceil(m / _GPU_BLOCK) * Math.ceil(n / _GPU_BLOCK);
    return {
      label,
      code: _matmulGpuWgsl(transA, transB),
      bindings: [o.a, o.b, o.c],
      uniform: _uniform(
        m,
        k,
        n,
        [m * k, bStride, m * n],
        Math.ceil(n / _GPU_BLOCK),
        Math.ceil(m / _GPU_BLOCK),
        groups,
        o,
      ),
      workgroups: grid(ctx, groups),
    };
  }
  const tile = o.tile ?? matmulTile(m, n, batch, transB);
  _checkTile(tile, transB);
  const vec = transB ? k % 4 === 0 : n % 4 === 0;
  // Strides in the units of each binding's element (vec4 where that operand loads as vec4).
  const aVec = vec && transB && !transA, bVec = vec, vecC = n % 4 === 0;
  const strides = [aVec ? (m * k) / 4 : m * k, bVec ? bStride / 4 : bStride, m * n];
  const ncg = Math.ceil(n / (tile.wx * tile.tn)), nrt = Math.ceil(m / tile.tm);
  const groups = batch * nrt * ncg;
  return {
    label,
    code: _matmulWgsl({ ...tile, transA, transB, vec, vecC }),
    bindings: [o.a, o.b, o.c],
    uniform: _uniform(m, k, n, strides, ncg, nrt, groups, o),
    workgroups: grid(ctx, groups),
  };
}

/**
 * The cpu-simd register tile for a shape: as big as LLVMPIPE_NOTES found fastest (32×32 outer form,
 * 16×16 dot form, 8 lanes), shrunk so that a workgroup does not mostly hang past N or M, and so that
 * there are a few workgroups for the CPU threads to share.
 */
export function matmulTile(m: number, n: number, batch = 1, transB = false): MatmulTile {
  const maxTn = transB ? 16 : 32, maxTm = transB ? 16 : 32;
  let wx = 8, tn = maxTn;
  while (tn > 4 && wx * tn > Math.max(n, 4 * wx)) tn /= 2;
  while (wx > 1 && wx * tn >= 2 * n) wx /= 2;
  let tm = maxTm;
  while (tm > 1 && tm >= 2 * m) tm /= 2;
  const groups = () => batch * Math.ceil(m / tm) * Math.ceil(n / (wx * tn));
  while (groups() < 4 && tm > 8) tm /= 2;
  while (groups() < 4 && tn > 8) tn /= 2;
  return { tm, tn, wx };
}

function _checkTile(t: MatmulTile, transB: boolean): void {
  const ok = [1, 2, 4, 8, 16, 32].includes(t.tm) && [4, 8, 16, 32].includes(t.tn) &&
    [1, 2, 4, 8, 16, 32, 64].includes(t.wx) && (!transB || t.tm * t.tn <= 512);
  if (!ok) throw new RangeError(`Cannot matmul: unsupported tile ${JSON.stringify(t)}`);
}

function _needs(t: GpuTensor, elements: number, what: string): void {
  if (t.size < elements) {
    throw new RangeError(`Cannot matmul: ${what} ("${t.label}") has ${t.size} elements, needs ${elements}`);
  }
}

// Uniform layout shared by both families (12 × 4 bytes).
const _UNIFORM_WGSL = `struct U { m: u32, k: u32, n: u32, aStride: u32, bStride: u32, cStride: u32,
  ncg: u32, nrt: u32, groups: u32, acc: u32, alpha: f32, pad: u32 }`;

function _uniform(
  m: number,
  k: number,
  n: number,
  strides: readonly number[],
  ncg: number,
  nrt: number,
  groups: number,
  o: MatmulOptions,
): ArrayBuffer {
  const buf = new ArrayBuffer(_UNIFORM_FIELDS * 4), u = new Uint32Array(buf);
  u.set([m, k, n, strides[0]!, strides[1]!, strides[2]!, ncg, nrt, groups, o.accumulate ? 1 : 0]);
  new Float32Array(buf)[10] = o.alpha ?? 1;
  return buf;
}

const _range = (n: number) => Array.from({ length: n }, (_, i) => i);
const _lines = (n: number, f: (i: number) => string) => _range(n).map(f).join("\n");

/** WGSL of the cpu-simd family for one {@linkcode MatmulSpec}. */
export function _matmulWgsl(s: MatmulSpec): string {
  return s.transB ? _dotWgsl(s) : _outerWgsl(s);
}

function _prologue(s: MatmulSpec, aType: string, bType: string, cType: string): string {
  return `@group(0) @binding(0) var<storage, read> A: array<${aType}>;
@group(0) @binding(1) var<storage, read> B: array<${bType}>;
@group(0) @binding(2) var<storage, read_write> C: array<${cType}>;
${_UNIFORM_WGSL}
@group(0) @binding(3) var<uniform> u: U;

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

// Epilogue: alpha, optional accumulate, stores guarded by row and column. `vec4At(r, c4)` gives row r's
// c4-th vec4 of outputs when C is stored as vec4, else `at(r, c)` gives one output.
function _stores(
  s: MatmulSpec,
  vec4At: ((r: number, c4: number) => string) | null,
  at: (r: number, c: number) => string,
): string {
  const put = (ix: string, x: string) =>
    `let x = u.alpha * (${x}); let ix = ${ix}; if (u.acc != 0u) { C[ix] = C[ix] + x; } else { C[ix] = x; }`;
  const rows = _range(s.tm).map((r) => {
    const cols = vec4At
      ? _lines(s.tn / 4, (c) => `      if (j0 + ${4 * c}u < u.n) { ${put(`co / 4u + ${c}u`, vec4At(r, c))} }`)
      : _lines(s.tn, (c) => `      if (j0 + ${c}u < u.n) { ${put(`co + ${c}u`, at(r, c))} }`);
    return `  if (i0 + ${r}u < u.m) {\n    let co = cBase + (i0 + ${r}u) * u.n + j0;\n${cols}\n  }`;
  });
  return `  let cBase = bi * u.cStride;\n${rows.join("\n")}`;
}

// B not transposed: per k, A scalars (one per row, uniform over lanes) times vec4s along B's row.
function _outerWgsl(s: MatmulSpec): string {
  const tn4 = s.tn / 4;
  const bType = s.vec ? "vec4<f32>" : "f32";
  const rows = _lines(
    s.tm,
    (r) =>
      s.transA
        ? `  let ar${r} = aBase + min(i0 + ${r}u, u.m - 1u);`
        : `  let ar${r} = aBase + min(i0 + ${r}u, u.m - 1u) * u.k;`,
  );
  const cols = s.vec
    ? _lines(tn4, (c) => `  let bc${c} = min(j0 / 4u + ${c}u, u.n / 4u - 1u);`)
    : _lines(s.tn, (c) => `  let bc${c} = min(j0 + ${c}u, u.n - 1u);`);
  const accs = _lines(
    s.tm,
    (r) => `  ${_range(tn4).map((c) => `var c${r}_${c} = vec4<f32>(0.0);`).join(" ")}`,
  );
  const bRow = s.vec ? "bBase + p * (u.n / 4u)" : "bBase + p * u.n";
  const bLoads = s.vec
    ? _lines(tn4, (c) => `    let b${c} = B[bo + bc${c}];`)
    : _lines(tn4, (c) =>
      `    let b${c} = vec4<f32>(${_range(4).map((e) => `B[bo + bc${4 * c + e}]`).join(", ")});`);
  const fmas = _lines(s.tm, (r) =>
    `    { let a = A[${s.transA ? `ap + ar${r}` : `ar${r} + p`}]; ` +
    _range(tn4).map((c) => `c${r}_${c} += a * b${c};`).join(" ") + " }");
  const cVec = s.vec ? (r: number, c: number) => `c${r}_${c}` : null;
  const scalar = (r: number, c: number) => `c${r}_${c >> 2}[${c & 3}]`;
  return `${_prologue(s, "f32", bType, s.vec ? "vec4<f32>" : "f32")}
${rows}
${cols}
${accs}
  for (var p = 0u; p < u.k; p = p + 1u) {
    let bo = ${bRow};${s.transA ? "\n    let ap = p * u.m;" : ""}
${bLoads}
${fmas}
  }
${_stores(s, cVec, scalar)}
}
`;
}

// B transposed (A·Bᵀ): vec4s along K of A's row and B's row into one vec4 accumulator per output.
function _dotWgsl(s: MatmulSpec): string {
  const aVec = s.vec && !s.transA;
  const kq = s.vec ? "u.k / 4u" : "u.k";
  const rows = _lines(
    s.tm,
    (r) =>
      s.transA
        ? `  let ar${r} = aBase + min(i0 + ${r}u, u.m - 1u);`
        : `  let ar${r} = aBase + min(i0 + ${r}u, u.m - 1u) * ${aVec ? kq : "u.k"};`,
  );
  const cols = _lines(s.tn, (c) => `  let bc${c} = bBase + min(j0 + ${c}u, u.n - 1u) * ${kq};`);
  const accs = _lines(
    s.tm,
    (r) => `  ${_range(s.tn).map((c) => `var c${r}_${c} = vec4<f32>(0.0);`).join(" ")}`,
  );
  // Loads of the 4 K values starting at p (in vec4 units when vec).
  const aLoad = (r: number, p: string) =>
    aVec
      ? `A[ar${r} + ${p}]`
      : s.transA
      ? `vec4<f32>(${_range(4).map((e) => `A[(4u * ${p} + ${e}u) * u.m + ar${r}]`).join(", ")})`
      : `vec4<f32>(${_range(4).map((e) => `A[ar${r} + 4u * ${p} + ${e}u]`).join(", ")})`;
  const bLoad = (c: number, p: string) =>
    s.vec
      ? `B[bc${c} + ${p}]`
      : `vec4<f32>(${_range(4).map((e) => `B[bc${c} + 4u * ${p} + ${e}u]`).join(", ")})`;
  const body = (load: (p: string) => [(r: number) => string, (c: number) => string], p: string) => {
    const [la, lb] = load(p);
    return `${_lines(s.tn, (c) => `    let b${c} = ${lb(c)};`)}
${
      _lines(s.tm, (r) =>
        `    { let a = ${la(r)}; ` + _range(s.tn).map((c) =>
          `c${r}_${c} += a * b${c};`
        ).join(" ") +
        " }")
    }`;
  };
  const main = body((p) => [(r) => aLoad(r, p), (c) => bLoad(c, p)], "q");
  // Scalar K tail (k % 4 != 0): one product per step into the accumulators' x lane.
  const tail = s.vec ? "" : `  for (var p = (u.k / 4u) * 4u; p < u.k; p = p + 1u) {
${_lines(s.tn, (c) => `    let b${c} = vec4<f32>(B[bc${c} + p], 0.0, 0.0, 0.0);`)}
${
    _lines(s.tm, (r) =>
      `    { let a = vec4<f32>(A[${s.transA ? `p * u.m + ar${r}` : `ar${r} + p`}], 0.0, 0.0, 0.0); ` +
      _range(s.tn).map((c) =>
        `c${r}_${c} += a * b${c};`
      ).join(" ") + " }")
  }
  }`;
  const hsum = (r: number, c: number) => `dot(c${r}_${c}, vec4<f32>(1.0))`;
  const cVec = (r: number, c4: number) =>
    `vec4<f32>(${_range(4).map((e) => hsum(r, 4 * c4 + e)).join(", ")})`;
  return `${
    _prologue(s, aVec ? "vec4<f32>" : "f32", s.vec ? "vec4<f32>" : "f32", s.vecC ? "vec4<f32>" : "f32")
  }
${rows}
${cols}
${accs}
  for (var q = 0u; q < u.k / 4u; q = q + 1u) {
${main}
  }
${tail}
${_stores(s, s.vecC ? cVec : null, hsum)}
}
`;
}

const _GPU_BLOCK = 32;

/** WGSL of the `gpu` family: 8×8 threads × 4×4 outputs, K tiles of 8 in workgroup memory. */
export function _matmulGpuWgsl(transA: boolean, transB: boolean): string {
  const aIdx = transA ? "aBase + p * u.m + i" : "aBase + i * u.k + p";
  const bIdx = transB ? "bBase + j * u.k + p" : "bBase + p * u.n + j";
  return `@group(0) @binding(0) var<storage, read> A: array<f32>;
@group(0) @binding(1) var<storage, read> B: array<f32>;
@group(0) @binding(2) var<storage, read_write> C: array<f32>;
${_UNIFORM_WGSL}
@group(0) @binding(3) var<uniform> u: U;
var<workgroup> As: array<array<f32, 32>, 8>; // [k][row]
var<workgroup> Bs: array<array<f32, 32>, 8>; // [k][col]

@compute @workgroup_size(8, 8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let g = wid.x + wid.y * nwg.x; // uniform: every thread of a workgroup takes the same branch
  let live = g < u.groups;
  let cg = g % u.ncg;
  let rt = (g / u.ncg) % u.nrt;
  let bi = g / (u.ncg * u.nrt);
  let aBase = bi * u.aStride;
  let bBase = bi * u.bStride;
  let t = lid.y * 8u + lid.x;
  var acc: array<array<f32, 4>, 4>;
  for (var k0 = 0u; k0 < u.k; k0 = k0 + 8u) {
    for (var e = 0u; e < 4u; e = e + 1u) {
      let s = t * 4u + e; // 0..255: (kk, row) of the 8×32 tiles
      let kk = s / 32u;
      let rr = s % 32u;
      let p = k0 + kk;
      let i = rt * 32u + rr;
      let j = cg * 32u + rr;
      var av = 0.0;
      var bv = 0.0;
      if (live && p < u.k && i < u.m) { av = A[${aIdx}]; }
      if (live && p < u.k && j < u.n) { bv = B[${bIdx}]; }
      As[kk][rr] = av;
      Bs[kk][rr] = bv;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < 8u; kk = kk + 1u) {
      for (var r = 0u; r < 4u; r = r + 1u) {
        let a = As[kk][lid.y * 4u + r];
        for (var c = 0u; c < 4u; c = c + 1u) { acc[r][c] = fma(a, Bs[kk][lid.x * 4u + c], acc[r][c]); }
      }
    }
    workgroupBarrier();
  }
  if (!live) { return; }
  let cBase = bi * u.cStride;
  for (var r = 0u; r < 4u; r = r + 1u) {
    let i = rt * 32u + lid.y * 4u + r;
    for (var c = 0u; c < 4u; c = c + 1u) {
      let j = cg * 32u + lid.x * 4u + c;
      if (i < u.m && j < u.n) {
        let x = u.alpha * acc[r][c];
        let ix = cBase + i * u.n + j;
        if (u.acc != 0u) { C[ix] = C[ix] + x; } else { C[ix] = x; }
      }
    }
  }
}
`;
}

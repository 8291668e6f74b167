/**
 * Decoding's fused kernels (one row, batch-1 decoding; docs/performance.md "Dispatches per decoded token"):
 *
 * - {@linkcode fusedGemv}: the products that read one row — the block's norm recomputed inside them (every
 *   workgroup, or on llvmpipe every invocation, takes the row's mean and rstd itself), several weights in one
 *   dispatch (K and V, or Q, K and V), an activation after the product (the MLP's W1) and a residual added to
 *   it (Wo, W2): per layer the norm, the separate products, the activation and the residual add are no
 *   longer dispatches of their own;
 * - {@linkcode fusedRouteGate}: a router's logits inside its gate (softmax, rule, gate), optionally from
 *   the normalized row, which it then also writes for the experts that read it.
 *
 * Float64 twins: the `fused_gemv` and `fused_route_gate` entries of core/graph/cpu_ops.ts. Two forms, by
 * kernel profile: `gpu` (a workgroup of 16 columns × 16 lanes over d, the lanes' partials added in a fixed
 * order, the norm's sums as workgroup tree reductions) and `cpu-simd` (llvmpipe: one invocation per group of
 * up to 16 columns over all of d, vec4 loads along d, no barriers).
 *
 * @module
 */
import type { ActivationKind, NormKind, RouteRule } from "../../core/graph/op_types.ts";
import { type GpuTensor, textureCopyFits, textureMirror } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import { grid, type KernelCall } from "../dispatch.ts";
import {
  type Binding,
  headedKernel,
  simpleKernel,
  sumOf4,
  texel,
  type UniformFields,
  VEC4_LANES,
  vecGroup,
  workgroupReduceWgsl,
} from "./common.ts";
import { ACT_VEC4, range } from "./moe_common.ts";
import { RANK_WGSL, RULE_KEEP_WGSL } from "./routing.ts";
import { softmaxRowWgsl } from "./softmax.ts";

/** The norm a fused kernel recomputes from its input row: kind, eps and its weights. */
export interface RowNorm {
  kind: NormKind | "none";
  eps: number;
  gamma?: GpuTensor;
  beta?: GpuTensor;
}

/** Options of {@linkcode fusedGemv}: x (1, d); y_j = act(norm(x) · W_j) (+ r); h = norm(x) when given. */
export interface FusedGemvOptions {
  x: GpuTensor;
  norm: RowNorm;
  weights: readonly GpuTensor[]; // W_j (d, n_j)
  ys: readonly GpuTensor[]; // y_j (1, n_j)
  /** Written with the normalized row (other ops read it). */
  h?: GpuTensor;
  activation: ActivationKind | "none";
  /** Added to the single product (after the activation). */
  residual?: GpuTensor;
  /** The single weight is stored (n, d) and used transposed (the tied LM head). */
  transB?: boolean;
}

/** Lanes over d per column ({@linkcode fusedGemv}'s `gpu` form): a workgroup is 16 columns × 16 lanes. */
const _L = 16;
/** Threads of a `gpu` form workgroup. */
const _T = _L * _L;

/**
 * y_j = act(norm(x) · W_j) (+ r) for every weight W_j in one dispatch; `h` receives norm(x).
 *
 * @example
 * ```ts ignore
 * const call = fusedGemv(ctx, { x, norm: { kind: "layernorm", eps: 1e-5, gamma, beta }, weights: [wk, wv],
 *   ys: [k, v], activation: "none" });
 * ```
 */
export function fusedGemv(ctx: GpuContext, o: FusedGemvOptions): KernelCall {
  const d = o.x.size;
  if (o.weights.length === 0 || o.weights.length !== o.ys.length) {
    throw new RangeError(`Cannot fuse the products: ${o.weights.length} weights for ${o.ys.length} outputs`);
  }
  o.weights.forEach((w, j) => {
    if (w.size !== d * o.ys[j]!.size) {
      throw new RangeError(
        `Cannot fuse the products: weight ${j} [${w.shape}] does not map a row of ${d} to ${o.ys[j]!.size}`,
      );
    }
  });
  if ((o.residual || o.activation !== "none" || o.transB) && o.weights.length !== 1) {
    throw new RangeError(
      "Cannot fuse the products: an activation, residual or transposed weight takes one weight",
    );
  }
  _checkNorm(o.norm, d, "the products");
  if (o.transB) return ctx.profile === "gpu" ? _gemvNtGpu(ctx, o) : _gemvNtCpu(ctx, o);
  return ctx.profile === "gpu" ? _gemvGpu(ctx, o) : _gemvCpu(ctx, o);
}

/**
 * Options of {@linkcode fusedRouteGate}: the routers of N tokens (one in batch-1 decoding, B in batched
 * decoding) from their rows x (N, d) and W (d, E); probs, mask, gate and logits are (N, E), h (N, d).
 */
export interface FusedRouteGateOptions {
  x: GpuTensor;
  norm: RowNorm;
  w: GpuTensor;
  probs: GpuTensor;
  mask: GpuTensor;
  gate: GpuTensor;
  logits: GpuTensor;
  /** Written with the normalized row. */
  h?: GpuTensor;
  rule: RouteRule;
}

/**
 * logits = norm(x) · W, then route_gate's probs = softmax(logits), the rule's mask and gate = probs ⊙ mask
 * (gpu/kernels/routing.ts routeGate), in one dispatch; every rule but threshold_topk.
 *
 * @example
 * ```ts ignore
 * const call = fusedRouteGate(ctx, { x: h, norm: { kind: "none", eps: 0 }, w, probs, mask, gate, logits,
 *   rule: { kind: "topk", epsilon: 0.5, k: 2, p: 0.9 } });
 * ```
 */
export function fusedRouteGate(ctx: GpuContext, o: FusedRouteGateOptions): KernelCall {
  const d = o.w.shape[0]!, N = o.x.size / d, E = o.probs.size / N, keep = RULE_KEEP_WGSL[o.rule.kind];
  if (keep === null) throw new RangeError(`Cannot fuse the router for rule ${o.rule.kind}`);
  if (!Number.isInteger(N) || N < 1 || !Number.isInteger(E) || o.w.size !== d * E) {
    throw new RangeError(
      `Cannot fuse the router: weight [${o.w.shape}] does not map rows of ${o.x.size / Math.max(N, 1)} to ` +
        `${o.probs.size / Math.max(N, 1)} experts`,
    );
  }
  const outputs = [[o.mask, "mask"], [o.gate, "gate"], [o.logits, "logits"]] as const;
  for (const [t, what] of outputs) {
    if (t.size !== N * E) {
      throw new RangeError(`Cannot fuse the router: ${what} has ${t.size} elements, not ${N * E}`);
    }
  }
  if (o.h && o.h.size !== N * d) {
    throw new RangeError(`Cannot fuse the router: h has ${o.h.size} elements, not ${N * d}`);
  }
  _checkNorm(o.norm, d, "the router");
  // More than one row: row `row` reads x and writes H at xo = row · d, and its (N, E) outputs at ob = row · E.
  // One row keeps the offsets out of the WGSL.
  const many = N > 1, xo = many ? "xo + " : "", ob = many ? "ob + " : "";
  const bindings: Binding[] = [
    ..._normBindings(o.x, o.norm, false),
    { name: "W", tensor: o.w },
    { name: "z", tensor: o.logits, write: true },
    { name: "sp", tensor: o.probs, write: true },
    { name: "mask", tensor: o.mask, write: true },
    { name: "gate", tensor: o.gate, write: true },
    ...(o.h ? [{ name: "H", tensor: o.h, write: true }] : []),
  ];
  const r = o.rule;
  const fields: UniformFields = [
    ["n", "u32", N],
    ["E", "u32", E],
    ["eps", "f32", r.epsilon],
    ["k", "u32", Math.min(r.k, E)],
    ["p", "f32", r.p],
    ["d", "u32", d],
    ["neps", "f32", o.norm.eps],
  ];
  const xn = _xn(o.norm.kind, false, xo);
  // Per expert e (probability v): the rank and mass ahead of it over `s`, the rule's mask and the gate.
  const decide = `${RANK_WGSL}
    let on = select(0.0, 1.0, ${keep});
    mask[${ob}e] = on;
    gate[${ob}e] = v * on;`;
  if (ctx.profile === "gpu") {
    return headedKernel({
      label: "route_gate_fused",
      bindings,
      fields,
      code: `var<workgroup> red: array<f32, ${_T}>;
var<workgroup> part: array<f32, ${_T}>;
var<workgroup> s: array<f32, ${E}>;
${workgroupReduceWgsl("wsum", _T, "red", "sum")}
${workgroupReduceWgsl("wmax", _T, "red", "max")}
@compute @workgroup_size(${_L}, ${_L})
fn main(@builtin(local_invocation_id) lid: vec3<u32>${
        many ? ", @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>" : ""
      }) {
  let t = lid.y * ${_L}u + lid.x;
  let b = 0u;${
        many
          ? `
  let row = wid.x + wid.y * nwg.x; // one workgroup per row
  if (row >= u.n) { return; }
  let xo = row * u.d; let ob = row * u.E;`
          : ""
      }
${_statsGpu(o.norm.kind, xo)}
${o.h ? `  for (var r = t; r < u.d; r = r + ${_T}u) { H[${xo}r] = ${xn}; }` : ""}
  for (var e0 = 0u; e0 < u.E; e0 = e0 + ${_L}u) {
    let c = e0 + lid.x;
    var a = 0.0;
    if (c < u.E) { for (var r = lid.y; r < u.d; r = r + ${_L}u) { a = a + ${xn} * W[r * u.E + c]; } }
    part[t] = a;
    workgroupBarrier();
    if (lid.y == 0u && c < u.E) {
      var zc = 0.0;
      for (var l = 0u; l < ${_L}u; l = l + 1u) { zc = zc + part[l * ${_L}u + lid.x]; }
      s[c] = zc; z[${ob}c] = zc;
    }
    workgroupBarrier();
  }
  var m = -3.402823e38;
  for (var e = t; e < u.E; e = e + ${_T}u) { m = max(m, s[e]); }
  m = wmax(m, t);
  var q = 0.0;
  for (var e = t; e < u.E; e = e + ${_T}u) { q = q + exp(s[e] - m); }
  q = wsum(q, t);
  let inv = 1.0 / q;
  for (var e = t; e < u.E; e = e + ${_T}u) { s[e] = exp(s[e] - m) * inv; sp[${ob}e] = s[e]; }
  workgroupBarrier();
  for (var e = t; e < u.E; e = e + ${_T}u) {
  ${decide}
  }
}`,
      workgroups: grid(ctx, N),
    });
  }
  // llvmpipe: one invocation per row; each element of the row normalized once (and written to H), times W's
  // row as vec4s when E allows, into E accumulators (private), then the gate as routeGate's.
  const vec = E % 4 === 0, A = vec ? E / 4 : E, V = vec ? "vec4<f32>" : "f32";
  // A frozen W (a decoder's) from its texture copy, W's d·E values viewed as (d·E/64, 64): vec4 i of W at
  // texel (i mod 16, i / 16). Every lane loads the same W, which a storage load loops over (docs/llvmpipe.md
  // "Weights as textures"): the 8 routers of a batched d512 step (B = 32) took 1.9–2.0 ms instead of
  // 2.4–2.8 (timestamps, two runs of each; one-row routers within the noise).
  const wTex = vec && (d * E) % 64 === 0 ? textureMirror(ctx, o.w, (d * E) / 64, 64) : null;
  const wLoad = wTex ? texel("W", `(r * ${A}u + c) % 16u`, `(r * ${A}u + c) / 16u`) : `W[r * ${A}u + c]`;
  const store = vec
    ? `let a = acc[c]; z[b + 4u * c] = a.x; z[b + 4u * c + 1u] = a.y; z[b + 4u * c + 2u] = a.z; z[b + 4u * c + 3u] = a.w;`
    : "z[b + c] = acc[c];";
  // Several rows: 8 invocations to a workgroup (llvmpipe's SIMD width); W's loads are the same address in
  // every lane. With W from its texture, the rows come from a texture copy of x made before the dispatch
  // (texel (j4, row)) and a frozen gamma and beta from theirs, where d is a multiple of 64: the same sums in
  // the same order, and the 8 routers of a d512 step at B = 32 took 0.94–1.08 ms instead of 1.65–1.78
  // (timestamps, two alternated runs). One row gained nothing in a whole step (a copy per router).
  const xTex = routerCopiesRows(N, d, E) && wTex !== null && textureCopyFits(ctx, o.x, N, d);
  const gTex = xTex && o.norm.kind !== "none" ? textureMirror(ctx, o.norm.gamma!, 1, d) : null;
  const bTex = xTex && o.norm.kind === "layernorm" ? textureMirror(ctx, o.norm.beta!, 1, d) : null;
  const views: Record<string, GPUTextureView | null> = { W: wTex, gamma: gTex, beta: bTex };
  const update = `for (var c = 0u; c < ${A}u; c = c + 1u) { acc[c] = acc[c] + xv * ${wLoad}; }`;
  const call = simpleKernel(ctx, {
    label: "route_gate_fused",
    bindings: bindings.map((b) =>
      views[b.name]
        ? { ...b, tensor: views[b.name]! }
        : b.name === "x" && xTex
        ? { ...b, texture: true }
        : b.name === "W"
        ? { ...b, type: V as "f32" | "vec4<f32>" }
        : b
    ),
    fields,
    invocations: N,
    workgroup: many ? 8 : 1,
    body: `  let b = ${many ? "i * u.E" : "0u"};${many ? " let xo = i * u.d; let ob = b;" : ""}
${xTex ? _rowStatsTex(o.norm.kind) : _statsCpuScalar(o.norm.kind, xo)}
  var acc: array<${V}, ${A}>;
${
      xTex
        ? _rowLoopTex(o.norm.kind, !!o.h, update, !!gTex, !!bTex)
        : `  for (var r = 0u; r < u.d; r = r + 1u) {
    let xv = ${xn};
    ${o.h ? `H[${xo}r] = xv;` : ""}
    ${update}
  }`
    }
  for (var c = 0u; c < ${A}u; c = c + 1u) { ${store} }
${softmaxRowWgsl("z", "sp", "u.E")}
  for (var e = 0u; e < u.E; e = e + 1u) {
  ${decide.replaceAll("s[b + ", "sp[b + ")}
  }`,
  });
  return xTex ? { ...call, textureCopies: [{ binding: 0, rows: N, cols: d }] } : call;
}

/**
 * The row's mean and rstd from its texture copy (`x`, texel (j4, i)), summed in the order of
 * {@linkcode _statsCpuScalar}: the same values.
 */
function _rowStatsTex(kind: RowNorm["kind"]): string {
  return _statsCpuOver(
    kind,
    (f) =>
      `for (var j4 = 0u; j4 < u.d / 4u; j4 = j4 + 1u) { let x4 = ${texel("x", "j4", "i")}; ${
        VEC4_LANES.map((c) => f(`x4.${c}`)).join(" ")
      } }`,
  );
}

/**
 * The router's loop over its row from the texture copy of x (texel (j4, i)): per element r the normalized
 * value (written to H with `h`) and `update`, in the order of the storage form; gamma and beta as texels of
 * their copies where given (`gTex`, `bTex`), else from their buffers.
 */
function _rowLoopTex(
  kind: RowNorm["kind"],
  h: boolean,
  update: string,
  gTex: boolean,
  bTex: boolean,
): string {
  const part = (q: number) => {
    const c = VEC4_LANES[q];
    return `    {
      let r = 4u * j4 + ${q}u;
      let xv = ${_xnOf(kind, `x4.${c}`, gTex ? `g4.${c}` : "gamma[r]", bTex ? `b4.${c}` : "beta[r]")};
      ${h ? "H[xo + r] = xv;" : ""}
      ${update}
    }`;
  };
  return `  for (var j4 = 0u; j4 < u.d / 4u; j4 = j4 + 1u) {
    let x4 = ${texel("x", "j4", "i")};
    ${gTex ? `let g4 = ${texel("gamma", "j4", "0u")};` : ""} ${
    bTex ? `let b4 = ${texel("beta", "j4", "0u")};` : ""
  }
${[0, 1, 2, 3].map(part).join("\n")}
  }`;
}

/** The normalized value of `v` (x's element) with its gamma `g` and beta `b`, from `mu` and `rs`. */
function _xnOf(kind: RowNorm["kind"], v: string, g: string, b: string, mu = "mu"): string {
  return kind === "none"
    ? v
    : kind === "layernorm"
    ? `((${v} - ${mu}) * rs * ${g} + ${b})`
    : `(${v} * rs * ${g})`;
}

/**
 * Whether the `cpu-simd` router of N rows of d reads them from a texture copy made before the dispatch (with
 * its W frozen, which it then reads from W's texture): several rows, E a multiple of 4 and d of 64.
 */
export function routerCopiesRows(N: number, d: number, E: number): boolean {
  return N > 1 && E % 4 === 0 && d % 64 === 0;
}

function _checkNorm(n: RowNorm, d: number, what: string): void {
  if (n.kind === "none") return;
  if (!n.gamma || n.gamma.size !== d || (n.kind === "layernorm" && (!n.beta || n.beta.size !== d))) {
    throw new RangeError(`Cannot fuse ${what}: the ${n.kind}'s weights must be ${d} wide`);
  }
}

/** Bindings of the input row and its norm's weights (as vec4s with `vec`). */
function _normBindings(x: GpuTensor, n: RowNorm, vec: boolean): Binding[] {
  const type = vec ? "vec4<f32>" as const : "f32" as const;
  return [
    { name: "x", tensor: x, type },
    ...(n.kind === "none" ? [] : [{ name: "gamma", tensor: n.gamma!, type }]),
    ...(n.kind === "layernorm" ? [{ name: "beta", tensor: n.beta!, type }] : []),
  ];
}

/**
 * WGSL of the row normalized from `mu` and `rs` (x itself without a norm): element r, or with `vec` vec4 j4
 * (x, gamma, beta bound as vec4s).
 */
function _xn(kind: RowNorm["kind"], vec = false, xo = ""): string {
  const i = vec ? "j4" : "r";
  return _xnOf(kind, `x[${xo}${i}]`, `gamma[${i}]`, `beta[${i}]`, vec ? "vec4<f32>(mu)" : "mu");
}
/**
 * `gpu` form: the row's mean (LayerNorm) and rstd as tree sums over the workgroup's threads (`wsum`), as
 * the norm kernel's two passes (gpu/kernels/norm.ts); mu = 0 and rs = 1 without a norm.
 */
function _statsGpu(kind: RowNorm["kind"], xo = ""): string {
  if (kind === "none") return "  let mu = 0.0; let rs = 1.0;";
  const mean = kind === "layernorm"
    ? `  var a0 = 0.0;
  for (var j = t; j < u.d; j = j + ${_T}u) { a0 = a0 + x[${xo}j]; }
  let mu = wsum(a0, t) / f32(u.d);`
    : "  let mu = 0.0;";
  return `${mean}
  var v0 = 0.0;
  for (var j = t; j < u.d; j = j + ${_T}u) { let c = x[${xo}j] - mu; v0 = v0 + c * c; }
  let rs = inverseSqrt(wsum(v0, t) / f32(u.d) + u.neps);`;
}

/** `cpu-simd` form, scalar loads: the row's mean and rstd in one invocation. */
function _statsCpuScalar(kind: RowNorm["kind"], xo = ""): string {
  return _statsCpuOver(kind, (f) => `for (var j = 0u; j < u.d; j = j + 1u) { ${f(`x[${xo}j]`)} }`);
}

/**
 * The row's mean (LayerNorm) and rstd in one invocation, element by element in order: `each(f)` is a loop
 * over the row's elements doing `f(element)` (a buffer's or a texture copy's, the same sums either way).
 */
function _statsCpuOver(kind: RowNorm["kind"], each: (f: (v: string) => string) => string): string {
  if (kind === "none") return "  let mu = 0.0; let rs = 1.0;";
  return `  var mu = 0.0;
  ${kind === "layernorm" ? `${each((v) => `mu = mu + ${v};`)} mu = mu / f32(u.d);` : ""}
  var v0 = 0.0;
  ${each((v) => `{ let c = ${v} - mu; v0 = v0 + c * c; }`)}
  let rs = inverseSqrt(v0 / f32(u.d) + u.neps);`;
}

/** `cpu-simd` form, vec4 loads (d divisible by 4): the row's mean and rstd in one invocation. */
function _statsCpuVec(kind: RowNorm["kind"]): string {
  if (kind === "none") return "  let mu = 0.0; let rs = 1.0;";
  return `  var mu = 0.0;
  ${
    kind === "layernorm"
      ? "for (var j4 = 0u; j4 < u.d / 4u; j4 = j4 + 1u) { let c = x[j4]; mu = mu + c.x + c.y + c.z + c.w; } mu = mu / f32(u.d);"
      : ""
  }
  var v0 = 0.0;
  for (var j4 = 0u; j4 < u.d / 4u; j4 = j4 + 1u) { let c = x[j4] - vec4<f32>(mu); v0 = v0 + dot(c, c); }
  let rs = inverseSqrt(v0 / f32(u.d) + u.neps);`;
}

/** The value stored for product sum `s` of column expression `i`: activation, then residual. */
function _finish(o: FusedGemvOptions, s: string, i: string, vec: boolean): string {
  let v = s;
  if (o.activation !== "none") v = vec ? `act(${v})` : `act(vec4<f32>(${v})).x`;
  return o.residual ? `R[${i}] + ${v}` : v;
}

/**
 * The `gpu` forms' WGSL up to their products: workgroup arrays, the reduction and activation functions, the
 * entry point of an (x, y) workgroup of 256 threads with `wi` (the workgroup) and `t` (the thread), the row's
 * mean and rstd, and the normalized row written by workgroup 0 when `o.h` is given.
 */
function _headGpu(o: FusedGemvOptions, x: number, y: number): string {
  const xn = _xn(o.norm.kind);
  return `var<workgroup> red: array<f32, ${_T}>;
var<workgroup> part: array<f32, ${_T}>;
${workgroupReduceWgsl("wsum", _T, "red", "sum")}
${o.activation === "none" ? "" : ACT_VEC4[o.activation]}
@compute @workgroup_size(${x}, ${y})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let wi = wid.x + wid.y * nwg.x;
  let t = lid.y * ${x}u + lid.x;
${_statsGpu(o.norm.kind)}
${o.h ? `  if (wi == 0u) { for (var r = t; r < u.d; r = r + ${_T}u) { H[r] = ${xn}; } }` : ""}`;
}

/** {@linkcode fusedGemv} on real GPUs: a workgroup per 16 columns of one weight, 16 lanes over d. */
function _gemvGpu(ctx: GpuContext, o: FusedGemvOptions): KernelCall {
  const d = o.x.size, ns = o.ys.map((y) => y.size), tiles = ns.map((n) => Math.ceil(n / _L));
  const starts = tiles.map((_, j) => tiles.slice(0, j).reduce((a, b) => a + b, 0));
  const total = tiles.reduce((a, b) => a + b, 0), J = ns.length, xn = _xn(o.norm.kind);
  const bindings: Binding[] = [
    ..._normBindings(o.x, o.norm, false),
    ...o.weights.map((w, j) => ({ name: `W${j}`, tensor: w })),
    ...o.ys.map((y, j) => ({ name: `Y${j}`, tensor: y, write: true })),
    ...(o.h ? [{ name: "H", tensor: o.h, write: true }] : []),
    ...(o.residual ? [{ name: "R", tensor: o.residual }] : []),
  ];
  const pick = range(J).map((j) =>
    `  if (wi >= ${starts[j]}u && wi < ${starts[j]! + tiles[j]!}u) { o = ${j}u; tile = wi - ${starts[j]}u; }`
  ).join("\n");
  const loops = range(J).map((j) =>
    `  if (o == ${j}u && i < ${ns[j]}u) {
    for (var r = lid.y; r < u.d; r = r + ${_L}u) { acc = acc + ${xn} * W${j}[r * ${ns[j]}u + i]; }
  }`
  ).join("\n");
  const stores = range(J).map((j) =>
    `    if (o == ${j}u && i < ${ns[j]}u) { Y${j}[i] = ${_finish(o, "s", "i", false)}; }`
  )
    .join("\n");
  return headedKernel({
    label: "gemv_fused",
    bindings,
    fields: [["d", "u32", d], ["neps", "f32", o.norm.eps]],
    code: `${_headGpu(o, _L, _L)}
  var o = ${J}u;
  var tile = 0u;
${pick}
  let i = tile * ${_L}u + lid.x;
  var acc = 0.0;
${loops}
  part[t] = acc;
  workgroupBarrier();
  if (lid.y == 0u) {
    var s = 0.0;
    for (var l = 0u; l < ${_L}u; l = l + 1u) { s = s + part[l * ${_L}u + lid.x]; }
${stores}
  }
}`,
    workgroups: grid(ctx, total),
  });
}

/**
 * {@linkcode fusedGemv} on llvmpipe: one invocation per group of up to 16 columns of one weight (vec4
 * accumulators where the width allows), each taking the row's norm itself and reading d as vec4s (four
 * rows of W per pass, one sum of 4 products per accumulator) when d is divisible by 4.
 */
function _gemvCpu(ctx: GpuContext, o: FusedGemvOptions): KernelCall {
  const d = o.x.size, xVec = d % 4 === 0;
  const shapes = o.ys.map((y) => {
    const n = y.size, c4 = vecGroup(n), q = c4 > 0 ? 4 : 1, per = Math.max(1, c4) * q;
    return { n, q, accs: Math.max(1, c4), inv: n / per, V: q === 4 ? "vec4<f32>" : "f32" };
  });
  const starts = shapes.map((_, j) => shapes.slice(0, j).reduce((a, s) => a + s.inv, 0));
  const total = shapes.reduce((a, s) => a + s.inv, 0);
  // Frozen weights read from their texture copies (docs/llvmpipe.md, "Weights as textures"), as many as the
  // adapter binds storage textures per kernel; any further ones from their buffers.
  let slots = ctx.device.limits.maxStorageTexturesPerShaderStage;
  const tex = o.weights.map((w, j) => {
    const view = shapes[j]!.q === 4 && slots > 0 ? textureMirror(ctx, w, d, shapes[j]!.n) : null;
    if (view) slots--;
    return view;
  });
  const bindings: Binding[] = [
    ..._normBindings(o.x, o.norm, xVec),
    ...o.weights.map((w, j) => ({
      name: `W${j}`,
      tensor: tex[j] ?? w,
      type: shapes[j]!.V as "f32" | "vec4<f32>",
    })),
    ...o.ys.map((y, j) => ({
      name: `Y${j}`,
      tensor: y,
      write: true,
      type: shapes[j]!.V as "f32" | "vec4<f32>",
    })),
    ...(o.h
      ? [{ name: "H", tensor: o.h, write: true, type: xVec ? "vec4<f32>" as const : "f32" as const }]
      : []),
    ...(o.residual ? [{ name: "R", tensor: o.residual, type: shapes[0]!.V as "f32" | "vec4<f32>" }] : []),
  ];
  const xn = _xn(o.norm.kind, xVec);
  const hWrite = o.h
    ? xVec
      ? `  if (i == 0u) { for (var j4 = 0u; j4 < u.d / 4u; j4 = j4 + 1u) { H[j4] = ${xn}; } }`
      : `  if (i == 0u) { for (var r = 0u; r < u.d; r = r + 1u) { H[r] = ${xn}; } }`
    : "";
  const outputs = shapes.map((s, j) => {
    const accs = range(s.accs), W = `W${j}`, ld = s.n / s.q;
    // W[row · ld + c0 + v]: from the texture, texel (c0 + v, row).
    const w = (row: string, v: number, index: string) =>
      tex[j] ? texel(W, `c0 + ${v}u`, row) : `${W}[${index}]`;
    const loop = xVec
      ? `    for (var j4 = 0u; j4 < u.d / 4u; j4 = j4 + 1u) {
      let xv = ${xn}; let r = 4u * j4 * ${ld}u + c0;
      ${
        accs.map((v) =>
          `a${v} = a${v} + ${
            sumOf4((e) => `xv.${VEC4_LANES[e]}`, (e) => w(`4u * j4 + ${e}u`, v, `r + ${e * ld + v}u`))
          };`
        ).join("\n      ")
      }
    }`
      : `    for (var r = 0u; r < u.d; r = r + 1u) {
      let xv = ${xn}; let b = r * ${ld}u + c0;
      ${accs.map((v) => `a${v} = a${v} + xv * ${w("r", v, `b + ${v}u`)};`).join(" ")}
    }`;
    return `  if (i >= ${starts[j]}u && i < ${starts[j]! + s.inv}u) {
    let c0 = (i - ${starts[j]}u) * ${s.accs}u;
    ${accs.map((v) => `var a${v} = ${s.V}(0.0);`).join(" ")}
${loop}
    ${accs.map((v) => `Y${j}[c0 + ${v}u] = ${_finish(o, `a${v}`, `c0 + ${v}u`, s.q === 4)};`).join(" ")}
  }`;
  }).join("\n");
  return simpleKernel(ctx, {
    label: "gemv_fused",
    bindings,
    fields: [["n", "u32", total], ["d", "u32", d], ["neps", "f32", o.norm.eps]],
    invocations: total,
    workgroup: 8,
    prelude: o.activation === "none" ? "" : ACT_VEC4[o.activation],
    body: `${xVec ? _statsCpuVec(o.norm.kind) : _statsCpuScalar(o.norm.kind)}
${hWrite}
${outputs}`,
  });
}

/** Columns per workgroup of {@linkcode _gemvNtGpu}; its 256 threads are 32 lanes along d per column. */
const _NT_COLS = 8;

/** The bindings of a transposed fused product: the row (and norm), W (n, d), y, and h and r when given. */
function _ntBindings(o: FusedGemvOptions, vec: boolean): Binding[] {
  const type = vec ? "vec4<f32>" as const : "f32" as const;
  const bindings: Binding[] = [
    ..._normBindings(o.x, o.norm, vec),
    { name: "W0", tensor: o.weights[0]!, type },
    { name: "Y0", tensor: o.ys[0]!, write: true },
  ];
  if (o.h) bindings.push({ name: "H", tensor: o.h, write: true, type });
  if (o.residual) bindings.push({ name: "R", tensor: o.residual });
  return bindings;
}

/**
 * y = act(norm(x) · Wᵀ) (+ r) with W stored (n, d), on real GPUs: a workgroup per 8 columns, 32 lanes
 * reading each column's row of W along d (consecutive addresses, where the `gpu` GEMV's 16 lanes per column
 * would read 16 rows d apart), the lanes' partials added in a fixed order.
 */
function _gemvNtGpu(ctx: GpuContext, o: FusedGemvOptions): KernelCall {
  const d = o.x.size, n = o.ys[0]!.size, lanes = _T / _NT_COLS, xn = _xn(o.norm.kind);
  return headedKernel({
    label: "gemv_fused_nt",
    bindings: _ntBindings(o, false),
    fields: [["d", "u32", d], ["neps", "f32", o.norm.eps], ["n", "u32", n]],
    code: `${_headGpu(o, lanes, _NT_COLS)}
  let i = wi * ${_NT_COLS}u + lid.y;
  var acc = 0.0;
  if (i < u.n) { for (var r = lid.x; r < u.d; r = r + ${lanes}u) { acc = acc + ${xn} * W0[i * u.d + r]; } }
  part[t] = acc;
  workgroupBarrier();
  if (lid.x == 0u && i < u.n) {
    var s = 0.0;
    for (var l = 0u; l < ${lanes}u; l = l + 1u) { s = s + part[lid.y * ${lanes}u + l]; }
    Y0[i] = ${_finish(o, "s", "i", false)};
  }
}`,
    workgroups: grid(ctx, Math.ceil(n / _NT_COLS)),
  });
}

/**
 * The transposed fused product on llvmpipe: one invocation per 4 columns (1 where n is not divisible by 4),
 * each a dot product along d of the normalized row with the columns' rows of W, as vec4s when d allows.
 */
function _gemvNtCpu(ctx: GpuContext, o: FusedGemvOptions): KernelCall {
  const d = o.x.size, n = o.ys[0]!.size, xVec = d % 4 === 0, per = n % 4 === 0 ? 4 : 1, accs = range(per);
  const xn = _xn(o.norm.kind, xVec), len = xVec ? "u.d / 4u" : "u.d";
  const row = xVec ? "j4" : "r", dot = (a: string, b: string) => xVec ? `dot(${a}, ${b})` : `${a} * ${b}`;
  const hWrite = o.h
    ? `  if (i == 0u) { for (var ${row} = 0u; ${row} < ${len}; ${row} = ${row} + 1u) { H[${row}] = ${xn}; } }`
    : "";
  return simpleKernel(ctx, {
    label: "gemv_fused_nt",
    bindings: _ntBindings(o, xVec),
    fields: [["n", "u32", n / per], ["d", "u32", d], ["neps", "f32", o.norm.eps]],
    invocations: n / per,
    workgroup: 8,
    prelude: o.activation === "none" ? "" : ACT_VEC4[o.activation],
    body: `${xVec ? _statsCpuVec(o.norm.kind) : _statsCpuScalar(o.norm.kind)}
${hWrite}
  let c0 = i * ${per}u;
  ${accs.map((v) => `var a${v} = 0.0;`).join(" ")}
  for (var ${row} = 0u; ${row} < ${len}; ${row} = ${row} + 1u) {
    let xv = ${xn};
    ${accs.map((v) => `a${v} = a${v} + ${dot("xv", `W0[(c0 + ${v}u) * ${len} + ${row}]`)};`).join(" ")}
  }
  ${accs.map((v) => `Y0[c0 + ${v}u] = ${_finish(o, `a${v}`, `c0 + ${v}u`, false)};`).join(" ")}`,
  });
}

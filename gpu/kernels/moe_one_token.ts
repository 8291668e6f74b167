/**
 * One-token (batch-1 decoding) forms of the sparse-expert kernels (gpu/kernels/moe.ts): no pair lists.
 * Unrouted experts' invocations return before reading their weights, and the down projections sum over the
 * routed experts' rows only. The MoE MLP takes two dispatches instead of six (`moe_up1`, `moe_down1`), MoA
 * three instead of seven (`moa_query1`, `moa_attend1`, `moa_out1`); vec4 loads where widths allow.
 *
 * @module
 */
import { type GpuTensor, textureMirror } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import type { ActivationKind } from "./activation.ts";
import { ATTEND_GROUP_THREADS, attendGroupFits, attendGroupKernel, attendWgsl } from "./cached_attention.ts";
import {
  type Binding,
  columnSums,
  simpleKernel,
  sumOf4,
  texel,
  type UniformFields,
  VEC4_LANES,
  vecGroup,
} from "./common.ts";
import {
  ACT_VEC4,
  checkMoe,
  type MoaOptions,
  type MoeMlpOptions,
  type MoeShape,
  moeTile,
  range,
} from "./moe_common.ts";

/**
 * The MoE MLP for one token: `moe_up1` runs one invocation per group of hidden columns of one expert, and
 * those of unrouted experts return before reading their weights; `moe_down1` sums over the routed experts'
 * rows of W2 only.
 */
export function moeMlpOneToken(ctx: GpuContext, o: MoeMlpOptions): KernelCall[] {
  const { E, h } = o, d = o.x.size, s: MoeShape = { N: 1, d, E, h };
  checkMoe(o, s, o.tile ?? moeTile(ctx, s), "MoE");
  const up = ctx.profile === "gpu"
    ? _mlpUpGpu(ctx, o)
    : _upOne(ctx, "moe_up1", o.x, o.gate, o.w1, o.scratch.hidden, E, h, o.activation);
  return [up, _downOne(ctx, "moe_down1", o.gate, o.scratch.hidden, o.w2, o.y, E, h, o.residual)];
}

/**
 * `moe_up1` on a real GPU: 16 hidden columns × 16 lanes over d per workgroup, so d·E·h multiply-adds spread
 * over E·h/16 workgroups instead of a few hundred lone threads; unrouted experts' columns stop at once.
 */
function _mlpUpGpu(ctx: GpuContext, o: MoeMlpOptions): KernelCall {
  const { E, h } = o, d = o.x.size;
  return columnSums(ctx, {
    label: "moe_up1",
    bindings: [
      { name: "x", tensor: o.x },
      { name: "gate", tensor: o.gate },
      { name: "W1", tensor: o.w1 },
      { name: "H", tensor: o.scratch.hidden, write: true },
    ],
    fields: [["n", "u32", E * h], ["rows", "u32", d], ["h", "u32", h]],
    prelude: ACT_VEC4[o.activation],
    perRow: "if (gate[i / u.h] <= 0.0) { break; }",
    terms: ["x[r] * W1[r * u.n + i]"],
    finish: "let g = gate[i / u.h]; if (g > 0.0) { H[i] = act(vec4<f32>(s0)).x * g; }",
  });
}

/**
 * H[c] = X · W[:, c] for the columns c of routed experts (width columns per expert; unrouted experts'
 * invocations return before reading W), on cpu-simd: one invocation per group of up to 16 columns. With
 * `activation`, H[c] = act(X · W[:, c]) · gate[expert] (the MLP's up projection); without, the raw product
 * (MoA's queries).
 *
 * Workgroups of 8 invocations take the experts in turn (workgroup w: expert w mod E), not expert by expert:
 * llvmpipe hands each of its threads one contiguous range of the workgroups, so with the experts in
 * order two neighbouring routed experts landed on one thread while the other idled (moe_up1 at d512 with
 * experts 2 and 3 routed: 0.59 ms, against 0.43 with experts 1 and 5, 2026-12-07).
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
  const accs = range(Math.max(1, c4)), xVec = d % 4 === 0;
  // A frozen weight read from its texture copy (docs/llvmpipe.md, "Weights as textures").
  const wt = q === 4 ? textureMirror(ctx, w, d, E * width) : null;
  const value = (v: number) =>
    activation ? (q === 4 ? `act(a${v}) * g` : `act(vec4<f32>(a${v})).x * g`) : `a${v}`;
  // G invocations per expert, in ceil(G / 8) workgroups of 8 per expert.
  const G = width / per, invocations = E * Math.ceil(G / 8) * 8;
  return simpleKernel(ctx, {
    label,
    bindings: [
      { name: "x", tensor: x, type: xVec ? "vec4<f32>" : "f32" },
      { name: "gate", tensor: gate },
      { name: "W", tensor: wt ?? w, type: V },
      { name: "H", tensor: out, write: true, type: V },
    ],
    fields: [
      ["n", "u32", invocations],
      ["E", "u32", E],
      ["G", "u32", G],
      ["hq", "u32", width / q],
      ["d", "u32", d],
      ["ld", "u32", (E * width) / q],
    ],
    invocations,
    workgroup: 8,
    prelude: activation ? ACT_VEC4[activation] : "",
    body: `  let wg = i / 8u;
  let e = wg % u.E; // this workgroup's expert
  let j = (wg / u.E) * 8u + i % 8u; // this invocation's group of columns within the expert
  if (j >= u.G) { return; }
  let g = gate[e];
  if (g <= 0.0) { return; }
  let c0 = e * u.hq + j * ${accs.length}u; // first column (in ${V} units) of this invocation's group
  ${accs.map((v) => `var a${v} = ${V}(0.0);`).join(" ")}
${_gemvLoop("x", "W", "0u", "u.d", accs.length, "a", xVec, !!wt)}
  ${accs.map((v) => `H[c0 + ${v}u] = ${value(v)};`).join(" ")}`,
  });
}

/**
 * y[c] = Σ over routed experts e, rows j < w of A[e·w + j] · W[(e·w + j)·d + c] (+ residual[c], decoding's
 * fused residual add): one invocation per group of output columns, reading only the routed experts' rows
 * of W.
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
  residual?: GpuTensor,
): KernelCall {
  const plus = (i: string) => residual ? `R[${i}] + ` : "";
  if (ctx.profile === "gpu") {
    return columnSums(ctx, {
      label,
      bindings: [
        { name: "gate", tensor: gate },
        { name: "A", tensor: a },
        { name: "W", tensor: w },
        { name: "y", tensor: y, write: true },
        ...(residual ? [{ name: "R", tensor: residual }] : []),
      ],
      fields: [["n", "u32", y.size], ["rows", "u32", E * width], ["w", "u32", width]],
      perRow: "if (gate[r / u.w] <= 0.0) { continue; }",
      terms: ["A[r] * W[r * u.n + i]"],
      finish: `y[i] = ${plus("i")}s0;`,
    });
  }
  // Up to four vec4s of output columns per invocation (16 columns), like moe_up1: a SIMD batch of 8
  // invocations then reads 512 contiguous bytes of each routed row of W, not 128. With W out of the caches
  // (decoding routes other experts each token) that halves the time: 16 dispatches of moe_down1 at d512
  // over 16 weights took 5.05 ms against 11.0 with one vec4 per invocation, and within the noise of it
  // (4.61 against 4.84) when one weight stays in the caches (medians of 5 interleaved runs, GL, llvmpipe
  // 22.3.6 on 2 threads, 2026-12-07). Summed over one step of d512 decoding (4 layers; timestamps through
  // Vulkan): moe_down1 2.0 ms (was 6.9), moa_out1 0.8 ms (was 2.3).
  const d = y.size, c4 = vecGroup(d), q = c4 > 0 ? 4 : 1, per = Math.max(1, c4) * q;
  const V = q === 4 ? "vec4<f32>" : "f32", accs = range(Math.max(1, c4)), aVec = width % 4 === 0;
  const wt = q === 4 ? textureMirror(ctx, w, E * width, d) : null;
  return simpleKernel(ctx, {
    label,
    bindings: [
      { name: "gate", tensor: gate },
      { name: "A", tensor: a, type: aVec ? "vec4<f32>" : "f32" },
      { name: "W", tensor: wt ?? w, type: V },
      { name: "y", tensor: y, write: true, type: V },
      ...(residual ? [{ name: "R", tensor: residual, type: V as "f32" | "vec4<f32>" }] : []),
    ],
    fields: [["n", "u32", d / per], ["E", "u32", E], ["w", "u32", width], ["ld", "u32", d / q]],
    invocations: d / per,
    workgroup: 8,
    body: `  let c0 = i * ${accs.length}u;
  ${accs.map((v) => `var a${v} = ${V}(0.0);`).join(" ")}
  for (var e = 0u; e < u.E; e = e + 1u) {
    if (gate[e] <= 0.0) { continue; }
${_gemvLoop("A", "W", "e * u.w", "(e + 1u) * u.w", accs.length, "a", aVec, !!wt)}
  }
  ${accs.map((v) => `y[c0 + ${v}u] = ${plus(`c0 + ${v}u`)}a${v};`).join(" ")}`,
  });
}

/**
 * The K loop of a one-token product on cpu-simd: acc_v += X[j] · W[j·u.ld + c0 + v] for j in [from, to).
 * With `xVec` (X bound as vec4s, from and to multiples of 4) each pass takes 4 rows: one load of X for
 * four values, one sum of 4 products per accumulator (each storage load is a loop over the SIMD lanes on
 * llvmpipe, so fewer loads are what counts). With `tex`, W is a texture (its vec4 columns as texels, one
 * texel row per row of W): W[j·u.ld + c] is texel (c, j).
 */
function _gemvLoop(
  X: string,
  W: string,
  from: string,
  to: string,
  accs: number,
  acc: string,
  xVec = true,
  tex = false,
): string {
  const w = (row: string, v: number, offset: string) =>
    tex ? texel(W, `c0 + ${v}u`, row) : `${W}[r + ${offset}${v}u]`;
  if (!xVec) {
    return `    for (var j = ${from}; j < ${to}; j = j + 1u) {
      let xv = ${X}[j]; let r = j * u.ld + c0;
      ${range(accs).map((v) => `${acc}${v} = ${acc}${v} + xv * ${w("j", v, "")};`).join(" ")}
    }`;
  }
  return `    for (var j4 = (${from}) / 4u; j4 < (${to}) / 4u; j4 = j4 + 1u) {
      let xv = ${X}[j4]; let r = 4u * j4 * u.ld + c0;
      ${
    range(accs).map((v) =>
      `${acc}${v} = ${acc}${v} + ${
        sumOf4((e) => `xv.${VEC4_LANES[e]}`, (e) => w(`4u * j4 + ${e}u`, v, `${e}u * u.ld + `))
      };`
    ).join("\n      ")
  }
    }`;
}

/**
 * MoA for one decoded token: `moa_query1` computes the routed heads' queries, `moa_attend1` runs one
 * invocation (cpu-simd) or workgroup (gpu) per (expert, head) — each first writes its head's columns of the
 * token's key and value into cache row pos (so no kv_write dispatch; every expert's head j writes the same
 * values, routed or not), then unrouted experts return before reading their query columns — attending over
 * the cache in place, and
 * `moa_out1` projects through the routed experts' rows of Wo only.
 */
export function moaOneToken(ctx: GpuContext, o: MoaOptions, pos: GpuTensor): KernelCall[] {
  const { E, G, D } = o, w = G * D, d = o.x.size;
  checkMoe(
    { ...o, w1: o.wq, w2: o.wo, h: w },
    { N: 1, d, E, h: w },
    o.tile ?? moeTile(ctx, { N: 1, d, E, h: w }),
    "MoA",
  );
  if (ctx.profile === "gpu") return _moaOneTokenGpu(ctx, o, pos);
  // The routed heads' queries over all lanes and threads (moa_query1), then one invocation per routed
  // (expert, head) attends over the cache from its query, in place.
  const query = _upOne(ctx, "moa_query1", o.x, o.gate, o.wq, o.scratch.hidden, E, w);
  const attend = _attendOne(ctx, o, pos, 8);
  return [query, attend, _downOne(ctx, "moa_out1", o.gate, o.scratch.hidden, o.wo, o.y, E, w, o.residual)];
}

/**
 * {@linkcode moaOneToken} on a real GPU: the routed experts' query columns as column sums over d
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
  const T = o.cache!.kcache.size / w;
  // A workgroup per (expert, head) when the scores of every cache row fit its memory; the gate is read
  // through workgroup memory so that the early return of an unrouted expert is uniform (barriers follow).
  const attend: KernelCall = attendGroupFits(ctx, T, D)
    ? attendGroupKernel(ctx, {
      label: "moa_attend1",
      bindings: _attendBindings(o, pos),
      fields: _attendFields(o),
      items: E * G,
      D,
      T,
      q: "QO",
      out: "QO",
      prelude: "var<workgroup> a_gate: f32;",
      body: `  let e = wi / u.G; let j = wi % u.G;
  if (t == 0u) { a_gate = gate[e]; }
  let g = workgroupUniformLoad(&a_gate);
  ${_kvRowWgsl(D, "t", ATTEND_GROUP_THREADS)}
  storageBarrier();
  if (g <= 0.0) { return; }
  let col = e * u.width + j * ${D}u;
  attendGroup(col, 0u, pos[0] + 1u, j * ${D}u, col, g, t);`,
    })
    : _attendOne(ctx, o, pos, 32);
  return [query, attend, _downOne(ctx, "moa_out1", o.gate, o.scratch.hidden, o.wo, o.y, E, w, o.residual)];
}

/**
 * Bindings of `moa_attend1`: the gates, both caches (written at row pos), the position, the queries
 * (overwritten by outputs), and the token's key and value.
 */
function _attendBindings(o: MoaOptions, pos: GpuTensor): Binding[] {
  return [
    { name: "gate", tensor: o.gate },
    { name: "K", tensor: o.cache!.kcache, write: true },
    { name: "Vals", tensor: o.cache!.vcache, write: true },
    { name: "pos", tensor: pos },
    { name: "QO", tensor: o.scratch.hidden, write: true },
    { name: "Knew", tensor: o.k },
    { name: "Vnew", tensor: o.v },
  ];
}

/** Uniform fields of `moa_attend1`: one item per (expert, head); T cache rows. */
function _attendFields(o: MoaOptions): UniformFields {
  const w = o.G * o.D;
  return [["n", "u32", o.E * o.G], ["G", "u32", o.G], ["width", "u32", w], [
    "T",
    "u32",
    o.cache!.kcache.size / w,
  ]];
}

/**
 * WGSL: head j's D columns of the token's key and value (`Knew`, `Vnew`) into cache row pos, columns
 * first, first + step, … (the columns this invocation, or with a storage barrier after it this workgroup,
 * reads next).
 */
function _kvRowWgsl(D: number, first: string, step: number): string {
  return `if (pos[0] < u.T) {
    for (var c = ${first}; c < ${D}u; c = c + ${step}u) {
      let at = pos[0] * u.width + j * ${D}u + c;
      K[at] = Knew[j * ${D}u + c]; Vals[at] = Vnew[j * ${D}u + c];
    }
  }`;
}

/** `moa_attend1` with one invocation per (expert, head), `workgroup` invocations per workgroup. */
function _attendOne(ctx: GpuContext, o: MoaOptions, pos: GpuTensor, workgroup: number): KernelCall {
  const { E, G, D } = o;
  return simpleKernel(ctx, {
    label: "moa_attend1",
    bindings: _attendBindings(o, pos),
    fields: _attendFields(o),
    invocations: E * G,
    workgroup,
    prelude: attendWgsl(D, "QO", "QO"),
    body: `  let e = i / u.G; let j = i % u.G;
  ${_kvRowWgsl(D, "0u", 1)}
  let g = gate[e];
  if (g <= 0.0) { return; }
  let col = e * u.width + j * ${D}u;
  attend(col, 0u, pos[0] + 1u, j * ${D}u, col, g);`,
  });
}

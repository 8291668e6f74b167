/**
 * Causal scaled-dot-product attention with grouped-query heads, forward and backward.
 *
 * Layout: q, o, dO, dq (B, T, Hq, D); k, v, dk, dv (B, T, Hkv, D); lse, delta (B, Hq, T). Scale 1/sqrt(D).
 * Query head h reads KV head h mod Hkv: for MoA's E experts × Hkv heads, expert e's head j is e·Hkv + j and
 * reads KV head j (DESIGN.md §4). Requires Hq % Hkv == 0.
 *
 * - Forward: each invocation owns R consecutive query rows of one (batch, head): their q, the output
 *   accumulators and the running max/sum stay in registers while keys stream by in chunks of 4 (one
 *   rescale per chunk, not per key). Lanes of a workgroup take neighbouring heads of the same rows, so
 *   they run the same causal trip count. It saves lse = max + log Σexp per row for the backward.
 * - Backward: delta = Σ dO⊙o per row; dq per block of R query rows (same layout as the forward); dk, dv
 *   per block of R key rows of one KV head, looping over the query heads that share it and the queries at
 *   or after the key — deterministic, no atomics.
 *
 * D is a WGSL constant (it sizes the per-invocation register arrays); every other size is in the uniform.
 * Rows past T are clamped on load and skipped on store; D need not be a multiple of 4.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import { grid, type KernelCall } from "../dispatch.ts";
import { GpuLimitError } from "../errors.ts";

/** Largest head dimension the register-held rows support. */
export const MAX_HEAD_DIM = 256;

/** Sizes of an attention call, read from the tensors' shapes. */
export interface AttentionShape {
  B: number;
  T: number;
  Hq: number;
  Hkv: number;
  D: number;
}

/** Options of {@linkcode attention}. */
export interface AttentionOptions {
  q: GpuTensor; // (B, T, Hq, D)
  k: GpuTensor; // (B, T, Hkv, D)
  v: GpuTensor; // (B, T, Hkv, D)
  o: GpuTensor; // (B, T, Hq, D), written
  lse: GpuTensor; // (B, Hq, T), written: log Σ_u exp(q·k_u / sqrt(D))
  /** Query (or key) rows per invocation; default from the profile and D. */
  rows?: number;
}

/** Options of {@linkcode attentionBackward}. */
export interface AttentionBackwardOptions extends Omit<AttentionOptions, "o" | "lse"> {
  o: GpuTensor; // (B, T, Hq, D), the forward's output
  lse: GpuTensor; // (B, Hq, T), the forward's log-sum-exp
  dO: GpuTensor; // (B, T, Hq, D)
  dq: GpuTensor; // (B, T, Hq, D), written
  dk: GpuTensor; // (B, T, Hkv, D), written (summed over the query heads sharing each KV head)
  dv: GpuTensor; // (B, T, Hkv, D), written
  delta: GpuTensor; // (B, Hq, T), scratch: Σ_j dO⊙o per row
}

/**
 * Reads and checks the shapes of q and k (v, o, lse, gradients must match them).
 * Throws RangeError on inconsistent shapes and GpuLimitError when D exceeds {@linkcode MAX_HEAD_DIM}.
 */
export function attentionShape(q: GpuTensor, k: GpuTensor): AttentionShape {
  if (q.shape.length !== 4 || k.shape.length !== 4) {
    throw new RangeError(`Cannot run attention: q [${q.shape}] and k [${k.shape}] must be (B, T, H, D)`);
  }
  const [B, T, Hq, D] = q.shape as [number, number, number, number];
  const [kB, kT, Hkv, kD] = k.shape as [number, number, number, number];
  if (kB !== B || kT !== T || kD !== D || Hkv < 1 || Hq % Hkv !== 0) {
    throw new RangeError(
      `Cannot run attention: q [${q.shape}] and k [${k.shape}] need equal B, T, D and Hq % Hkv == 0`,
    );
  }
  if (D > MAX_HEAD_DIM) {
    throw new GpuLimitError(`Cannot run attention: head_dim ${D} exceeds ${MAX_HEAD_DIM}`);
  }
  return { B, T, Hq, Hkv, D };
}

function _expect(t: GpuTensor, size: number, what: string): void {
  if (t.size !== size) {
    throw new RangeError(
      `Cannot run attention: ${what} ("${t.label}") has ${t.size} elements, expected ${size}`,
    );
  }
}

/** Encodes the forward: o and lse from q, k, v (one dispatch). */
export function attention(ctx: GpuContext, opts: AttentionOptions): KernelCall {
  const s = attentionShape(opts.q, opts.k);
  const qSize = s.B * s.T * s.Hq * s.D, kvSize = s.B * s.T * s.Hkv * s.D;
  _expect(opts.v, kvSize, "v");
  _expect(opts.o, qSize, "o");
  _expect(opts.lse, s.B * s.Hq * s.T, "lse");
  const R = opts.rows ?? _rows(ctx, s.D), wg = _wg(ctx);
  const n = s.B * Math.ceil(s.T / R) * s.Hq;
  return {
    label: "attention",
    code: _forwardWgsl(s.D, R, wg),
    bindings: [opts.q, opts.k, opts.v, opts.o, opts.lse],
    uniform: _uniform(s, n, R),
    workgroups: grid(ctx, Math.ceil(n / wg)),
  };
}

/** Encodes the backward as three dispatches: delta, dq, then dk and dv. */
export function attentionBackward(ctx: GpuContext, opts: AttentionBackwardOptions): KernelCall[] {
  const s = attentionShape(opts.q, opts.k);
  const qSize = s.B * s.T * s.Hq * s.D, kvSize = s.B * s.T * s.Hkv * s.D, rows = s.B * s.Hq * s.T;
  for (
    const [t, size, what] of [
      [opts.v, kvSize, "v"],
      [opts.o, qSize, "o"],
      [opts.dO, qSize, "dO"],
      [opts.dq, qSize, "dq"],
      [opts.dk, kvSize, "dk"],
      [opts.dv, kvSize, "dv"],
      [opts.lse, rows, "lse"],
      [opts.delta, rows, "delta"],
    ] as const
  ) {
    _expect(t, size, what);
  }
  const R = opts.rows ?? _rows(ctx, s.D), wg = _wg(ctx);
  const nq = s.B * Math.ceil(s.T / R) * s.Hq, nk = s.B * Math.ceil(s.T / R) * s.Hkv;
  return [
    {
      label: "attention_backward_delta",
      code: _deltaWgsl(s.D),
      bindings: [opts.o, opts.dO, opts.delta],
      uniform: _uniform(s, rows, 1),
      workgroups: grid(ctx, Math.ceil(rows / 64)),
    },
    {
      label: "attention_backward_dq",
      code: _dqWgsl(s.D, R, wg),
      bindings: [opts.q, opts.k, opts.v, opts.lse, opts.dO, opts.delta, opts.dq],
      uniform: _uniform(s, nq, R),
      workgroups: grid(ctx, Math.ceil(nq / wg)),
    },
    {
      label: "attention_backward_dkv",
      code: _dkvWgsl(s.D, R, wg),
      bindings: [opts.q, opts.k, opts.v, opts.lse, opts.dO, opts.delta, opts.dk, opts.dv],
      uniform: _uniform(s, nk, R),
      workgroups: grid(ctx, Math.ceil(nk / wg)),
    },
  ];
}

// Rows per invocation: more rows share each K/V load; fewer keep big heads within registers.
function _rows(ctx: GpuContext, D: number): number {
  if (ctx.profile === "gpu") return 1;
  return D <= 32 ? 4 : D <= 64 ? 2 : 1;
}

const _wg = (ctx: GpuContext) => (ctx.profile === "gpu" ? 64 : 8);

const _UNIFORM_WGSL = `struct U { n: u32, T: u32, Hq: u32, Hkv: u32, nb: u32, scale: f32, p0: u32, p1: u32 }`;

function _uniform(s: AttentionShape, n: number, R: number): ArrayBuffer {
  const buf = new ArrayBuffer(32);
  new Uint32Array(buf).set([n, s.T, s.Hq, s.Hkv, Math.ceil(s.T / R)]);
  new Float32Array(buf)[5] = 1 / Math.sqrt(s.D);
  return buf;
}

const _range = (n: number) => Array.from({ length: n }, (_, i) => i);
const _each = (n: number, f: (i: number) => string, sep = "\n") => _range(n).map(f).join(sep);

/**
 * Declares the bindings in call order plus, for each D-shaped one, `ld_<name>(o, d)` (the d-th vec4 of the
 * D-vector starting at element o, zero past D) and, if written, `st_<name>(o, d, x)`. With D % 4 == 0 the
 * D-shaped arrays are vec4 and each load is one vec4 load. Names starting with `=` are plain f32 arrays
 * (lse, delta), `!` marks a written binding.
 */
function _io(D: number, names: readonly string[]): string {
  const vec = D % 4 === 0, rem = D % 4, full = (D - rem) / 4;
  const out: string[] = [];
  names.forEach((spec, i) => {
    const write = spec.includes("!"), plain = spec.includes("="), name = spec.replace(/[!=]/g, "");
    const access = write ? "read_write" : "read";
    if (plain) {
      out.push(`@group(0) @binding(${i}) var<storage, ${access}> ${name}: array<f32>;`);
      return;
    }
    out.push(
      `@group(0) @binding(${i}) var<storage, ${access}> ${name}: array<${vec ? "vec4<f32>" : "f32"}>;`,
    );
    if (vec) {
      out.push(`fn ld_${name}(o: u32, d: u32) -> vec4<f32> { return ${name}[o / 4u + d]; }`);
      if (write) out.push(`fn st_${name}(o: u32, d: u32, x: vec4<f32>) { ${name}[o / 4u + d] = x; }`);
      return;
    }
    // Component e of chunk d exists when 4d + e < D; only the last chunk is partial.
    const comp = (e: number) =>
      e === 0
        ? `${name}[o + 4u * d]`
        : `select(0.0, ${name}[o + 4u * d + ${e}u], d < ${full}u || ${e}u < ${rem}u)`;
    out.push(`fn ld_${name}(o: u32, d: u32) -> vec4<f32> { return vec4<f32>(${_each(4, comp, ", ")}); }`);
    if (write) {
      const put = (e: number) => `if (4u * d + ${e}u < D) { ${name}[o + 4u * d + ${e}u] = x[${e}]; }`;
      out.push(`fn st_${name}(o: u32, d: u32, x: vec4<f32>) { ${_each(4, put, " ")} }`);
    }
  });
  out.push(_UNIFORM_WGSL, `@group(0) @binding(${names.length}) var<uniform> u: U;`);
  out.push(`const D = ${D}u;`, `const DV = ${Math.ceil(D / 4)}u;`, `const NEG = -3.0e38;`);
  return out.join("\n");
}

/** Entry point with `i`, this invocation's linear index (folded 2-D dispatch); returns past `u.n`. */
function _entry(wg: number, body: string): string {
  return `@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = (wid.x + wid.y * nwg.x) * ${wg}u + lid;
  if (i >= u.n) { return; }
${body}
}`;
}

// Invocation i = (b, block, head) with the head fastest; rows t0 .. t0+R-1 of head h (KV head kh).
const _QUERY_BLOCK = (R: number) =>
  `  let h = i % u.Hq;
  let t0 = ((i / u.Hq) % u.nb) * ${R}u;
  let bb = i / (u.Hq * u.nb);
  let kh = h % u.Hkv;
  let tEnd = min(t0 + ${R}u, u.T); // keys 0 .. tEnd-1 can be seen by some row of the block
${_each(R, (r) => `  let qo${r} = ((bb * u.T + min(t0 + ${r}u, u.T - 1u)) * u.Hq + h) * D;`)}
${_each(R, (r) => `  let lo${r} = (bb * u.Hq + h) * u.T + min(t0 + ${r}u, u.T - 1u);`)}`;

// Offsets of the 4 keys u0 .. u0+3 (clamped into the sequence) and their causal masks per row.
const _KEY_CHUNK = (R: number) =>
  `    let ko = ((bb * u.T + min(vec4<u32>(u0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(u.T - 1u))) * u.Hkv + kh) * D;
${
    _each(R, (r) =>
      `    let masked${r} = vec4<u32>(u0) + vec4<u32>(0u, 1u, 2u, 3u) > vec4<u32>(t0 + ${r}u);`)
  }`;

function _forwardWgsl(D: number, R: number, wg: number): string {
  const body = `${_QUERY_BLOCK(R)}
${
    _each(R, (r) =>
      `  var q${r}: array<vec4<f32>, DV>; var o${r}: array<vec4<f32>, DV>; var m${r} = NEG; var l${r} = 0.0;`)
  }
  for (var d = 0u; d < DV; d = d + 1u) {
${_each(R, (r) => `    q${r}[d] = ld_q(qo${r}, d) * u.scale; o${r}[d] = vec4<f32>(0.0);`)}
  }
  for (var u0 = 0u; u0 < tEnd; u0 = u0 + 4u) {
${_KEY_CHUNK(R)}
${_each(R, (r) => `    var s${r} = vec4<f32>(0.0);`)}
    for (var d = 0u; d < DV; d = d + 1u) {
      let k0 = ld_k(ko.x, d); let k1 = ld_k(ko.y, d); let k2 = ld_k(ko.z, d); let k3 = ld_k(ko.w, d);
${
    _each(R, (r) =>
      `      s${r} += vec4<f32>(dot(q${r}[d], k0), dot(q${r}[d], k1), dot(q${r}[d], k2), dot(q${r}[d], k3));`)
  }
    }
${
    _each(R, (r) =>
      `    s${r} = select(s${r}, vec4<f32>(NEG), masked${r});
    let mn${r} = max(m${r}, max(max(s${r}.x, s${r}.y), max(s${r}.z, s${r}.w)));
    let c${r} = exp(m${r} - mn${r}); let p${r} = exp(s${r} - vec4<f32>(mn${r}));
    l${r} = l${r} * c${r} + dot(p${r}, vec4<f32>(1.0)); m${r} = mn${r};`)
  }
    for (var d = 0u; d < DV; d = d + 1u) {
      let v0 = ld_v(ko.x, d); let v1 = ld_v(ko.y, d); let v2 = ld_v(ko.z, d); let v3 = ld_v(ko.w, d);
${
    _each(R, (r) =>
      `      o${r}[d] = o${r}[d] * c${r} + p${r}.x * v0 + p${r}.y * v1 + p${r}.z * v2 + p${r}.w * v3;`)
  }
    }
  }
${
    _each(R, (r) =>
      `  if (t0 + ${r}u < u.T) {
    let inv = 1.0 / l${r};
    for (var d = 0u; d < DV; d = d + 1u) { st_o(qo${r}, d, o${r}[d] * inv); }
    lse[lo${r}] = m${r} + log(l${r});
  }`)
  }`;
  return `${_io(D, ["q", "k", "v", "o!", "=lse!"])}
${_entry(wg, body)}
`;
}

function _deltaWgsl(D: number): string {
  return `${_io(D, ["o", "dO", "=delta!"])}
${
    _entry(
      64,
      `  let t = i % u.T; let h = (i / u.T) % u.Hq; let bb = i / (u.T * u.Hq);
  let ro = ((bb * u.T + t) * u.Hq + h) * D;
  var acc = 0.0;
  for (var d = 0u; d < DV; d = d + 1u) { acc += dot(ld_o(ro, d), ld_dO(ro, d)); }
  delta[i] = acc;`,
    )
  }
`;
}

function _dqWgsl(D: number, R: number, wg: number): string {
  const body = `${_QUERY_BLOCK(R)}
${
    _each(R, (r) =>
      `  var q${r}: array<vec4<f32>, DV>; var g${r}: array<vec4<f32>, DV>; var dq${r}: array<vec4<f32>, DV>;
  let lse${r} = lse[lo${r}]; let delta${r} = delta[lo${r}];`)
  }
  for (var d = 0u; d < DV; d = d + 1u) {
${
    _each(R, (r) =>
      `    q${r}[d] = ld_q(qo${r}, d) * u.scale; g${r}[d] = ld_dO(qo${r}, d); dq${r}[d] = vec4<f32>(0.0);`)
  }
  }
  for (var u0 = 0u; u0 < tEnd; u0 = u0 + 4u) {
${_KEY_CHUNK(R)}
${_each(R, (r) => `    var s${r} = vec4<f32>(0.0); var dp${r} = vec4<f32>(0.0);`)}
    for (var d = 0u; d < DV; d = d + 1u) {
      let k0 = ld_k(ko.x, d); let k1 = ld_k(ko.y, d); let k2 = ld_k(ko.z, d); let k3 = ld_k(ko.w, d);
      let v0 = ld_v(ko.x, d); let v1 = ld_v(ko.y, d); let v2 = ld_v(ko.z, d); let v3 = ld_v(ko.w, d);
${
    _each(R, (r) =>
      `      s${r} += vec4<f32>(dot(q${r}[d], k0), dot(q${r}[d], k1), dot(q${r}[d], k2), dot(q${r}[d], k3));
      dp${r} += vec4<f32>(dot(g${r}[d], v0), dot(g${r}[d], v1), dot(g${r}[d], v2), dot(g${r}[d], v3));`)
  }
    }
${
    _each(R, (r) =>
      `    let p${r} = select(exp(s${r} - vec4<f32>(lse${r})), vec4<f32>(0.0), masked${r});
    let ds${r} = p${r} * (dp${r} - vec4<f32>(delta${r})) * u.scale;`)
  }
    for (var d = 0u; d < DV; d = d + 1u) {
      let k0 = ld_k(ko.x, d); let k1 = ld_k(ko.y, d); let k2 = ld_k(ko.z, d); let k3 = ld_k(ko.w, d);
${_each(R, (r) => `      dq${r}[d] += ds${r}.x * k0 + ds${r}.y * k1 + ds${r}.z * k2 + ds${r}.w * k3;`)}
    }
  }
${
    _each(R, (r) =>
      `  if (t0 + ${r}u < u.T) { for (var d = 0u; d < DV; d = d + 1u) { st_dq(qo${r}, d, dq${r}[d]); } }`)
  }`;
  return `${_io(D, ["q", "k", "v", "=lse", "dO", "=delta", "dq!"])}
${_entry(wg, body)}
`;
}

function _dkvWgsl(D: number, R: number, wg: number): string {
  // Invocation i = (b, block, kv head) with the kv head fastest; key rows u0 .. u0+R-1.
  const body = `  let kh = i % u.Hkv;
  let u0 = ((i / u.Hkv) % u.nb) * ${R}u;
  let bb = i / (u.Hkv * u.nb);
${_each(R, (r) => `  let ko${r} = ((bb * u.T + min(u0 + ${r}u, u.T - 1u)) * u.Hkv + kh) * D;`)}
${
    _each(R, (r) =>
      `  var k${r}: array<vec4<f32>, DV>; var v${r}: array<vec4<f32>, DV>; var dk${r}: array<vec4<f32>, DV>; var dv${r}: array<vec4<f32>, DV>;`)
  }
  for (var d = 0u; d < DV; d = d + 1u) {
${
    _each(R, (r) =>
      `    k${r}[d] = ld_k(ko${r}, d) * u.scale; v${r}[d] = ld_v(ko${r}, d); dk${r}[d] = vec4<f32>(0.0); dv${r}[d] = vec4<f32>(0.0);`)
  }
  }
  var qt: array<vec4<f32>, DV>;
  var gt: array<vec4<f32>, DV>;
  for (var h = kh; h < u.Hq; h = h + u.Hkv) {
    for (var t = u0; t < u.T; t = t + 1u) {
      let qo = ((bb * u.T + t) * u.Hq + h) * D;
      let lo = (bb * u.Hq + h) * u.T + t;
      let lt = lse[lo]; let dt = delta[lo];
${_each(R, (r) => `      var s${r} = 0.0; var dp${r} = 0.0;`)}
      for (var d = 0u; d < DV; d = d + 1u) {
        qt[d] = ld_q(qo, d); gt[d] = ld_dO(qo, d);
${_each(R, (r) => `        s${r} += dot(qt[d], k${r}[d]); dp${r} += dot(gt[d], v${r}[d]);`)}
      }
${
    _each(R, (r) =>
      `      let p${r} = select(0.0, exp(s${r} - lt), t >= u0 + ${r}u);
      let ds${r} = p${r} * (dp${r} - dt) * u.scale;`)
  }
      for (var d = 0u; d < DV; d = d + 1u) {
${_each(R, (r) => `        dv${r}[d] += p${r} * gt[d]; dk${r}[d] += ds${r} * qt[d];`)}
      }
    }
  }
${
    _each(R, (r) =>
      `  if (u0 + ${r}u < u.T) { for (var d = 0u; d < DV; d = d + 1u) { st_dk(ko${r}, d, dk${r}[d]); st_dv(ko${r}, d, dv${r}[d]); } }`)
  }`;
  return `${_io(D, ["q", "k", "v", "=lse", "dO", "=delta", "dk!", "dv!"])}
${_entry(wg, body)}
`;
}

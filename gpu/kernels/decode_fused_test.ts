import { deepStrictEqual as assertEquals } from "node:assert/strict";
import type { ActivationKind, NormKind, RouteRule } from "../../core/graph/op_types.ts";
import { activationRef } from "../../core/ref/activation.ts";
import { matmulRef } from "../../core/ref/matmul.ts";
import { normRef } from "../../core/ref/norm.ts";
import { routeMaskRef } from "../../core/ref/routing.ts";
import { softmaxRef } from "../../core/ref/softmax.ts";
import { assertClose, randomArray, testGpu } from "../../tests/helpers/gpu.ts";
import { createTensor, destroyTensor, freezeTensor, type GpuTensor, readTensor } from "../buffers.ts";
import type { KernelProfile } from "../device.ts";
import { runCalls } from "../dispatch.ts";
import { WEIGHT_TEXTURE } from "./common.ts";
import { fusedGemv, fusedRouteGate } from "./decode_fused.ts";
import { embeddingPair } from "./embedding.ts";

// f32 sums of d products against float64 on the same f32-rounded inputs (as gemv_test.ts), after a norm.
const TOL = { atol: 5e-5, rtol: 5e-5 };

const f32 = (n: number, seed: number, scale = 1, shift = 0) =>
  Float64Array.from(Float32Array.from(randomArray(n, seed), (v) => shift + scale * v));

/** normRef's y, or x itself without a norm. */
function normed(kind: NormKind | "none", x: Float64Array, g: Float64Array, b: Float64Array, d: number) {
  return kind === "none" ? x : normRef(kind, x, g, kind === "layernorm" ? b : null, d, 1e-5).y;
}

interface GemvCase {
  d: number;
  ns: number[];
  norm: NormKind | "none";
  activation?: ActivationKind;
  residual?: boolean;
  normOut?: boolean;
  /** One weight stored (n, d), used transposed (the tied LM head). */
  transB?: boolean;
  /**
   * The weights frozen (a decoder's): on cpu-simd those whose width is a multiple of 64 are read from
   * texture copies (docs/llvmpipe.md, "Weights as textures").
   */
  frozen?: boolean;
}

const GEMV_CASES: GemvCase[] = [
  { d: 64, ns: [32, 16, 16], norm: "layernorm", normOut: true }, // Q, K, V of a tiny layer
  { d: 512, ns: [512, 512], norm: "rmsnorm" },
  { d: 30, ns: [12, 7], norm: "layernorm", normOut: true }, // d and widths not divisible by 4
  { d: 64, ns: [96], norm: "layernorm", activation: "gelu" },
  { d: 40, ns: [24], norm: "rmsnorm", activation: "silu", normOut: true },
  { d: 96, ns: [64], norm: "none", residual: true }, // Wo + residual
  { d: 24, ns: [10], norm: "none", activation: "relu", residual: true },
  { d: 64, ns: [256], norm: "layernorm", transB: true }, // the final norm and the tied LM head
  { d: 30, ns: [37], norm: "rmsnorm", transB: true, normOut: true, residual: true, activation: "gelu" },
  { d: 64, ns: [128, 64, 12], norm: "layernorm", normOut: true, frozen: true }, // 2 from textures, 1 not
  { d: 30, ns: [64], norm: "rmsnorm", activation: "gelu", frozen: true }, // one row of W a pass
  { d: 96, ns: [64], norm: "none", residual: true, frozen: true },
];

for (const profile of ["cpu-simd", "gpu"] as KernelProfile[]) {
  for (const c of GEMV_CASES) {
    const what = `${c.norm} ${c.d} → [${c.ns}]${c.activation ? ` ${c.activation}` : ""}${
      c.residual ? " + residual" : ""
    }${c.normOut ? ", writing the row" : ""}${c.transB ? ", W transposed" : ""}${
      c.frozen ? ", W frozen" : ""
    }`;
    Deno.test(`fused gemv ${what} matches float64 in one dispatch (${profile} profile)`, async () => {
      const ctx = (await testGpu()).withProfile(profile);
      // A row with an offset and scale, so that the mean and rstd matter.
      const x = f32(c.d, 1, 3, 0.5), g = f32(c.d, 2, 0.5, 1), b = f32(c.d, 3, 0.2);
      const ws = c.ns.map((n, j) => f32(c.d * n, 10 + j, 0.2)), r = f32(c.ns[0]!, 9);
      const made: GpuTensor[] = [];
      const t = (shape: number[], data?: Float64Array) => {
        const v = createTensor(ctx, shape, "f32", data && Float32Array.from(data));
        made.push(v);
        return v;
      };
      const tw = ws.map((w, j) => t(c.transB ? [c.ns[j]!, c.d] : [c.d, c.ns[j]!], w)),
        ty = c.ns.map((n) => t([1, n]));
      if (c.frozen) tw.forEach(freezeTensor);
      const th = c.normOut ? t([1, c.d]) : undefined;
      try {
        const call = fusedGemv(ctx, {
          x: t([1, c.d], x),
          norm: { kind: c.norm, eps: 1e-5, gamma: t([c.d], g), beta: t([c.d], b) },
          weights: tw,
          ys: ty,
          ...(th ? { h: th } : {}),
          activation: c.activation ?? "none",
          ...(c.residual ? { residual: t([1, c.ns[0]!], r) } : {}),
          ...(c.transB ? { transB: true } : {}),
        });
        const textures = call.bindings.filter((b) => b instanceof GPUTextureView).length;
        assertEquals(
          textures,
          c.frozen && profile === "cpu-simd" ? c.ns.filter((n) => n % 64 === 0).length : 0,
        );
        assertEquals(runCalls(ctx, [call]).dispatches, 1);
        const h = normed(c.norm, x, g, b, c.d);
        for (const [j, n] of c.ns.entries()) {
          let want = matmulRef(h, ws[j]!, { m: 1, k: c.d, n, transB: !!c.transB });
          if (c.activation) want = activationRef(c.activation, want);
          if (c.residual) want = want.map((v, i) => v + r[i]!);
          assertClose(await readTensor(ctx, ty[j]!), want, TOL, `${what}: output ${j}`);
        }
        if (th) assertClose(await readTensor(ctx, th), h, TOL, `${what}: the normalized row`);
      } finally {
        for (const v of made) destroyTensor(v);
      }
    });
  }
}

const RULE = (kind: RouteRule["kind"]): RouteRule => ({ kind, epsilon: 0.5, k: 2, p: 0.7 });

/**
 * N: rows (tokens) routed in the one dispatch; 1 unless given (batched decoding routes B). `frozen`: W,
 * gamma and beta are a decoder's (frozen), which the cpu-simd form reads from texture copies: W where E and
 * d·E allow; with several rows and d a multiple of 64 also x (a copy made before the dispatch) and the norm's
 * weights.
 */
const ROUTER_CASES: {
  d: number;
  E: number;
  norm: NormKind | "none";
  rule: RouteRule;
  normOut?: boolean;
  N?: number;
  frozen?: boolean;
}[] = [
  { d: 64, E: 4, norm: "none", rule: RULE("topk") },
  { d: 64, E: 8, norm: "layernorm", rule: RULE("threshold"), normOut: true },
  { d: 30, E: 20, norm: "rmsnorm", rule: RULE("top_p"), normOut: true }, // E over one 16-column group
  { d: 512, E: 16, norm: "layernorm", rule: RULE("dense") },
  { d: 64, E: 8, norm: "layernorm", rule: RULE("topk"), normOut: true, N: 11 }, // rows past a workgroup of 8
  { d: 30, E: 5, norm: "rmsnorm", rule: RULE("threshold"), N: 3 }, // d and E not divisible by 4
  { d: 48, E: 20, norm: "none", rule: RULE("top_p"), normOut: true, N: 2 },
  { d: 64, E: 4, norm: "layernorm", rule: RULE("topk"), frozen: true }, // W as a 4 × 16-texel texture
  { d: 64, E: 8, norm: "rmsnorm", rule: RULE("threshold"), normOut: true, N: 11, frozen: true },
  { d: 24, E: 4, norm: "none", rule: RULE("topk"), N: 3, frozen: true }, // d·E = 96: W stays a buffer
  // Several rows with W as a texture: x through a copy, gamma and beta through theirs (d a multiple of 64).
  { d: 128, E: 4, norm: "layernorm", rule: RULE("top_p"), normOut: true, N: 9, frozen: true },
  { d: 64, E: 4, norm: "none", rule: RULE("threshold"), N: 5, frozen: true },
];

for (const profile of ["cpu-simd", "gpu"] as KernelProfile[]) {
  for (const c of ROUTER_CASES) {
    const N = c.N ?? 1;
    const what = `${N > 1 ? `${N} rows, ` : ""}${c.norm} ${c.d} → ${c.E} experts, ${c.rule.kind}${
      c.normOut ? ", writing the row" : ""
    }${c.frozen ? ", W frozen" : ""}`;
    Deno.test(`fused router ${what} matches float64 in one dispatch (${profile} profile)`, async () => {
      const ctx = (await testGpu()).withProfile(profile);
      // Rows of different offsets and scales, so that each row's own mean and rstd matter.
      const x = Float64Array.from(f32(N * c.d, 4, 2, 0.3), (v, i) => v * (1 + Math.floor(i / c.d)));
      const g = f32(c.d, 5, 0.5, 1), b = f32(c.d, 6, 0.2);
      // Router weights large enough that the probabilities spread and the rules keep different experts.
      const w = f32(c.d * c.E, 7, 0.5);
      const made: GpuTensor[] = [];
      const t = (shape: number[], data?: Float64Array) => {
        const v = createTensor(ctx, shape, "f32", data && Float32Array.from(data));
        made.push(v);
        return v;
      };
      const [probs, mask, gate, logits] = [0, 1, 2, 3].map(() => t([N, c.E]));
      const th = c.normOut ? t([N, c.d]) : undefined;
      const tw = t([c.d, c.E], w), tg = t([c.d], g), tb = t([c.d], b);
      if (c.frozen) [tw, tg, tb].forEach(freezeTensor);
      try {
        const call = fusedRouteGate(ctx, {
          x: t([N, c.d], x),
          norm: { kind: c.norm, eps: 1e-5, gamma: tg, beta: tb },
          w: tw,
          probs: probs!,
          mask: mask!,
          gate: gate!,
          logits: logits!,
          ...(th ? { h: th } : {}),
          rule: c.rule,
        });
        const textured = profile === "cpu-simd" && !!c.frozen && c.E % 4 === 0 && (c.d * c.E) % 64 === 0;
        assertEquals(call.code.includes(`var W: ${WEIGHT_TEXTURE}`), textured, `${what}: W's texture copy`);
        const rows = textured && N > 1 && c.d % 64 === 0;
        const copied = ["x", "gamma", "beta"].filter((n) =>
          call.code.includes(`var ${n}: ${WEIGHT_TEXTURE}`)
        );
        const norms = { none: [], rmsnorm: ["gamma"], layernorm: ["gamma", "beta"] }[c.norm];
        assertEquals(copied, rows ? ["x", ...norms] : [], `${what}: the rows' texture copies`);
        assertEquals(call.textureCopies?.map((x) => x.binding) ?? [], rows ? [0] : [], `${what}: x's copy`);
        assertEquals(runCalls(ctx, [call]).dispatches, 1);
        const h = normed(c.norm, x, g, b, c.d);
        const z = matmulRef(h, w, { m: N, k: c.d, n: c.E });
        const p = softmaxRef(z, c.E), m = routeMaskRef(p, c.E, c.rule);
        assertClose(await readTensor(ctx, logits!), z, TOL, `${what}: logits`);
        assertClose(await readTensor(ctx, probs!), p, TOL, `${what}: probabilities`);
        assertEquals(Array.from(await readTensor(ctx, mask!)), Array.from(m), `${what}: mask`);
        assertClose(await readTensor(ctx, gate!), p.map((v, i) => v * m[i]!), TOL, `${what}: gate`);
        if (c.rule.kind !== "dense") {
          assertEquals(m.some((v) => v === 0) && m.some((v) => v === 1), true, `${what}: the rule selects`);
        }
        if (th) assertClose(await readTensor(ctx, th), h, TOL, `${what}: the normalized row`);
      } finally {
        for (const v of made) destroyTensor(v);
      }
    });
  }
}

for (const profile of ["cpu-simd", "gpu"] as KernelProfile[]) {
  Deno.test(`embedding_pair: token plus position embedding rows in one dispatch, ids clamped (${profile} profile)`, async () => {
    const ctx = (await testGpu()).withProfile(profile);
    const V = 11, T = 7, d = 6, ids = Uint32Array.of(3, 10, 99), pos = Uint32Array.of(0, 6, 2);
    const wte = f32(V * d, 21), wpe = f32(T * d, 22);
    const made = [
      createTensor(ctx, [3], "u32", ids),
      createTensor(ctx, [V, d], "f32", Float32Array.from(wte)),
      createTensor(ctx, [3], "u32", pos),
      createTensor(ctx, [T, d], "f32", Float32Array.from(wpe)),
      createTensor(ctx, [3, d], "f32"),
    ] as const;
    try {
      const [i, a, p, b, y] = made;
      assertEquals(runCalls(ctx, [embeddingPair(ctx, { ids: i, wte: a, pos: p, wpe: b, y })]).dispatches, 1);
      const want = Float64Array.from({ length: 3 * d }, (_, k) => {
        const t = Math.floor(k / d), j = k % d;
        return wte[Math.min(ids[t]!, V - 1) * d + j]! + wpe[pos[t]! * d + j]!;
      });
      assertClose(await readTensor(ctx, y), want, { atol: 1e-6, rtol: 1e-6 }, "embedding_pair");
    } finally {
      for (const t of made) t.buffer.destroy();
    }
  });
}

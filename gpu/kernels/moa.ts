/**
 * Sparse MoA (gpu/kernels/moe.ts): mixture-of-attention with shared keys and values, where only routed
 * query/output head groups compute (docs/design.md §10). It runs the MoE MLP's pair-list pipeline
 * (moe_sparse.ts) with one kernel between the grouped matmuls, `moa_attend`; one decoded token takes the
 * one-token kernels (moe_one_token.ts).
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { attendWgsl, kvWrite } from "./cached_attention.ts";
import { simpleKernel } from "./common.ts";
import type { MoaOptions, RouteLayout } from "./moe_common.ts";
import { moaOneToken } from "./moe_one_token.ts";
import { sparsePipeline } from "./moe_sparse.ts";

/**
 * Sparse MoA: y[t] = Σ over routed experts e of gate · attn(x[t]·Wq_e)·Wo_e, with shared keys and values
 * (docs/design.md §10: only routed query/output head groups compute). The pair lists and grouped matmuls are
 * the MoE MLP's (`moe_up` without epilogue gives the pairs' query heads), with one kernel between them: each
 * (pair, head) attends over its token's key rows and scales by the gate, in place. When decoding, the new
 * keys and values are written into the caches first.
 *
 * @example
 * ```ts ignore
 * const scratch = moeScratch(ctx, { N, d, E, h: G * D });
 * const calls = moaAttentionSparse(ctx, { x, gate, wq, wo, k, v, y, E, G, D, T, scratch });
 * ```
 */
export function moaAttentionSparse(ctx: GpuContext, o: MoaOptions): KernelCall[] {
  const { E, G, D } = o, w = G * D, N = o.gate.shape[0]!;
  if ((o.T === undefined) === (o.cache === undefined)) {
    throw new RangeError("Cannot run sparse MoA: give either T (sequence batches) or cache (decoding)");
  }
  if (o.k.size !== N * w || o.v.size !== N * w) {
    throw new RangeError(
      `Cannot run sparse MoA: k [${o.k.shape}] and v [${o.v.shape}] are not (N ${N}, G·D ${w})`,
    );
  }
  // One token: moa_attend1 writes the cache row itself (gpu/kernels/moe_one_token.ts).
  if (o.cache && N === 1) return moaOneToken(ctx, o, o.cache.pos);
  if (o.residual) throw new RangeError("Cannot add a residual inside MoA except for one decoded token");
  const calls = sparsePipeline(
    ctx,
    { x: o.x, gate: o.gate, w1: o.wq, w2: o.wo, y: o.y, E, h: w, scratch: o.scratch, tile: o.tile },
    "MoA",
    (L) => _attend(ctx, o, L),
  );
  return o.cache ? [kvWrite(ctx, { k: o.k, v: o.v, ...o.cache }), ...calls] : calls;
}

/**
 * `moa_attend`: one invocation per (pair, head) finds its token and expert in the pair list and attends
 * from its query head over the token's key rows (its sequence up to it, or the cache up to pos + t), scaled
 * by the gate, writing over the query in place.
 */
function _attend(ctx: GpuContext, o: MoaOptions, L: RouteLayout): KernelCall {
  const { E, G, D } = o, w = G * D, N = o.gate.shape[0]!;
  const keys: GpuTensor = o.cache ? o.cache.kcache : o.k, vals: GpuTensor = o.cache ? o.cache.vcache : o.v;
  return simpleKernel(ctx, {
    label: "moa_attend",
    bindings: [
      { name: "QO", tensor: o.scratch.hidden, write: true },
      { name: "K", tensor: keys },
      { name: "Vals", tensor: vals },
      { name: "R", tensor: o.scratch.route },
      { name: "gate", tensor: o.gate },
      ...(o.cache ? [{ name: "pos", tensor: o.cache.pos }] : []),
    ],
    fields: [
      ["n", "u32", N * E * G],
      ["E", "u32", E],
      ["G", "u32", G],
      ["width", "u32", w],
      ["T", "u32", o.T ?? 1],
      ["eoff", "u32", L.eoff],
      ["tok", "u32", L.tok],
    ],
    invocations: N * E * G,
    workgroup: 32,
    prelude: attendWgsl(D, "QO", "QO"),
    body: `  let p = i / u.G; let j = i % u.G;
  if (p >= R[u.eoff + u.E]) { return; }
  let t = R[u.tok + p];
  var e = 0u;
  while (e + 1u < u.E && R[u.eoff + e + 1u] <= p) { e = e + 1u; }
  ${
      o.cache
        ? "let first = 0u; let len = pos[0] + t + 1u;"
        : "let first = t - t % u.T; let len = t % u.T + 1u;"
    }
  attend(p * u.width + j * ${D}u, first, len, j * ${D}u, p * u.width + j * ${D}u, gate[t * u.E + e]);`,
  });
}

/**
 * The last dispatch of the sparse-expert kernels (gpu/kernels/moe.ts): `moe_gather` scatters the pairs'
 * output rows back to their tokens, y[t] = Σ_e P[pair(t, e)] over the token's routed experts in expert order
 * (zero when none): a deterministic gather-sum through the token→pair words of `route`, so no float atomics.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { moeKernel, NO_PAIR, range, type RouteLayout } from "./moe_common.ts";

/** Options of {@linkcode gatherKernel}. */
export interface GatherOptions {
  /** (N·E, d) rows of the routed pairs. */
  partial: GpuTensor;
  /** The `route` scratch (its token→pair words are read). */
  route: GpuTensor;
  /** (N, d), written. */
  y: GpuTensor;
  /** (N, d), added to y (decoding's fused residual add). */
  residual?: GpuTensor;
  L: RouteLayout;
  N: number;
  d: number;
  E: number;
}

/**
 * `moe_gather`: y[t] = Σ over the token's routed experts, in expert order, of its pairs' rows (+ R[t], the
 * residual, added last as the unfused add would).
 */
export function gatherKernel(ctx: GpuContext, o: GatherOptions): KernelCall {
  const { N, d, E } = o;
  const v = d % 4 === 0, dq = v ? d / 4 : d, V = v ? "vec4<f32>" : "f32";
  // cpu-simd: each invocation sums G consecutive elements of a token's row, so the token's E route
  // lookups (each a per-lane load loop on llvmpipe) serve G loads; a real GPU keeps one per thread.
  const G = ctx.profile === "gpu" ? 1 : [4, 2, 1].find((g) => dq % g === 0)!;
  const gs = range(G);
  return moeKernel(
    ctx,
    "moe_gather",
    [
      { name: "part", decl: V, t: o.partial },
      { name: "route", decl: "u32", t: o.route },
      { name: "y", decl: V, t: o.y, write: true },
      ...(o.residual ? [{ name: "R", decl: V, t: o.residual }] : []),
    ],
    [["n", "u32", (N * dq) / G], ["dq", "u32", dq], ["E", "u32", E], ["idx", "u32", o.L.idx]],
    (N * dq) / G,
    64,
    `
  let t = i / (u.dq / ${G}u);
  let c0 = (i % (u.dq / ${G}u)) * ${G}u;
  ${gs.map((j) => `var acc${j} = ${V}(0.0);`).join(" ")}
  for (var e = 0u; e < u.E; e = e + 1u) {
    let p = route[u.idx + t * u.E + e];
    if (p != ${NO_PAIR}u) {
      let o = p * u.dq + c0;
      ${gs.map((j) => `acc${j} = acc${j} + part[o + ${j}u];`).join(" ")}
    }
  }
  ${
      gs.map((j) => `y[t * u.dq + c0 + ${j}u] = ${o.residual ? `R[t * u.dq + c0 + ${j}u] + ` : ""}acc${j};`)
        .join(" ")
    }`,
  );
}

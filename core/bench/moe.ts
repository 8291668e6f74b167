/**
 * The moe suite: one MoE-MLP forward at model-like sizes, executed densely (the stacked path of the
 * training graph: matmul d→E·h, activation, router_scale, matmul E·h→d) and sparsely (gpu/kernels/moe.ts:
 * only the routed (token, expert) pairs), at 10%, 25%, 50% and 100% of experts active. Both are ours, so
 * the rows are `dense` and `sparse` and the table's ratio is sparse/dense time. GFLOP/s counts the routed
 * work only (4·pairs·d·h), the same for both rows of a case: dense execution spends the rest on zero gates.
 *
 * @module
 */
import type { GpuTensor } from "../../gpu/buffers.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { activation } from "../../gpu/kernels/activation.ts";
import { matmul } from "../../gpu/kernels/matmul.ts";
import { moeMlpSparse, moeScratch } from "../../gpu/kernels/moe.ts";
import { routerScale } from "../../gpu/kernels/router.ts";
import { moeMlpRef } from "../ref/moe.ts";
import { Rng } from "../util/rng.ts";
import { type BenchCase, MOE_IMPLS } from "./case.ts";
import { randomF32 } from "./data.ts";
import { oursRunnable, upload } from "./ours.ts";

/** Sizes of the layer: N tokens, model width d, E experts of width h, and the active fractions timed. */
export interface MoeBenchDims {
  N: number;
  d: number;
  E: number;
  h: number;
  fractions: readonly number[];
}

/** Full suite: 1024 tokens through a d 256, 8 × 256 expert MLP (the kernels suite's model). */
export const MOE_DIMS: MoeBenchDims = { N: 1024, d: 256, E: 8, h: 256, fractions: [0.1, 0.25, 0.5, 1] };

/** `--quick` (tests): small, h odd so the scalar paths run too. */
export const MOE_DIMS_QUICK: MoeBenchDims = { N: 64, d: 32, E: 4, h: 9, fractions: [0.25, 1] };

// f32 sums over d then h terms of size ≤ 0.1 against float64; a missed expert is off by O(0.1).
const _TOL = { atol: 1e-3, rtol: 1e-3 };

// Tokens compared with the reference: the float64 layer at full size takes the CPU seconds.
function _checkedTokens(N: number): number[] {
  return [
    ...new Set(Array.from({ length: Math.min(N, 48) }, (_, i) => Math.floor((i * N) / Math.min(N, 48)))),
  ];
}

/**
 * Gates (N, E) with `fraction` of all (token, expert) pairs routed: token t runs
 * ⌊(t+1)·f·E⌋ − ⌊t·f·E⌋ experts (so fractions below 1/E leave some tokens with none), its largest router
 * probabilities, weighted by the raw probability (docs/design.md §5: no renormalization).
 *
 * @example
 * ```ts
 * import { moeGates } from "./moe.ts";
 * const g = moeGates(8, 4, 0.25, 1);
 * if (g.filter((v) => v > 0).length !== 8) throw new Error("a quarter of 32 pairs");
 * ```
 */
export function moeGates(N: number, E: number, fraction: number, seed: number): Float32Array {
  const r = new Rng(seed), g = new Float32Array(N * E), s = new Float64Array(E);
  for (let t = 0; t < N; t++) {
    let sum = 0;
    for (let e = 0; e < E; e++) sum += s[e] = Math.exp(3 * r.next());
    const k = Math.floor((t + 1) * fraction * E + 1e-9) - Math.floor(t * fraction * E + 1e-9);
    const order = Array.from({ length: E }, (_, e) => e).sort((a, b) => s[b]! - s[a]! || a - b);
    for (const e of order.slice(0, k)) g[t * E + e] = s[e]! / sum;
  }
  return g;
}

/**
 * The moe cases at `dims`, one per active fraction, each with a dense and a sparse row.
 *
 * @example
 * ```ts ignore
 * const rows = await runCases(moeCases(ctx, MOE_DIMS_QUICK), { warmup: 1, reps: 2 });
 * ```
 */
export function moeCases(ctx: GpuContext, dims: MoeBenchDims): BenchCase[] {
  const { N, d, E, h } = dims, W = E * h;
  return dims.fractions.map((f) => {
    const pairs = Math.round(f * N * E);
    return {
      suite: "moe",
      name: `N${N} d${d} E${E}x${h} active ${Math.round(f * 100)}%`,
      flops: 4 * pairs * d * h,
      impls: MOE_IMPLS,
      setup() {
        const x = randomF32(N * d, 31),
          w1 = randomF32(d * W, 32, -0.1, 0.1),
          w2 = randomF32(W * d, 33, -0.1, 0.1);
        const gate = moeGates(N, E, f, 34);
        const toks = _checkedTokens(N);
        const inputs = (o: GpuTensor[]) => ({
          x: upload(ctx, o, [N, d], x, "x"),
          gate: upload(ctx, o, [N, E], gate, "gate"),
          w1: upload(ctx, o, [d, W], w1, "w1"),
          w2: upload(ctx, o, [W, d], w2, "w2"),
          y: upload(ctx, o, [N, d], null, "y"),
        });
        return {
          tolerance: _TOL,
          reference() {
            const pick = (a: Float32Array, w: number) =>
              Float64Array.from({ length: toks.length * w }, (_, i) => a[toks[(i / w) | 0]! * w + (i % w)]!);
            return moeMlpRef(pick(x, d), pick(gate, E), w1, w2, {
              N: toks.length,
              d,
              E,
              h,
              activation: "gelu",
            });
          },
          select: (out) =>
            Float64Array.from({ length: toks.length * d }, (_, i) => out[toks[(i / d) | 0]! * d + (i % d)]!),
          impls: {
            dense: () => {
              const o: GpuTensor[] = [], t = inputs(o);
              const u = upload(ctx, o, [N, W], null, "u"), a = upload(ctx, o, [N, W], null, "a");
              return oursRunnable(
                ctx,
                [
                  matmul(ctx, { a: t.x, b: t.w1, c: u, m: N, k: d, n: W }),
                  activation(ctx, { kind: "gelu", x: u, y: a }),
                  routerScale(ctx, { x: a, s: t.gate, y: u }),
                  matmul(ctx, { a: u, b: t.w2, c: t.y, m: N, k: W, n: d }),
                ],
                t.y,
                o,
              );
            },
            sparse: () => {
              const o: GpuTensor[] = [], t = inputs(o), scratch = moeScratch(ctx, { N, d, E, h });
              o.push(...Object.values(scratch));
              const calls = moeMlpSparse(ctx, { ...t, E, h, activation: "gelu", scratch });
              return oursRunnable(ctx, calls, t.y, o);
            },
          },
        };
      },
    };
  });
}

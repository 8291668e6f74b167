/**
 * Kernels of the routers of the literature (docs/design.md §16); float64 twins in core/ref/router_zoo.ts.
 * Expert-choice selection: one invocation per (token, expert) counts the tokens ranked ahead of it in its
 * expert's column (O(N) per invocation, no sort, no shared memory).
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { loopBudget, simpleKernel } from "./common.ts";

/** What to lower when an expert-choice column is too long for one invocation on llvmpipe. */
const _TOKENS_HINT = "Lower train.micro_batch × data.seq_len (the tokens one graph execution routes)";

/**
 * mask (N, E): 1 where expert e takes token t, i.e. fewer than `tokens` tokens of column e rank ahead of t
 * (a larger probability, or an equal one at a lower token index); s (N, E) router probabilities.
 */
export function expertChoiceMask(
  ctx: GpuContext,
  o: { s: GpuTensor; mask: GpuTensor; tokens: number },
): KernelCall {
  const [N, E] = o.s.shape as [number, number];
  loopBudget(ctx, N, `expert_choice_mask (${N} tokens)`, _TOKENS_HINT);
  return simpleKernel(ctx, {
    label: "expert_choice_mask",
    bindings: [{ name: "s", tensor: o.s }, { name: "mask", tensor: o.mask, write: true }],
    fields: [["n", "u32", N * E], ["N", "u32", N], ["E", "u32", E], ["C", "u32", o.tokens]],
    invocations: N * E,
    body: `  let t = i / u.E;
  let e = i % u.E;
  let v = s[i];
  var rank = 0u;
  for (var r = 0u; r < u.N; r = r + 1u) {
    let w = s[r * u.E + e];
    if (w > v || (w == v && r < t)) { rank = rank + 1u; }
  }
  mask[i] = select(0.0, 1.0, rank < u.C);`,
  });
}

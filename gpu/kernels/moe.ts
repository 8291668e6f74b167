/**
 * Sparse MoE MLP and MoA forward (docs/design.md §10): only routed (token, expert) pairs are computed, with
 * no host readback. Float64 twin: core/ref/moe.ts. Stacked-expert layout as in training: W1 (d, E·h) with
 * expert e in columns e·h…, W2 (E·h, d) with expert e in rows e·h…; gate (N, E) is the router probability
 * times the 0/1 routing mask, and a pair is routed iff its gate is > 0.
 *
 * Six dispatches, all on the GPU, one module per stage:
 * 1. `moe_count`, 2. `moe_scan`, 3. `moe_place` (moe_route.ts, routing and compaction): per (block of
 *    tokens, expert) counts, a serial scan into offsets, expert segments, row tiles and indirect dispatch
 *    args, then the pair list ordered by expert, then token (no atomics, so every float sum below is the
 *    same on every run) and the token→pair index. Up to 64 tokens (one block) and 2,048 (token, expert)
 *    slots, the three run as one invocation, `moe_pairs` (batched decoding: four dispatches, not six).
 * 4. `moe_up` (indirect, moe_grouped.ts): H[p] = act(x[tok(p)]·W1_e) · gate[tok(p), e] per routed pair p,
 *    one register tile of pairs of one expert per workgroup (rows gathered through the pair list).
 * 5. `moe_down` (indirect, moe_grouped.ts): P[p] = H[p]·W2_e, the same tiles.
 * 6. `moe_gather` (moe_gather.ts): y[t] = Σ_e P[pair(t, e)] over the token's routed experts in expert order
 *    (zero when none): a deterministic gather-sum, so no float atomics.
 *
 * moe_sparse.ts chains them ({@linkcode moeMlpSparse}); moa.ts runs the same chain for MoA with its
 * attention between the matmuls ({@linkcode moaAttentionSparse}); one token (batch-1 decoding) takes the
 * two- or three-dispatch kernels of moe_one_token.ts instead. Shapes, tiles, the `route` scratch layout and
 * the argument checks are in moe_common.ts. This module is the public face of all of them.
 *
 * @module
 */
export {
  type MoaOptions,
  type MoeMlpOptions,
  moeRouteWords,
  type MoeScratch,
  moeScratch,
  type MoeShape,
  type MoeTile,
  moeTile,
} from "./moe_common.ts";
export { moeMlpSparse } from "./moe_sparse.ts";
export { moaAttentionSparse } from "./moa.ts";

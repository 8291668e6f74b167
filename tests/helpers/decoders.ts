/**
 * The tiny decoders the decoding tests share (tests/decode_test.ts, tests/batch_decode_test.ts): a dense
 * model and a DS-MoE with MoA, and inference rules that decide per token (threshold_topk's K is a batch
 * mean, so one token alone may differ).
 *
 * @module
 */
import type { InferRules } from "../../core/plan/model.ts";

/** `model` overrides of the two tiny decoders, by name. */
export const DECODER_MODELS: Record<string, Record<string, unknown>> = {
  dense: {
    kind: "dense",
    attention: { kind: "mha", heads: 4, kv_heads: 2, head_dim: 8 },
    mlp: { experts: 1, hidden: 24 },
  },
  "DS-MoE with MoA": {
    attention: { kind: "moa", experts: 3, heads_per_expert: 2, head_dim: 8 },
    mlp: { experts: 4, hidden: 12 },
  },
};

const base = { epsilon: 0.5, k: 2, p: 0.9 };

/** Rules that decide per token: dense, threshold with top-k, top-p with threshold. */
export const PER_TOKEN_RULES: InferRules[] = [
  { mlp: { ...base, kind: "dense" }, attention: { ...base, kind: "dense" } },
  { mlp: { ...base, kind: "threshold", epsilon: 0.8 }, attention: { ...base, kind: "topk", k: 1 } },
  { mlp: { ...base, kind: "top_p", p: 0.6 }, attention: { ...base, kind: "threshold", epsilon: 1 } },
];

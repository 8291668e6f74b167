/**
 * The decode suite: batch-1 decoding of a DS-MoE model under a sparse rule (`sparse` rows) against a dense
 * model with the same total parameters (`dense` rows), both through `deno task generate`'s decoder (KV
 * cache, one token per step). Two ways of timing a run of `tokens` steps:
 * - `queued`: every step submitted back to back, one wait at the end: the GPU's decode throughput;
 * - `read each`: the logits read back after every step, as streamed generation must (a host↔GPU sync per
 *   token, ~11 ms on llvmpipe, often dominates there).
 * Models start from the seeded initialization (no training needed); the sparse rule is top-k, so the
 * active share is fixed: 2 of 8 MLP experts and 2 of 4 attention experts, a third of the hidden parameters
 * (attention and MLP weights, the shared K/V included) at tiny's shape; each case's name states its hidden %
 * and its share of all parameters (docs/design.md §5, core/plan/counts.ts `activeWith`). Each row is checked
 * against the float64 decoder of its own model.
 *
 * @module
 */
import { loadExperiment } from "../config/mod.ts";
import type { Experiment } from "../config/schema.ts";
import { evaluateGraph, type HostValue } from "../graph/cpu_executor.ts";
import { CPU_OPS } from "../graph/cpu_ops.ts";
import { numel } from "../graph/ir.ts";
import { schedule } from "../graph/schedule.ts";
import { Decoder } from "../infer/generate.ts";
import { buildDecoder, type InferRules } from "../plan/model.ts";
import type { RouteRule } from "../graph/op_types.ts";
import { activeWith, countParams, expectedActive, layerShape } from "../plan/counts.ts";
import { initParams } from "../train/init.ts";
import { fmtCount } from "../util/format.ts";
import { Rng } from "../util/rng.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { type BenchCase, MOE_IMPLS, type Runnable } from "./case.ts";

/** A pair of models: the DS-MoE config and the dense one, with `--set` overrides applied to both. */
export interface DecodeBenchSize {
  name: string;
  sets: readonly string[];
  denseSets: readonly string[];
  tokens: number; // decode steps per timed run (≤ seq_len)
}

/** Full suite: the tiny configs as trained, and the same shape at d_model 512 (≈ 19M parameters). */
export const DECODE_SIZES: readonly DecodeBenchSize[] = [
  { name: "tiny", sets: [], denseSets: [], tokens: 32 },
  {
    name: "d512",
    sets: ["model.d_model=512", "model.attention.head_dim=64", "model.mlp.hidden=512"],
    denseSets: ["model.d_model=512", "model.attention.head_dim=64", "model.mlp.hidden=4096"],
    tokens: 32,
  },
];

/** `--quick` (tests): two layers, 8 steps. */
export const DECODE_SIZES_QUICK: readonly DecodeBenchSize[] = [
  {
    name: "quick",
    sets: ["model.layers=2", "data.seq_len=16"],
    denseSets: ["model.layers=2", "data.seq_len=16"],
    tokens: 8,
  },
];

const _BASE: Omit<RouteRule, "kind"> = { epsilon: 0.5, k: 2, p: 0.9 };
/** The DS-MoE model's rule: top-2 in every routed layer. */
export const DECODE_SPARSE_RULE: InferRules = {
  mlp: { ..._BASE, kind: "topk", k: 2 },
  attention: { ..._BASE, kind: "topk", k: 2 },
};
const _DENSE_RULE: InferRules = { mlp: { ..._BASE, kind: "dense" }, attention: { ..._BASE, kind: "dense" } };

/**
 * What the sparse model of a decode case runs under {@linkcode DECODE_SPARSE_RULE}, by docs/design.md §5:
 * e.g. "hidden 33.3%, 37.8% of all" at configs/dsmoe-tiny.yaml's shape (of the attention and MLP weights; of
 * every parameter).
 */
export function decodeShare(c: Readonly<Experiment>): string {
  const s = layerShape(c), r = DECODE_SPARSE_RULE;
  const a = activeWith(
    c,
    expectedActive(r.attention, s.attExperts).experts,
    expectedActive(r.mlp, s.mlpExperts).experts,
  );
  return `hidden ${a.hiddenPct.toFixed(1)}%, ${a.activePctAll.toFixed(1)}% of all`;
}

/** Float64 logits after decoding `ids` from position 0 (the reference of one timed run). */
function _referenceLogits(
  c: Readonly<Experiment>,
  rules: InferRules,
  params: Map<string, Float32Array>,
  ids: number[],
) {
  const dec = buildDecoder(c, rules), sched = schedule(dec.graph, [dec.logits]);
  const feeds = new Map<number, HostValue>();
  for (const p of dec.params) feeds.set(p.value.id, Float64Array.from(params.get(p.value.name)!));
  for (const cache of dec.caches) feeds.set(cache.id, new Float64Array(numel(cache.shape)));
  let logits: HostValue = new Float64Array(0);
  ids.forEach((id, pos) => {
    feeds.set(dec.ids.id, Uint32Array.of(id));
    feeds.set(dec.pos.id, Uint32Array.of(pos));
    [logits] = evaluateGraph(sched.nodes, feeds, [dec.logits], CPU_OPS) as [HostValue];
  });
  return logits;
}

function _decoderRunnable(dec: Decoder, ids: number[], readEach: boolean): Runnable {
  let last: Float32Array = new Float32Array(0);
  return {
    async run(times = 1) {
      for (let i = 0; i < times; i++) {
        for (const [pos, id] of ids.entries()) {
          dec.feed(id, pos);
          if (readEach || pos === ids.length - 1) last = (await dec.read()).logits;
        }
      }
    },
    output: () => Promise.resolve(last),
    dispose: () => dec.destroy(),
    dispatches() {
      const d = dec.dispatches();
      return { perToken: d.graph, perLayer: d.perLayer.reduce((a, b) => a + b, 0) / d.perLayer.length };
    },
  };
}

/**
 * The decode cases for `sizes` (configs/dsmoe-tiny.yaml and configs/dense-tiny.yaml with each size's
 * overrides), a queued and a read-each case per size.
 */
export async function decodeCases(
  ctx: GpuContext,
  sizes: readonly DecodeBenchSize[],
  configDir = "configs",
): Promise<BenchCase[]> {
  const cases: BenchCase[] = [];
  for (const size of sizes) {
    const sparse = (await loadExperiment(`${configDir}/dsmoe-tiny.yaml`, { sets: size.sets })).config;
    const dense = (await loadExperiment(`${configDir}/dense-tiny.yaml`, { sets: size.denseSets })).config;
    const rng = new Rng(41), ids = Array.from({ length: size.tokens }, () => 32 + rng.int(95));
    const models = {
      sparse: { c: sparse, rules: DECODE_SPARSE_RULE },
      dense: { c: dense, rules: _DENSE_RULE },
    } as const;
    const params = (m: (typeof models)[keyof typeof models]) =>
      initParams(buildDecoder(m.c, m.rules).params, 7);
    const total = `${fmtCount(countParams(sparse).total)} vs ${fmtCount(countParams(dense).total)} params, ` +
      decodeShare(sparse);
    for (const readEach of [false, true]) {
      cases.push({
        suite: "decode",
        name: `${size.name} (${total}) ${size.tokens} tokens ${readEach ? "read each" : "queued"}`,
        flops: null,
        tokens: size.tokens,
        impls: MOE_IMPLS,
        setup() {
          const weights = { sparse: params(models.sparse), dense: params(models.dense) };
          const refs = {
            sparse: _referenceLogits(sparse, models.sparse.rules, weights.sparse, ids),
            dense: _referenceLogits(dense, models.dense.rules, weights.dense, ids),
          };
          // Logits of an initialized model are small: the tolerance scales with the largest one.
          const scale = Math.max(...[...refs.sparse, ...refs.dense].map(Math.abs));
          const build = (impl: keyof typeof models) => async () =>
            _decoderRunnable(
              await Decoder.create(ctx, models[impl].c, weights[impl], models[impl].rules),
              ids,
              readEach,
            );
          return {
            tolerance: { atol: 2e-4 * scale, rtol: 2e-3 },
            reference: (impl) => refs[impl === "dense" ? "dense" : "sparse"],
            referencePerImpl: true,
            impls: { sparse: build("sparse"), dense: build("dense") },
          };
        },
      });
    }
  }
  return cases;
}

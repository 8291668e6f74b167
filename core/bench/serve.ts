/**
 * The serve suite: batched decoding (docs/design.md §10, "Batched decoding"; docs/performance.md) of B
 * sequences together, the compute-bound regime of serving many users — the DS-MoE model under a sparse rule
 * (`sparse` rows) against the dense model with the same total parameters (`dense` rows), both through
 * `deno task generate --batch`'s batched decoder (core/infer/batch_generate.ts), at B = 32 and 64.
 *
 * One timed run is `steps` batched steps queued back to back (B · steps tokens; the logits are read back
 * once, after the last run of a queue): every sequence first holds a prefix of its own length in its cache
 * (encoded once, untimed), so the B sequences decode at different positions, as a server's do; each run then
 * decodes positions prefix_b … prefix_b + steps − 1 again (rewriting the same cache rows with the same
 * values). Rows report total tokens/s across the batch. The sizes are decode.ts's `DECODE_SIZES` (the same
 * pairs of models), the sparse rule each size's (`DECODE_SPARSE_RULE`, top-2 everywhere, at tiny and d512;
 * `DECODE_LARGE_RULE` at 125m and 1b: a fixed active share).
 *
 * Each row is checked against float64: two sequences of the batch (the first and the last, of different
 * lengths) decoded alone by the batch-1 float64 decoder must give that row's logits. Prefixes are at most 32
 * tokens, so that the float64 reference of a large model stays a minute's work; sizes whose DS-MoE model has
 * more parameters than {@linkcode serveMaxParams} allows on the adapter are left out, with a progress line
 * saying so.
 *
 * @module
 */
import { loadExperiment } from "../config/mod.ts";
import { BatchDecoder } from "../infer/batch_generate.ts";
import { buildDecoder, type InferRules, type ParamSpec } from "../plan/model.ts";
import type { RouteRule } from "../graph/op_types.ts";
import { countParams } from "../plan/counts.ts";
import { fmtCount } from "../util/format.ts";
import { Rng } from "../util/rng.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { type BenchCase, MOE_IMPLS, type Runnable } from "./case.ts";
import {
  benchWeights,
  DECODE_SIZES,
  DECODE_SIZES_QUICK,
  DECODE_SPARSE_RULE,
  type DecodeBenchSize,
  decodeShare,
  referenceLogits,
} from "./decode.ts";

/** Batch sizes and steps per timed run of the serve suite. */
export interface ServeBench {
  sizes: readonly DecodeBenchSize[];
  batches: readonly number[];
  steps: number;
}

/**
 * The largest model (total parameters) the serve suite times on `ctx`: 50M on a software adapter (`cpu-simd`
 * profile: d512's 19.6M model takes about 3 s per timed run of B = 64 on llvmpipe's 2 cores, a 125M one would
 * take ~20), 200M on a real GPU (above that the float64 reference alone takes minutes).
 */
export function serveMaxParams(ctx: GpuContext): number {
  return ctx.profile === "gpu" ? 200e6 : 50e6;
}

/** Full suite: every decode size at B = 32 and 64, 16 steps per run. */
export const SERVE_BENCH: ServeBench = { sizes: DECODE_SIZES, batches: [32, 64], steps: 16 };

/** `--quick` (tests): the quick decode size, 3 sequences, 4 steps. */
export const SERVE_BENCH_QUICK: ServeBench = { sizes: DECODE_SIZES_QUICK, batches: [3], steps: 4 };

const _BASE: Omit<RouteRule, "kind"> = { epsilon: 0.5, k: 2, p: 0.9 };
const _DENSE_RULE: InferRules = { mlp: { ..._BASE, kind: "dense" }, attention: { ..._BASE, kind: "dense" } };

/** The tokens of one serve case: per sequence a prefix (≥ 1 token) and the `steps` tokens timed after it. */
export interface ServeTokens {
  prefixes: number[][];
  steps: number[][]; // [step][sequence]
}

/** The longest prefix of a serve case (keeps the float64 reference short at any context length). */
const _MAX_PREFIX = 32;

/**
 * Seeded tokens for `batch` sequences: prefix lengths spread over 1 … min(T − steps, 32) (every timed step
 * stays inside the context), printable bytes as tokens.
 *
 * @example
 * ```ts
 * import { serveTokens } from "./serve.ts";
 * const t = serveTokens(4, 16, 4);
 * if (t.steps.length !== 4 || t.prefixes.some((p) => p.length < 1 || p.length + 4 > 16)) throw new Error();
 * ```
 */
export function serveTokens(batch: number, T: number, steps: number): ServeTokens {
  if (steps + 1 > T) throw new RangeError(`Cannot time ${steps} steps after a prefix in a context of ${T}`);
  const rng = new Rng(43), span = Math.min(T - steps, _MAX_PREFIX), tok = () => 32 + rng.int(95);
  const prefixes = Array.from({ length: batch }, (_, b) => {
    const len = 1 + ((b * 13) % span);
    return Array.from({ length: len }, tok);
  });
  return { prefixes, steps: Array.from({ length: steps }, () => Array.from({ length: batch }, tok)) };
}

/** The rows of a batch whose logits are checked: the first and the last. */
export function checkedRows(batch: number): number[] {
  return [...new Set([0, batch - 1])];
}

/**
 * Encodes every sequence's prefix (untimed): at step s a sequence whose prefix is longer feeds its token s,
 * the others re-feed their last prefix token in place.
 */
function _prefill(dec: BatchDecoder, prefixes: readonly number[][]): void {
  const longest = Math.max(...prefixes.map((p) => p.length));
  for (let s = 0; s < longest; s++) {
    const at = prefixes.map((p) => Math.min(s, p.length - 1));
    dec.feed(prefixes.map((p, b) => p[at[b]!]!), at);
  }
}

function _serveRunnable(dec: BatchDecoder, t: ServeTokens): Runnable {
  const V = dec.graph.logits.shape[1]!;
  let last: Float32Array = new Float32Array(0);
  return {
    async run(times = 1) {
      for (let i = 0; i < times; i++) {
        t.steps.forEach((ids, s) => dec.feed(ids, t.prefixes.map((p) => p.length + s)));
      }
      // One read after the whole queue: it waits for every queued step.
      const all = (await dec.read()).logits;
      last = Float32Array.from(checkedRows(dec.batch).flatMap((b) => [...all.subarray(b * V, (b + 1) * V)]));
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
 * The serve cases of `bench` (each decode size's pair of configs with its overrides and its sparse rule,
 * core/bench/decode.ts), one per size and batch; each row's dispatches are per batched step (B tokens). A size above
 * {@linkcode serveMaxParams} is left out and `progress` says so.
 */
export async function serveCases(
  ctx: GpuContext,
  bench: ServeBench,
  configDir = "configs",
  progress: (line: string) => void = () => {},
): Promise<BenchCase[]> {
  const cases: BenchCase[] = [];
  for (const size of bench.sizes) {
    const sparse =
      (await loadExperiment(`${configDir}/${size.config ?? "dsmoe-tiny.yaml"}`, { sets: size.sets }))
        .config;
    const dense = (await loadExperiment(`${configDir}/${size.denseConfig ?? "dense-tiny.yaml"}`, {
      sets: size.denseSets,
    }))
      .config;
    const rule = size.rule ?? DECODE_SPARSE_RULE;
    const params = countParams(sparse).total, max = serveMaxParams(ctx);
    if (params > max) {
      progress(
        `serve: size ${size.name} left out: ${fmtCount(params)} parameters, more than ${
          fmtCount(max)
        } on this ` +
          `adapter (${ctx.profile} kernels; core/bench/serve.ts serveMaxParams)`,
      );
      continue;
    }
    const models = {
      sparse: { c: sparse, rules: rule },
      dense: { c: dense, rules: _DENSE_RULE },
    } as const;
    const total = `${fmtCount(countParams(sparse).total)} vs ${fmtCount(countParams(dense).total)} params, ` +
      decodeShare(sparse, rule);
    for (const batch of bench.batches) {
      cases.push({
        suite: "serve",
        name: `${size.name} (${total}) B=${batch} × ${bench.steps} steps`,
        flops: null,
        tokens: batch * bench.steps,
        batch,
        impls: MOE_IMPLS,
        setup() {
          const t = serveTokens(batch, sparse.data.seq_len, bench.steps);
          const weights = {
            sparse: benchWeights(buildDecoder(sparse, models.sparse.rules).params, 7),
            dense: benchWeights(buildDecoder(dense, models.dense.rules).params, 7),
          };
          const rows = checkedRows(batch);
          const sequence = (b: number) => [...t.prefixes[b]!, ...t.steps.map((ids) => ids[b]!)];
          const reference = (impl: keyof typeof models) => {
            const m = models[impl], tensor = (p: ParamSpec) => weights[impl].get(p.value.name)!;
            return Float64Array.from(
              rows.flatMap((b) => [...referenceLogits(m.c, m.rules, tensor, sequence(b))]),
            );
          };
          const refs = { sparse: reference("sparse"), dense: reference("dense") };
          // Logits of an initialized model are small: the tolerance scales with the largest one.
          const scale = Math.max(...[...refs.sparse, ...refs.dense].map(Math.abs));
          const build = (impl: keyof typeof models) => async () => {
            const dec = await BatchDecoder.create(
              ctx,
              models[impl].c,
              weights[impl],
              models[impl].rules,
              batch,
            );
            _prefill(dec, t.prefixes);
            return _serveRunnable(dec, t);
          };
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

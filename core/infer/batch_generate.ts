/**
 * Batched generation (docs/design.md §10, "Batched decoding"; `deno task generate --batch B` in README.md):
 * B sequences decoded together by the batched decoder of `plan(c, "decode", { batch: B })`, one new token
 * per sequence per execution, each sequence at its own position with its own KV cache, every token routed
 * on its own (grouped matmuls over the routed (token, expert) pairs). Tokens are drawn on the GPU, a
 * workgroup per row (gpu/kernels/sampling.ts `sampleTokensGpu`), row b with seed `seed + b`, and fed straight
 * back; the host reads them in chunks.
 *
 * Prompts of different lengths are encoded together from position 0: at each encoding step a row whose
 * prompt is not yet in its cache feeds its next token, and a row that is done re-feeds its last token at its
 * last position (rewriting that cache row with the same keys and values), so after the longest prompt every
 * row's logits follow its own last token. A context shift (the newest half kept and re-encoded from
 * position 0 when a row's `seq_len` positions are full) re-encodes just that row the same way.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import { numel } from "../graph/ir.ts";
import type { BatchDecoderGraph, InferRules } from "../plan/model.ts";
import { tapExperts } from "../plan/model.ts";
import { type DecodePlan, plan } from "../plan/plan.ts";
import { routerCopiesRows } from "../../gpu/kernels/decode_fused.ts";
import { groupedACopyable } from "../../gpu/kernels/moe_grouped.ts";
import { gpuSamplingFits, sampleTokensGpu } from "../../gpu/kernels/sampling.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { assertScheduleBuilds } from "../../gpu/preflight.ts";
import { activity, type LayerActivity } from "./evaluate.ts";
import {
  bindDecoder,
  BoundDecoder,
  chainedReads,
  sampleToken,
  type Sampling,
  samplingUniform,
} from "./generate.ts";

/** A prepared batched decoder: the graph of `plan(c, "decode", { batch })` bound to a model's weights. */
export class BatchDecoder extends BoundDecoder<BatchDecoderGraph> {
  /**
   * Builds the decoder of `batch` sequences of `c` under `rules` and uploads `params` (name → values, as in
   * a checkpoint). Throws a RangeError for a rule batched decoding refuses (`buildBatchDecoder`).
   */
  static async create(
    ctx: GpuContext,
    c: Readonly<Experiment>,
    params: ReadonlyMap<string, Float32Array>,
    rules: InferRules,
    batch: number,
  ): Promise<BatchDecoder> {
    const p = plan(c, "decode", { rules, batch });
    // A size this device cannot bind or dispatch is refused (GpuLimitError) before anything is allocated.
    assertScheduleBuilds(ctx, p.schedule, `Cannot decode ${batch} sequences together`);
    const graph = { ...p.model, batch: p.batch };
    // One throwaway step builds every pipeline now, so the first timed step does not pay for it. Its cache
    // rows (position 0 of every sequence) are rewritten by the first real step before anything reads them.
    return await bindDecoder(ctx, graph, p.schedule, params, async (exec, weights) => {
      const d = new BatchDecoder(ctx, c, graph, exec, weights);
      d.feed(new Array(batch).fill(0), new Array(batch).fill(0));
      await d.read();
      return d;
    });
  }

  /** Sequences decoded together. */
  get batch(): number {
    return this.graph.batch;
  }

  /** One token per sequence per execution. */
  get rows(): number {
    return this.graph.batch;
  }

  /** Queues one step: row b feeds token `ids[b]` at position `pos[b]`. Nothing is read back. */
  feed(ids: ArrayLike<number>, pos: ArrayLike<number>): void {
    this.queue(pos, ids);
  }

  /**
   * Queues one step whose tokens are the ones the GPU sampler drew last (already in the input ids), row b at
   * position `pos[b]`; nothing is written from the host but the positions.
   */
  feedDrawn(pos: ArrayLike<number>): void {
    this.queue(pos);
  }

  /**
   * A sampler drawing one token per row on the GPU: each `draw()` writes row b's token into the decoder's
   * input ids (for {@linkcode BatchDecoder.feedDrawn}) and into a list of up to `capacity` tokens per row,
   * and adds the experts each routed layer ran (over all rows) to per-router counts. Row b draws with seed
   * `seed + b`.
   */
  sampler(s: Sampling & { seed: number; capacity: number }): BatchSampler {
    const B = this.batch;
    const { drawn, ...rest } = this.gpuDraws(s, (o) => sampleTokensGpu(this.ctx, { ...o, rows: B }));
    return {
      ...rest,
      async tokens(n: number) {
        const got = await drawn();
        return Array.from({ length: B }, (_, b) => Array.from({ length: n }, (_, k) => got[k * B + b]!));
      },
    };
  }
}

/**
 * Device bytes (f32) a batched decoder of `batch` sequences allocates, estimated from its plan: the weights,
 * the stacked KV caches (B · seq_len rows per layer), the inputs, the planned activations, and the sparse
 * experts' worst-case scratch (every (token, expert) pair routed: B·E rows of h and of d per routed block).
 *
 * @example
 * ```ts
 * import { ExperimentSchema } from "../config/schema.ts";
 * import { configRules } from "../plan/plan.ts";
 * import { batchDecoderBytes } from "./batch_generate.ts";
 * const c = ExperimentSchema.parse({ data: { seq_len: 8 }, model: { d_model: 16, layers: 1 } });
 * if (!(batchDecoderBytes(c, configRules(c), 4) > batchDecoderBytes(c, configRules(c), 2))) throw new Error();
 * ```
 */
export function batchDecoderBytes(
  c: Readonly<Experiment>,
  rules: InferRules,
  batch: number,
  o: DecodeBytesOptions = {},
): number {
  return decodePlanBytes(plan(c, "decode", { rules, batch }), o);
}

/** Options of {@linkcode batchDecoderBytes}. */
export interface DecodeBytesOptions {
  /**
   * Count the texture copies a software adapter's (`cpu-simd`) kernels read: every weight a second time
   * (gpu/buffers.ts `textureMirror`), an upper bound, and the copies made before each dispatch where the
   * sizes allow them: the grouped matmuls' A (x and the pairs' H, gpu/kernels/moe_sparse.ts) and the
   * routers' rows (gpu/kernels/decode_fused.ts).
   */
  textureCopies?: boolean;
}

/** {@linkcode batchDecoderBytes} of a decode plan. */
export function decodePlanBytes(p: DecodePlan, o: DecodeBytesOptions = {}): number {
  const leaves = [...p.model.graph.leaves.values()].reduce((n, l) => n + numel(l.value.shape), 0);
  let scratch = 0, copies = 0;
  for (const n of p.schedule.nodes) {
    if (n.op === "fused_route_gate") {
      // Several rows routed at once read them from a copy (gpu/kernels/decode_fused.ts fusedRouteGate).
      const [N, d] = n.inputs[0]!.shape as [number, number], E = n.inputs.at(-1)!.shape[1]!;
      if (routerCopiesRows(N, d, E)) copies += N * d;
      continue;
    }
    if (n.op !== "moe_mlp" && n.op !== "moa_attention_batch") continue;
    const [N, d] = n.inputs[0]!.shape as [number, number], E = n.inputs[1]!.shape[1]!;
    const h = n.inputs[2]!.shape[1]! / E;
    scratch += N * E * (h + d + 4) + 64;
    copies += (groupedACopyable(d, h) ? N * d : 0) + (groupedACopyable(h, d) ? N * E * h : 0);
  }
  copies = o.textureCopies ? copies + p.model.params.reduce((n, q) => n + numel(q.value.shape), 0) : 0;
  return 4 * (leaves + p.schedule.memory.totalElements + scratch + copies);
}

/** Draws one token per row on the GPU: see {@linkcode BatchDecoder.sampler}. */
export interface BatchSampler {
  /** Draws every row's next token from the last step's logits (queued; nothing is read back). */
  draw(): void;
  /** One throwaway draw, waited for, then the counters and the expert counts reset (pipelines built). */
  warm(): Promise<void>;
  /** The first `n` drawn tokens of each row (waits for the GPU). */
  tokens(n: number): Promise<number[][]>;
  /** Experts run per routed layer, summed over `steps` draws of every row. */
  experts(steps: number): Promise<number[]>;
  destroy(): void;
}

/** Options of {@linkcode generateBatch}. */
export interface BatchGenerateOptions extends Sampling {
  /** New tokens per sequence. */
  maxTokens: number;
  /** Row b samples with seed `seed + b`. */
  seed: number;
  /** Draw on the host from each step's read-back logits (one wait per step) instead of on the GPU. */
  hostSampling?: boolean;
  /** Called after each chunk of tokens is read back, with the new tokens per sequence so far. */
  onProgress?: (tokensPerSequence: number) => void;
}

/** What a batched generation produced and how fast. */
export interface BatchGenerateResult {
  tokens: number[][]; // new tokens of each sequence
  promptTokens: number[]; // prompt tokens encoded per sequence (after trimming to the context)
  setupSeconds: number; // building the GPU sampler's pipelines before the first tokens (0 on the host)
  prefillSeconds: number; // until every sequence's first new token was read
  decodeSeconds: number; // the remaining new tokens
  /** New tokens of all sequences after the first of each / decodeSeconds (0 when there are none). */
  tokensPerS: number;
  /** tokensPerS / B: what each sequence gets. */
  perSequenceTokensPerS: number;
  contextShifts: number; // over all sequences
  layers: LayerActivity[]; // experts run per token, mean over the new tokens of every sequence
  activeParams: number;
  activePct: number;
  hiddenPct: number;
  activePctAll: number;
  /** Compute dispatches per batched step (B tokens): the graph's, plus the GPU sampler's when it drew. */
  dispatchesPerStep: number;
}

/** Drawn tokens are read back in chunks of this many steps. */
const _CHUNK = 16;

/** Per sequence: its tokens known on the host, and how many of them its cache holds (positions 0 …). */
interface _Row {
  context: number[];
  filled: number;
}

/**
 * Encoding steps until every row's cache holds its whole context: a row short of it feeds its next token,
 * a row that holds it re-feeds its last token at its last position (the same keys and values again).
 */
function _encode(dec: BatchDecoder, rows: _Row[]): void {
  while (rows.some((r) => r.filled < r.context.length)) {
    const ids: number[] = [], pos: number[] = [];
    for (const r of rows) {
      const p = r.filled < r.context.length ? r.filled++ : r.context.length - 1;
      ids.push(r.context[p]!);
      pos.push(p);
    }
    dec.feed(ids, pos);
  }
}

/**
 * Rows whose context outgrew `T` keep their newest `keep` tokens and re-encode from position 0; returns how
 * many shifted.
 */
function _shift(rows: _Row[], T: number, keep: number): number {
  let shifts = 0;
  for (const r of rows) {
    if (r.context.length > T) {
      r.context = r.context.slice(-keep);
      r.filled = 0;
      shifts++;
    }
  }
  return shifts;
}

/**
 * Generates `o.maxTokens` new tokens after each of `prompts` (one per decoder row, each non-empty) on the
 * batched decoder. A prompt longer than the context keeps its newest half-context. At temperature 0 row b's
 * tokens are those `generate` (core/infer/generate.ts) gives for prompt b alone, up to near-ties of the
 * logits (the batched kernels round differently); with sampling, those `generate` seeded with `seed + b`
 * draws from the same logits.
 */
export async function generateBatch(
  dec: BatchDecoder,
  prompts: readonly (readonly number[])[],
  o: BatchGenerateOptions,
): Promise<BatchGenerateResult> {
  if (prompts.length !== dec.batch) {
    throw new RangeError(`Cannot generate ${prompts.length} prompts on a decoder of ${dec.batch} rows`);
  }
  if (prompts.some((p) => p.length === 0)) throw new RangeError("Cannot generate from an empty prompt");
  const T = dec.context, keep = Math.max(1, Math.floor(T / 2));
  const rows: _Row[] = prompts.map((p) => ({ context: p.length > T ? p.slice(-keep) : [...p], filled: 0 }));
  const promptTokens = rows.map((r) => r.context.length);
  if (o.hostSampling || !gpuSamplingFits(dec.graph.logits.shape.at(-1)!, o)) {
    return await _generateOnHost(dec, rows, promptTokens, o);
  }
  const s0 = performance.now();
  const sampler = dec.sampler({ ...o, capacity: o.maxTokens });
  try {
    await sampler.warm();
    const setup = (performance.now() - s0) / 1000;
    const tokens: number[][] = rows.map(() => []);
    let shifts = 0, drawn = 0;
    // Appends the tokens each read brought to each row's context; a read every _CHUNK steps is not waited
    // for (chainedReads), so its wait overlaps the steps queued meanwhile.
    const reads = chainedReads((n) => sampler.tokens(n), (got, upTo) => {
      rows.forEach((r, b) => {
        for (let k = tokens[b]!.length; k < upTo; k++) {
          tokens[b]!.push(got[b]![k]!);
          r.context.push(got[b]![k]!);
        }
      });
      o.onProgress?.(upTo);
    });
    const flush = () => reads.flush(drawn);
    // Row b's cache holds `filled` tokens, of which the last `filled − context.length` are on the GPU only.
    const t0 = performance.now();
    let t1 = t0;
    _encode(dec, rows);
    while (drawn < o.maxTokens) {
      sampler.draw();
      drawn++;
      if (drawn === 1) {
        await flush();
        t1 = performance.now();
      }
      if (drawn === o.maxTokens) break;
      if (rows.some((r) => r.filled + 1 > T)) {
        // A row is full: every drawn token comes to the host, full rows shift, and all re-encode.
        await flush();
        shifts += _shift(rows, T, keep);
        _encode(dec, rows);
      } else {
        dec.feedDrawn(rows.map((r) => r.filled++));
      }
      if (drawn % _CHUNK === 0) reads.start(drawn);
    }
    await flush();
    const t2 = performance.now();
    const sums = await sampler.experts(drawn);
    const d = dec.dispatches();
    return {
      ..._result(dec, tokens, promptTokens, shifts, sums, t0, t1, t2),
      setupSeconds: setup,
      dispatchesPerStep: d.graph + d.sampler,
    };
  } finally {
    sampler.destroy();
  }
}

/** {@linkcode generateBatch} drawing each row's token on the host from read-back logits: the same draws. */
async function _generateOnHost(
  dec: BatchDecoder,
  rows: _Row[],
  promptTokens: number[],
  o: BatchGenerateOptions,
): Promise<BatchGenerateResult> {
  const T = dec.context, keep = Math.max(1, Math.floor(T / 2)), B = dec.batch;
  const tokens: number[][] = rows.map(() => []);
  const sums = dec.graph.routers.map(() => 0);
  let shifts = 0;
  const t0 = performance.now();
  let t1 = t0;
  _encode(dec, rows);
  for (let n = 0; n < o.maxTokens; n++) {
    const { logits, experts } = await dec.read();
    experts.forEach((e, i) => sums[i]! += e);
    if (n === 0) t1 = performance.now();
    const V = logits.length / B;
    rows.forEach((r, b) => {
      const next = sampleToken(logits.subarray(b * V, (b + 1) * V), o, samplingUniform(o.seed + b, n));
      tokens[b]!.push(next);
      r.context.push(next);
    });
    if ((n + 1) % _CHUNK === 0) o.onProgress?.(n + 1);
    if (n + 1 === o.maxTokens) break;
    shifts += _shift(rows, T, keep);
    _encode(dec, rows);
  }
  return _result(dec, tokens, promptTokens, shifts, sums, t0, t1, performance.now());
}

/** The result of a batched generation from its tokens, expert counts (summed) and clock marks. */
function _result(
  dec: BatchDecoder,
  tokens: number[][],
  promptTokens: number[],
  shifts: number,
  sums: readonly number[],
  t0: number,
  t1: number,
  t2: number,
): BatchGenerateResult {
  const B = dec.batch, n = tokens[0]?.length ?? 0;
  const layers = dec.graph.routers.map((r, i) => ({
    layer: r.layer,
    kind: r.kind,
    experts: sums[i]! / Math.max(1, n * B),
    of: tapExperts(r),
  }));
  const decodeSeconds = (t2 - t1) / 1000;
  const tokensPerS = n > 1 && decodeSeconds > 0 ? (B * (n - 1)) / decodeSeconds : 0;
  return {
    tokens,
    promptTokens,
    setupSeconds: 0,
    prefillSeconds: (t1 - t0) / 1000,
    decodeSeconds,
    tokensPerS,
    perSequenceTokensPerS: tokensPerS / B,
    contextShifts: shifts,
    dispatchesPerStep: dec.dispatches().graph,
    layers,
    ...activity(dec.config, layers),
  };
}

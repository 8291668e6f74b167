/**
 * Text generation with a trained model (docs/design.md §10; `deno task generate` in README.md): a one-token
 * decoder graph with per-layer KV caches on the GPU, routed layers computing only their selected experts, and
 * seeded temperature / top-k / top-p sampling on the GPU (gpu/kernels/sampling.ts), whose token the next step embeds
 * directly: the host reads tokens back in chunks for streaming instead of waiting on every token.
 *
 * Positions are learned up to `data.seq_len`; when the context fills, the newest half of it is kept and
 * re-encoded from position 0 (a "context shift"), so generation can run past the training length.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import { type DecoderGraph, type InferRules, tapExperts } from "../plan/model.ts";
import { plan } from "../plan/plan.ts";
import type { Schedule } from "../graph/schedule.ts";
import { hash32 } from "../util/rng.ts";
import {
  createTensor,
  destroyTensor,
  freezeTensor,
  type GpuTensor,
  readTensor,
  readTensors,
  writeTensor,
} from "../../gpu/buffers.ts";
import { type KernelCall, prepare, releaseCall, Step } from "../../gpu/dispatch.ts";
import {
  countExpertsCalls,
  countExpertsPerCall,
  gpuSamplingFits,
  type SamplerOptions,
  sampleTokenGpu,
} from "../../gpu/kernels/sampling.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { GraphExecutor } from "../../gpu/executor.ts";
import { activity, type LayerActivity, uploadParams } from "./evaluate.ts";

/** How the next token is drawn from the logits. */
export interface Sampling {
  /** Softmax temperature; 0 picks the most likely token (greedy). */
  temperature: number;
  /** Keep only the k most likely tokens before sampling; 0 keeps all. */
  topK: number;
  /**
   * Nucleus sampling (`--top-p`): of the tokens top-k keeps, keep the fewest most likely whose probability
   * (at this temperature) reaches this share, and sample among them renormalised; 1 (the default) keeps all.
   */
  topP?: number;
}

/**
 * The uniform number behind draw `index` of a generation seeded with `seed`: hash32(seed, index) / 2³², with
 * the hash rounded to f32 as the GPU sampler (gpu/kernels/sampling.ts) does. In [0, 1].
 *
 * @example
 * ```ts
 * import { samplingUniform } from "./generate.ts";
 * const u = samplingUniform(7, 0);
 * if (!(u >= 0 && u <= 1) || u !== samplingUniform(7, 0) || u === samplingUniform(7, 1)) throw new Error();
 * ```
 */
export function samplingUniform(seed: number, index: number): number {
  return Math.fround(hash32(seed >>> 0, Math.floor(seed / 2 ** 32) >>> 0, index >>> 0)) / 4294967296;
}

/**
 * The next token: the argmax at temperature 0 (ties to the lower id); otherwise, over the `topK` most likely
 * tokens (ties to the lower id; 0 keeps all) with weights exp((logit − max) / temperature), narrowed with
 * `topP` < 1 to the fewest most likely of them whose weight reaches topP · their weight (a token is kept
 * while the weight before it in that order is under the cut), the first token in id order whose running
 * weight exceeds u · Σ weights (the last kept token if rounding leaves none). The GPU sampler computes the
 * same draw in f32.
 *
 * @example
 * ```ts
 * import { sampleToken } from "./generate.ts";
 * const t = sampleToken(Float32Array.of(0, 3, 1), { temperature: 0, topK: 0 }, 0.5);
 * if (t !== 1) throw new Error(String(t));
 * ```
 */
export function sampleToken(logits: ArrayLike<number>, s: Sampling, u: number): number {
  const order = Array.from({ length: logits.length }, (_, i) => i);
  order.sort((a, b) => logits[b]! - logits[a]! || a - b);
  if (s.temperature <= 0 || s.topK === 1) return order[0]!;
  const top = logits[order[0]!]!;
  const weight = (i: number) => Math.exp((logits[i]! - top) / s.temperature);
  let keep = order.slice(0, s.topK > 0 ? s.topK : order.length); // most likely first
  const topP = s.topP ?? 1;
  if (topP < 1) {
    const cut = topP * keep.reduce((a, i) => a + weight(i), 0);
    let n = 0;
    for (let ahead = 0; n < keep.length && ahead < cut; n++) ahead += weight(keep[n]!);
    keep = keep.slice(0, n);
  }
  keep.sort((a, b) => a - b);
  const w = keep.map(weight);
  let left = u * w.reduce((a, b) => a + b, 0);
  for (let j = 0; j < keep.length; j++) {
    left -= w[j]!;
    if (left < 0) return keep[j]!;
  }
  return keep.at(-1)!;
}

/**
 * What the batch-1 {@linkcode Decoder} and the batched decoder (batch_generate.ts) share: a decoder graph
 * bound to a model's weights, `rows` tokens per execution (1, or the batch), its logits read back, its tokens
 * drawn on the GPU, its dispatches counted, and everything freed at once.
 */
export abstract class BoundDecoder<G extends DecoderGraph> {
  readonly ctx: GpuContext;
  readonly config: Readonly<Experiment>;
  readonly graph: G;
  protected readonly exec: GraphExecutor;
  readonly #weights: Map<string, GpuTensor>;
  protected readonly masks: G["routers"];

  protected constructor(
    ctx: GpuContext,
    c: Readonly<Experiment>,
    graph: G,
    exec: GraphExecutor,
    weights: Map<string, GpuTensor>,
  ) {
    this.ctx = ctx;
    this.config = c;
    this.graph = graph;
    this.exec = exec;
    this.#weights = weights;
    this.masks = graph.routers.filter((r) => r.mask);
  }

  /** Tokens per execution: 1 for the batch-1 decoder, B for the batched one. */
  abstract get rows(): number;

  /** Positions each cache holds (the training sequence length). */
  get context(): number {
    return this.config.data.seq_len;
  }

  /** The logits (rows, V) after the last execution, and the experts each routed layer ran (per router). */
  async read(): Promise<{ logits: Float32Array; experts: number[] }> {
    return await readDecoded(this.ctx, this.exec, this.graph, this.rows);
  }

  /**
   * Compute dispatches of one execution (docs/performance.md): `graph`, what one execution of the decoder
   * graph records; `sampler`, what a GPU draw adds (the sampling kernel, and the expert counts of the masked
   * routers: one dispatch per up to 15 of them, gpu/kernels/sampling.ts `countExpertsCalls`); `perLayer`,
   * the graph's dispatches of each block ({@linkcode dispatchesByLayer}).
   */
  dispatches(): { graph: number; sampler: number; perLayer: number[] } {
    return {
      graph: this.exec.dispatches,
      sampler: 1 + Math.ceil(this.masks.length / countExpertsPerCall(this.ctx)),
      perLayer: dispatchesByLayer(this.exec.kernels(), this.config.model.layers),
    };
  }

  /** Frees the executor and the weights. */
  destroy(): void {
    this.exec.destroy();
    for (const t of this.#weights.values()) destroyTensor(t);
  }

  /**
   * Queues one execution: row b at position `pos[b]`, feeding token `ids[b]`, or without `ids` the token the
   * GPU sampler drew last (already in the input ids). Everything is checked (a RangeError) before anything
   * is written; nothing is read back.
   */
  protected queue(pos: ArrayLike<number>, ids?: ArrayLike<number>): void {
    if (ids && ids.length !== this.rows) {
      throw new RangeError(`Cannot feed ${ids.length} tokens to ${this.rows} rows`);
    }
    if (pos.length !== this.rows) {
      throw new RangeError(`Cannot feed ${pos.length} positions to ${this.rows} rows`);
    }
    for (const p of Array.from(pos)) {
      if (!(p >= 0 && p < this.context)) {
        throw new RangeError(`Cannot decode at position ${p}: the context holds ${this.context}`);
      }
    }
    if (ids) writeTensor(this.ctx, this.exec.tensor(this.graph.ids), Uint32Array.from(ids));
    writeTensor(this.ctx, this.exec.tensor(this.graph.pos), Uint32Array.from(pos));
    this.exec.run();
  }

  /**
   * A GPU sampler of `rows` tokens per draw: `sample` makes the sampling kernel (it writes each drawn token
   * into the input ids and into `out`, `capacity` draws of `rows` tokens, draw-major), and the expert counts
   * add what each routed layer ran over the rows (all masked routers in one dispatch, up to 15). `drawn()`
   * reads `out` whole.
   */
  protected gpuDraws(
    s: Sampling & { seed: number; capacity: number },
    sample: (o: SamplerOptions) => KernelCall,
  ): Omit<TokenSampler, "tokens"> & { drawn(): Promise<Uint32Array> } {
    const ctx = this.ctx, rows = this.rows;
    const out = createTensor(ctx, [Math.max(1, s.capacity) * rows], "u32", undefined, "generate.tokens");
    const state = createTensor(ctx, [rows], "u32", new Uint32Array(rows), "generate.sampler");
    const counts = createTensor(ctx, [Math.max(1, this.masks.length)], "f32", undefined, "generate.experts");
    writeTensor(ctx, counts, new Float32Array(counts.size));
    const calls = [
      sample({
        logits: this.exec.tensor(this.graph.logits),
        ids: this.exec.tensor(this.graph.ids),
        out,
        state,
        temperature: s.temperature,
        topK: s.topK,
        topP: s.topP,
        seed: s.seed,
      }),
      ...countExpertsCalls(ctx, this.masks.map((r) => this.exec.tensor(r.mask!)), counts),
    ].map((c) => prepare(ctx, c));
    const routers = this.graph.routers, masks = this.masks;
    const draw = () => {
      const step = new Step(ctx, { label: "generate.sample" });
      for (const c of calls) step.dispatch(c);
      step.submit();
    };
    return {
      draw,
      async warm() {
        draw();
        await readTensor(ctx, state);
        writeTensor(ctx, state, new Uint32Array(rows));
        writeTensor(ctx, counts, new Float32Array(counts.size));
      },
      async drawn() {
        return (await readTensor(ctx, out)) as Uint32Array;
      },
      async experts(steps: number) {
        const got = (await readTensor(ctx, counts)) as Float32Array;
        return routers.map((r) => {
          const i = masks.indexOf(r);
          return i < 0 ? tapExperts(r) * steps * rows : got[i]!;
        });
      },
      destroy() {
        calls.forEach(releaseCall);
        for (const t of [out, state, counts]) t.buffer.destroy();
      },
    };
  }
}

/** A prepared decoder: the graph of `plan(c, "decode")` bound to a model's weights on the GPU. */
export class Decoder extends BoundDecoder<DecoderGraph> {
  /** Builds the decoder of `c` under `rules` and uploads `params` (name → values, as in a checkpoint). */
  static async create(
    ctx: GpuContext,
    c: Readonly<Experiment>,
    params: ReadonlyMap<string, Float32Array>,
    rules: InferRules,
  ): Promise<Decoder> {
    const { model: graph, schedule: sched } = plan(c, "decode", { rules });
    // One throwaway step builds every pipeline now, so the first timed token does not pay for it. Its cache
    // row 0 is rewritten by the first real token before anything reads it.
    return await bindDecoder(ctx, graph, sched, params, async (exec, weights) => {
      const d = new Decoder(ctx, c, graph, exec, weights);
      d.feed(0, 0);
      await d.read();
      return d;
    });
  }

  /** One token per execution. */
  get rows(): number {
    return 1;
  }

  /** Queues token `id` at position `pos`: its keys and values enter the caches. Nothing is read back. */
  feed(id: number, pos: number): void {
    this.queue([pos], [id]);
  }

  /**
   * Queues the token the GPU sampler drew last (already in the input id) at position `pos`; nothing is
   * written from the host but the position.
   */
  feedDrawn(pos: number): void {
    this.queue([pos]);
  }

  /**
   * A sampler drawing tokens on the GPU from the last fed token's logits (gpu/kernels/sampling.ts): each
   * `draw()` writes the token into the decoder's input id (for {@linkcode Decoder.feedDrawn}) and into a
   * list of up to `capacity` tokens, and adds the experts each routed layer ran to per-router counts.
   */
  sampler(s: Sampling & { seed: number; capacity: number }): TokenSampler {
    const { drawn, ...rest } = this.gpuDraws(s, (o) => sampleTokenGpu(this.ctx, o));
    return { ...rest, tokens: async (n: number) => Array.from(await drawn()).slice(0, n) };
  }
}

/**
 * Uploads `params` for a decoder graph, makes its executor (shared weights), checks it, and hands both to
 * `make`; frees the weights if any of that fails. Shared by {@linkcode Decoder} and the batched decoder.
 */
export async function bindDecoder<T>(
  ctx: GpuContext,
  graph: Pick<DecoderGraph, "graph" | "params">,
  sched: Schedule,
  params: ReadonlyMap<string, Float32Array>,
  make: (exec: GraphExecutor, weights: Map<string, GpuTensor>) => Promise<T>,
): Promise<T> {
  const weights = uploadParams(ctx, graph.params, params, new Map(), "generate");
  // A decoder never writes its weights: its products may read them from texture copies (gpu/buffers.ts).
  for (const t of weights.values()) freezeTensor(t);
  const leaves = [...graph.graph.leaves.values()].map((l) => l.value);
  const shared = new Map(graph.params.map((p) => [p.value.id, weights.get(p.value.name)!]));
  try {
    const exec = new GraphExecutor(ctx, sched, leaves, shared);
    await exec.check();
    return await make(exec, weights);
  } catch (e) {
    for (const t of weights.values()) destroyTensor(t);
    throw e;
  }
}

/**
 * A decoder's last logits and the experts each router ran (per router, summed over `rows` tokens; a router
 * without a mask ran all its experts for every row), read back with one wait for all of them.
 */
export async function readDecoded(
  ctx: GpuContext,
  exec: GraphExecutor,
  graph: Pick<DecoderGraph, "logits" | "routers">,
  rows: number,
): Promise<{ logits: Float32Array; experts: number[] }> {
  const masks = graph.routers.filter((r) => r.mask);
  const values = await readTensors(
    ctx,
    [graph.logits, ...masks.map((r) => r.mask!)].map((v) => exec.tensor(v)),
  );
  const experts = graph.routers.map((r) => {
    const i = masks.indexOf(r);
    return i < 0 ? tapExperts(r) * rows : (values[i + 1] as Float32Array).reduce((a, b) => a + b, 0);
  });
  return { logits: values[0] as Float32Array, experts };
}

/**
 * Dispatches per block of `layers`: a dispatch whose node reads a parameter of block l (named `h{l}.…`)
 * belongs to block l, one reading another parameter (embeddings, the final norm, the LM head) to none, and
 * one reading no parameter (residual adds, attention over the caches) to the same as the dispatch before it.
 *
 * @example
 * ```ts
 * import { dispatchesByLayer } from "./generate.ts";
 * const k = (...inputs: string[]) => ({ inputs });
 * const got = dispatchesByLayer([k("wte"), k("h0.ln1.weight"), k("x"), k("h1.attn.wq"), k("lnf.weight")], 2);
 * if (got.join() !== "2,1") throw new Error(got.join());
 * ```
 */
export function dispatchesByLayer(
  kernels: readonly { inputs: readonly string[] }[],
  layers: number,
): number[] {
  const counts = Array.from({ length: layers }, () => 0);
  let current = -1;
  for (const { inputs } of kernels) {
    for (const name of inputs) {
      const m = /^h(\d+)\./.exec(name);
      if (m) {
        current = Number(m[1]);
        break;
      }
      if (/^(wte|wpe|lnf|lm_head)\b/.test(name)) current = -1;
    }
    if (current >= 0 && current < layers) counts[current]!++;
  }
  return counts;
}

/** Draws tokens on the GPU: see {@linkcode Decoder.sampler}. */
export interface TokenSampler {
  /** Draws the next token from the last fed token's logits (queued; nothing is read back). */
  draw(): void;
  /**
   * One throwaway draw, waited for, then the counter and the expert counts reset: the sampler's pipelines
   * are built (and, on adapters that compile at first dispatch, compiled) before anything is timed.
   */
  warm(): Promise<void>;
  /** The first `n` drawn tokens (waits for the GPU). */
  tokens(n: number): Promise<number[]>;
  /** Experts run per routed layer, summed over `steps` draws (non-routed layers count all experts). */
  experts(steps: number): Promise<number[]>;
  destroy(): void;
}

/** Options of {@linkcode generate}. */
export interface GenerateOptions extends Sampling {
  maxTokens: number;
  seed: number;
  /** Called with each new token as soon as it is read back (in chunks when sampling on the GPU). */
  onToken?: (id: number) => void;
  /** Draw on the host from each token's read-back logits (one wait per token) instead of on the GPU. */
  hostSampling?: boolean;
}

/** What a generation produced and how fast. */
export interface GenerateResult {
  tokens: number[]; // new tokens only
  promptTokens: number; // prompt tokens encoded (after trimming to the context)
  setupSeconds: number; // building the GPU sampler's pipelines before the first token (0 on the host)
  prefillSeconds: number; // until the first new token's logits were read
  decodeSeconds: number; // the remaining new tokens
  tokensPerS: number; // new tokens after the first / decodeSeconds (0 when there are none)
  contextShifts: number;
  layers: LayerActivity[]; // experts run per token, mean over the new tokens' steps
  activeParams: number;
  activePct: number;
  hiddenPct: number; // share of the attention and MLP weights that run (docs/design.md §5)
  activePctAll: number; // share of all parameters, embeddings included (docs/design.md §5)
  /** Compute dispatches per decoded token: the decoder graph's, plus the GPU sampler's when it drew. */
  dispatchesPerToken: number;
}

/** Drawn tokens are read back (and streamed) in chunks of this many. */
const _STREAM_CHUNK = 16;

/**
 * Reads of drawn tokens, chained in order: `start(n)` begins reading the first `n` tokens without waiting
 * for them (`read` submits its copy at once), `flush(n)` waits until every read up to `n` has been handed to
 * `deliver`. Generation starts a read every few tokens and goes on queueing tokens meanwhile, so the host's
 * wait for a read (at least 10 ms in Deno, whatever the GPU: its map polls the device, then sleeps 10 ms
 * before looking again) overlaps decoding instead of stalling it. A failed read or `deliver` surfaces at the
 * next `flush`, not as an unhandled rejection.
 *
 * @example
 * ```ts
 * import { chainedReads } from "./generate.ts";
 * const seen: number[] = [];
 * const reads = chainedReads((n) => Promise.resolve(n), (got, upTo) => seen.push(got, upTo));
 * reads.start(2);
 * await reads.flush(3); // reads the third token too
 * if (seen.join() !== "2,2,3,3") throw new Error(seen.join());
 * ```
 */
export function chainedReads<T>(
  read: (n: number) => Promise<T>,
  deliver: (got: T, upTo: number) => void,
): { start(n: number): void; flush(n: number): Promise<void> } {
  let reads: Promise<void> = Promise.resolve(), requested = 0;
  const start = (n: number) => {
    requested = n;
    const got = read(n);
    got.catch(() => {}); // awaited through `reads`
    reads = reads.then(() => got).then((g) => deliver(g, n));
    reads.catch(() => {}); // rethrown by flush
  };
  return {
    start,
    async flush(n: number) {
      if (requested < n) start(n);
      await reads;
    },
  };
}

/**
 * Generates up to `o.maxTokens` tokens after `prompt` (which must be non-empty). A prompt longer than the
 * context keeps its newest half-context. Tokens are drawn on the GPU and fed straight back, so the host waits
 * only for the first token, at a context shift (which re-encodes from the host) and at the end; every
 * {@linkcode _STREAM_CHUNK} tokens it starts a read (streamed to `onToken` when it arrives) without waiting
 * for it ({@linkcode chainedReads}).
 */
export async function generate(
  dec: Decoder,
  prompt: readonly number[],
  o: GenerateOptions,
): Promise<GenerateResult> {
  if (prompt.length === 0) throw new RangeError("Cannot generate from an empty prompt");
  const T = dec.context, keep = Math.max(1, Math.floor(T / 2));
  let context = prompt.length > T ? prompt.slice(-keep) : [...prompt];
  const promptTokens = context.length;
  if (o.hostSampling || !gpuSamplingFits(dec.graph.logits.shape.at(-1)!, o)) {
    return await _generateOnHost(dec, context, o);
  }
  const s0 = performance.now();
  const sampler = dec.sampler({ ...o, capacity: o.maxTokens });
  try {
    await sampler.warm();
    const setup = (performance.now() - s0) / 1000;
    const tokens: number[] = [];
    let shifts = 0, drawn = 0, len = context.length;
    // Streams the tokens each read brought and appends them to the host's context.
    const reads = chainedReads((n) => sampler.tokens(n), (got, upTo) => {
      for (let k = tokens.length; k < upTo; k++) {
        tokens.push(got[k]!);
        context.push(got[k]!);
        o.onToken?.(got[k]!);
      }
    });
    const flush = () => reads.flush(drawn);
    const t0 = performance.now();
    let t1 = t0;
    // Encode the context from position 0 (at the start and after each shift).
    const encode = () => context.forEach((id, pos) => dec.feed(id, pos));
    encode();
    while (drawn < o.maxTokens) {
      sampler.draw();
      drawn++;
      if (drawn === 1) {
        await flush();
        t1 = performance.now();
      }
      if (drawn === o.maxTokens) break;
      if (len + 1 > T) {
        await flush();
        context = context.slice(-keep);
        shifts++;
        encode();
        len = context.length;
      } else {
        dec.feedDrawn(len);
        len++;
      }
      if (drawn % _STREAM_CHUNK === 0) reads.start(drawn);
    }
    await flush();
    const t2 = performance.now();
    const sums = await sampler.experts(drawn);
    const d = dec.dispatches();
    return {
      ..._result(dec, tokens, promptTokens, shifts, sums, t0, t1, t2),
      setupSeconds: setup,
      dispatchesPerToken: d.graph + d.sampler,
    };
  } finally {
    sampler.destroy();
  }
}

/**
 * {@linkcode generate} drawing each token on the host from read-back logits (one wait per token): for
 * vocabularies and top-k the GPU sampler does not handle ({@linkcode gpuSamplingFits}). The same draws.
 */
async function _generateOnHost(
  dec: Decoder,
  start: number[],
  o: GenerateOptions,
): Promise<GenerateResult> {
  const T = dec.context, keep = Math.max(1, Math.floor(T / 2));
  let context = start;
  const promptTokens = context.length, tokens: number[] = [];
  const sums = dec.graph.routers.map(() => 0);
  let shifts = 0;
  const t0 = performance.now();
  let t1 = t0;
  const encode = () => context.forEach((id, pos) => dec.feed(id, pos));
  encode();
  while (tokens.length < o.maxTokens) {
    const { logits, experts } = await dec.read();
    experts.forEach((n, i) => sums[i]! += n);
    if (tokens.length === 0) t1 = performance.now();
    const next = sampleToken(logits, o, samplingUniform(o.seed, tokens.length));
    tokens.push(next);
    o.onToken?.(next);
    if (tokens.length === o.maxTokens) break;
    context.push(next);
    if (context.length > T) {
      context = context.slice(-keep);
      shifts++;
      encode();
    } else dec.feed(next, context.length - 1);
  }
  return _result(dec, tokens, promptTokens, shifts, sums, t0, t1, performance.now());
}

/** The result of a generation from its tokens, expert counts (summed over the tokens) and clock marks. */
function _result(
  dec: Decoder,
  tokens: number[],
  promptTokens: number,
  shifts: number,
  sums: readonly number[],
  t0: number,
  t1: number,
  t2: number,
): GenerateResult {
  const c = dec.config;
  const layers = dec.graph.routers.map((r, i) => ({
    layer: r.layer,
    kind: r.kind,
    experts: sums[i]! / Math.max(1, tokens.length),
    of: tapExperts(r),
  }));
  const decodeSeconds = (t2 - t1) / 1000;
  return {
    tokens,
    promptTokens,
    setupSeconds: 0,
    prefillSeconds: (t1 - t0) / 1000,
    decodeSeconds,
    tokensPerS: tokens.length > 1 && decodeSeconds > 0 ? (tokens.length - 1) / decodeSeconds : 0,
    contextShifts: shifts,
    dispatchesPerToken: dec.dispatches().graph,
    layers,
    ...activity(c, layers),
  };
}

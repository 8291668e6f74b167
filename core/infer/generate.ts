/**
 * Text generation with a trained model (DESIGN.md §5, §7 `deno task generate`): a one-token decoder graph
 * with per-layer KV caches on the GPU, routed layers computing only their selected experts, and seeded
 * temperature / top-k sampling on the host from each step's logits (one readback per token, which the
 * streamed output needs anyway).
 *
 * Positions are learned up to `data.seq_len`; when the context fills, the newest half of it is kept and
 * re-encoded from position 0 (a "context shift"), so generation can run past the training length.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import { layerShape } from "../plan/counts.ts";
import type { DecoderGraph, InferRules } from "../plan/model.ts";
import { plan } from "../plan/plan.ts";
import { Rng } from "../util/rng.ts";
import { type GpuTensor, readTensor, writeTensor } from "../../gpu/buffers.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { GraphExecutor } from "../../gpu/executor.ts";
import "../../gpu/graph_ops.ts";
import { activity, type LayerActivity, uploadParams } from "./evaluate.ts";

/** How the next token is drawn from the logits. */
export interface Sampling {
  /** Softmax temperature; 0 picks the most likely token (greedy). */
  temperature: number;
  /** Keep only the k most likely tokens before sampling; 0 keeps all. */
  topK: number;
}

/**
 * The next token: the argmax at temperature 0, otherwise a draw from softmax(logits / temperature) over
 * the `topK` most likely tokens (ties broken by the lower id), using one number from `rng`.
 *
 * @example
 * ```ts
 * import { sampleToken } from "./generate.ts";
 * import { Rng } from "../util/rng.ts";
 * const t = sampleToken(Float32Array.of(0, 3, 1), { temperature: 0, topK: 0 }, new Rng(1));
 * if (t !== 1) throw new Error(String(t));
 * ```
 */
export function sampleToken(logits: ArrayLike<number>, s: Sampling, rng: Rng): number {
  const order = Array.from({ length: logits.length }, (_, i) => i);
  order.sort((a, b) => logits[b]! - logits[a]! || a - b);
  if (s.temperature <= 0) return order[0]!;
  const keep = s.topK > 0 ? order.slice(0, s.topK) : order;
  const top = logits[keep[0]!]!;
  const w = keep.map((i) => Math.exp((logits[i]! - top) / s.temperature));
  let u = rng.next() * w.reduce((a, b) => a + b, 0);
  for (let j = 0; j < keep.length; j++) {
    u -= w[j]!;
    if (u < 0) return keep[j]!;
  }
  return keep.at(-1)!;
}

/** A prepared decoder: the graph of `plan(c, "decode")` bound to a model's weights on the GPU. */
export class Decoder {
  readonly ctx: GpuContext;
  readonly config: Readonly<Experiment>;
  readonly graph: DecoderGraph;
  readonly #exec: GraphExecutor;
  readonly #weights: Map<string, GpuTensor>;
  readonly #masks: DecoderGraph["routers"];

  private constructor(
    ctx: GpuContext,
    c: Readonly<Experiment>,
    graph: DecoderGraph,
    exec: GraphExecutor,
    weights: Map<string, GpuTensor>,
  ) {
    this.ctx = ctx;
    this.config = c;
    this.graph = graph;
    this.#exec = exec;
    this.#weights = weights;
    this.#masks = graph.routers.filter((r) => r.mask);
  }

  /** Builds the decoder of `c` under `rules` and uploads `params` (name → values, as in a checkpoint). */
  static async create(
    ctx: GpuContext,
    c: Readonly<Experiment>,
    params: ReadonlyMap<string, Float32Array>,
    rules: InferRules,
  ): Promise<Decoder> {
    const { model: graph, schedule: sched } = plan(c, "decode", { rules });
    const weights = uploadParams(ctx, graph.params, params, new Map(), "generate");
    const leaves = [...graph.graph.leaves.values()].map((l) => l.value);
    const shared = new Map(graph.params.map((p) => [p.value.id, weights.get(p.value.name)!]));
    try {
      const exec = new GraphExecutor(ctx, sched, leaves, shared);
      await exec.check();
      // One throwaway step builds every pipeline now, so the first timed token does not pay for it. Its
      // cache row 0 is rewritten by the first real token before anything reads it.
      const d = new Decoder(ctx, c, graph, exec, weights);
      d.feed(0, 0);
      await d.read();
      return d;
    } catch (e) {
      for (const t of weights.values()) t.buffer.destroy();
      throw e;
    }
  }

  /** Positions the caches hold (the training sequence length). */
  get context(): number {
    return this.config.data.seq_len;
  }

  /** Queues token `id` at position `pos`: its keys and values enter the caches. Nothing is read back. */
  feed(id: number, pos: number): void {
    if (!(pos >= 0 && pos < this.context)) {
      throw new RangeError(`Cannot decode at position ${pos}: the context holds ${this.context}`);
    }
    writeTensor(this.ctx, this.#exec.tensor(this.graph.ids), Uint32Array.of(id));
    writeTensor(this.ctx, this.#exec.tensor(this.graph.pos), Uint32Array.of(pos));
    this.#exec.run();
  }

  /** The logits after the last fed token, and the experts each routed layer ran for it (per router). */
  async read(): Promise<{ logits: Float32Array; experts: number[] }> {
    const values = await Promise.all(
      [this.graph.logits, ...this.#masks.map((r) => r.mask!)].map((v) =>
        readTensor(this.ctx, this.#exec.tensor(v))
      ),
    );
    const experts = this.graph.routers.map((r) => {
      const i = this.#masks.indexOf(r);
      return i < 0 ? r.probs.shape[1]! : (values[i + 1] as Float32Array).reduce((a, b) => a + b, 0);
    });
    return { logits: values[0] as Float32Array, experts };
  }

  /** Frees the executor and the weights. */
  destroy(): void {
    this.#exec.destroy();
    for (const t of this.#weights.values()) t.buffer.destroy();
  }
}

/** Options of {@linkcode generate}. */
export interface GenerateOptions extends Sampling {
  maxTokens: number;
  seed: number;
  /** Called with each new token as soon as it is sampled. */
  onToken?: (id: number) => void;
}

/** What a generation produced and how fast. */
export interface GenerateResult {
  tokens: number[]; // new tokens only
  promptTokens: number; // prompt tokens encoded (after trimming to the context)
  prefillSeconds: number; // until the first new token's logits were read
  decodeSeconds: number; // the remaining new tokens
  tokensPerS: number; // new tokens after the first / decodeSeconds (0 when there are none)
  contextShifts: number;
  layers: LayerActivity[]; // experts run per token, mean over the new tokens' steps
  activeParams: number;
  activePct: number;
  hiddenPct: number;
}

/**
 * Generates up to `o.maxTokens` tokens after `prompt` (which must be non-empty). A prompt longer than the
 * context keeps its newest half-context.
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
  const rng = new Rng(o.seed), tokens: number[] = [];
  const sums = dec.graph.routers.map(() => 0);
  let shifts = 0, steps = 0;
  const t0 = performance.now();
  let t1 = t0;
  // Encode the context from position 0 (at the start and after each shift); the last token's logits are read.
  const encode = () => {
    context.forEach((id, pos) => dec.feed(id, pos));
  };
  encode();
  while (tokens.length < o.maxTokens) {
    const { logits, experts } = await dec.read();
    experts.forEach((n, i) => sums[i]! += n);
    steps++;
    if (tokens.length === 0) t1 = performance.now();
    const next = sampleToken(logits, o, rng);
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
  const t2 = performance.now();
  const c = dec.config, s = layerShape(c);
  const layers = dec.graph.routers.map((r, i) => ({
    layer: r.layer,
    kind: r.kind,
    experts: sums[i]! / Math.max(1, steps),
    of: r.probs.shape[1]!,
  }));
  const decodeSeconds = (t2 - t1) / 1000;
  return {
    tokens,
    promptTokens,
    prefillSeconds: (t1 - t0) / 1000,
    decodeSeconds,
    tokensPerS: tokens.length > 1 && decodeSeconds > 0 ? (tokens.length - 1) / decodeSeconds : 0,
    contextShifts: shifts,
    layers,
    ...activity(c, s, layers),
  };
}

/**
 * Tokenized dataset: deterministic train/validation split and seeded batches addressable by step,
 * so a resumed run sees exactly the batches it would have seen. Training windows are drawn in epochs:
 * each epoch visits every non-overlapping window of the training split once, in a seeded order and at a
 * seeded phase, so the data position is the step alone and a resume mid-epoch continues the same order.
 *
 * A {@linkcode Dataset} reads its windows from a token store (core/data/shards.ts): arrays in memory, or the
 * shard files of prepared data (core/data/prepare.ts) read by position, so training and evaluation never
 * hold a large corpus in memory. {@linkcode loadDataset} picks: with a cache directory, every source but a
 * synthetic one is prepared into shards (once; later loads verify and reuse them); without one, or for
 * synthetic sources (whose per-byte domain labels are kept), the data is tokenized in memory. The split is
 * core/data/split.ts's: on the text, in blocks of 4096 bytes, before tokenizing.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import { hash32, Rng } from "../util/rng.ts";
import { prepareData, type PreparedData, type PrepareOptions, tokenizeInMemory } from "./prepare.ts";
import { ArrayTokenStore, ShardTokenStore, type TokenStore } from "./shards.ts";
import { DataError } from "./errors.ts";
import { type ResolvedSource, resolveSource } from "./sources.ts";
import { shortSourceMessage, shortSplit, splitTokens } from "./split.ts";
import { DOMAINS, generateMultidomain } from "./synthetic.ts";
import { ByteTokenizer, encodeBytes } from "./tokenizer.ts";
import type { Tokenizer } from "./tokenizers.ts";

export { shortSplit, SPLIT_BLOCK, splitTokens } from "./split.ts";

/** One batch of token windows: targets are inputs shifted by one. */
export interface Batch {
  inputs: Uint32Array; // (batch, seq_len)
  targets: Uint32Array; // (batch, seq_len)
  domains: Uint8Array | null; // (batch, seq_len) domain of each target, for synthetic sources
  /**
   * (batch, seq_len) domain of each input token, for synthetic sources: the label of the token a router
   * routes at that position (`eval --diagnostics`, core/infer/diagnostics.ts).
   */
  inputDomains?: Uint8Array | null;
}

/** The splits of a dataset: token arrays or stores, and (synthetic sources) each token's domain. */
export interface DatasetParts {
  train: Uint32Array | TokenStore;
  val: Uint32Array | TokenStore;
  trainDomains: Uint8Array | null;
  valDomains: Uint8Array | null;
}

/** Options of the {@linkcode Dataset} constructor. */
export interface DatasetOptions {
  seqLen: number;
  seed: number;
  domainNames: readonly string[];
  /** Default: the byte tokenizer. */
  tokenizer?: Tokenizer;
  /** UTF-8 bytes each split's tokens came from; default one per token (bytes). */
  trainBytes?: number;
  valBytes?: number;
  /** Unigram counts of each split (prepared data has them); computed from arrays when absent. */
  unigram?: { train: ArrayLike<number>; val: ArrayLike<number> };
  /** The shard folder the tokens are read from, for prepared data. */
  prepared?: PreparedData;
}

/** Most tokens {@linkcode Dataset.train} / {@linkcode Dataset.val} load from shards into one array (32 Mi). */
export const MAX_MATERIALIZED_TOKENS = 32 << 20;

/** A split corpus ready for batching. */
export class Dataset {
  readonly trainDomains: Uint8Array | null;
  readonly valDomains: Uint8Array | null;
  readonly domainNames: readonly string[];
  readonly seqLen: number;
  readonly seed: number;
  /** The tokenizer the tokens came from. */
  readonly tokenizer: Tokenizer;
  /** UTF-8 bytes of text each split's tokens came from (bits per byte = loss × tokens / bytes / ln 2). */
  readonly trainBytes: number;
  readonly valBytes: number;
  /** The shard folder, when the tokens are read from prepared data. */
  readonly prepared: PreparedData | null;
  readonly #train: TokenStore;
  readonly #val: TokenStore;
  #unigram: { train: ArrayLike<number>; val: ArrayLike<number> } | null;
  #arrays: { train?: Uint32Array; val?: Uint32Array } = {};

  constructor(parts: DatasetParts, options: DatasetOptions) {
    this.#train = parts.train instanceof Uint32Array ? new ArrayTokenStore(parts.train) : parts.train;
    this.#val = parts.val instanceof Uint32Array ? new ArrayTokenStore(parts.val) : parts.val;
    this.trainDomains = parts.trainDomains;
    this.valDomains = parts.valDomains;
    this.domainNames = options.domainNames;
    this.seqLen = options.seqLen;
    this.seed = options.seed;
    this.tokenizer = options.tokenizer ?? new ByteTokenizer();
    this.trainBytes = options.trainBytes ?? this.#train.length;
    this.valBytes = options.valBytes ?? this.#val.length;
    this.#unigram = options.unigram ?? null;
    this.prepared = options.prepared ?? null;
    const short = shortSplit(this.#train.length, this.#val.length, this.seqLen);
    if (short) {
      throw new DataError(
        `Cannot batch the ${short.split} split: ${short.tokens} tokens is fewer than seq_len + 1 (${
          this.seqLen + 1
        }); use more data, a smaller seq_len or a different val_fraction`,
      );
    }
  }

  /** Tokens in the training split. */
  get trainTokens(): number {
    return this.#train.length;
  }

  /** Tokens in the validation split. */
  get valTokens(): number {
    return this.#val.length;
  }

  /**
   * The training split as one array. In memory it is the array itself; from shards it is read whole (at most
   * {@linkcode MAX_MATERIALIZED_TOKENS} tokens, else an Error): use {@linkcode Dataset.trainTokens},
   * {@linkcode Dataset.unigramLoss} and the batches instead.
   */
  get train(): Uint32Array {
    return this.#arrays.train ??= _materialize(this.#train, "train", "trainTokens");
  }

  /** The validation split as one array (see {@linkcode Dataset.train}). */
  get val(): Uint32Array {
    return this.#arrays.val ??= _materialize(this.#val, "val", "valTokens");
  }

  /**
   * Cross-entropy (nats per token) of the validation split under the training split's unigram distribution
   * with add-one smoothing (see {@linkcode unigramLoss}), from the splits' unigram counts.
   */
  unigramLoss(): number {
    const u = this.#unigram ??= {
      train: _counts(this.#train, this.tokenizer.vocabSize),
      val: _counts(this.#val, this.tokenizer.vocabSize),
    };
    return unigramLossOfCounts(u.train, u.val, this.tokenizer.vocabSize);
  }

  /**
   * Bits per byte of a validation loss (nats per token): loss × tokens / bytes / ln 2, with the tokens and the
   * UTF-8 bytes they came from counted over the whole validation split. It does not depend on the
   * tokenizer, so byte-level and subword models compare on it.
   */
  bitsPerByte(loss: number): number {
    return (loss * this.#val.length) / this.valBytes / Math.LN2;
  }

  /** Closes the shard files (a no-op in memory). */
  close(): void {
    this.#train.close();
    this.#val.close();
  }

  /**
   * Most validation batches of `batch` windows that are all distinct: a window is `seq_len` + 1 tokens, and
   * the split holds `valTokens − seq_len` of them (one per start). More batches would only repeat windows.
   */
  maxValBatches(batch: number): number {
    return Math.floor((this.#val.length - this.seqLen) / batch);
  }

  /** Windows of `seq_len` inputs (plus the next token as target) in one epoch over the training split. */
  get windowsPerEpoch(): number {
    return Math.floor((this.#train.length - 1) / this.seqLen);
  }

  /** Epochs of training data consumed after `step` steps of `batch` windows (fractional). */
  epochAt(step: number, batch: number): number {
    return (step * batch) / this.windowsPerEpoch;
  }

  /**
   * The training batch of `step`: windows `step·batch … step·batch + batch − 1` of the epoch sequence.
   * Window g is slot g mod W of epoch ⌊g / W⌋ (W = windows per epoch): that epoch's seeded permutation
   * picks which window, and its seeded phase (0 … slack) shifts every window of the epoch.
   */
  trainBatch(step: number, batch: number): Batch {
    const W = this.windowsPerEpoch, slack = this.#train.length - 1 - W * this.seqLen;
    const starts = Array.from({ length: batch }, (_, b) => {
      const g = step * batch + b, epoch = Math.floor(g / W);
      return hash32(this.seed, 0x7a12, epoch) % (slack + 1) + this.#epochOrder(epoch)[g % W]! * this.seqLen;
    });
    return this.#gather(this.#train, this.trainDomains, starts);
  }

  // The permutations of the last two epochs used (a batch may straddle an epoch boundary).
  #orders = new Map<number, Uint32Array>();

  #epochOrder(epoch: number): Uint32Array {
    let order = this.#orders.get(epoch);
    if (order) return order;
    const W = this.windowsPerEpoch, rng = new Rng(hash32(this.seed, 0x7a11, epoch));
    order = new Uint32Array(W);
    for (let i = 0; i < W; i++) order[i] = i;
    for (let i = W - 1; i > 0; i--) { // Fisher–Yates
      const j = rng.int(i + 1), t = order[i]!;
      order[i] = order[j]!;
      order[j] = t;
    }
    if (this.#orders.size >= 2) this.#orders.delete(this.#orders.keys().next().value!);
    this.#orders.set(epoch, order);
    return order;
  }

  /** Validation batch `index` of `count`: fixed windows spread evenly over the split. */
  valBatch(index: number, count: number, batch: number): Batch {
    const span = this.#val.length - this.seqLen - 1, total = count * batch;
    const starts = Array.from(
      { length: batch },
      (_, b) => Math.floor(((index * batch + b) * span) / Math.max(1, total - 1)),
    );
    return this.#gather(this.#val, this.valDomains, starts.map((s) => Math.min(s, span)));
  }

  #gather(tokens: TokenStore, domains: Uint8Array | null, starts: number[]): Batch {
    const T = this.seqLen, B = starts.length;
    const inputs = new Uint32Array(B * T), targets = new Uint32Array(B * T);
    const dom = domains ? new Uint8Array(B * T) : null, inDom = domains ? new Uint8Array(B * T) : null;
    const window = new Uint32Array(T + 1);
    starts.forEach((s, b) => {
      tokens.read(s, window);
      inputs.set(window.subarray(0, T), b * T);
      targets.set(window.subarray(1), b * T);
      dom?.set(domains!.subarray(s + 1, s + T + 1), b * T);
      inDom?.set(domains!.subarray(s, s + T), b * T);
    });
    return { inputs, targets, domains: dom, inputDomains: inDom };
  }
}

function _materialize(store: TokenStore, split: string, instead: string): Uint32Array {
  if (store instanceof ArrayTokenStore) return store.tokens;
  if (store.length > MAX_MATERIALIZED_TOKENS) {
    throw new Error(
      `Dataset.${split} would load ${store.length} tokens from the shards into memory (the limit is ` +
        `${MAX_MATERIALIZED_TOKENS}); use Dataset.${instead}, unigramLoss() and the batch methods instead`,
    );
  }
  const out = new Uint32Array(store.length);
  store.read(0, out);
  return out;
}

function _counts(store: TokenStore, vocab: number): Float64Array {
  const counts = new Float64Array(vocab), chunk = new Uint32Array(Math.min(store.length, 1 << 20));
  for (let at = 0; at < store.length; at += chunk.length) {
    const part = chunk.subarray(0, Math.min(chunk.length, store.length - at));
    store.read(at, part);
    for (const t of part) counts[t]!++;
  }
  return counts;
}

/** Options of {@linkcode loadDataset}. */
export interface LoadDatasetOptions {
  /**
   * Where prepared shards live (`<runs-dir>/cache`): sources other than synthetic ones are prepared there
   * once and read from the shards. Without it the data is tokenized in memory.
   */
  cacheDir?: string;
  /** Preparation progress (prepare.ts `progressPrinter` draws it). */
  onProgress?: PrepareOptions["onProgress"];
  /** Notices: shards prepared again and why, a tokenizer from the cache. */
  progress?: (line: string) => void;
  signal?: AbortSignal;
  /** Use this tokenizer (a checkpoint's own) instead of resolving `data.tokenizer`. */
  tokenizer?: Tokenizer;
}

/**
 * Loads, splits and tokenizes the data of a config (see the module docs). `baseDir` is the directory that
 * relative paths in the config resolve against (the config file's).
 *
 * @example
 * ```ts ignore
 * const ds = await loadDataset(config, "configs", { cacheDir: "runs/cache" });
 * console.log(ds.trainTokens, ds.valTokens, ds.unigramLoss());
 * ```
 */
export async function loadDataset(
  c: Readonly<Experiment>,
  baseDir?: string,
  o: LoadDatasetOptions = {},
): Promise<Dataset> {
  const source = await resolveSource(c.data.source, { baseDir });
  const byte = (o.tokenizer?.kind ?? c.data.tokenizer) === "byte";
  if (source.kind === "synthetic" && byte) return _syntheticBytes(c, source);
  const options: PrepareOptions = {
    baseDir,
    cacheDir: o.cacheDir,
    onProgress: o.onProgress,
    log: o.progress,
    signal: o.signal,
    tokenizer: o.tokenizer,
  };
  if (source.kind !== "synthetic" && o.cacheDir) return openPrepared(c, await prepareData(c, options));
  const m = await tokenizeInMemory(c, source, options);
  return new Dataset(
    { train: m.train, val: m.val, trainDomains: null, valDomains: null },
    {
      seqLen: c.data.seq_len,
      seed: c.seed,
      domainNames: [],
      tokenizer: m.tokenizer,
      trainBytes: m.trainBytes,
      valBytes: m.valBytes,
      unigram: m.unigram,
    },
  );
}

/** A Dataset reading the shards of prepared data. */
export function openPrepared(c: Readonly<Experiment>, p: PreparedData): Dataset {
  const { splits, dtype } = p.index;
  return new Dataset(
    {
      train: new ShardTokenStore(p.dir, splits.train, dtype),
      val: new ShardTokenStore(p.dir, splits.val, dtype),
      trainDomains: null,
      valDomains: null,
    },
    {
      seqLen: c.data.seq_len,
      seed: c.seed,
      domainNames: [],
      tokenizer: p.tokenizer,
      trainBytes: splits.train.text_bytes,
      valBytes: splits.val.text_bytes,
      unigram: { train: splits.train.unigram, val: splits.val.unigram },
      prepared: p,
    },
  );
}

/** The synthetic corpus in bytes, with each byte's domain: generated and split in memory. */
function _syntheticBytes(c: Readonly<Experiment>, source: ResolvedSource): Dataset {
  const { bytes, domains } = generateMultidomain(c.seed, c.data.synthetic_bytes);
  const tokens = encodeBytes(bytes);
  const parts = splitTokens(tokens, domains, { valFraction: c.data.val_fraction, seed: c.seed });
  const short = shortSplit(parts.train.length, parts.val.length, c.data.seq_len);
  if (short) {
    throw new DataError(shortSourceMessage({
      name: source.name,
      synthetic: true,
      tokenizer: null,
      seqLen: c.data.seq_len,
      tokens: tokens.length,
      bytes: tokens.length,
      trainTokens: parts.train.length,
      valTokens: parts.val.length,
      short,
    }));
  }
  return new Dataset(parts, { seqLen: c.data.seq_len, seed: c.seed, domainNames: DOMAINS });
}

/**
 * Cross-entropy (nats per token) of the validation split under the training split's unigram distribution
 * (add-one smoothing): the loss a model that ignores context would reach, the baseline to beat.
 */
export function unigramLoss(train: Uint32Array, val: Uint32Array, vocab: number): number {
  const count = (a: Uint32Array) => {
    const c = new Float64Array(vocab);
    for (const t of a) c[t]!++;
    return c;
  };
  return unigramLossOfCounts(count(train), count(val), vocab);
}

/**
 * {@linkcode unigramLoss} from the splits' token counts (`train[t]`, `val[t]`: occurrences of token t):
 * −Σ_t val[t]·log((train[t] + 1) / (Σ train + V)) / Σ val.
 */
export function unigramLossOfCounts(
  train: ArrayLike<number>,
  val: ArrayLike<number>,
  vocab: number,
): number {
  let nTrain = 0, nVal = 0, nll = 0;
  for (let t = 0; t < vocab; t++) nTrain += train[t] ?? 0;
  const total = nTrain + vocab;
  for (let t = 0; t < vocab; t++) {
    const n = val[t] ?? 0;
    if (n > 0) nll -= n * Math.log(((train[t] ?? 0) + 1) / total), nVal += n;
  }
  return nll / nVal;
}

/**
 * Tokenized dataset: deterministic train/validation split and seeded batches addressable by step,
 * so a resumed run sees exactly the batches it would have seen. Training windows are drawn in epochs:
 * each epoch visits every non-overlapping window of the training split once, in a seeded order and at a
 * seeded phase, so the data position is the step alone and a resume mid-epoch continues the same order.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import { hash32, Rng } from "../util/rng.ts";
import { readSource } from "./sources.ts";
import { encodeBytes } from "./tokenizer.ts";

/** Bytes per split block: blocks go wholly to train or validation. */
export const SPLIT_BLOCK = 4096;

/** One batch of token windows: targets are inputs shifted by one. */
export interface Batch {
  inputs: Uint32Array; // (batch, seq_len)
  targets: Uint32Array; // (batch, seq_len)
  domains: Uint8Array | null; // (batch, seq_len) domain of each target, for synthetic sources
}

/** A split corpus ready for batching. */
export class Dataset {
  readonly train: Uint32Array; // (n_train,) token ids
  readonly val: Uint32Array; // (n_val,)
  readonly trainDomains: Uint8Array | null;
  readonly valDomains: Uint8Array | null;
  readonly domainNames: readonly string[];
  readonly seqLen: number;
  readonly seed: number;

  constructor(
    parts: {
      train: Uint32Array;
      val: Uint32Array;
      trainDomains: Uint8Array | null;
      valDomains: Uint8Array | null;
    },
    options: { seqLen: number; seed: number; domainNames: readonly string[] },
  ) {
    this.train = parts.train;
    this.val = parts.val;
    this.trainDomains = parts.trainDomains;
    this.valDomains = parts.valDomains;
    this.domainNames = options.domainNames;
    this.seqLen = options.seqLen;
    this.seed = options.seed;
    for (const [name, a] of [["train", this.train], ["validation", this.val]] as const) {
      if (a.length < this.seqLen + 1) {
        throw new RangeError(
          `Cannot batch the ${name} split: ${a.length} tokens is fewer than seq_len + 1 (${
            this.seqLen + 1
          }); ` +
            `use more data, a smaller seq_len or a different val_fraction`,
        );
      }
    }
  }

  /** Windows of `seq_len` inputs (plus the next token as target) in one epoch over the training split. */
  get windowsPerEpoch(): number {
    return Math.floor((this.train.length - 1) / this.seqLen);
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
    const W = this.windowsPerEpoch, slack = this.train.length - 1 - W * this.seqLen;
    const starts = Array.from({ length: batch }, (_, b) => {
      const g = step * batch + b, epoch = Math.floor(g / W);
      return hash32(this.seed, 0x7a12, epoch) % (slack + 1) + this.#epochOrder(epoch)[g % W]! * this.seqLen;
    });
    return this.#gather(this.train, this.trainDomains, starts);
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
    const span = this.val.length - this.seqLen - 1, total = count * batch;
    const starts = Array.from(
      { length: batch },
      (_, b) => Math.floor(((index * batch + b) * span) / Math.max(1, total - 1)),
    );
    return this.#gather(this.val, this.valDomains, starts.map((s) => Math.min(s, span)));
  }

  #gather(tokens: Uint32Array, domains: Uint8Array | null, starts: number[]): Batch {
    const T = this.seqLen, B = starts.length;
    const inputs = new Uint32Array(B * T), targets = new Uint32Array(B * T);
    const dom = domains ? new Uint8Array(B * T) : null;
    starts.forEach((s, b) => {
      inputs.set(tokens.subarray(s, s + T), b * T);
      targets.set(tokens.subarray(s + 1, s + T + 1), b * T);
      dom?.set(domains!.subarray(s + 1, s + T + 1), b * T);
    });
    return { inputs, targets, domains: dom };
  }
}

/**
 * Splits `tokens` into train and validation by blocks of {@linkcode SPLIT_BLOCK}: block i is validation
 * when hash(seed, i) falls under `valFraction` (at least one block each when there are two or more).
 */
export function splitTokens(
  tokens: Uint32Array,
  domains: Uint8Array | null,
  options: { valFraction: number; seed: number },
): { train: Uint32Array; val: Uint32Array; trainDomains: Uint8Array | null; valDomains: Uint8Array | null } {
  const blocks = Math.ceil(tokens.length / SPLIT_BLOCK);
  const isVal = Array.from(
    { length: blocks },
    (_, i) => hash32(options.seed, 0x5911, i) / 2 ** 32 < options.valFraction,
  );
  if (blocks >= 2 && !isVal.includes(true)) isVal[blocks - 1] = true;
  if (blocks >= 2 && !isVal.includes(false)) isVal[0] = false;
  const pick = <A extends Uint32Array | Uint8Array>(a: A, want: boolean, make: (n: number) => A): A => {
    const n = isVal.reduce(
      (acc, v, i) => acc + (v === want ? Math.min(SPLIT_BLOCK, a.length - i * SPLIT_BLOCK) : 0),
      0,
    );
    const out = make(n);
    let at = 0;
    isVal.forEach((v, i) => {
      if (v !== want) return;
      const part = a.subarray(i * SPLIT_BLOCK, (i + 1) * SPLIT_BLOCK);
      out.set(part, at);
      at += part.length;
    });
    return out;
  };
  const u32 = (n: number) => new Uint32Array(n), u8 = (n: number) => new Uint8Array(n);
  return {
    train: pick(tokens, false, u32),
    val: pick(tokens, true, u32),
    trainDomains: domains ? pick(domains, false, u8) : null,
    valDomains: domains ? pick(domains, true, u8) : null,
  };
}

/** Loads, tokenizes and splits the data of a config. */
export async function loadDataset(c: Readonly<Experiment>, baseDir?: string): Promise<Dataset> {
  const src = await readSource(c.data.source, {
    seed: c.seed,
    syntheticBytes: c.data.synthetic_bytes,
    baseDir,
  });
  const tokens = encodeBytes(src.bytes);
  const parts = splitTokens(tokens, src.domains, { valFraction: c.data.val_fraction, seed: c.seed });
  return new Dataset(parts, { seqLen: c.data.seq_len, seed: c.seed, domainNames: src.domainNames });
}

/**
 * Cross-entropy (nats per token) of the validation split under the training split's unigram distribution
 * (add-one smoothing): the loss a model that ignores context would reach, the baseline to beat.
 */
export function unigramLoss(train: Uint32Array, val: Uint32Array, vocab: number): number {
  const counts = new Float64Array(vocab).fill(1);
  for (const t of train) counts[t]!++;
  const total = train.length + vocab;
  let nll = 0;
  for (const t of val) nll -= Math.log(counts[t]! / total);
  return nll / val.length;
}

/**
 * The train/validation split, made on the text before it is tokenized (so a tokenizer trained on the
 * training split never sees validation text).
 *
 * The text stream of a source (its documents joined with the corpora's separator, core/data/formats.ts
 * `DOCUMENT_SEPARATOR`) is cut into blocks of {@linkcode SPLIT_BLOCK} bytes: block i is the bytes
 * [4096·i, 4096·(i+1)), and goes to validation iff `hash32(seed, 0x5911, i) / 2^32 < val_fraction`. When the
 * stream has two blocks or more, at least one goes to each split: if none is drawn for validation the last
 * block is, and if none is drawn for training the first block is. Each split is its blocks concatenated in
 * order, tokenized as one stream.
 *
 * For the byte tokenizer (one token per byte) this is the token-level split dsmoe always made
 * ({@linkcode splitTokens}), so byte-level results do not change. For other tokenizers each boundary is moved
 * back to the start of the character it falls in (`snap`), so no block splits a UTF-8 character and every
 * split is valid text.
 *
 * {@linkcode TextSplitter} makes the split on a stream in one pass with bounded memory: it holds back the
 * latest block only while no block has gone to validation (the last may have to), and the leading blocks
 * only while every block so far was drawn for validation (the first may have to train) — about
 * 4096 / (1 − val_fraction) bytes in expectation.
 *
 * @module
 */
import { hash32 } from "../util/rng.ts";

/** Bytes per split block: blocks go wholly to train or validation. */
export const SPLIT_BLOCK = 4096;

/** Whether block `i` is drawn for validation (before the at-least-one-block-each rule). */
export function isValBlock(seed: number, i: number, valFraction: number): boolean {
  return hash32(seed, 0x5911, i) / 2 ** 32 < valFraction;
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
  const isVal = Array.from({ length: blocks }, (_, i) => isValBlock(options.seed, i, options.valFraction));
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

/** Options of {@linkcode TextSplitter}. */
export interface TextSplitterOptions {
  seed: number;
  valFraction: number;
  /** Move each block boundary back to the start of its character (every tokenizer but byte). */
  snap: boolean;
  /**
   * Receives the bytes of each split in order (`val` true for validation). The bytes are only valid during
   * the call: copy what is kept.
   */
  emit: (val: boolean, bytes: Uint8Array) => void;
}

/** What a finished {@linkcode TextSplitter} counted. */
export interface SplitCounts {
  blocks: number;
  valBlocks: number;
  /** Bytes of each split. */
  trainBytes: number;
  valBytes: number;
}

/**
 * The split of a byte stream, made as it arrives (see the module docs): `push` the stream's bytes in any
 * pieces, then `end`.
 *
 * @example
 * ```ts
 * import { TextSplitter } from "./split.ts";
 * let train = 0, val = 0;
 * const s = new TextSplitter({ seed: 1, valFraction: 0.5, snap: false, emit: (v, b) => v ? val += b.length : train += b.length });
 * s.push(new Uint8Array(10_000));
 * const c = s.end();
 * if (train + val !== 10_000 || c.blocks !== 3) throw new Error("all bytes, 3 blocks");
 * ```
 */
export class TextSplitter {
  #o: TextSplitterOptions;
  #carry: Uint8Array = new Uint8Array(0);
  #offset = 0; // stream offset of #carry[0] (the start of block #index)
  #index = 0;
  #counts: SplitCounts = { blocks: 0, valBlocks: 0, trainBytes: 0, valBytes: 0 };
  #sawTrain = false;
  #sawVal = false;
  #head: Uint8Array[] = []; // leading blocks, all drawn for validation, while no block was drawn for training
  #tail: Uint8Array | null = null; // the latest training block while no block went to validation

  constructor(o: TextSplitterOptions) {
    this.#o = o;
  }

  /** Takes the next bytes of the stream. */
  push(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    let data: Uint8Array;
    if (this.#carry.length === 0) data = bytes;
    else {
      data = new Uint8Array(this.#carry.length + bytes.length);
      data.set(this.#carry), data.set(bytes, this.#carry.length);
    }
    const base = this.#offset; // stream offset of data[0]
    let start = 0;
    for (;;) {
      const nominal = (this.#index + 1) * SPLIT_BLOCK - base; // the block's nominal end, in data
      // Snapping looks at the byte at the boundary: it must have arrived.
      if (nominal >= data.length) break;
      let end = nominal;
      if (this.#o.snap) { while (end > start + 1 && (data[end]! & 0xc0) === 0x80) end--; }
      this.#block(data.subarray(start, end));
      start = end;
    }
    this.#offset = base + start;
    this.#carry = data.slice(start);
  }

  /** Ends the stream: the last block is assigned and what was held back is emitted. */
  end(): SplitCounts {
    if (this.#carry.length > 0) this.#block(this.#carry);
    this.#carry = new Uint8Array(0);
    const n = this.#counts.blocks;
    if (!this.#sawTrain) {
      // Every block was drawn for validation: the first trains (when there are two or more).
      this.#head.forEach((b, i) => this.#send(!(i === 0 && n >= 2), b));
      this.#head = [];
    } else if (this.#tail) {
      // No block went to validation: the last one does (when there are two or more).
      this.#send(!this.#sawVal && n >= 2, this.#tail);
      this.#tail = null;
    }
    return { ...this.#counts };
  }

  #block(bytes: Uint8Array): void {
    const i = this.#index++;
    this.#counts.blocks++;
    const val = isValBlock(this.#o.seed, i, this.#o.valFraction);
    if (!this.#sawTrain) {
      if (val) {
        this.#head.push(bytes.slice());
        return;
      }
      this.#sawTrain = true;
      for (const b of this.#head) this.#send(true, b);
      this.#head = [];
    }
    if (val) {
      if (this.#tail) this.#send(false, this.#tail), this.#tail = null;
      this.#send(true, bytes);
    } else if (this.#sawVal) this.#send(false, bytes);
    else {
      if (this.#tail) this.#send(false, this.#tail);
      this.#tail = bytes.slice();
    }
  }

  #send(val: boolean, bytes: Uint8Array): void {
    if (val) this.#sawVal = true, this.#counts.valBlocks++, this.#counts.valBytes += bytes.length;
    else this.#counts.trainBytes += bytes.length;
    this.#o.emit(val, bytes);
  }
}

/** The first split too short to hold one window of `seqLen` + 1 tokens, or null when both hold one. */
export function shortSplit(
  train: number,
  val: number,
  seqLen: number,
): { split: "train" | "validation"; tokens: number } | null {
  if (train < seqLen + 1) return { split: "train", tokens: train };
  if (val < seqLen + 1) return { split: "validation", tokens: val };
  return null;
}

/** What {@linkcode shortSourceMessage} says about a source whose split is too short. */
export interface ShortSource {
  /** How messages name the source (sources.ts `sourceName`). */
  name: string;
  synthetic: boolean;
  /** The tokenizer, when it is not byte (`bpe 4096`, `gpt2` …). */
  tokenizer: string | null;
  seqLen: number;
  tokens: number;
  bytes: number;
  trainTokens: number;
  valTokens: number;
  short: { split: string; tokens: number };
}

/** Why a source is too short, with its numbers and what to change. */
export function shortSourceMessage(s: ShortSource): string {
  const blocks = Math.ceil(s.bytes / SPLIT_BLOCK);
  const more = s.synthetic ? "a larger data.synthetic_bytes" : "more text";
  const unit = s.tokenizer ? "bytes" : "tokens";
  const advice = blocks < 2
    ? `the split gives whole blocks of ${SPLIT_BLOCK} ${unit} to train or validation, so a source needs more ` +
      `than ${SPLIT_BLOCK} ${unit} (2 blocks) and each split at least seq_len + 1 tokens; use ${more}`
    : `use ${more}, a smaller data.seq_len or another data.val_fraction`;
  const from = s.tokenizer ? ` (data.tokenizer ${s.tokenizer}, from ${s.bytes} bytes)` : "";
  return `${s.name} is too short: its ${s.tokens} tokens${from} split into ${s.trainTokens} train and ` +
    `${s.valTokens} validation tokens (blocks of ${SPLIT_BLOCK} bytes); the ${s.short.split} split has ` +
    `${s.short.tokens}, fewer than data.seq_len + 1 = ${s.seqLen + 1}; ${advice}`;
}

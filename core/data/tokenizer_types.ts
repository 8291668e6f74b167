/**
 * The {@linkcode Tokenizer} interface and its kinds, apart from the tokenizers (tokenizer.ts: bytes;
 * tokenizers.ts: the others and their loading), so that both may import them.
 *
 * @module
 */

/** The kinds of `data.tokenizer`. */
export const TOKENIZER_KINDS = ["byte", "bpe", "file", "gpt2"] as const;

/** One of {@linkcode TOKENIZER_KINDS}. */
export type TokenizerKind = typeof TOKENIZER_KINDS[number];

/**
 * Turns a stream of token ids into text as it arrives: `push` returns only complete characters (a
 * character whose bytes are split across tokens comes out whole, once, with the token that completes it);
 * `flush` returns what is still held at the end.
 */
export interface StreamDecoder {
  push(id: number): string;
  flush(): string;
}

/** A tokenizer: text ↔ token ids, with its definition and fingerprint. */
export interface Tokenizer {
  readonly kind: TokenizerKind;
  /** The `data.tokenizer` value it was made from (`file:` with the path as resolved). */
  readonly spec: string;
  /** Number of token ids (ids are 0 … vocabSize − 1). */
  readonly vocabSize: number;
  /** SHA-256 (hex) of {@linkcode Tokenizer.toJSON}: a key for caches and token shards. */
  readonly fingerprint: string;
  /** The end-of-text token, where the vocabulary has one (gpt2: 50256). */
  readonly eosId?: number;
  /**
   * Whether encoding may be cut at `lastSplitPoint`s (bpe.ts) with the same result as encoding the whole
   * text (`ChunkedEncoder`, tokenizers.ts, relies on it; when false it encodes everything at the end).
   */
  readonly chunkSafe: boolean;
  encode(text: string): Uint32Array;
  /** Text of `ids`; ids outside the vocabulary throw a RangeError. */
  decode(ids: ArrayLike<number>): string;
  /** A fresh streaming decoder. */
  decoder(): StreamDecoder;
  /** The definition (see the module docs). */
  toJSON(): string;
  /**
   * Bytes of token `id`, for tokenizers whose tokens are byte strings (all but a `file:` tokenizer whose
   * decoder is not `ByteLevel`): e.g. to map tokens to byte offsets of the text.
   */
  tokenBytes?(id: number): Uint8Array;
}

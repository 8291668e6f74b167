/**
 * The byte tokenizer: token id = byte value (vocabulary 256). Any text round-trips; invalid UTF-8 in the
 * output of a model decodes with replacement characters. {@linkcode ByteTokenizer} is it behind the
 * {@linkcode Tokenizer} interface (tokenizers.ts); the functions below are the same encoding for callers
 * that hold bytes.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { BpeModel } from "./bpe.ts";
import { bpeTokenizerJson } from "./tokenizer_json.ts";
import type { StreamDecoder, Tokenizer } from "./tokenizer_types.ts";

/** Token ids of raw bytes. */
export function encodeBytes(bytes: Uint8Array): Uint32Array {
  return Uint32Array.from(bytes);
}

/**
 * Token ids of a string (its UTF-8 bytes).
 *
 * @example
 * ```ts
 * import { decodeText, encodeText } from "./tokenizer.ts";
 * if (decodeText(encodeText("héllo")) !== "héllo") throw new Error("round trip");
 * ```
 */
export function encodeText(text: string): Uint32Array {
  return encodeBytes(new TextEncoder().encode(text));
}

/** Text of token ids (invalid UTF-8 becomes U+FFFD). */
export function decodeText(ids: ArrayLike<number>): string {
  const bytes = Uint8Array.from(ids as ArrayLike<number>, (v) => {
    if (v < 0 || v > 255) throw new RangeError(`Cannot decode token ${v}: the byte vocabulary is 0..255`);
    return v;
  });
  return new TextDecoder("utf-8", { fatal: false }).decode(bytes);
}

/**
 * A streaming decoder over token bytes: each `push` returns the characters completed by that token's
 * bytes, holding back a character whose bytes are split across tokens until its last byte arrives, so
 * every character comes out whole and once. Invalid sequences come out as U+FFFD; `flush` ends the
 * stream (an unfinished character becomes U+FFFD).
 *
 * @example
 * ```ts
 * import { Utf8StreamDecoder } from "./tokenizer.ts";
 * const d = new Utf8StreamDecoder((id) => Uint8Array.of(id));
 * const parts = [0xc3, 0xa9, 0x21].map((b) => d.push(b)); // "é" is C3 A9
 * if (parts.join("|") !== "|é|!" || d.flush() !== "") throw new Error(parts.join("|"));
 * ```
 */
export class Utf8StreamDecoder implements StreamDecoder {
  #utf8 = new TextDecoder("utf-8", { fatal: false });
  #bytesOf: (id: number) => Uint8Array;

  constructor(bytesOf: (id: number) => Uint8Array) {
    this.#bytesOf = bytesOf;
  }

  /** The complete characters the bytes of token `id` finish. */
  push(id: number): string {
    return this.#utf8.decode(this.#bytesOf(id), { stream: true });
  }

  /** What is held back, as U+FFFD, and the stream reset. */
  flush(): string {
    return this.#utf8.decode();
  }
}

/** SHA-256 (hex) of a tokenizer definition: the fingerprint of {@linkcode Tokenizer}. */
export function definitionFingerprint(json: string): string {
  return createHash("sha256").update(json).digest("hex");
}

function _byteOf(id: number): Uint8Array {
  if (!Number.isInteger(id) || id < 0 || id > 255) {
    throw new RangeError(`Cannot decode token ${id}: the byte vocabulary is 0..255`);
  }
  return Uint8Array.of(id);
}

/**
 * The byte tokenizer behind the {@linkcode Tokenizer} interface. Its definition (`toJSON`) is the
 * tokenizer.json of a byte-level BPE with the 256 bytes and no merges, which Hugging Face tokenizers load
 * and encode identically (id = byte).
 *
 * @example
 * ```ts
 * import { ByteTokenizer } from "./tokenizer.ts";
 * const t = new ByteTokenizer();
 * if (t.encode("é").join() !== "195,169" || t.decode([104, 105]) !== "hi") throw new Error("bytes");
 * ```
 */
export class ByteTokenizer implements Tokenizer {
  readonly kind = "byte" as const;
  readonly spec = "byte";
  readonly vocabSize = 256;
  readonly chunkSafe = true;
  /** None: the byte vocabulary has no end-of-text token. */
  readonly eosId?: number;
  #json: string | null = null;

  /** Token ids of `text` (its UTF-8 bytes). */
  encode(text: string): Uint32Array {
    return encodeText(text);
  }

  /** Text of `ids`. */
  decode(ids: ArrayLike<number>): string {
    return decodeText(ids);
  }

  /** A streaming decoder (see {@linkcode Utf8StreamDecoder}). */
  decoder(): StreamDecoder {
    return new Utf8StreamDecoder(_byteOf);
  }

  /** Bytes of token `id`. */
  tokenBytes(id: number): Uint8Array {
    return _byteOf(id);
  }

  /** The tokenizer.json of the byte vocabulary (256 tokens, no merges). */
  toJSON(): string {
    return this.#json ??= bpeTokenizerJson(BpeModel.fromMerges([]));
  }

  /** SHA-256 of {@linkcode ByteTokenizer.toJSON}. */
  get fingerprint(): string {
    return definitionFingerprint(this.toJSON());
  }
}

/**
 * The byte tokenizer: token id = byte value (vocabulary 256). Any text round-trips; invalid UTF-8 in the
 * output of a model decodes with replacement characters.
 *
 * @module
 */

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

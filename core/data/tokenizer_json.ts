/**
 * The Hugging Face `tokenizer.json` format for byte-level BPE: writing ours and reading one back.
 *
 * A byte-level vocabulary names each token by its bytes mapped through GPT-2's byte → character table
 * ({@linkcode BYTE_TO_CHAR}: printable Latin-1 bytes stand for themselves, the other 68 bytes for U+0100
 * onwards, so a space is `Ġ`). Ours ({@linkcode bpeTokenizerJson}) has no normalizer and no added tokens,
 * the `ByteLevel` pre-tokenizer (no prefix space, GPT-2's pattern), the `ByteLevel` decoder and a `BPE`
 * model whose merges are written as `"left right"` strings, the form every version of the format reads
 * (a byte-level token never holds a space). Vocabulary and merges are written in id order, so the same
 * model always gives the same bytes.
 *
 * Reading ({@linkcode parseTokenizerJson}, {@linkcode plainByteLevelBpe}) accepts any `tokenizer.json` and
 * recognises the plain byte-level BPE that {@linkcode BpeModel} reproduces exactly; anything else is left
 * to the library (tokenizers.ts).
 *
 * @module
 */
import { BpeModel, TokenizerError } from "./bpe.ts";

/** GPT-2's byte → character table (Radford et al. 2019, `bytes_to_unicode`): index = byte. */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCharCode(printable ? b : 256 + extra++);
  }
  return table;
})();

/** The inverse of {@linkcode BYTE_TO_CHAR}. */
export const CHAR_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

/**
 * The vocabulary name of a token with these bytes.
 *
 * @example
 * ```ts
 * import { tokenName } from "./tokenizer_json.ts";
 * if (tokenName(new TextEncoder().encode(" the")) !== "Ġthe") throw new Error("space is Ġ");
 * ```
 */
export function tokenName(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += BYTE_TO_CHAR[b];
  return s;
}

/** The bytes a byte-level token name stands for, or null when a character is outside the table. */
export function tokenNameBytes(name: string): Uint8Array | null {
  const out = new Uint8Array(name.length);
  for (let i = 0; i < name.length; i++) {
    const b = CHAR_TO_BYTE.get(name[i]!);
    if (b === undefined) return null;
    out[i] = b;
  }
  return out;
}

const _BYTE_LEVEL = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true };

/**
 * The `tokenizer.json` text of a byte-level BPE model (see the module docs); deterministic.
 *
 * @example
 * ```ts
 * import { BpeModel } from "./bpe.ts";
 * import { bpeTokenizerJson } from "./tokenizer_json.ts";
 * const json = JSON.parse(bpeTokenizerJson(BpeModel.fromMerges([[32, 116]])));
 * if (json.model.merges[0] !== "Ġ t" || json.model.vocab["Ġt"] !== 256) throw new Error("merge 0");
 * ```
 */
export function bpeTokenizerJson(model: BpeModel): string {
  const names = Array.from({ length: model.vocabSize }, (_, id) => tokenName(model.tokenBytes(id)));
  if (new Set(names).size !== names.length) {
    throw new TokenizerError("Cannot write tokenizer.json: two BPE tokens have the same bytes");
  }
  const head = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: _BYTE_LEVEL,
    post_processor: { ..._BYTE_LEVEL, add_prefix_space: true, trim_offsets: false },
    decoder: { ..._BYTE_LEVEL, add_prefix_space: true },
  };
  const model_ = {
    type: "BPE",
    dropout: null,
    unk_token: null,
    continuing_subword_prefix: null,
    end_of_word_suffix: null,
    fuse_unk: false,
    byte_fallback: false,
    ignore_merges: false,
  };
  const indent = (text: string, by: string) => text.split("\n").join(`\n${by}`);
  const fields = Object.entries(head).map(([k, v]) =>
    `  ${JSON.stringify(k)}: ${indent(JSON.stringify(v, null, 2), "  ")}`
  );
  const modelFields = Object.entries(model_).map(([k, v]) =>
    `    ${JSON.stringify(k)}: ${JSON.stringify(v)}`
  );
  const vocab = names.map((n, id) => `      ${JSON.stringify(n)}: ${id}`);
  const merges = model.definition.merges.map(([a, b]) =>
    `      ${JSON.stringify(`${names[a]} ${names[b]}`)}`
  );
  return [
    "{",
    fields.join(",\n") + ",",
    '  "model": {',
    modelFields.join(",\n") + ",",
    '    "vocab": {',
    vocab.join(",\n"),
    "    },",
    merges.length > 0 ? '    "merges": [\n' + merges.join(",\n") + "\n    ]" : '    "merges": []',
    "  }",
    "}",
    "",
  ].join("\n");
}

/** The parts of a `tokenizer.json` read here (others are kept as they are). */
export interface TokenizerJson {
  added_tokens?: { id: number; content: string; special?: boolean; lstrip?: boolean; rstrip?: boolean }[];
  normalizer?: unknown;
  pre_tokenizer?: { type?: string; add_prefix_space?: boolean; use_regex?: boolean } | null;
  decoder?: { type?: string } | null;
  model: {
    type?: string;
    vocab?: Record<string, number>;
    merges?: (string | [string, string])[];
    dropout?: number | null;
    unk_token?: string | null;
    continuing_subword_prefix?: string | null;
    end_of_word_suffix?: string | null;
    byte_fallback?: boolean;
    ignore_merges?: boolean;
  };
  [key: string]: unknown;
}

/**
 * Parses `tokenizer.json` text, checking the parts every reader needs. Errors name `source` (the file).
 * The model type is checked by the caller.
 */
export function parseTokenizerJson(text: string, source: string): TokenizerJson {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new TokenizerError(`${source}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new TokenizerError(`${source}: a tokenizer.json must be a JSON object`);
  }
  const model = (json as { model?: unknown }).model;
  if (typeof model !== "object" || model === null) {
    throw new TokenizerError(`${source}: no "model" object (is this a Hugging Face tokenizer.json?)`);
  }
  return json as TokenizerJson;
}

/** The model type of a parsed tokenizer.json (`BPE`, `WordPiece`, `Unigram`, …; older files may omit it). */
export function modelType(json: TokenizerJson): string {
  const m = json.model;
  if (typeof m.type === "string") return m.type;
  if (m.merges !== undefined) return "BPE";
  return "unknown";
}

/** The two token names of a merge in either of the format's forms. */
function _mergeNames(m: string | [string, string]): [string, string] | null {
  if (Array.isArray(m)) return m.length === 2 ? [m[0], m[1]] : null;
  const parts = m.split(" ");
  return parts.length === 2 ? [parts[0]!, parts[1]!] : null;
}

/**
 * The model of a plain byte-level BPE tokenizer.json — BPE model without dropout, suffixes, byte fallback or
 * ignore_merges; no normalizer and no added tokens; the `ByteLevel` pre-tokenizer with GPT-2's pattern and
 * no prefix space; a dense vocabulary holding all 256 bytes; merges whose tokens are in it — or null for
 * any other file (which then goes through the library). Malformed merges throw.
 */
export function plainByteLevelBpe(json: TokenizerJson, source: string): BpeModel | null {
  const m = json.model, pre = json.pre_tokenizer;
  if (modelType(json) !== "BPE" || !m.vocab || !m.merges) return null;
  if ((json.added_tokens ?? []).length > 0 || (json.normalizer ?? null) !== null) return null;
  if (!pre || pre.type !== "ByteLevel" || pre.add_prefix_space === true || pre.use_regex === false) {
    return null;
  }
  if ((m.dropout ?? null) !== null || m.byte_fallback === true || m.ignore_merges === true) return null;
  if (m.continuing_subword_prefix || m.end_of_word_suffix) return null;
  const entries = Object.entries(m.vocab);
  const tokens: Uint8Array[] = new Array(entries.length);
  for (const [name, id] of entries) {
    const bytes = tokenNameBytes(name);
    if (
      !bytes || bytes.length === 0 || !Number.isInteger(id) || id < 0 || id >= entries.length || tokens[id]
    ) {
      return null;
    }
    tokens[id] = bytes;
  }
  const merges: [number, number, number][] = [];
  for (const [rank, merge] of m.merges.entries()) {
    const names = _mergeNames(merge);
    if (!names) throw new TokenizerError(`${source}: merge ${rank} is malformed: ${JSON.stringify(merge)}`);
    const [a, b] = names.map((n) => m.vocab![n]), r = m.vocab[names[0] + names[1]];
    if (a === undefined || b === undefined || r === undefined) return null;
    merges.push([a, b, r]);
  }
  try {
    return new BpeModel({ tokens, merges });
  } catch {
    return null; // e.g. a byte without a token
  }
}

/**
 * Tokenizers named by `data.tokenizer`, behind one interface ({@linkcode Tokenizer}):
 *
 * - `byte`: token id = byte value, vocabulary 256 (tokenizer.ts);
 * - `bpe`: our byte-level BPE (bpe.ts) trained on the training text to `vocabSize` tokens, or taken from
 *   the cache (tokenizer_cache.ts) when the same text and settings were trained before;
 * - `file:<path>`: an existing Hugging Face `tokenizer.json` with a BPE model. A plain byte-level BPE is
 *   encoded by our {@linkcode BpeModel} (after checking it agrees with the library on a probe text);
 *   any other BPE file goes through `@huggingface/tokenizers`. Other model types are refused;
 * - `gpt2`: GPT-2's vocabulary (r50k_base, 50,257 tokens) from `gpt-tokenizer`, which ships its ranks.
 *
 * Definitions (`toJSON`, stored in the run directory and checkpoint metadata): a tokenizer.json for byte
 * (256 tokens, no merges), bpe and file (the file's text as read); for gpt2 a small descriptor
 * (`{"dsmoe_tokenizer":"gpt2","encoding":"r50k_base",…}`), as its 50,257 ranks come from the package.
 * {@linkcode tokenizerFromJson} restores any of them. `fingerprint` is the SHA-256 of the definition.
 *
 * Encoding text in pieces: {@linkcode ChunkedEncoder} cuts text only where no pre-token spans the cut
 * (bpe.ts {@linkcode lastSplitPoint}), so encoding a stream of chunks equals encoding the whole text.
 *
 * @module
 */
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { encode as gpt2Encode } from "gpt-tokenizer/encoding/r50k_base";
import gpt2Ranks from "gpt-tokenizer/bpeRanks/r50k_base";
import { type BpeModel, type BpeProgress, lastSplitPoint, TokenizerError, type TrainingText } from "./bpe.ts";
import { cachedBpe, type CacheEvent } from "./tokenizer_cache.ts";
import { ByteTokenizer, definitionFingerprint, Utf8StreamDecoder } from "./tokenizer.ts";
import {
  bpeTokenizerJson,
  modelType,
  parseTokenizerJson,
  plainByteLevelBpe,
  type TokenizerJson,
  tokenNameBytes,
} from "./tokenizer_json.ts";
import {
  type StreamDecoder,
  type Tokenizer,
  TOKENIZER_KINDS,
  type TokenizerKind,
} from "./tokenizer_types.ts";

export { TokenizerError } from "./bpe.ts";
export { type StreamDecoder, type Tokenizer, TOKENIZER_KINDS, type TokenizerKind };

function _checkIds(ids: ArrayLike<number>, vocab: number): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    if (!Number.isInteger(id) || id < 0 || id >= vocab) {
      throw new RangeError(`Cannot decode token ${id}: the vocabulary is 0..${vocab - 1}`);
    }
  }
}

/** Tokens known by their bytes: decoding joins bytes, streaming goes through {@linkcode Utf8StreamDecoder}. */
abstract class _BytesTokenizer implements Tokenizer {
  abstract readonly kind: TokenizerKind;
  abstract readonly spec: string;
  abstract readonly vocabSize: number;
  abstract readonly chunkSafe: boolean;
  readonly eosId?: number;
  #fingerprint: string | null = null;

  abstract encode(text: string): Uint32Array;
  abstract toJSON(): string;
  /** Bytes of token `id` (ids are checked by the callers). */
  protected abstract bytesOf(id: number): Uint8Array;

  get fingerprint(): string {
    return this.#fingerprint ??= definitionFingerprint(this.toJSON());
  }

  decode(ids: ArrayLike<number>): string {
    _checkIds(ids, this.vocabSize);
    return _joinBytes(ids, (id) => this.bytesOf(id));
  }

  decoder(): StreamDecoder {
    return new Utf8StreamDecoder((id) => this.tokenBytes(id));
  }

  /** Bytes of token `id` (a view: do not modify). */
  tokenBytes(id: number): Uint8Array {
    _checkIds([id], this.vocabSize);
    return this.bytesOf(id);
  }
}

/**
 * Our byte-level BPE ({@linkcode BpeModel}) as a tokenizer: kind `bpe` (trained) or `file` (a plain
 * byte-level tokenizer.json), with its definition text.
 */
export class BpeTokenizer extends _BytesTokenizer {
  readonly kind: "bpe" | "file";
  readonly spec: string;
  readonly vocabSize: number;
  readonly chunkSafe = true;
  /** The model. */
  readonly model: BpeModel;
  #json: string;

  constructor(model: BpeModel, o: { kind?: "bpe" | "file"; spec?: string; json?: string } = {}) {
    super();
    this.model = model;
    this.kind = o.kind ?? "bpe";
    this.spec = o.spec ?? this.kind;
    this.vocabSize = model.vocabSize;
    this.#json = o.json ?? bpeTokenizerJson(model);
  }

  encode(text: string): Uint32Array {
    return this.model.encode(text);
  }

  toJSON(): string {
    return this.#json;
  }

  protected bytesOf(id: number): Uint8Array {
    return this.model.tokenBytes(id);
  }
}

/** The descriptor that stands for the gpt2 tokenizer in run directories and checkpoints. */
export const GPT2_DESCRIPTOR = {
  dsmoe_tokenizer: "gpt2",
  encoding: "r50k_base",
  vocab_size: 50257,
  eos_id: 50256,
};

const _GPT2_EOS_TEXT = "<|endoftext|>";
let _gpt2Bytes: Uint8Array[] | null = null;

/** Bytes of every GPT-2 token: the package's rank table (a string where the bytes are UTF-8), then EOS. */
function _gpt2TokenBytes(): Uint8Array[] {
  if (_gpt2Bytes) return _gpt2Bytes;
  const utf8 = new TextEncoder();
  const table = gpt2Ranks.map((t) => typeof t === "string" ? utf8.encode(t) : Uint8Array.from(t));
  table.push(utf8.encode(_GPT2_EOS_TEXT));
  return _gpt2Bytes = table;
}

/**
 * GPT-2's tokenizer (r50k_base) through `gpt-tokenizer`. Text that spells `<|endoftext|>` is encoded as
 * ordinary text; the end-of-text token is {@linkcode Gpt2Tokenizer.eosId}.
 */
export class Gpt2Tokenizer extends _BytesTokenizer {
  readonly kind = "gpt2" as const;
  readonly spec = "gpt2";
  readonly vocabSize = GPT2_DESCRIPTOR.vocab_size;
  override readonly eosId = GPT2_DESCRIPTOR.eos_id;
  readonly chunkSafe = true;
  #bytes = _gpt2TokenBytes();
  static readonly #noSpecial = { disallowedSpecial: new Set<string>() };

  constructor() {
    super();
    if (this.#bytes.length !== this.vocabSize) {
      throw new TokenizerError(
        `gpt2: the package's rank table has ${this.#bytes.length - 1} tokens, not 50256`,
      );
    }
  }

  encode(text: string): Uint32Array {
    return Uint32Array.from(gpt2Encode(text, Gpt2Tokenizer.#noSpecial));
  }

  toJSON(): string {
    return JSON.stringify(GPT2_DESCRIPTOR);
  }

  protected bytesOf(id: number): Uint8Array {
    return this.#bytes[id]!;
  }
}

/** Added tokens that mark the end of a text, in the order looked for ({@linkcode LibraryTokenizer.eosId}). */
const _EOS_NAMES = ["<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"];

/**
 * A BPE tokenizer.json that our model does not reproduce, encoded and (unless its tokens map to bytes)
 * decoded by `@huggingface/tokenizers`. Encoding adds no special tokens; decoding keeps them and does not
 * clean up spaces. When the decoder is not `ByteLevel`, streaming decodes all ids so far at each push and
 * emits the new text (quadratic in the length, fine for generation).
 */
export class LibraryTokenizer implements Tokenizer {
  readonly kind = "file" as const;
  readonly spec: string;
  readonly vocabSize: number;
  readonly chunkSafe: boolean;
  readonly eosId?: number;
  readonly fingerprint: string;
  /** Present when the decoder is `ByteLevel` (every token is a byte string). */
  readonly tokenBytes?: (id: number) => Uint8Array;
  #lib: HfTokenizer;
  #json: string;
  #bytes: Uint8Array[] | null;

  constructor(lib: HfTokenizer, json: TokenizerJson, text: string, spec: string) {
    this.#lib = lib;
    this.#json = text;
    this.spec = spec;
    this.fingerprint = definitionFingerprint(text);
    const vocab = lib.get_vocab(true);
    let max = -1;
    for (const id of vocab.values()) max = Math.max(max, id);
    this.vocabSize = max + 1;
    const added = json.added_tokens ?? [];
    this.eosId = _EOS_NAMES.map((n) => added.find((t) => t.content === n && t.special)?.id)
      .find((id) => id !== undefined);
    const pre = json.pre_tokenizer;
    // Added tokens that hold or strip whitespace could meet a cut point.
    this.chunkSafe = (json.normalizer ?? null) === null && pre?.type === "ByteLevel" &&
      pre.add_prefix_space !== true && pre.use_regex !== false &&
      added.every((t) => !/\s/u.test(t.content) && !t.lstrip && !t.rstrip);
    const table = json.decoder?.type === "ByteLevel" ? _byteLevelTable(lib, this.vocabSize, added) : null;
    this.#bytes = table;
    if (table) {
      this.tokenBytes = (id) => {
        _checkIds([id], this.vocabSize);
        return table[id]!;
      };
    }
  }

  encode(text: string): Uint32Array {
    if (text.length === 0) return new Uint32Array(0);
    const ids = this.#lib.encode(text, { add_special_tokens: false }).ids;
    const bad = ids.findIndex((id) => id === undefined);
    if (bad >= 0) {
      throw new TokenizerError(`${this.spec}: the text has a token outside the vocabulary and no unk_token`);
    }
    return Uint32Array.from(ids);
  }

  decode(ids: ArrayLike<number>): string {
    _checkIds(ids, this.vocabSize);
    if (ids.length === 0) return "";
    const table = this.#bytes;
    if (table) return _joinBytes(ids, (id) => table[id]!);
    return this.#lib.decode(Array.from(ids), {
      skip_special_tokens: false,
      clean_up_tokenization_spaces: false,
    });
  }

  decoder(): StreamDecoder {
    const bytesOf = this.tokenBytes;
    return bytesOf ? new Utf8StreamDecoder(bytesOf) : new _PrefixStreamDecoder((ids) => this.decode(ids));
  }

  toJSON(): string {
    return this.#json;
  }
}

/** The text of the concatenated bytes of `ids` (invalid UTF-8 becomes U+FFFD). */
function _joinBytes(ids: ArrayLike<number>, bytesOf: (id: number) => Uint8Array): string {
  const parts = Array.from(ids, bytesOf), bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) bytes.set(p, at), at += p.length;
  return new TextDecoder("utf-8", { fatal: false }).decode(bytes);
}

/** Bytes of each token of a ByteLevel-decoded vocabulary (added tokens: their UTF-8), or null if one has none. */
function _byteLevelTable(
  lib: HfTokenizer,
  vocabSize: number,
  added: readonly { id: number; content: string }[],
): Uint8Array[] | null {
  const table: Uint8Array[] = new Array(vocabSize), utf8 = new TextEncoder();
  const addedIds = new Map(added.map((t) => [t.id, t.content]));
  for (let id = 0; id < vocabSize; id++) {
    const content = addedIds.get(id);
    if (content !== undefined) {
      table[id] = utf8.encode(content);
      continue;
    }
    const name = lib.id_to_token(id);
    const bytes = name === undefined ? null : tokenNameBytes(name);
    if (!bytes) return null;
    table[id] = bytes;
  }
  return table;
}

/**
 * Streaming over a decoder of whole sequences: decodes all ids so far and emits the text past what was
 * emitted, holding back trailing U+FFFD (a character still incomplete).
 */
class _PrefixStreamDecoder implements StreamDecoder {
  #ids: number[] = [];
  #emitted = 0;
  #decode: (ids: number[]) => string;

  constructor(decode: (ids: number[]) => string) {
    this.#decode = decode;
  }

  push(id: number): string {
    this.#ids.push(id);
    let text: string;
    try {
      text = this.#decode(this.#ids);
    } catch (e) {
      this.#ids.pop(); // a bad id is refused and forgotten
      throw e;
    }
    let end = text.length;
    while (end > this.#emitted && text.charCodeAt(end - 1) === 0xfffd) end--;
    if (end <= this.#emitted) return "";
    const out = text.slice(this.#emitted, end);
    this.#emitted = end;
    return out;
  }

  flush(): string {
    const text = this.#ids.length > 0 ? this.#decode(this.#ids) : "";
    const out = text.slice(this.#emitted);
    this.#ids = [], this.#emitted = 0;
    return out;
  }
}

/**
 * Encodes text given in chunks (strings, or UTF-8 bytes cut anywhere) with the same result as encoding
 * the whole text: each push encodes up to the last {@linkcode lastSplitPoint} and carries the rest over.
 * A tokenizer that is not `chunkSafe` gets the whole text at `flush`.
 *
 * @example
 * ```ts
 * import { ByteTokenizer } from "./tokenizer.ts";
 * import { ChunkedEncoder } from "./tokenizers.ts";
 * const enc = new ChunkedEncoder(new ByteTokenizer());
 * const ids = [...enc.push("hello wor"), ...enc.push(new Uint8Array([0x6c, 0x64])), ...enc.flush()];
 * if (ids.length !== 11) throw new Error("all bytes");
 * ```
 */
export class ChunkedEncoder {
  #tok: Tokenizer;
  #carry = "";
  #utf8 = new TextDecoder("utf-8", { fatal: false });
  static readonly #none = new Uint32Array(0);

  constructor(tokenizer: Tokenizer) {
    this.#tok = tokenizer;
  }

  /** Token ids of the text completed so far (possibly none). Invalid UTF-8 bytes become U+FFFD. */
  push(chunk: string | Uint8Array): Uint32Array {
    const old = this.#carry.length;
    const text = this.#carry +
      (typeof chunk === "string" ? this.#utf8.decode() + chunk : this.#utf8.decode(chunk, { stream: true }));
    // Points inside the old carry were looked at before; its first character starts the text.
    const k = this.#tok.chunkSafe ? lastSplitPoint(text, Math.max(1, old)) : 0;
    if (k === 0) {
      this.#carry = text;
      return ChunkedEncoder.#none;
    }
    this.#carry = text.slice(k);
    return this.#tok.encode(text.slice(0, k));
  }

  /** Token ids of what is left; the encoder is then empty. */
  flush(): Uint32Array {
    const text = this.#carry + this.#utf8.decode();
    this.#carry = "";
    return text.length > 0 ? this.#tok.encode(text) : ChunkedEncoder.#none;
  }
}

/**
 * Token ids of `chunks` in order, one array per chunk that completed text, then the rest (see
 * {@linkcode ChunkedEncoder}).
 */
export function* encodeChunks(
  tokenizer: Tokenizer,
  chunks: Iterable<string | Uint8Array>,
): Generator<Uint32Array> {
  const enc = new ChunkedEncoder(tokenizer);
  for (const c of chunks) {
    const ids = enc.push(c);
    if (ids.length > 0) yield ids;
  }
  const rest = enc.flush();
  if (rest.length > 0) yield rest;
}

/** Options of {@linkcode loadTokenizer}. */
export interface LoadTokenizerOptions {
  /** bpe: tokens wanted (`data.vocab_size`, ≥ 257). Other kinds ignore it. */
  vocabSize?: number;
  /** bpe: seed of the sample trained on when the text exceeds `maxTrainBytes` (see bpe.ts). Default 0. */
  seed?: number;
  /** bpe: text beyond this many bytes is sampled (bpe.ts `TrainBpeOptions.maxTrainBytes`). */
  maxTrainBytes?: number;
  /** bpe: the training split's text (required unless it is cached; the cache key is its fingerprint). */
  trainingText?: TrainingText;
  /** bpe: directory of the tokenizer cache; without it every load trains. */
  cacheDir?: string;
  /** file: directory relative paths are resolved against (the config file's). Default the working directory. */
  baseDir?: string;
  /** bpe: training progress (drives a progress bar). */
  onProgress?: (p: BpeProgress) => void;
  /** bpe: told whether the cache served the tokenizer, and why an entry was refused. */
  onCache?: (event: CacheEvent) => void;
}

/**
 * The tokenizer named by `spec` (`byte`, `bpe`, `gpt2` or `file:<path>`). Errors are
 * {@linkcode TokenizerError}s naming the spec, file or setting.
 *
 * @example
 * ```ts ignore
 * const tok = await loadTokenizer("bpe", { vocabSize: 4096, trainingText: text, cacheDir: "runs/.tokenizers" });
 * await Deno.writeTextFile(`${runDir}/tokenizer.json`, tok.toJSON());
 * ```
 */
export async function loadTokenizer(spec: string, o: LoadTokenizerOptions = {}): Promise<Tokenizer> {
  if (spec === "byte") return new ByteTokenizer();
  if (spec === "gpt2") return new Gpt2Tokenizer();
  if (spec.startsWith("file:")) {
    const path = spec.slice("file:".length);
    if (path.length === 0) {
      throw new TokenizerError(`data.tokenizer "${spec}": give the path of a tokenizer.json`);
    }
    return await loadTokenizerFile(_resolve(path, o.baseDir));
  }
  if (spec === "bpe") {
    if (o.vocabSize === undefined) throw new TokenizerError(`data.tokenizer "bpe" needs data.vocab_size`);
    if (o.trainingText === undefined) {
      throw new TokenizerError(`data.tokenizer "bpe" needs the training text`);
    }
    const { model, json } = await cachedBpe(o.trainingText, {
      vocabSize: o.vocabSize,
      seed: o.seed ?? 0,
      maxTrainBytes: o.maxTrainBytes,
    }, { cacheDir: o.cacheDir, onProgress: o.onProgress, onCache: o.onCache });
    return new BpeTokenizer(model, { kind: "bpe", json });
  }
  throw new TokenizerError(
    `Unknown data.tokenizer "${spec}" (expected byte, bpe, gpt2 or file:<path to tokenizer.json>)`,
  );
}

function _resolve(path: string, baseDir?: string): string {
  if (path.startsWith("/") || !baseDir) return path;
  return `${baseDir.replace(/\/+$/, "")}/${path}`;
}

/** A text that exercises pre-tokenization and merges, encoded both ways before trusting our encoder. */
const _PROBE =
  "Hello world! It's 2024: naïve café, 東京 😀👍🏽 e\u0301 — don't  stop\r\n\r\n\tthe   END 3.14159 ";

/**
 * A `tokenizer.json` file (BPE) as a tokenizer of kind `file`; other model types are refused with the
 * file and its type named. See the module docs for which encoder serves it.
 */
export async function loadTokenizerFile(path: string): Promise<Tokenizer> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new TokenizerError(`data.tokenizer "file:${path}": cannot read ${path}: ${(e as Error).message}`);
  }
  return tokenizerFromJson(text, { kind: "file", source: path });
}

/** Options of {@linkcode tokenizerFromJson}. */
export interface FromJsonOptions {
  /** The kind it was saved as; inferred when absent (byte's json, a gpt2 descriptor, our bpe, else file). */
  kind?: TokenizerKind;
  /** Where the text came from, for messages and the `file:` spec. Default "tokenizer.json". */
  source?: string;
}

/**
 * A tokenizer from its definition ({@linkcode Tokenizer.toJSON}): how checkpoints and run directories
 * restore theirs. A definition that does not fit `kind` throws {@linkcode TokenizerError}.
 */
export function tokenizerFromJson(text: string, o: FromJsonOptions = {}): Tokenizer {
  const source = o.source ?? "tokenizer.json";
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new TokenizerError(`${source}: not valid JSON (${(e as Error).message})`);
  }
  const isGpt2 = typeof raw === "object" && raw !== null &&
    (raw as { dsmoe_tokenizer?: unknown }).dsmoe_tokenizer === "gpt2";
  if (isGpt2 || o.kind === "gpt2") {
    if (!isGpt2 || JSON.stringify(raw) !== JSON.stringify(GPT2_DESCRIPTOR)) {
      throw new TokenizerError(`${source}: not the gpt2 descriptor ${JSON.stringify(GPT2_DESCRIPTOR)}`);
    }
    return new Gpt2Tokenizer();
  }
  const byte = new ByteTokenizer();
  if (o.kind === "byte" || (o.kind === undefined && text === byte.toJSON())) {
    if (text !== byte.toJSON()) throw new TokenizerError(`${source}: not the byte tokenizer's definition`);
    return byte;
  }
  const json = parseTokenizerJson(text, source);
  const type = modelType(json);
  if (type !== "BPE") {
    throw new TokenizerError(
      `${source}: model type "${type}" is not supported (a tokenizer.json with a BPE model is needed)`,
    );
  }
  const plain = plainByteLevelBpe(json, source);
  if (o.kind === "bpe" || (o.kind === undefined && plain?.isCanonical)) {
    if (!plain?.isCanonical) throw new TokenizerError(`${source}: not a tokenizer.json written by our bpe`);
    return new BpeTokenizer(plain, { kind: "bpe", json: text });
  }
  const spec = `file:${source}`;
  let lib: HfTokenizer;
  try {
    lib = new HfTokenizer(json, {});
  } catch (e) {
    throw new TokenizerError(`${source}: @huggingface/tokenizers cannot load it: ${(e as Error).message}`);
  }
  if (plain && _agrees(plain, lib)) return new BpeTokenizer(plain, { kind: "file", spec, json: text });
  return new LibraryTokenizer(lib, json, text, spec);
}

function _agrees(model: BpeModel, lib: HfTokenizer): boolean {
  const ours = model.encode(_PROBE), theirs = lib.encode(_PROBE, { add_special_tokens: false }).ids;
  return ours.length === theirs.length && ours.every((v, i) => v === theirs[i]);
}

/** Checkpoint metadata keys of a run's tokenizer (its definition, kind and fingerprint). */
export const TOKENIZER_METADATA = {
  json: "tokenizer",
  kind: "tokenizer_kind",
  fingerprint: "tokenizer_fingerprint",
} as const;

/** The metadata a checkpoint stores of `tok` (see {@linkcode TOKENIZER_METADATA}). */
export function tokenizerMetadata(tok: Tokenizer): Record<string, string> {
  return {
    [TOKENIZER_METADATA.json]: tok.toJSON(),
    [TOKENIZER_METADATA.kind]: tok.kind,
    [TOKENIZER_METADATA.fingerprint]: tok.fingerprint,
  };
}

/**
 * The tokenizer a checkpoint's metadata records, checked against its fingerprint; null when the metadata has
 * none (checkpoints written before tokenizers were recorded read bytes). `source` names the checkpoint in
 * errors.
 */
export function tokenizerFromMetadata(
  meta: Readonly<Record<string, string>>,
  source: string,
): Tokenizer | null {
  const json = meta[TOKENIZER_METADATA.json];
  if (json === undefined) return null;
  const kind = meta[TOKENIZER_METADATA.kind];
  if (kind !== undefined && !(TOKENIZER_KINDS as readonly string[]).includes(kind)) {
    throw new TokenizerError(`${source}: unknown tokenizer kind "${kind.slice(0, 40)}" in its metadata`);
  }
  const tok = tokenizerFromJson(json, {
    kind: kind as TokenizerKind | undefined,
    source: `${source} (tokenizer)`,
  });
  const want = meta[TOKENIZER_METADATA.fingerprint];
  if (want !== undefined && want !== tok.fingerprint) {
    throw new TokenizerError(`${source}: its tokenizer does not match the fingerprint recorded beside it`);
  }
  return tok;
}

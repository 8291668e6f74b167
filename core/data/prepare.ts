/**
 * Preparing data: a config's source tokenized once into token shards (core/data/shards.ts) in a cache
 * folder, which training and evaluation then read by position. `deno task prepare <config>` runs it, and so
 * does `loadDataset` with a cache directory when the shards are missing.
 *
 * Steps, so that bad input is refused before anything is written:
 * 1. resolve and inspect the source (core/data/sources.ts: stat, then every file's start), load a `gpt2` or
 *    `file:` tokenizer;
 * 2. compute the cache key — SHA-256 of ({@linkcode SHARD_FORMAT}, the source's fingerprint, the tokenizer
 *    spec with `vocab_size` (for `file:` its fingerprint), seed, val_fraction) — and use
 *    `<cacheDir>/<key>/` when its index and every shard verify (shards.ts `verifyShards`); otherwise say why
 *    and prepare it again. The source's fingerprint is cheap to take: for files their real paths, sizes,
 *    modification times and formats (and the text field); for a corpus its package and installed version.
 *    The text's SHA-256 is computed while streaming and recorded in the index;
 * 3. for `bpe`, one pass over the source collects the training split's text (core/data/split.ts) and trains
 *    the tokenizer on it — on all of it up to {@linkcode BPE_SAMPLE_BYTES}, above that on a sample of whole
 *    1 MiB pieces of the training split chosen by `hash32(seed, 0xb9e5, piece)` (the pieces with the lowest
 *    hashes that fit; this is the only place the seed enters the tokenizer). The model is cached by
 *    tokenizer_cache.ts under `<cacheDir>/tokenizers/` keyed by that text's hash, vocab_size (and seed), so
 *    preparing the same data again does not train again;
 * 4. one pass streams the text through the split into one encoder per split (tokenizers.ts
 *    `ChunkedEncoder`: encoding in pieces equals encoding the whole split) and writes the ids into shard
 *    files, counting tokens, UTF-8 bytes and unigram counts per split;
 * 5. everything is written in a temp folder `<cacheDir>/.tmp-<key>-<pid>-<random>` (files fsynced), which is
 *    renamed to `<cacheDir>/<key>` at the end: an interrupted preparation leaves no half shard set, and a
 *    failed one (a split shorter than seq_len + 1 tokens, a bad line late in a file) removes its temp folder
 *    and any cache directory it created. Temp folders of processes that are gone are removed at the next
 *    preparation.
 *
 * Without a cache directory the same pipeline fills arrays in memory ({@linkcode tokenizeInMemory}).
 *
 * @module
 */
import { createHash } from "node:crypto";
import { DEFAULT_BPE_VOCAB, type Experiment } from "../config/schema.ts";
import { atomicWriteText, TEMP_MARK } from "../util/atomic_write.ts";
import { fmtBytes, fmtCount, fmtDuration } from "../util/format.ts";
import { hash32 } from "../util/rng.ts";
import { TokenizerError, type TrainingText } from "./bpe.ts";
import { corpusSummary } from "./corpora.ts";
import { completeUtf8Length } from "./formats.ts";
import {
  dtypeFor,
  readShardIndex,
  SHARD_FORMAT,
  SHARD_TOKENS,
  type ShardIndex,
  ShardWriter,
  type SourceFingerprint,
  type SplitIndex,
  verifyShards,
} from "./shards.ts";
import { DataError } from "./errors.ts";
import {
  inspectSource,
  type ResolvedSource,
  resolveSource,
  type SourceInspection,
  sourceStream,
} from "./sources.ts";
import { shortSourceMessage, shortSplit, SPLIT_BLOCK, TextSplitter } from "./split.ts";
import { ByteTokenizer } from "./tokenizer.ts";
import { bpeCacheKey, readCacheEntry, textFingerprint } from "./tokenizer_cache.ts";
import type { Tokenizer } from "./tokenizers.ts";
import { rememberTokenizerVocab } from "./vocab.ts";

/** Most bytes of training text a bpe tokenizer is trained on (100 MiB); a larger split is sampled. */
export const BPE_SAMPLE_BYTES = 100 << 20;
/** Size of the pieces of the training split that the bpe sample is made of. */
export const BPE_SAMPLE_PIECE = 1 << 20;
/** Bytes of a split gathered before they are encoded. */
const _ENCODE_BYTES = 1 << 20;

/** The cache directory under a runs directory: `<runsDir>/cache`. */
export function defaultCacheDir(runsDir = "runs"): string {
  return `${runsDir.replace(/\/+$/, "")}/cache`;
}

/** Progress of a preparation (drives {@linkcode progressPrinter}). */
export interface PrepareProgress {
  /** `sample`: reading the training text for bpe; `bpe`: training it; `tokenize`; `verify`: hashing shards. */
  stage: "sample" | "bpe" | "tokenize" | "verify";
  /** Units done and in all: input bytes (sample, tokenize), merges (bpe), shard bytes (verify). */
  done: number;
  total: number;
  /** Tokens written so far (tokenize). */
  tokens: number;
  /** Since the stage started. */
  elapsedMs: number;
  /** The stage's last report. */
  final: boolean;
}

/** Options of {@linkcode prepareData}. */
export interface PrepareOptions {
  /** Directory relative paths (source, `file:` tokenizer) resolve against: the config file's. */
  baseDir?: string;
  /** Where shard folders live (default {@linkcode defaultCacheDir}). */
  cacheDir?: string;
  onProgress?: (p: PrepareProgress) => void;
  /** Notices: a cache entry refused and why, a tokenizer served from the cache. */
  log?: (line: string) => void;
  signal?: AbortSignal;
  /**
   * Use this tokenizer instead of resolving `data.tokenizer` (a checkpoint's own). For bpe, the shards
   * prepared with the config's settings are used when their tokenizer is this one.
   */
  tokenizer?: Tokenizer;
}

/** A verified shard folder. */
export interface PreparedData {
  dir: string;
  index: ShardIndex;
  tokenizer: Tokenizer;
  /** True when the folder was already there (nothing was tokenized). */
  reused: boolean;
}

/** What {@linkcode planData} found: the source, the cache folder and (unless bpe) the tokenizer. */
export interface DataPlan {
  source: ResolvedSource;
  inspection: SourceInspection;
  fingerprint: SourceFingerprint;
  /** The tokenizer part of the cache key. */
  tokenizerKey: string;
  key: string;
  dir: string;
  cacheDir: string;
  /** Loaded now for byte, gpt2, file: and a given tokenizer; null for bpe (trained when preparing). */
  tokenizer: Tokenizer | null;
}

/**
 * Resolves and inspects the source of `c`, loads its tokenizer unless it is bpe, and names the cache
 * folder. Everything that can be refused from the config and the start of the files is refused here,
 * before anything is written. Synthetic sources have no plan (they are generated in memory).
 */
export async function planData(c: Readonly<Experiment>, o: PrepareOptions = {}): Promise<DataPlan> {
  const source = await resolveSource(c.data.source, { baseDir: o.baseDir });
  if (source.kind === "synthetic") {
    throw new DataError(`${source.name} is generated in memory at each run: there is nothing to prepare`);
  }
  const inspection = await inspectSource(source, { textField: c.data.text_field });
  const tokenizer = o.tokenizer ??
    (c.data.tokenizer === "bpe" ? null : await loadConfigTokenizer(c, o.baseDir));
  const fingerprint = await sourceFingerprint(source, inspection, c.data.text_field);
  const tokenizerKey = tokenizerKeyOf(c, tokenizer);
  const cacheDir = o.cacheDir ?? defaultCacheDir();
  const key = shardKey(fingerprint, tokenizerKey, c);
  return {
    source,
    inspection,
    fingerprint,
    tokenizerKey,
    key,
    dir: `${cacheDir}/${key}`,
    cacheDir,
    tokenizer,
  };
}

/**
 * The shards of `c`'s data: the cached folder when it verifies, else prepared now (see the module docs).
 * Bad input throws a {@linkcode DataError} (a TokenizerError for tokenizer settings) and leaves nothing
 * written.
 *
 * @example
 * ```ts ignore
 * const p = await prepareData(config, { baseDir: "configs", cacheDir: "runs/cache" });
 * console.log(p.dir, p.index.splits.train.tokens);
 * ```
 */
export async function prepareData(c: Readonly<Experiment>, o: PrepareOptions = {}): Promise<PreparedData> {
  const plan = await planData(c, o);
  // A given bpe tokenizer: the config's shards serve when they were made with it.
  if (o.tokenizer && c.data.tokenizer === "bpe") {
    const dir = `${plan.cacheDir}/${shardKey(plan.fingerprint, tokenizerKeyOf(c, null), c)}`;
    const found = await _usable(dir, o);
    if (found.index?.tokenizer.fingerprint === o.tokenizer.fingerprint) {
      return { dir, index: found.index, tokenizer: o.tokenizer, reused: true };
    }
  }
  const found = await _usable(plan.dir, o);
  if (found.index) {
    const tokenizer = plan.tokenizer ?? await _folderTokenizer(plan.dir, found.index);
    _remember(c, tokenizer);
    return { dir: plan.dir, index: found.index, tokenizer, reused: true };
  }
  if (found.problem) o.log?.(`Preparing ${plan.dir} again: ${found.problem}`);
  const made = await _prepare(c, plan, o);
  _remember(c, made.tokenizer);
  return made;
}

/** The index of `dir` when it and its shards verify; else why not (nothing when there is no folder). */
async function _usable(dir: string, o: PrepareOptions): Promise<{ index?: ShardIndex; problem?: string }> {
  const read = await readShardIndex(dir);
  if ("missing" in read) {
    const exists = await Deno.lstat(dir).then(() => true, () => false);
    return exists ? { problem: "its index.json is missing" } : {};
  }
  if ("problem" in read) return { problem: read.problem };
  const started = performance.now();
  const total = read.index.splits.train.tokens + read.index.splits.val.tokens;
  const problem = await verifyShards(dir, read.index, {
    onHash: _throttled(o.onProgress, (done, bytes, final) => ({
      stage: "verify",
      done,
      total: bytes,
      tokens: total,
      elapsedMs: performance.now() - started,
      final,
    })),
  });
  if (problem) return { problem };
  try {
    await _folderTokenizer(dir, read.index);
  } catch (e) {
    return { problem: (e as Error).message };
  }
  return { index: read.index };
}

/** The tokenizer saved in a shard folder, checked against the index's fingerprint. */
async function _folderTokenizer(dir: string, index: ShardIndex): Promise<Tokenizer> {
  const { tokenizerFromJson } = await import("./tokenizers.ts");
  const text = await Deno.readTextFile(`${dir}/${index.tokenizer.file}`).catch((e) => {
    throw new DataError(`${dir}/tokenizer.json cannot be read: ${(e as Error).message}`);
  });
  const kind = index.tokenizer.kind as Tokenizer["kind"];
  const tok = tokenizerFromJson(text, { kind, source: `${dir}/tokenizer.json` });
  if (tok.fingerprint !== index.tokenizer.fingerprint) {
    throw new DataError(`${dir}/tokenizer.json does not match the fingerprint in its index.json`);
  }
  return tok;
}

function _remember(c: Readonly<Experiment>, tok: Tokenizer): void {
  rememberTokenizerVocab(c.data.tokenizer, tok.vocabSize);
}

/** The tokenizer of `data.tokenizer` when it is not bpe: byte, gpt2, or a tokenizer.json (`file:`). */
export async function loadConfigTokenizer(c: Readonly<Experiment>, baseDir?: string): Promise<Tokenizer> {
  if (c.data.tokenizer === "byte") return new ByteTokenizer();
  const { loadTokenizer } = await import("./tokenizers.ts");
  if (c.data.tokenizer.startsWith("file:")) await _checkTokenizerFile(c.data.tokenizer, baseDir);
  let tok: Tokenizer;
  try {
    tok = await loadTokenizer(c.data.tokenizer, { baseDir });
  } catch (e) {
    if (!(e instanceof TokenizerError) || e.message.startsWith("data.tokenizer")) throw e;
    throw new TokenizerError(`data.tokenizer "${c.data.tokenizer}": ${e.message}`);
  }
  rememberTokenizerVocab(c.data.tokenizer, tok.vocabSize);
  return tok;
}

/** Most bytes of a `file:` tokenizer.json read. */
const _MAX_TOKENIZER_FILE = 1 << 30;

/** Refuses a `file:` tokenizer that is missing, not a regular file (never opened) or too large. */
async function _checkTokenizerFile(spec: string, baseDir?: string): Promise<void> {
  const path = spec.slice("file:".length);
  const resolved = baseDir && !path.startsWith("/") ? `${baseDir.replace(/\/+$/, "")}/${path}` : path;
  const name = `data.tokenizer "${spec}"${resolved === path ? "" : ` (${resolved})`}`;
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(resolved);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new TokenizerError(`${name} does not exist`);
    throw new TokenizerError(`${name} cannot be read: ${(e as Error).message}`);
  }
  if (!info.isFile) throw new TokenizerError(`${name} is not a regular file`);
  if (info.size > _MAX_TOKENIZER_FILE) {
    throw new TokenizerError(`${name} has ${info.size} bytes; a tokenizer.json may have at most 1 GiB`);
  }
}

/** The tokenizer part of the cache key: the spec and vocab_size for bpe, else the definition's hash. */
function tokenizerKeyOf(c: Readonly<Experiment>, tok: Tokenizer | null): string {
  if (tok) return `${tok.kind}:${tok.fingerprint}`;
  return `bpe:${c.data.vocab_size ?? DEFAULT_BPE_VOCAB}:${BPE_SAMPLE_BYTES}`;
}

/** The cache key of a shard folder (hex, 32 characters). */
export function shardKey(fp: SourceFingerprint, tokenizerKey: string, c: Readonly<Experiment>): string {
  const parts = {
    format: SHARD_FORMAT,
    source: fp,
    tokenizer: tokenizerKey,
    seed: c.seed,
    val_fraction: c.data.val_fraction,
  };
  return createHash("sha256").update(JSON.stringify(parts)).digest("hex").slice(0, 32);
}

/** The cheap fingerprint of a source (see the module docs). */
export async function sourceFingerprint(
  r: ResolvedSource,
  inspection: SourceInspection,
  textField: string,
): Promise<SourceFingerprint> {
  if (r.kind === "corpus") {
    return { spec: r.source, kind: "corpus", package: r.corpus.package, version: inspection.corpus?.version };
  }
  if (r.kind !== "files") throw new DataError(`${r.name} has no fingerprint`);
  const files = [];
  for (const f of r.files) {
    const real = await Deno.realPath(f.path).catch(() => f.path);
    files.push({ path: real, size: f.size, mtime_ms: f.mtimeMs, format: f.format });
  }
  const structured = r.files.some((f) => f.format !== "text");
  return { spec: r.source, kind: "files", files, ...(structured ? { text_field: textField } : {}) };
}

// ---------------------------------------------------------------------------------------------------------
// The pipeline

/** Where one split's token ids go. */
interface TokenSink {
  write(ids: Uint8Array | Uint16Array | Uint32Array): void;
}

/** Encodes a text given in pieces as the whole (tokenizers.ts `ChunkedEncoder`). */
interface PieceEncoder {
  push(bytes: Uint8Array): Uint32Array;
  flush(): Uint32Array;
}

/** Gathers a split's bytes, encodes them in pieces, and counts tokens, bytes and unigrams. */
class SplitEncoder {
  tokens = 0;
  bytes = 0;
  readonly counts: Float64Array;
  readonly #tok: Tokenizer;
  readonly #sink: TokenSink;
  readonly #chunked: PieceEncoder | null;
  #buf = new Uint8Array(_ENCODE_BYTES);
  #fill = 0;

  /** `chunked` encodes pieces of the split; null for the byte tokenizer (id = byte). */
  constructor(tok: Tokenizer, sink: TokenSink, chunked: PieceEncoder | null) {
    this.#tok = tok, this.#sink = sink, this.#chunked = chunked;
    this.counts = new Float64Array(tok.vocabSize);
  }

  push(bytes: Uint8Array): void {
    this.bytes += bytes.length;
    for (let at = 0; at < bytes.length;) {
      const n = Math.min(bytes.length - at, this.#buf.length - this.#fill);
      this.#buf.set(bytes.subarray(at, at + n), this.#fill);
      this.#fill += n, at += n;
      if (this.#fill === this.#buf.length) this.#encode();
    }
  }

  end(): void {
    this.#encode();
    if (this.#chunked) this.#emit(this.#chunked.flush());
  }

  #encode(): void {
    if (this.#fill === 0) return;
    const bytes = this.#buf.subarray(0, this.#fill);
    this.#emit(this.#chunked ? this.#chunked.push(bytes) : bytes); // byte tokenizer: id = byte
    this.#fill = 0;
  }

  #emit(ids: Uint8Array | Uint32Array): void {
    if (ids.length === 0) return;
    const counts = this.counts, V = counts.length;
    for (let i = 0; i < ids.length; i++) {
      const t = ids[i]!;
      if (t >= V) {
        throw new TokenizerError(`${this.#tok.spec} produced token ${t}, outside its vocabulary ${V}`);
      }
      counts[t]!++;
    }
    this.#sink.write(ids);
    this.tokens += ids.length;
  }
}

/** Token ids gathered in memory. */
class MemorySink implements TokenSink {
  #buf = new Uint32Array(1 << 16);
  #n = 0;

  write(ids: Uint8Array | Uint16Array | Uint32Array): void {
    if (this.#n + ids.length > this.#buf.length) {
      const next = new Uint32Array(Math.max(this.#n + ids.length, 2 * this.#buf.length));
      next.set(this.#buf.subarray(0, this.#n));
      this.#buf = next;
    }
    this.#buf.set(ids, this.#n);
    this.#n += ids.length;
  }

  get tokens(): Uint32Array {
    return this.#buf.slice(0, this.#n);
  }
}

/** What one tokenizing pass produced. */
interface PassResult {
  train: SplitEncoder;
  val: SplitEncoder;
  blocks: number;
  valBlocks: number;
  contentSha256: string;
  textBytes: number;
  documents: number;
  seconds: number;
}

async function _encoderFor(tok: Tokenizer): Promise<PieceEncoder | null> {
  if (tok.kind === "byte") return null;
  const { ChunkedEncoder } = await import("./tokenizers.ts");
  return new ChunkedEncoder(tok);
}

/** Streams the source once through the split into an encoder per split, writing into `sinks`. */
async function _tokenizePass(
  c: Readonly<Experiment>,
  source: ResolvedSource,
  tok: Tokenizer,
  sinks: { train: TokenSink; val: TokenSink },
  o: PrepareOptions,
): Promise<PassResult> {
  const train = new SplitEncoder(tok, sinks.train, await _encoderFor(tok));
  const val = new SplitEncoder(tok, sinks.val, await _encoderFor(tok));
  const splitter = new TextSplitter({
    seed: c.seed,
    valFraction: c.data.val_fraction,
    snap: tok.kind !== "byte",
    emit: (isVal, bytes) => (isVal ? val : train).push(bytes),
  });
  const stream = sourceStream(source, {
    textField: c.data.text_field,
    signal: o.signal,
    seed: c.seed,
    syntheticBytes: c.data.synthetic_bytes,
  });
  const hash = createHash("sha256"), started = performance.now();
  const report = _throttled(o.onProgress, (done, total, final) => ({
    stage: "tokenize",
    done,
    total,
    tokens: train.tokens + val.tokens,
    elapsedMs: performance.now() - started,
    final,
  }));
  for await (const bytes of stream) {
    hash.update(bytes);
    splitter.push(bytes);
    report(stream.progress.done, stream.progress.total, false);
  }
  const counts = splitter.end();
  train.end(), val.end();
  report(stream.progress.total, stream.progress.total, true);
  return {
    train,
    val,
    blocks: counts.blocks,
    valBlocks: counts.valBlocks,
    contentSha256: hash.digest("hex"),
    textBytes: stream.bytes,
    documents: stream.documents,
    seconds: (performance.now() - started) / 1000,
  };
}

/** Refuses a split shorter than seq_len + 1 tokens, with the numbers. */
function _checkShort(
  c: Readonly<Experiment>,
  source: ResolvedSource,
  tok: Tokenizer,
  pass: PassResult,
): void {
  const short = shortSplit(pass.train.tokens, pass.val.tokens, c.data.seq_len);
  if (!short) return;
  const vocab = tok.kind === "bpe" ? ` ${tok.vocabSize}` : "";
  throw new DataError(shortSourceMessage({
    name: source.name,
    synthetic: source.kind === "synthetic",
    tokenizer: tok.kind === "byte" ? null : `${tok.spec}${vocab}`,
    seqLen: c.data.seq_len,
    tokens: pass.train.tokens + pass.val.tokens,
    bytes: pass.textBytes,
    trainTokens: pass.train.tokens,
    valTokens: pass.val.tokens,
    short,
  }));
}

/** The training split's text for bpe: all of it, or the seeded sample of 1 MiB pieces (module docs). */
async function _bpeSample(
  c: Readonly<Experiment>,
  source: ResolvedSource,
  o: PrepareOptions,
): Promise<{ parts: Uint8Array[]; bytes: number; trainBytes: number }> {
  const kept: { piece: number; priority: number; bytes: Uint8Array }[] = [];
  let keptBytes = 0, piece = 0, trainBytes = 0;
  let buf = new Uint8Array(2 * BPE_SAMPLE_PIECE), fill = 0;
  const keep = (bytes: Uint8Array) => {
    kept.push({ piece, priority: hash32(c.seed, 0xb9e5, piece), bytes });
    piece++, keptBytes += bytes.length;
    while (keptBytes > BPE_SAMPLE_BYTES && kept.length > 1) {
      let worst = 0;
      for (let i = 1; i < kept.length; i++) if (kept[i]!.priority > kept[worst]!.priority) worst = i;
      keptBytes -= kept[worst]!.bytes.length;
      kept.splice(worst, 1);
    }
  };
  const cut = () => {
    const n = completeUtf8Length(buf.subarray(0, fill));
    keep(buf.slice(0, n));
    buf.copyWithin(0, n, fill), fill -= n;
  };
  const splitter = new TextSplitter({
    seed: c.seed,
    valFraction: c.data.val_fraction,
    snap: true,
    emit: (isVal, bytes) => {
      if (isVal) return;
      trainBytes += bytes.length;
      if (fill + bytes.length > buf.length) {
        const next = new Uint8Array(2 * (fill + bytes.length));
        next.set(buf.subarray(0, fill));
        buf = next;
      }
      buf.set(bytes, fill), fill += bytes.length;
      if (fill >= BPE_SAMPLE_PIECE) cut();
    },
  });
  const stream = sourceStream(source, {
    textField: c.data.text_field,
    signal: o.signal,
    seed: c.seed,
    syntheticBytes: c.data.synthetic_bytes,
  });
  const started = performance.now();
  const report = _throttled(o.onProgress, (done, total, final) => ({
    stage: "sample",
    done,
    total,
    tokens: 0,
    elapsedMs: performance.now() - started,
    final,
  }));
  for await (const bytes of stream) {
    splitter.push(bytes);
    report(stream.progress.done, stream.progress.total, false);
  }
  splitter.end();
  if (fill > 0) keep(buf.slice(0, fill));
  report(stream.progress.total, stream.progress.total, true);
  kept.sort((a, b) => a.piece - b.piece);
  return { parts: kept.map((k) => k.bytes), bytes: keptBytes, trainBytes };
}

/**
 * The bpe tokenizer of `c`, trained on the training split's text (or its sample), served from the cache
 * under `<cacheDir>/tokenizers/` when there; a new model is written under `stage` (moved into the cache by
 * the caller once the preparation succeeded). Without `cacheDir`, trains.
 */
async function _bpeTokenizer(
  c: Readonly<Experiment>,
  source: ResolvedSource,
  o: PrepareOptions & { stage?: string },
): Promise<{ tokenizer: Tokenizer; staged: string | null; sampleBytes: number }> {
  const { BpeTokenizer } = await import("./tokenizers.ts");
  const { cachedBpe } = await import("./tokenizer_cache.ts");
  const vocabSize = c.data.vocab_size ?? DEFAULT_BPE_VOCAB;
  const sample = await _bpeSample(c, source, o);
  const text: TrainingText = sample.parts;
  const settings = { vocabSize, seed: c.seed, maxTrainBytes: BPE_SAMPLE_BYTES };
  const fp = textFingerprint(text);
  const key = bpeCacheKey(fp, settings);
  if (o.cacheDir) {
    const found = await readCacheEntry(`${o.cacheDir}/tokenizers/${key}`, vocabSize);
    if (found.model) {
      o.log?.(`Tokenizer bpe ${vocabSize}: from the cache (${o.cacheDir}/tokenizers/${key})`);
      const tokenizer = new BpeTokenizer(found.model, { kind: "bpe", json: found.json });
      return { tokenizer, staged: null, sampleBytes: sample.bytes };
    }
    if (found.refused) o.log?.(`Tokenizer cache entry ${key} refused (${found.refused}): training again`);
  }
  const started = performance.now();
  let model;
  try {
    model = await cachedBpe(text, settings, {
      cacheDir: o.stage ? `${o.stage}/tokenizers` : undefined,
      fingerprint: fp,
      onProgress: (p) => {
        if (p.stage !== "merge") return;
        o.onProgress?.({
          stage: "bpe",
          done: p.done,
          total: p.total,
          tokens: 0,
          elapsedMs: performance.now() - started,
          final: p.done === p.total,
        });
      },
    });
  } catch (e) {
    if (e instanceof TokenizerError) {
      throw new TokenizerError(
        `${source.name}, data.tokenizer bpe: ${e.message} (trained on ${sample.bytes} bytes of the training split)`,
      );
    }
    throw e;
  }
  const tokenizer = new BpeTokenizer(model.model, { kind: "bpe", json: model.json });
  return { tokenizer, staged: model.path ? key : null, sampleBytes: sample.bytes };
}

/** Prepares the shard folder of `plan` (see the module docs). */
async function _prepare(c: Readonly<Experiment>, plan: DataPlan, o: PrepareOptions): Promise<PreparedData> {
  const created = await _mkdirs(plan.cacheDir);
  await _cleanStaleTemps(plan.cacheDir);
  const tmp = `${plan.cacheDir}/${TEMP_MARK}${plan.key}-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  const writers: ShardWriter[] = [];
  const started = performance.now();
  try {
    await Deno.mkdir(tmp);
    let tok = plan.tokenizer, staged: string | null = null, sampleBytes: number | undefined;
    if (!tok) {
      const bpe = await _bpeTokenizer(c, plan.source, { ...o, cacheDir: plan.cacheDir, stage: tmp });
      tok = bpe.tokenizer, staged = bpe.staged, sampleBytes = bpe.sampleBytes;
    }
    const dtype = dtypeFor(tok.vocabSize);
    const train = new ShardWriter(tmp, "train", dtype), val = new ShardWriter(tmp, "val", dtype);
    writers.push(train, val);
    const pass = await _tokenizePass(c, plan.source, tok, { train, val }, o);
    _checkShort(c, plan.source, tok, pass);
    const shards = { train: train.finish(), val: val.finish() };
    const seconds = (performance.now() - started) / 1000;
    const split = (e: SplitEncoder, s: SplitIndex["shards"]): SplitIndex => ({
      tokens: e.tokens,
      text_bytes: e.bytes,
      shards: s,
      unigram: Array.from(e.counts),
    });
    const index: ShardIndex = {
      format: SHARD_FORMAT,
      key: plan.key,
      created: new Date().toISOString(),
      dtype,
      byte_order: "little",
      shard_tokens: SHARD_TOKENS,
      source: {
        ...plan.fingerprint,
        content_sha256: pass.contentSha256,
        text_bytes: pass.textBytes,
        documents: pass.documents,
      },
      tokenizer: {
        spec: c.data.tokenizer,
        kind: tok.kind,
        vocab_size: tok.vocabSize,
        fingerprint: tok.fingerprint,
        file: "tokenizer.json",
      },
      split: {
        block_bytes: SPLIT_BLOCK,
        seed: c.seed,
        val_fraction: c.data.val_fraction,
        snap_to_characters: tok.kind !== "byte",
        blocks: pass.blocks,
        val_blocks: pass.valBlocks,
      },
      splits: { train: split(pass.train, shards.train), val: split(pass.val, shards.val) },
      prepare: {
        seconds,
        tokens_per_s: (pass.train.tokens + pass.val.tokens) / pass.seconds,
        bytes_per_s: pass.textBytes / pass.seconds,
        ...(sampleBytes !== undefined ? { bpe_sample_bytes: sampleBytes } : {}),
      },
    };
    await atomicWriteText(`${tmp}/tokenizer.json`, tok.toJSON());
    await atomicWriteText(`${tmp}/index.json`, JSON.stringify(index, null, 1) + "\n");
    await _publish(
      tmp,
      plan.dir,
      staged ? { from: `${tmp}/tokenizers/${staged}`, to: `${plan.cacheDir}/tokenizers/${staged}` } : null,
    );
    const after = await readShardIndex(plan.dir);
    if (!("index" in after)) throw new DataError(`${plan.dir}: the prepared folder cannot be read back`);
    return { dir: plan.dir, index: after.index, tokenizer: tok, reused: false };
  } catch (e) {
    for (const w of writers) w.abort();
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    for (const d of created.reverse()) await Deno.remove(d).catch(() => {});
    throw e;
  }
}

/** Moves a finished temp folder into place (replacing a stale folder) and the trained tokenizer into the cache. */
async function _publish(
  tmp: string,
  dir: string,
  tokenizer: { from: string; to: string } | null,
): Promise<void> {
  if (tokenizer) {
    await Deno.mkdir(tokenizer.to.slice(0, tokenizer.to.lastIndexOf("/")), { recursive: true });
    await Deno.rename(tokenizer.from, tokenizer.to).catch(async () => {
      // Another process cached the same model meanwhile: keep theirs.
      await Deno.remove(tokenizer.from, { recursive: true }).catch(() => {});
    });
    await Deno.remove(`${tmp}/tokenizers`, { recursive: true }).catch(() => {});
  }
  if (await Deno.lstat(dir).then(() => true, () => false)) {
    const old = `${dir.slice(0, dir.lastIndexOf("/"))}/${TEMP_MARK}old-${Deno.pid}-${
      crypto.randomUUID().slice(0, 8)
    }`;
    await Deno.rename(dir, old);
    await Deno.remove(old, { recursive: true });
  }
  try {
    await Deno.rename(tmp, dir);
  } catch (e) {
    // Another process published the same folder first: theirs serves (it is verified when used).
    if (await Deno.lstat(`${dir}/index.json`).then(() => true, () => false)) {
      await Deno.remove(tmp, { recursive: true });
      return;
    }
    throw e;
  }
}

/** Creates `dir` and its missing parents; returns the directories created, outermost first. */
async function _mkdirs(dir: string): Promise<string[]> {
  const missing: string[] = [];
  for (let d = dir; d && d !== "." && d !== "/"; d = d.includes("/") ? d.slice(0, d.lastIndexOf("/")) : "") {
    if (await Deno.lstat(d).then(() => true, () => false)) break;
    missing.unshift(d);
  }
  await Deno.mkdir(dir, { recursive: true });
  return missing;
}

/** Removes temp folders of preparations whose process is gone (Linux: no /proc/<pid>). */
async function _cleanStaleTemps(cacheDir: string): Promise<void> {
  if (Deno.build.os !== "linux") return;
  for await (const e of Deno.readDir(cacheDir)) {
    const m = /^\.tmp-(?:old-)?(?:[0-9a-f]{32}-)?([0-9]+)-[0-9a-f]{8}$/.exec(e.name);
    if (!e.isDirectory || !m || Number(m[1]) === Deno.pid) continue;
    const alive = await Deno.lstat(`/proc/${m[1]}`).then(() => true, () => false);
    if (!alive) await Deno.remove(`${cacheDir}/${e.name}`, { recursive: true }).catch(() => {});
  }
}

/** A progress reporter that calls `f` at most every 200 ms, and always on the final report. */
function _throttled(
  f: ((p: PrepareProgress) => void) | undefined,
  make: (done: number, total: number, final: boolean) => PrepareProgress,
): (done: number, total: number, final?: boolean) => void {
  let last = 0;
  return (done, total, final = false) => {
    if (!f) return;
    const now = performance.now();
    if (!final && now - last < 200) return;
    last = now;
    f(make(done, total, final));
  };
}

// ---------------------------------------------------------------------------------------------------------
// In memory

/** A config's data tokenized in memory (no cache directory). */
export interface InMemoryData {
  train: Uint32Array;
  val: Uint32Array;
  trainBytes: number;
  valBytes: number;
  tokenizer: Tokenizer;
  unigram: { train: Float64Array; val: Float64Array };
}

/**
 * The same pipeline as {@linkcode prepareData} into arrays: for sources small enough to hold (tests, and
 * callers that pass no cache directory). A bpe tokenizer is trained (no cache).
 */
export async function tokenizeInMemory(
  c: Readonly<Experiment>,
  source: ResolvedSource,
  o: PrepareOptions = {},
): Promise<InMemoryData> {
  if (source.kind !== "synthetic") await inspectSource(source, { textField: c.data.text_field });
  const tokenizer = o.tokenizer ??
    (c.data.tokenizer === "bpe"
      ? (await _bpeTokenizer(c, source, { ...o, cacheDir: undefined })).tokenizer
      : await loadConfigTokenizer(c, o.baseDir));
  const sinks = { train: new MemorySink(), val: new MemorySink() };
  const pass = await _tokenizePass(c, source, tokenizer, sinks, o);
  _checkShort(c, source, tokenizer, pass);
  _remember(c, tokenizer);
  return {
    train: sinks.train.tokens,
    val: sinks.val.tokens,
    trainBytes: pass.train.bytes,
    valBytes: pass.val.bytes,
    tokenizer,
    unigram: { train: pass.train.counts, val: pass.val.counts },
  };
}

// ---------------------------------------------------------------------------------------------------------
// Reporting

/**
 * A renderer of {@linkcode PrepareProgress} for a terminal (one line redrawn in place: a bar, bytes, tokens,
 * tokens/s and ETA) or, when `terminal` is false, plain lines at every tenth and at the end of each stage.
 *
 * @example
 * ```ts ignore
 * const onProgress = progressPrinter((t) => Deno.stderr.writeSync(new TextEncoder().encode(t)), Deno.stderr.isTerminal());
 * ```
 */
export function progressPrinter(
  write: (text: string) => void,
  terminal: boolean,
): (p: PrepareProgress) => void {
  let lastTenth = -1, lastStage = "";
  return (p) => {
    if (p.stage !== lastStage) lastTenth = -1, lastStage = p.stage;
    const frac = p.total > 0 ? Math.min(1, p.done / p.total) : 1;
    const line = formatProgress(p);
    if (terminal) {
      write(`\r\x1b[2K${line}${p.final ? "\n" : ""}`);
      return;
    }
    const tenth = Math.floor(frac * 10);
    if (!p.final && tenth === lastTenth) return;
    lastTenth = p.final ? 11 : tenth;
    write(`${line}\n`);
  };
}

/** One progress line: `tokenize [######----]  62%  640 MB / 1.03 GB  160M tokens  2.1M tok/s  ETA 31s`. */
export function formatProgress(p: PrepareProgress): string {
  const frac = p.total > 0 ? Math.min(1, p.done / p.total) : 1, width = 24;
  const fill = Math.round(frac * width);
  const bar = `[${"#".repeat(fill)}${"-".repeat(width - fill)}]`;
  const secs = p.elapsedMs / 1000;
  const eta = frac > 0 && frac < 1 ? `  ETA ${fmtDuration((secs * (1 - frac)) / frac)}` : "";
  const pct = `${(100 * frac).toFixed(0).padStart(3)}%`;
  const stage = p.stage.padEnd(8);
  if (p.stage === "bpe") return `${stage} ${bar} ${pct}  ${p.done}/${p.total} merges${eta}`;
  const amount = `${_mb(p.done)} / ${_mb(p.total)}`;
  if (p.stage !== "tokenize") return `${stage} ${bar} ${pct}  ${amount}${eta}`;
  const rate = secs > 0 ? `  ${fmtCount(Math.round(p.tokens / secs))} tok/s` : "";
  return `${stage} ${bar} ${pct}  ${amount}  ${fmtCount(p.tokens)} tokens${rate}${eta}`;
}

function _mb(bytes: number): string {
  return bytes >= 1e9 ? `${(bytes / 1e9).toFixed(2)} GB` : `${(bytes / 1e6).toFixed(1)} MB`;
}

/** Lines summing up a preparation: where, tokens and bytes per split, bytes per token, throughput. */
export function formatPrepareSummary(p: PreparedData): string[] {
  const i = p.index, t = i.splits.train, v = i.splits.val;
  const bpt = (s: SplitIndex) => (s.tokens > 0 ? (s.text_bytes / s.tokens).toFixed(3) : "-");
  const lines = [
    `${p.reused ? "Prepared already" : "Prepared"}: ${p.dir}`,
    `  source     ${i.source.spec}: ${
      fmtBytes(i.source.text_bytes)
    } of text, ${i.source.documents} documents`,
    `  tokenizer  ${i.tokenizer.spec}: ${i.tokenizer.vocab_size} tokens (${i.dtype} shards)`,
    `  train      ${fmtCount(t.tokens)} tokens from ${fmtBytes(t.text_bytes)} (${bpt(t)} bytes/token), ` +
    `${t.shards.length} shard(s)`,
    `  val        ${fmtCount(v.tokens)} tokens from ${fmtBytes(v.text_bytes)} (${bpt(v)} bytes/token), ` +
    `${v.shards.length} shard(s)`,
  ];
  if (!p.reused) {
    lines.push(
      `  took       ${fmtDuration(i.prepare.seconds)}: ${
        fmtCount(Math.round(i.prepare.tokens_per_s))
      } tokens/s, ` +
        `${(i.prepare.bytes_per_s / 1e6).toFixed(1)} MB/s of text`,
    );
  }
  return lines;
}

/**
 * Lines describing `c`'s data for `run --dry-run`: the source (a corpus's size, documents and licence; files'
 * formats and sizes), the tokenizer and whether the shards are prepared (and where). Bad input throws, as a
 * run would.
 */
export async function describeData(
  c: Readonly<Experiment>,
  o: { baseDir?: string; cacheDir?: string } = {},
): Promise<string[]> {
  const source = await resolveSource(c.data.source, { baseDir: o.baseDir });
  const tokLine = _tokenizerLine(c);
  if (source.kind === "synthetic") {
    const tok = c.data.tokenizer === "byte" ? null : await _describeTokenizer(c, o.baseDir);
    return [
      `  data          ${source.source}: ${
        fmtBytes(c.data.synthetic_bytes)
      } generated in memory from the seed`,
      `  tokenizer     ${tok ?? tokLine}`,
    ];
  }
  const plan = await planData(c, o);
  const lines: string[] = [];
  if (source.kind === "corpus") lines.push(`  data          ${await corpusSummary(source.corpus.name)}`);
  else {
    const infos = plan.inspection.files;
    const size = infos.reduce((n, f) => n + f.fileBytes, 0);
    const formats = new Map<string, number>();
    for (const f of infos) formats.set(f.format, (formats.get(f.format) ?? 0) + 1);
    const kinds = [...formats].map(([k, n]) => `${n} ${_formatName(k)}`).join(", ");
    const field = infos.some((f) => f.format !== "text") ? `, text field "${c.data.text_field}"` : "";
    lines.push(
      `  data          ${source.name}: ${infos.length} file(s) (${kinds}), ${fmtBytes(size)}${field}`,
    );
  }
  lines.push(`  tokenizer     ${plan.tokenizer ? _loadedLine(plan.tokenizer) : tokLine}`);
  const read = await readShardIndex(plan.dir);
  if ("index" in read) {
    const s = read.index.splits;
    lines.push(
      `  shards        prepared in ${plan.dir}: ${fmtCount(s.train.tokens)} train / ${
        fmtCount(s.val.tokens)
      } ` +
        `validation tokens (verified when used)`,
    );
  } else {
    lines.push(
      `  shards        not prepared (${"problem" in read ? read.problem : "none yet"}): deno task prepare ` +
        `<config> (or run) writes ${plan.dir}`,
    );
  }
  return lines;
}

function _formatName(f: string): string {
  return f === "jsonl" ? "JSON Lines" : f === "parquet" ? "Parquet" : "text";
}

function _tokenizerLine(c: Readonly<Experiment>): string {
  if (c.data.tokenizer === "byte") return "byte (256 tokens)";
  if (c.data.tokenizer === "bpe") {
    return `bpe, ${c.data.vocab_size ?? DEFAULT_BPE_VOCAB} tokens: trained on the training split (at most ` +
      `${BPE_SAMPLE_BYTES >> 20} MiB, a seeded sample above), cached by text hash and settings`;
  }
  return c.data.tokenizer;
}

function _loadedLine(t: Tokenizer): string {
  if (t.kind === "byte") return "byte (256 tokens)";
  if (t.kind === "gpt2") return "gpt2 (r50k_base, 50257 tokens)";
  return `${t.spec} (${t.vocabSize} tokens, sha256 ${t.fingerprint.slice(0, 12)}…)`;
}

async function _describeTokenizer(c: Readonly<Experiment>, baseDir?: string): Promise<string | null> {
  if (c.data.tokenizer === "bpe") return null;
  return _loadedLine(await loadConfigTokenizer(c, baseDir));
}

/**
 * Token shards: a tokenized split on disk, read by position without holding it in memory.
 *
 * A prepared data set is one folder (core/data/prepare.ts makes it) holding, per split (`train`, `val`),
 * shard files `<split>-00000.bin`, `<split>-00001.bin` … of at most {@linkcode SHARD_TOKENS} token ids each,
 * stored little-endian as `uint16` when the vocabulary has at most 65,536 tokens and `uint32` otherwise, plus
 * `tokenizer.json` and `index.json` ({@linkcode ShardIndex}): the format, the source's fingerprint, the
 * tokenizer's, the split settings and, per split, its tokens, the UTF-8 bytes they came from, its unigram
 * counts, and every shard's token count and SHA-256.
 *
 * Verification ({@linkcode verifyShards}) before any token is used: the index parses and is consistent
 * (shard names, counts adding up, sizes), each shard is a regular file of exactly `tokens × width` bytes, and
 * its SHA-256 matches the index. Hashing runs at about 600 MB/s here, so a process hashes each shard once and
 * remembers it by (path, size, mtime, ctime, inode): any write to the file or its replacement changes its
 * ctime or inode (ctime cannot be set back from user space), so a shard changed after it was hashed is hashed
 * again before it is used in a later load. A shard that fails is never read as data: the caller prepares the
 * data again.
 *
 * {@linkcode TokenStore} is what a `Dataset` reads windows from: {@linkcode ArrayTokenStore} (tokens in
 * memory) or {@linkcode ShardTokenStore} (positioned reads from the shard files).
 *
 * @module
 */
import { sha256File } from "../util/fs.ts";
import { createHash, type Hash } from "node:crypto";

/** Version of the shard folder's layout; a change of layout or meaning must bump it. */
export const SHARD_FORMAT = "dsmoe-shards/1";
/** Most tokens in one shard file (64 Mi: 128 MiB as uint16). */
export const SHARD_TOKENS = 64 << 20;
/** Tokens buffered before a write to the shard file. */
const _WRITE_TOKENS = 1 << 20;

/** How token ids are stored. */
export type ShardDtype = "uint16" | "uint32";

/** The dtype for a vocabulary of `vocab` tokens: uint16 up to 65,536 tokens, else uint32. */
export function dtypeFor(vocab: number): ShardDtype {
  return vocab <= 65536 ? "uint16" : "uint32";
}

/** Bytes per token of `dtype`. */
export function dtypeWidth(dtype: ShardDtype): 2 | 4 {
  return dtype === "uint16" ? 2 : 4;
}

const _LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function _checkEndian(): void {
  if (!_LITTLE_ENDIAN) throw new Error("token shards are little-endian; this platform is big-endian");
}

/** One shard file of a split. */
export interface ShardFile {
  file: string;
  tokens: number;
  /** Size of the file in bytes (tokens × width). */
  bytes: number;
  sha256: string;
}

/** One split in the index. */
export interface SplitIndex {
  tokens: number;
  /** UTF-8 bytes of text the tokens came from (bits per byte = loss × tokens / text_bytes / ln 2). */
  text_bytes: number;
  shards: ShardFile[];
  /** How often each token id occurs in the split (length = the vocabulary). */
  unigram: number[];
}

/** Where the text came from. */
export interface SourceFingerprint {
  /** `data.source` as written. */
  spec: string;
  kind: "corpus" | "files";
  /** Corpus: package and installed version. */
  package?: string;
  version?: string;
  /** Files: real path, size, modification time and format of each. */
  files?: { path: string; size: number; mtime_ms: number; format: string }[];
  /** Field or column of JSON Lines and Parquet files. */
  text_field?: string;
}

/** `index.json` of a shard folder. */
export interface ShardIndex {
  format: typeof SHARD_FORMAT;
  /** The cache key: the folder's name. */
  key: string;
  created: string;
  dtype: ShardDtype;
  byte_order: "little";
  shard_tokens: number;
  source: SourceFingerprint & {
    /** SHA-256 of the whole text stream as tokenized (documents and separators, both splits). */
    content_sha256: string;
    text_bytes: number;
    documents: number;
  };
  tokenizer: {
    spec: string;
    kind: string;
    vocab_size: number;
    /** SHA-256 of the definition (tokenizers.ts `Tokenizer.fingerprint`). */
    fingerprint: string;
    /** The definition, in this folder. */
    file: "tokenizer.json";
  };
  split: {
    block_bytes: number;
    seed: number;
    val_fraction: number;
    snap_to_characters: boolean;
    blocks: number;
    val_blocks: number;
  };
  splits: { train: SplitIndex; val: SplitIndex };
  /** How the preparation went (for reports). */
  prepare: { seconds: number; tokens_per_s: number; bytes_per_s: number; bpe_sample_bytes?: number };
}

/** The split names, in index order. */
export const SPLITS = ["train", "val"] as const;

// ---------------------------------------------------------------------------------------------------------
// Writing

/**
 * Writes one split's token ids into shard files of `dir` as they come, hashing as it goes. Files are
 * fsynced at `finish`; the caller renames the whole folder into place.
 */
export class ShardWriter {
  readonly #dir: string;
  readonly #split: string;
  readonly #width: 2 | 4;
  readonly #shardTokens: number;
  readonly #buf: Uint16Array | Uint32Array;
  #fill = 0;
  #file: Deno.FsFile | null = null;
  #hash: Hash | null = null;
  #inShard = 0;
  #shards: ShardFile[] = [];
  #tokens = 0;

  constructor(dir: string, split: string, dtype: ShardDtype, shardTokens = SHARD_TOKENS) {
    _checkEndian();
    this.#dir = dir, this.#split = split, this.#width = dtypeWidth(dtype), this.#shardTokens = shardTokens;
    this.#buf = dtype === "uint16" ? new Uint16Array(_WRITE_TOKENS) : new Uint32Array(_WRITE_TOKENS);
  }

  /** Tokens written so far. */
  get tokens(): number {
    return this.#tokens;
  }

  /** Appends token ids (each below the vocabulary, which the dtype holds). */
  write(ids: Uint8Array | Uint16Array | Uint32Array): void {
    for (let at = 0; at < ids.length;) {
      const room = Math.min(this.#buf.length - this.#fill, this.#shardTokens - this.#inShard - this.#fill);
      const n = Math.min(room, ids.length - at);
      this.#buf.set(ids.subarray(at, at + n), this.#fill);
      this.#fill += n, at += n, this.#tokens += n;
      if (this.#fill === this.#buf.length || this.#inShard + this.#fill === this.#shardTokens) this.#flush();
    }
  }

  /** Writes what is buffered, fsyncs and closes the last shard; returns the shard list. */
  finish(): ShardFile[] {
    this.#flush();
    this.#close();
    return this.#shards;
  }

  /** Closes the open file without finishing (after an error). */
  abort(): void {
    try {
      this.#file?.close();
    } catch {
      // already closed
    }
    this.#file = null;
  }

  #flush(): void {
    if (this.#fill === 0) return;
    if (!this.#file) this.#open();
    const bytes = new Uint8Array(this.#buf.buffer, 0, this.#fill * this.#width);
    for (let at = 0; at < bytes.length;) at += this.#file!.writeSync(bytes.subarray(at));
    this.#hash!.update(bytes);
    this.#inShard += this.#fill;
    this.#fill = 0;
    if (this.#inShard === this.#shardTokens) this.#close();
  }

  #open(): void {
    const name = `${this.#split}-${String(this.#shards.length).padStart(5, "0")}.bin`;
    this.#file = Deno.openSync(`${this.#dir}/${name}`, { write: true, createNew: true });
    this.#hash = createHash("sha256");
    this.#inShard = 0;
    this.#shards.push({ file: name, tokens: 0, bytes: 0, sha256: "" });
  }

  #close(): void {
    if (!this.#file) return;
    this.#file.syncSync();
    this.#file.close();
    this.#file = null;
    const s = this.#shards.at(-1)!;
    s.tokens = this.#inShard, s.bytes = this.#inShard * this.#width, s.sha256 = this.#hash!.digest("hex");
    this.#hash = null, this.#inShard = 0;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Reading and verification

/** The index of a shard folder, or why it cannot be used (`missing` when there is none). */
export type IndexRead = { index: ShardIndex } | { missing: true } | { problem: string };

/**
 * Reads and checks `dir/index.json`: the format, the key (the folder's name), shard names, token counts
 * adding up, sizes matching the dtype, and unigram counts of the vocabulary's length.
 */
export async function readShardIndex(dir: string): Promise<IndexRead> {
  let text: string;
  try {
    text = await Deno.readTextFile(`${dir}/index.json`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { missing: true };
    return { problem: `index.json cannot be read: ${(e as Error).message}` };
  }
  let index: ShardIndex;
  try {
    index = JSON.parse(text);
  } catch (e) {
    return { problem: `index.json is not valid JSON (${(e as Error).message})` };
  }
  const problem = indexProblem(index, dir.slice(dir.lastIndexOf("/") + 1));
  return problem ? { problem } : { index };
}

/** Why `index` is not a consistent index of the folder named `key`, or null. */
export function indexProblem(index: ShardIndex, key: string): string | null {
  if (index?.format !== SHARD_FORMAT) return `index.json has format ${JSON.stringify(index?.format)}`;
  if (index.key !== key) return `index.json is for key ${index.key}, not ${key}`;
  if (index.dtype !== "uint16" && index.dtype !== "uint32") return `unknown dtype ${index.dtype}`;
  const width = dtypeWidth(index.dtype), vocab = index.tokenizer?.vocab_size;
  if (!Number.isInteger(vocab) || dtypeFor(vocab) !== index.dtype) {
    return `vocabulary ${vocab} does not fit dtype ${index.dtype}`;
  }
  for (const name of SPLITS) {
    const s = index.splits?.[name];
    if (!s || !Array.isArray(s.shards)) return `index.json has no ${name} split`;
    let sum = 0;
    for (const f of s.shards) {
      if (!/^(train|val)-[0-9]{5}\.bin$/.test(f.file ?? "")) {
        return `bad shard name ${JSON.stringify(f.file)}`;
      }
      if (!Number.isSafeInteger(f.tokens) || f.bytes !== f.tokens * width) {
        return `shard ${f.file}: ${f.bytes} bytes for ${f.tokens} tokens of ${width} bytes`;
      }
      sum += f.tokens;
    }
    if (sum !== s.tokens) return `${name} split: shards hold ${sum} tokens, the index says ${s.tokens}`;
    if (!Array.isArray(s.unigram) || s.unigram.length !== vocab) {
      return `${name} split: unigram counts for ${s.unigram?.length} tokens, the vocabulary has ${vocab}`;
    }
  }
  return null;
}

const _verified = new Map<string, string>();

/** What identifies a file's content without reading it, for the once-per-process memo. */
function _stamp(info: Deno.FileInfo, sha256: string): string {
  return [info.size, info.mtime?.getTime(), info.ctime?.getTime(), info.ino, info.dev, sha256].join(":");
}

/** Options of {@linkcode verifyShards}. */
export interface VerifyOptions {
  /** Called with the bytes hashed so far and in all, while hashing. */
  onHash?: (done: number, total: number) => void;
}

/**
 * Why the shards of `index` in `dir` cannot be used, or null when every one is a regular file of the
 * indexed size whose SHA-256 matches (hashed once per process per file version; see the module docs).
 */
export async function verifyShards(
  dir: string,
  index: ShardIndex,
  o: VerifyOptions = {},
): Promise<string | null> {
  const todo: { path: string; f: ShardFile; info: Deno.FileInfo }[] = [];
  for (const name of SPLITS) {
    for (const f of index.splits[name].shards) {
      const path = `${dir}/${f.file}`;
      let info: Deno.FileInfo;
      try {
        info = await Deno.lstat(path);
      } catch (e) {
        return `shard ${f.file} ${e instanceof Deno.errors.NotFound ? "is missing" : (e as Error).message}`;
      }
      if (!info.isFile) return `shard ${f.file} is not a regular file`;
      if (info.size !== f.bytes) return `shard ${f.file} has ${info.size} bytes, the index says ${f.bytes}`;
      if (_verified.get(path) !== _stamp(info, f.sha256)) todo.push({ path, f, info });
    }
  }
  const total = todo.reduce((n, t) => n + t.f.bytes, 0);
  let done = 0;
  for (const t of todo) {
    const sha = await sha256File(t.path, (n) => o.onHash?.(done + n, total));
    done += t.f.bytes;
    if (sha !== t.f.sha256) {
      _verified.delete(t.path);
      return `shard ${t.f.file} does not match its SHA-256 (the index says ${t.f.sha256.slice(0, 12)}…, ` +
        `the file hashes to ${sha.slice(0, 12)}…)`;
    }
    _verified.set(t.path, _stamp(t.info, t.f.sha256));
  }
  return null;
}

/** Forgets which shards this process verified (tests). */
export function forgetVerifiedShards(): void {
  _verified.clear();
}

/** Token ids addressable by position: what a Dataset reads its windows from. */
export interface TokenStore {
  /** Number of tokens. */
  readonly length: number;
  /** Copies tokens `start … start + out.length − 1` into `out`. */
  read(start: number, out: Uint32Array): void;
  /** Releases open files (a no-op for memory). */
  close(): void;
}

/** Tokens held in memory. */
export class ArrayTokenStore implements TokenStore {
  readonly tokens: Uint32Array;

  constructor(tokens: Uint32Array) {
    this.tokens = tokens;
  }

  get length(): number {
    return this.tokens.length;
  }

  read(start: number, out: Uint32Array): void {
    _checkRange(start, out.length, this.tokens.length);
    out.set(this.tokens.subarray(start, start + out.length));
  }

  close(): void {}
}

/**
 * A split's tokens in its shard files, read by position (seek + read of just the tokens asked for). Files
 * are opened on first use and kept open until {@linkcode ShardTokenStore.close}.
 */
export class ShardTokenStore implements TokenStore {
  readonly length: number;
  readonly #paths: string[];
  readonly #starts: number[]; // first token of each shard, then the total
  readonly #width: 2 | 4;
  readonly #files: (Deno.FsFile | null)[];
  #scratch = new ArrayBuffer(0);

  constructor(dir: string, split: SplitIndex, dtype: ShardDtype) {
    _checkEndian();
    this.#paths = split.shards.map((s) => `${dir}/${s.file}`);
    this.#starts = [0];
    for (const s of split.shards) this.#starts.push(this.#starts.at(-1)! + s.tokens);
    this.length = this.#starts.at(-1)!;
    this.#width = dtypeWidth(dtype);
    this.#files = this.#paths.map(() => null);
  }

  read(start: number, out: Uint32Array): void {
    _checkRange(start, out.length, this.length);
    let at = 0;
    while (at < out.length) {
      const pos = start + at, k = this.#shardOf(pos);
      const n = Math.min(out.length - at, this.#starts[k + 1]! - pos);
      this.#readShard(k, pos - this.#starts[k]!, out.subarray(at, at + n));
      at += n;
    }
  }

  close(): void {
    this.#files.forEach((f, i) => {
      f?.close();
      this.#files[i] = null;
    });
  }

  #shardOf(pos: number): number {
    let lo = 0, hi = this.#paths.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.#starts[mid]! <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  #readShard(k: number, offset: number, out: Uint32Array): void {
    const bytes = out.length * this.#width;
    if (this.#scratch.byteLength < bytes) this.#scratch = new ArrayBuffer(bytes);
    const view = new Uint8Array(this.#scratch, 0, bytes);
    const f = this.#files[k] ??= Deno.openSync(this.#paths[k]!, { read: true });
    f.seekSync(offset * this.#width, Deno.SeekMode.Start);
    for (let got = 0; got < bytes;) {
      const n = f.readSync(view.subarray(got));
      if (n === null) throw new Error(`${this.#paths[k]}: ended at byte ${offset * this.#width + got}`);
      got += n;
    }
    out.set(
      this.#width === 2
        ? new Uint16Array(this.#scratch, 0, out.length)
        : new Uint32Array(this.#scratch, 0, out.length),
    );
  }
}

function _checkRange(start: number, n: number, length: number): void {
  if (!(start >= 0 && start + n <= length)) {
    throw new RangeError(`tokens ${start} … ${start + n - 1} are outside 0 … ${length - 1}`);
  }
}

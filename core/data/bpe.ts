/**
 * Byte-level BPE: byte-pair encoding (Sennrich et al. 2016) over UTF-8 bytes, as GPT-2 uses it (Radford et
 * al. 2019), trained and applied here.
 *
 * - Pre-tokenization splits text into words with GPT-2's pattern ({@linkcode PRETOKENIZE_PATTERN}), the
 *   one the Hugging Face `ByteLevel` pre-tokenizer applies; merges never cross a word.
 * - Our vocabulary is the 256 bytes (token id = byte value, so the byte tokenizer is this model with no
 *   merges) followed by one token per merge: merge r makes token 256 + r.
 * - Training ({@linkcode trainBpe}) counts word types, then repeatedly merges the most frequent adjacent
 *   pair. Pair counts are updated only for the words a merge touches, and a max-heap with lazy
 *   invalidation picks the next pair (a popped entry whose count is stale is pushed back with its current
 *   count). Ties go to the pair with the smaller left id, then the smaller right id: the result depends on
 *   the text alone, never on hash or insertion order.
 * - Encoding ({@linkcode BpeModel.encode}) applies merges to each word by rank, lowest first, the leftmost
 *   on ties — the rule of the Hugging Face BPE model — with a cache of word → ids.
 *
 * @module
 */
import { Rng } from "../util/rng.ts";
import { DataError } from "./errors.ts";

/** A tokenizer could not be built, loaded or trained; the message names the spec, file or setting. */
export class TokenizerError extends DataError {
  override name = "TokenizerError";
}

/**
 * GPT-2's pre-tokenization pattern: contractions, letters, digits and other symbols each with an optional
 * leading space, then whitespace runs (a run followed by a non-space gives its last space to the next word).
 */
export const PRETOKENIZE_PATTERN = String
  .raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;

/** A fresh global regular expression of {@linkcode PRETOKENIZE_PATTERN} (it holds `lastIndex` state). */
export function pretokenizeRegExp(): RegExp {
  return new RegExp(PRETOKENIZE_PATTERN, "gu");
}

/**
 * The words (pre-tokens) of `text`, in order; their concatenation is `text`.
 *
 * @example
 * ```ts
 * import { preTokenize } from "./bpe.ts";
 * const words = preTokenize("Hello world's  end");
 * if (words.join("|") !== "Hello| world|'s| | end") throw new Error(words.join("|"));
 * ```
 */
export function preTokenize(text: string): string[] {
  return text.match(pretokenizeRegExp()) ?? [];
}

/**
 * Whether UTF-16 code unit `c` is whitespace for `\s` in a JavaScript regular expression (WhiteSpace and
 * LineTerminator of ECMA-262). Surrogates are not.
 */
export function isRegExpSpace(c: number): boolean {
  if (c <= 0x20) return c === 0x20 || (c >= 0x09 && c <= 0x0d);
  if (c < 0xa0) return false;
  return c === 0xa0 || c === 0x1680 || (c >= 0x2000 && c <= 0x200a) || c === 0x2028 || c === 0x2029 ||
    c === 0x202f || c === 0x205f || c === 0x3000 || c === 0xfeff;
}

/**
 * The last index k ≥ `start` of `text` where pre-tokenization may be cut: `text[k]` is whitespace and
 * `text[k - 1]` is not. No word spans such a point (every pattern branch that holds a space either starts
 * with it or holds only whitespace), so the words of `text[..k]` followed by those of `text[k..]` are the
 * words of `text`. Returns 0 when there is none.
 *
 * @example
 * ```ts
 * import { lastSplitPoint } from "./bpe.ts";
 * if (lastSplitPoint("one two  three") !== 7) throw new Error("before the run of two spaces");
 * ```
 */
export function lastSplitPoint(text: string, start = 1): number {
  for (let k = text.length - 1; k >= Math.max(1, start); k--) {
    if (isRegExpSpace(text.charCodeAt(k)) && !isRegExpSpace(text.charCodeAt(k - 1))) return k;
  }
  return 0;
}

/** ASCII whitespace bytes that `\s` matches (tab, LF, VT, FF, CR, space). */
function _isAsciiSpace(b: number): boolean {
  return b === 0x20 || (b >= 0x09 && b <= 0x0d);
}

/**
 * The first byte index k ≥ `from` of UTF-8 `bytes` where pre-tokenization may be cut (see
 * {@linkcode lastSplitPoint}), restricted to an ASCII whitespace byte after an ASCII non-space byte, so the
 * cut never splits a character; `bytes.length` when there is none.
 */
export function nextByteSplitPoint(bytes: Uint8Array, from: number): number {
  for (let k = Math.max(1, from); k < bytes.length; k++) {
    const b = bytes[k]!, p = bytes[k - 1]!;
    if (_isAsciiSpace(b) && p < 0x80 && !_isAsciiSpace(p)) return k;
  }
  return bytes.length;
}

/** Merge pairs are looked up by `left · 2^20 + right`: ids must stay below 2^20. */
export const MAX_VOCAB = 1 << 20;
const _SHIFT = MAX_VOCAB;

// Character classes of the pattern: letters (\p{L}), numbers (\p{N}), whitespace (\s), anything else.
const _OTHER = 0, _LETTER = 1, _NUMBER = 2, _SPACE = 3;
let _bmp: Uint8Array | null = null;
const _astral = new Map<number, number>();
const _LETTER_RE = /^\p{L}$/u, _NUMBER_RE = /^\p{N}$/u;

/** Class of each BMP code unit (surrogates: other), computed once with the pattern's own property tests. */
function _bmpClasses(): Uint8Array {
  if (_bmp) return _bmp;
  const t = new Uint8Array(65536);
  for (let c = 0; c < 65536; c++) {
    if (c >= 0xd800 && c <= 0xdfff) continue;
    const s = String.fromCharCode(c);
    t[c] = isRegExpSpace(c) ? _SPACE : _LETTER_RE.test(s) ? _LETTER : _NUMBER_RE.test(s) ? _NUMBER : _OTHER;
  }
  return _bmp = t;
}

function _astralClass(cp: number): number {
  let k = _astral.get(cp);
  if (k === undefined) {
    const s = String.fromCodePoint(cp);
    k = _LETTER_RE.test(s) ? _LETTER : _NUMBER_RE.test(s) ? _NUMBER : _OTHER;
    _astral.set(cp, k);
  }
  return k;
}

/** Class of the code point at `i` (a lone surrogate is other) and its length in code units, packed k·4+len. */
function _classAt(text: string, i: number, bmp: Uint8Array): number {
  const c = text.charCodeAt(i);
  if (c < 0xd800 || c > 0xdfff) return bmp[c]! * 4 + 1;
  if (c <= 0xdbff && i + 1 < text.length) {
    const d = text.charCodeAt(i + 1);
    if (d >= 0xdc00 && d <= 0xdfff) {
      return _astralClass(0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00)) * 4 + 2;
    }
  }
  return _OTHER * 4 + 1;
}

/** End of the run of class `kind` code points from `j`. */
function _runEnd(text: string, j: number, kind: number, bmp: Uint8Array): number {
  const n = text.length;
  while (j < n) {
    const c = text.charCodeAt(j);
    if (c < 0xd800 || c > 0xdfff) {
      if (bmp[c] !== kind) break;
      j++;
    } else {
      const k = _classAt(text, j, bmp);
      if (k >> 2 !== kind) break;
      j += k & 3;
    }
  }
  return j;
}

/**
 * End of the word of {@linkcode PRETOKENIZE_PATTERN} that starts at `i` (< `text.length`): the pattern's
 * alternatives tried in order, written out over character classes so no regular expression runs and no
 * string is made. Equal to the pattern's matches (tests compare them on corpora and tricky text).
 *
 * @example
 * ```ts
 * import { nextWordEnd } from "./bpe.ts";
 * if (nextWordEnd("it's", 2) !== 4) throw new Error("'s is one word");
 * ```
 */
export function nextWordEnd(text: string, i: number): number {
  const bmp = _bmp ?? _bmpClasses(), n = text.length, c = text.charCodeAt(i);
  if (c === 0x27 && i + 1 < n) { // 's 't 'm 'd 're 've 'll
    const d = text.charCodeAt(i + 1);
    if (d === 0x73 || d === 0x74 || d === 0x6d || d === 0x64) return i + 2;
    if (i + 2 < n) {
      const e = text.charCodeAt(i + 2);
      if ((d === 0x72 && e === 0x65) || (d === 0x76 && e === 0x65) || (d === 0x6c && e === 0x6c)) {
        return i + 3;
      }
    }
  }
  if (c === 0x20 && i + 1 < n) { // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+` with their space
    const k = _classAt(text, i + 1, bmp) >> 2;
    if (k !== _SPACE) return _runEnd(text, i + 1, k, bmp);
  }
  const k = _classAt(text, i, bmp) >> 2;
  if (k !== _SPACE) return _runEnd(text, i, k, bmp);
  // `\s+(?!\S)` keeps the run's last space for the next word unless the run ends the text; `\s+` else.
  const j = _runEnd(text, i + 1, _SPACE, bmp);
  return j < n && j - i >= 2 ? j - 1 : j;
}

/**
 * The words of `text` found by {@linkcode nextWordEnd} (equal to {@linkcode preTokenize}'s).
 *
 * @example
 * ```ts
 * import { preTokenizeFast } from "./bpe.ts";
 * if (preTokenizeFast("a  b\n").join("|") !== "a| | b|\n") throw new Error("split");
 * ```
 */
export function preTokenizeFast(text: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < text.length;) {
    const e = nextWordEnd(text, i);
    out.push(text.slice(i, e));
    i = e;
  }
  return out;
}

/**
 * A cache of word → token ids keyed by the word's code units in place (open addressing, FNV-1a hash), so
 * a repeated word costs one hash and one compare. It empties itself when it holds 2^20 words. Its arrays
 * are read directly by {@linkcode BpeModel.encode}'s loop.
 */
class _WordTable {
  slots = new Int32Array(1 << 12); // entry + 1, 0 = empty
  count = 0;
  hashes = new Int32Array(1 << 11);
  starts = new Int32Array(1 << 11); // in units
  lens = new Int32Array(1 << 11);
  idStarts = new Int32Array(1 << 11); // in ids
  idLens = new Int32Array(1 << 11);
  units = new Uint16Array(1 << 14);
  unitsUsed = 0;
  ids = new Uint32Array(1 << 14);
  idsUsed = 0;

  /** The entry of `text[s..e)`, or -1. */
  find(text: string, s: number, e: number): number {
    let h = 0x811c9dc5;
    for (let i = s; i < e; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
    const slots = this.slots, mask = slots.length - 1, len = e - s;
    for (let slot = h & mask;; slot = (slot + 1) & mask) {
      const entry = slots[slot]! - 1;
      if (entry < 0) return -1;
      if (this.hashes[entry] !== h || this.lens[entry] !== len) continue;
      const units = this.units, at = this.starts[entry]!;
      let i = 0;
      while (i < len && units[at + i] === text.charCodeAt(s + i)) i++;
      if (i === len) return entry;
    }
  }

  /** Stores `ids` for `text[s..e)` and returns its entry. */
  add(text: string, s: number, e: number, ids: Uint32Array): number {
    if (this.count >= _CACHE_LIMIT) this.#clear();
    if ((this.count + 1) * 2 > this.slots.length) this.#rehash(this.slots.length * 2);
    if (this.count === this.hashes.length) this.#growEntries();
    let h = 0x811c9dc5;
    for (let i = s; i < e; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
    const len = e - s, entry = this.count++;
    this.units = _grow16(this.units, this.unitsUsed + len);
    for (let i = 0; i < len; i++) this.units[this.unitsUsed + i] = text.charCodeAt(s + i);
    this.ids = _grow32(this.ids, this.idsUsed + ids.length);
    this.ids.set(ids, this.idsUsed);
    this.hashes[entry] = h, this.starts[entry] = this.unitsUsed, this.lens[entry] = len;
    this.idStarts[entry] = this.idsUsed, this.idLens[entry] = ids.length;
    this.unitsUsed += len, this.idsUsed += ids.length;
    this.#place(entry, h);
    return entry;
  }

  #place(entry: number, h: number): void {
    const mask = this.slots.length - 1;
    let slot = h & mask;
    while (this.slots[slot] !== 0) slot = (slot + 1) & mask;
    this.slots[slot] = entry + 1;
  }

  #rehash(size: number): void {
    this.slots = new Int32Array(size);
    for (let entry = 0; entry < this.count; entry++) this.#place(entry, this.hashes[entry]!);
  }

  #growEntries(): void {
    const grow = (a: Int32Array) => {
      const b = new Int32Array(a.length * 2);
      b.set(a);
      return b;
    };
    this.hashes = grow(this.hashes), this.starts = grow(this.starts), this.lens = grow(this.lens);
    this.idStarts = grow(this.idStarts), this.idLens = grow(this.idLens);
  }

  #clear(): void {
    this.slots.fill(0);
    this.count = 0, this.unitsUsed = 0, this.idsUsed = 0;
  }
}

function _grow16(a: Uint16Array<ArrayBuffer>, need: number): Uint16Array<ArrayBuffer> {
  if (need <= a.length) return a;
  const b = new Uint16Array(Math.max(need, a.length * 2));
  b.set(a);
  return b;
}

function _grow32(a: Uint32Array<ArrayBuffer>, need: number): Uint32Array<ArrayBuffer> {
  if (need <= a.length) return a;
  const b = new Uint32Array(Math.max(need, a.length * 2));
  b.set(a);
  return b;
}

/** The definition of a byte-level BPE model. */
export interface BpeDefinition {
  /** Bytes of each token, by id (every id in 0 … vocabSize − 1 has an entry). */
  tokens: readonly Uint8Array[];
  /** Merges in rank order: the left and right ids and the id of the merged token. */
  merges: readonly (readonly [number, number, number])[];
}

/** Word cache entries kept at most (a full cache is emptied and refilled). */
const _CACHE_LIMIT = 1 << 20;
/** Words longer than this (UTF-16 units) are not cached. */
const _CACHE_MAX_WORD = 256;
/** Words this long or longer skip the quadratic merge loop for the heap one. */
const _LONG_WORD = 48;

/**
 * A byte-level BPE model: encodes text with its merges and decodes ids to bytes.
 *
 * @example
 * ```ts
 * import { BpeModel } from "./bpe.ts";
 * const bpe = BpeModel.fromMerges([[104, 105]]); // "h" + "i" → token 256
 * if (bpe.encode("hi hi").join() !== "256,32,256") throw new Error("merged");
 * ```
 */
export class BpeModel {
  /** Tokens in the vocabulary. */
  readonly vocabSize: number;
  /** The definition the model was built from. */
  readonly definition: BpeDefinition;
  #tokens: readonly Uint8Array[];
  #byteIds: Uint32Array; // (256,) id of each single-byte token
  #rank = new Map<number, number>(); // pair key → rank
  #result: Uint32Array; // rank → merged id
  #words = new _WordTable();
  #utf8 = new TextEncoder();
  #scratch = new Uint8Array(256);

  constructor(def: BpeDefinition) {
    this.definition = def;
    this.#tokens = def.tokens;
    this.vocabSize = def.tokens.length;
    if (this.vocabSize > MAX_VOCAB) {
      throw new TokenizerError(`BPE vocabulary of ${this.vocabSize} tokens exceeds the maximum ${MAX_VOCAB}`);
    }
    this.#byteIds = new Uint32Array(256).fill(0xffffffff);
    def.tokens.forEach((t, id) => {
      if (t.length === 1 && this.#byteIds[t[0]!] === 0xffffffff) this.#byteIds[t[0]!] = id;
    });
    const missing = this.#byteIds.indexOf(0xffffffff);
    if (missing >= 0) {
      throw new TokenizerError(`BPE vocabulary has no token for byte 0x${missing.toString(16)}`);
    }
    this.#result = new Uint32Array(def.merges.length);
    def.merges.forEach(([a, b, r], rank) => {
      const key = a * _SHIFT + b;
      this.#rank.set(key, rank); // a pair listed twice keeps its last rank, as the Hugging Face readers do
      this.#result[rank] = r;
    });
  }

  /** Our numbering: bytes 0 … 255, then merge r (of `pairs[r]`'s ids) as token 256 + r. */
  static fromMerges(pairs: readonly (readonly [number, number])[]): BpeModel {
    const tokens: Uint8Array[] = Array.from({ length: 256 }, (_, b) => Uint8Array.of(b));
    const merges: [number, number, number][] = [];
    for (const [a, b] of pairs) {
      const left = tokens[a], right = tokens[b];
      if (!left || !right) {
        throw new TokenizerError(`BPE merge ${merges.length} refers to unknown ids ${a}, ${b}`);
      }
      const t = new Uint8Array(left.length + right.length);
      t.set(left), t.set(right, left.length);
      merges.push([a, b, tokens.length]);
      tokens.push(t);
    }
    return new BpeModel({ tokens, merges });
  }

  /** Whether the model uses our numbering (byte b is token b, merge r makes token 256 + r). */
  get isCanonical(): boolean {
    for (let b = 0; b < 256; b++) if (this.#byteIds[b] !== b) return false;
    return this.definition.merges.every(([, , r], rank) => r === 256 + rank) &&
      this.vocabSize === 256 + this.definition.merges.length;
  }

  /** Bytes of token `id` (a view: do not modify). */
  tokenBytes(id: number): Uint8Array {
    const t = this.#tokens[id];
    if (!t) throw new RangeError(`Token id ${id} is outside the vocabulary 0..${this.vocabSize - 1}`);
    return t;
  }

  /** Concatenated bytes of `ids`. */
  decodeBytes(ids: ArrayLike<number>): Uint8Array {
    let n = 0;
    for (let i = 0; i < ids.length; i++) n += this.tokenBytes(ids[i]!).length;
    const out = new Uint8Array(n);
    for (let i = 0, at = 0; i < ids.length; i++) {
      const t = this.#tokens[ids[i]!]!;
      out.set(t, at);
      at += t.length;
    }
    return out;
  }

  /**
   * Token ids of `text`. Words are found by {@linkcode nextWordEnd} (the pattern's rule, without building a
   * string per word) and looked up in a cache of word → ids kept by the model.
   */
  encode(text: string): Uint32Array {
    const table = this.#words;
    // Tokens ≤ UTF-8 bytes ≤ 3 per code unit; start at one per code unit and grow when needed.
    let out = new Uint32Array(text.length + 16), n = 0;
    for (let i = 0, len = text.length; i < len;) {
      const e = nextWordEnd(text, i);
      let ids: Uint32Array, from = 0, count: number;
      if (e - i > _CACHE_MAX_WORD) {
        ids = this.#mergeWord(this.#wordBytes(text, i, e)), count = ids.length;
      } else {
        let entry = table.find(text, i, e);
        if (entry < 0) entry = table.add(text, i, e, this.#mergeWord(this.#wordBytes(text, i, e)));
        ids = table.ids, from = table.idStarts[entry]!, count = table.idLens[entry]!;
      }
      if (n + count > out.length) out = _grow32(out, Math.min(3 * len + 16, 2 * out.length + count));
      for (let k = 0; k < count; k++) out[n + k] = ids[from + k]!;
      n += count;
      i = e;
    }
    return n * 2 < out.length ? out.slice(0, n) : out.subarray(0, n);
  }

  /** Token ids of one pre-token. */
  encodeWord(word: string): Uint32Array {
    return this.#mergeWord(this.#wordBytes(word, 0, word.length));
  }

  /** Token ids of raw bytes taken as one word (no pre-tokenization). */
  encodeWordBytes(bytes: Uint8Array): Uint32Array {
    return this.#mergeWord(bytes);
  }

  #wordBytes(text: string, start: number, end: number): Uint8Array {
    const need = (end - start) * 3;
    if (need > this.#scratch.length) this.#scratch = new Uint8Array(need);
    const { written } = this.#utf8.encodeInto(text.slice(start, end), this.#scratch);
    return this.#scratch.subarray(0, written);
  }

  #mergeWord(bytes: Uint8Array): Uint32Array {
    const n = bytes.length;
    const ids = new Uint32Array(n);
    for (let i = 0; i < n; i++) ids[i] = this.#byteIds[bytes[i]!]!;
    return n >= _LONG_WORD ? this.#mergeLong(ids) : this.#mergeShort(ids);
  }

  /** Quadratic merging for short words: find the lowest-ranked pair (leftmost on ties), merge, repeat. */
  #mergeShort(ids: Uint32Array): Uint32Array {
    let n = ids.length;
    const rank = this.#rank;
    while (n > 1) {
      let best = -1, bestRank = Infinity;
      for (let i = 0; i + 1 < n; i++) {
        const r = rank.get(ids[i]! * _SHIFT + ids[i + 1]!);
        if (r !== undefined && r < bestRank) bestRank = r, best = i;
      }
      if (best < 0) break;
      ids[best] = this.#result[bestRank]!;
      ids.copyWithin(best + 1, best + 2, n);
      n--;
    }
    return ids.slice(0, n);
  }

  /**
   * The same rule for long words in O(n log n): a linked list of symbols and a heap of candidate pairs
   * ordered by (rank, position of the left symbol); entries made stale by a neighbouring merge are skipped.
   */
  #mergeLong(ids: Uint32Array): Uint32Array {
    const n = ids.length, rank = this.#rank;
    const next = new Int32Array(n), prev = new Int32Array(n), alive = new Uint8Array(n).fill(1);
    for (let i = 0; i < n; i++) next[i] = i + 1 < n ? i + 1 : -1, prev[i] = i - 1;
    const pairRank = (i: number) => {
      const j = next[i]!;
      return j < 0 ? undefined : rank.get(ids[i]! * _SHIFT + ids[j]!);
    };
    const heap = new _PairHeap(n);
    const consider = (i: number) => {
      const r = pairRank(i);
      if (r !== undefined) heap.push(r, i);
    };
    for (let i = 0; i + 1 < n; i++) consider(i);
    while (heap.size > 0) {
      const r = heap.topRank, i = heap.pop();
      // Stale unless the pair now at i is still the one of rank r (ranks name pairs uniquely).
      if (!alive[i] || pairRank(i) !== r) continue;
      const j = next[i]!;
      ids[i] = this.#result[r]!;
      alive[j] = 0;
      next[i] = next[j]!;
      if (next[i]! >= 0) prev[next[i]!] = i;
      if (prev[i]! >= 0) consider(prev[i]!);
      consider(i);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0; i = next[i]!) out.push(ids[i]!);
    return Uint32Array.from(out);
  }
}

/** A min-heap of (rank, position of the left symbol), ordered by rank then position, in typed arrays. */
class _PairHeap {
  #ranks: Int32Array;
  #pos: Int32Array;
  size = 0;

  constructor(capacity: number) {
    this.#ranks = new Int32Array(Math.max(16, capacity));
    this.#pos = new Int32Array(Math.max(16, capacity));
  }

  /** Rank of the top entry. */
  get topRank(): number {
    return this.#ranks[0]!;
  }

  #less(x: number, y: number): boolean {
    const a = this.#ranks[x]!, b = this.#ranks[y]!;
    return a < b || (a === b && this.#pos[x]! < this.#pos[y]!);
  }

  #swap(x: number, y: number): void {
    const r = this.#ranks, p = this.#pos;
    [r[x], r[y]] = [r[y]!, r[x]!];
    [p[x], p[y]] = [p[y]!, p[x]!];
  }

  push(rank: number, pos: number): void {
    if (this.size === this.#ranks.length) {
      const r = new Int32Array(this.size * 2), p = new Int32Array(this.size * 2);
      r.set(this.#ranks), p.set(this.#pos);
      this.#ranks = r, this.#pos = p;
    }
    let c = this.size++;
    this.#ranks[c] = rank, this.#pos[c] = pos;
    while (c > 0) {
      const parent = (c - 1) >> 1;
      if (!this.#less(c, parent)) break;
      this.#swap(c, parent);
      c = parent;
    }
  }

  /** Removes the top entry and returns its position. */
  pop(): number {
    const top = this.#pos[0]!, n = --this.size;
    this.#ranks[0] = this.#ranks[n]!, this.#pos[0] = this.#pos[n]!;
    for (let p = 0;;) {
      const l = 2 * p + 1, r = l + 1;
      let m = p;
      if (l < n && this.#less(l, m)) m = l;
      if (r < n && this.#less(r, m)) m = r;
      if (m === p) break;
      this.#swap(m, p);
      p = m;
    }
    return top;
  }
}

// ---------------------------------------------------------------------------------------------------
// Training

/** Text to train on: one text, or parts pre-tokenized separately (documents). */
export type TrainingText = string | Uint8Array | readonly (string | Uint8Array)[];

/** Progress of {@linkcode trainBpe}: `count` runs over the text's bytes, then `merge` over the merges. */
export interface BpeProgress {
  stage: "count" | "merge";
  done: number;
  total: number;
}

/** Options of {@linkcode trainBpe}. */
export interface TrainBpeOptions {
  /** Tokens wanted: the 256 bytes plus `vocabSize − 256` merges (≥ 257). */
  vocabSize: number;
  /**
   * Seed of the sample of the text trained on when it is larger than `maxTrainBytes`; the merges
   * themselves involve no randomness (ties are broken by id), so below the cap the seed has no effect.
   */
  seed?: number;
  /** Text beyond this many bytes is sampled: whole blocks of {@linkcode TRAIN_BLOCK_BYTES}. Default 256 MiB. */
  maxTrainBytes?: number;
  /** Called as counting and merging advance (about every 1%). */
  onProgress?: (p: BpeProgress) => void;
}

/** Size of the blocks text is counted (and, past the cap, sampled) in. */
export const TRAIN_BLOCK_BYTES = 1 << 20;
/** Default `maxTrainBytes`. */
export const DEFAULT_MAX_TRAIN_BYTES = 256 << 20;

/**
 * Bytes of `s.slice(start, end)` in UTF-8 (a lone surrogate counts 3, as TextEncoder writes U+FFFD for it).
 *
 * @example
 * ```ts
 * import { utf8Length } from "./bpe.ts";
 * if (utf8Length("aé😀") !== 1 + 2 + 4) throw new Error("7 bytes");
 * ```
 */
export function utf8Length(s: string, start = 0, end = s.length): number {
  let n = 0;
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < end) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) n += 4, i++;
      else n += 3;
    } else n += 3;
  }
  return n;
}

/** One block of training text: a slice of a string or of bytes, cut where no word is split. */
interface _Block {
  part: string | Uint8Array;
  start: number;
  end: number;
  bytes: number;
}

function _blocks(text: TrainingText): _Block[] {
  const parts = typeof text === "string" || text instanceof Uint8Array ? [text] : text;
  const out: _Block[] = [];
  for (const part of parts) {
    if (typeof part === "string") {
      const step = TRAIN_BLOCK_BYTES >> 1; // characters, 1 to 3 bytes each
      let start = 0;
      while (start < part.length) {
        const end = part.length - start > step ? _firstSplitPointFrom(part, start + step) : part.length;
        out.push({ part, start, end, bytes: utf8Length(part, start, end) });
        start = end;
      }
    } else {
      let start = 0;
      while (start < part.length) {
        const end = part.length - start > TRAIN_BLOCK_BYTES
          ? nextByteSplitPoint(part, start + TRAIN_BLOCK_BYTES)
          : part.length;
        out.push({ part, start, end, bytes: end - start });
        start = end;
      }
    }
  }
  return out;
}

function _firstSplitPointFrom(s: string, from: number): number {
  for (let k = Math.max(1, from); k < s.length; k++) {
    if (isRegExpSpace(s.charCodeAt(k)) && !isRegExpSpace(s.charCodeAt(k - 1))) return k;
  }
  return s.length;
}

/** The blocks trained on: all, or a seeded sample of whole blocks up to `maxBytes`, in text order. */
function _sample(blocks: _Block[], maxBytes: number, seed: number): _Block[] {
  const total = blocks.reduce((n, b) => n + b.bytes, 0);
  if (total <= maxBytes) return blocks;
  const order = blocks.map((_, i) => i), rng = new Rng(seed);
  for (let i = order.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const kept: number[] = [];
  let bytes = 0;
  for (const i of order) {
    if (bytes + blocks[i]!.bytes > maxBytes && kept.length > 0) continue;
    kept.push(i);
    bytes += blocks[i]!.bytes;
  }
  return kept.sort((a, b) => a - b).map((i) => blocks[i]!);
}

/** Yields to the event loop (so a server in the same process stays responsive during training). */
function _yield(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/** Word types of `blocks` with their counts. */
async function _countWords(blocks: _Block[], progress: (done: number, total: number) => void) {
  const counts = new Map<string, number>();
  const total = blocks.reduce((n, b) => n + b.bytes, 0), utf8 = new TextDecoder();
  let done = 0;
  for (const b of blocks) {
    const text = typeof b.part === "string"
      ? b.part.slice(b.start, b.end)
      : utf8.decode(b.part.subarray(b.start, b.end));
    for (let i = 0; i < text.length;) {
      const e = nextWordEnd(text, i), w = text.slice(i, e);
      counts.set(w, (counts.get(w) ?? 0) + 1);
      i = e;
    }
    done += b.bytes;
    progress(done, total);
    await _yield();
  }
  return counts;
}

/** A max-heap of (count, pair key): larger count first, then the smaller key (left id, then right id). */
class _CountHeap {
  #counts: number[] = [];
  #keys: number[] = [];

  get size(): number {
    return this.#keys.length;
  }

  #above(i: number, j: number): boolean {
    const ci = this.#counts[i]!, cj = this.#counts[j]!;
    return ci > cj || (ci === cj && this.#keys[i]! < this.#keys[j]!);
  }

  #swap(i: number, j: number): void {
    const c = this.#counts, k = this.#keys;
    [c[i], c[j]] = [c[j]!, c[i]!];
    [k[i], k[j]] = [k[j]!, k[i]!];
  }

  push(count: number, key: number): void {
    this.#counts.push(count);
    this.#keys.push(key);
    for (let c = this.#keys.length - 1; c > 0;) {
      const p = (c - 1) >> 1;
      if (!this.#above(c, p)) break;
      this.#swap(c, p);
      c = p;
    }
  }

  pop(): [count: number, key: number] {
    const top: [number, number] = [this.#counts[0]!, this.#keys[0]!];
    const lastC = this.#counts.pop()!, lastK = this.#keys.pop()!;
    const n = this.#keys.length;
    if (n > 0) {
      this.#counts[0] = lastC, this.#keys[0] = lastK;
      for (let p = 0;;) {
        const l = 2 * p + 1, r = l + 1;
        let m = p;
        if (l < n && this.#above(l, m)) m = l;
        if (r < n && this.#above(r, m)) m = r;
        if (m === p) break;
        this.#swap(m, p);
        p = m;
      }
    }
    return top;
  }
}

/**
 * Trains a byte-level BPE model of `vocabSize` tokens on `text` (see the module docs for the algorithm
 * and its tie-breaking). The same text and options give the same merges on every machine.
 *
 * Throws {@linkcode TokenizerError} when `vocabSize` < 257 or above {@linkcode MAX_VOCAB}, when the text
 * is empty, or when the text runs out of pairs to merge before `vocabSize` (the message says how many
 * tokens it supports).
 *
 * @example
 * ```ts
 * import { trainBpe } from "./bpe.ts";
 * const bpe = await trainBpe("low lower lowest low low", { vocabSize: 260 });
 * if (bpe.vocabSize !== 260 || bpe.encode(" low").length !== 1) throw new Error("merged ' low'");
 * ```
 */
export async function trainBpe(text: TrainingText, o: TrainBpeOptions): Promise<BpeModel> {
  const { vocabSize } = o;
  if (!Number.isInteger(vocabSize) || vocabSize < 257) {
    throw new TokenizerError(
      `data.vocab_size must be an integer ≥ 257 for bpe (the 256 bytes and at least one merge), got ${vocabSize}`,
    );
  }
  if (vocabSize > MAX_VOCAB) {
    throw new TokenizerError(`data.vocab_size ${vocabSize} is above the maximum ${MAX_VOCAB} for bpe`);
  }
  const blocks = _sample(_blocks(text), o.maxTrainBytes ?? DEFAULT_MAX_TRAIN_BYTES, o.seed ?? 0);
  if (blocks.length === 0) throw new TokenizerError(`data.tokenizer "bpe": the training text is empty`);
  const report = _throttle(o.onProgress);
  const counts = await _countWords(blocks, (done, total) => report("count", done, total));

  // Word types as byte-id arrays, their counts, and the pair statistics.
  const words: number[][] = [], freq: number[] = [];
  const utf8 = new TextEncoder();
  for (const [w, c] of counts) {
    const bytes = utf8.encode(w);
    if (bytes.length < 2) continue; // a one-byte word has no pair
    words.push(Array.from(bytes));
    freq.push(c);
  }
  counts.clear();
  const pairCount = new Map<number, number>(), where = new Map<number, number[]>();
  for (let w = 0; w < words.length; w++) {
    const s = words[w]!, c = freq[w]!;
    for (let i = 0; i + 1 < s.length; i++) {
      const k = s[i]! * _SHIFT + s[i + 1]!;
      pairCount.set(k, (pairCount.get(k) ?? 0) + c);
      const list = where.get(k);
      if (list === undefined) where.set(k, [w]);
      else if (list[list.length - 1] !== w) list.push(w);
    }
  }
  const heap = new _CountHeap();
  for (const [k, c] of pairCount) heap.push(c, k);

  const target = vocabSize - 256, pairs: [number, number][] = [];
  const seen = new Int32Array(words.length).fill(-1);
  let lastYield = performance.now();
  while (pairs.length < target && heap.size > 0) {
    const [c, key] = heap.pop();
    const current = pairCount.get(key) ?? 0;
    if (current !== c) {
      if (current > 0) heap.push(current, key);
      continue;
    }
    const a = Math.floor(key / _SHIFT), b = key % _SHIFT, id = 256 + pairs.length;
    pairs.push([a, b]);
    _applyMerge(a, b, id, where.get(key) ?? [], words, freq, seen, pairs.length, pairCount, where, heap);
    where.delete(key);
    report("merge", pairs.length, target);
    if (performance.now() - lastYield > 50) {
      await _yield();
      lastYield = performance.now();
    }
  }
  if (pairs.length < target) {
    throw new TokenizerError(
      `data.vocab_size ${vocabSize} is larger than the training text supports: it has only ${pairs.length} ` +
        `pairs left to merge, so at most ${256 + pairs.length} tokens (256 bytes + ${pairs.length} merges)`,
    );
  }
  return BpeModel.fromMerges(pairs);
}

/** Merges (a, b) → id in every word of `list`, updating pair counts, `where` and the heap. */
function _applyMerge(
  a: number,
  b: number,
  id: number,
  list: readonly number[],
  words: number[][],
  freq: readonly number[],
  seen: Int32Array,
  stamp: number,
  pairCount: Map<number, number>,
  where: Map<number, number[]>,
  heap: _CountHeap,
): void {
  const delta = new Map<number, number>();
  const add = (k: number, d: number) => delta.set(k, (delta.get(k) ?? 0) + d);
  for (const w of list) {
    if (seen[w] === stamp) continue;
    seen[w] = stamp;
    const s = words[w]!, c = freq[w]!;
    let hit = false;
    for (let i = 0; i + 1 < s.length; i++) if (s[i] === a && s[i + 1] === b) hit = true;
    if (!hit) continue; // a stale entry: an earlier merge took this word's pair
    const out: number[] = [];
    for (let i = 0; i < s.length;) {
      if (i + 1 < s.length && s[i] === a && s[i + 1] === b) out.push(id), i += 2;
      else out.push(s[i]!), i++;
    }
    for (let i = 0; i + 1 < s.length; i++) add(s[i]! * _SHIFT + s[i + 1]!, -c);
    for (let i = 0; i + 1 < out.length; i++) {
      const x = out[i]!, y = out[i + 1]!, k = x * _SHIFT + y;
      add(k, c);
      if (x === id || y === id) {
        const l = where.get(k);
        if (l === undefined) where.set(k, [w]);
        else if (l[l.length - 1] !== w) l.push(w);
      }
    }
    words[w] = out;
  }
  for (const [k, d] of delta) {
    if (d === 0) continue;
    const n = (pairCount.get(k) ?? 0) + d;
    if (n > 0) pairCount.set(k, n);
    else pairCount.delete(k), where.delete(k);
    if (d > 0) heap.push(n, k);
  }
}

/** Calls `f` at most about every 1% of a stage's total and always at its end. */
function _throttle(f?: (p: BpeProgress) => void) {
  let last = -1, lastStage = "";
  return (stage: BpeProgress["stage"], done: number, total: number) => {
    if (!f) return;
    const pct = Math.floor((100 * done) / Math.max(1, total));
    if (stage === lastStage && pct === last && done < total) return;
    last = pct, lastStage = stage;
    f({ stage, done, total });
  };
}

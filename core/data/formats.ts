/**
 * Streaming readers of text data files: plain UTF-8 text, JSON Lines with a text field and Parquet with a
 * text column. Each reader yields {@linkcode TextChunk}s — whole documents, or for plain text the file's one
 * document in chunks of about {@linkcode CHUNK_BYTES} that never split a character — and keeps live
 * {@linkcode ReadStats} of what it read. No reader holds a whole file in memory: plain text and JSON Lines
 * hold one block (and JSON Lines one line), Parquet one row group's text column.
 *
 * Documents:
 * - plain text: the file is one document (a leading UTF-8 byte order mark is dropped);
 * - JSON Lines: each non-blank line is a JSON object and its text field is a document (CRLF line ends and a
 *   leading byte order mark are tolerated); `null` and `""` values are skipped and counted;
 * - Parquet: each row's value in the text column is a document; nulls and empty strings are skipped and
 *   counted. Snappy, gzip, brotli, zstd and LZ4 pages decompress through `hyparquet-compressors`.
 *
 * The text field is a key of the record (JSON Lines) or a top-level column (Parquet); when no such key exists
 * and the name has dots, it is a path through nested objects or struct columns (`meta.body`).
 *
 * Only regular files are read (a FIFO, device, socket or directory is refused from `stat`, before opening), and
 * no further than the size `stat` gave. Text must be UTF-8 without NUL bytes (a NUL marks a binary file), as
 * sources.ts requires of text files.
 *
 * Consumers that concatenate documents put {@linkcode DOCUMENT_SEPARATOR} between them
 * ({@linkcode withSeparators}). Bad input throws a {@linkcode DataError} naming the file (or `label`) and,
 * where there is one, the line, row group or byte offset.
 *
 * @module
 */
import { utf8Length } from "./bpe.ts";
import { describeFileKind } from "../util/fs.ts";
import type { AsyncBuffer, FileMetaData, SchemaTree } from "hyparquet";
import { DataError } from "./errors.ts";

/** Separator put between documents when a source's documents are concatenated into one text. */
export const DOCUMENT_SEPARATOR = "\n\n";

/** The field (JSON Lines) or column (Parquet) that holds the text unless `textField` says otherwise. */
export const DEFAULT_TEXT_FIELD = "text";

/** Bytes read from a file at a time (1 MiB); plain-text chunks are about this size. */
export const CHUNK_BYTES = 1 << 20;

/** Longest JSON line accepted, in UTF-16 code units (128 Mi); a longer line is refused, not buffered. */
export const MAX_LINE_CHARS = 1 << 27;

/** The file formats a text source can have. */
export type TextFormat = "text" | "jsonl" | "parquet";

/** What a {@linkcode TextSource} reads: a file of a {@linkcode TextFormat}, or a packaged corpus (corpora.ts). */
export type SourceFormat = TextFormat | "corpus";

/** Every {@linkcode TextFormat}. */
export const TEXT_FORMATS: readonly TextFormat[] = ["text", "jsonl", "parquet"];

/** A piece of text a reader yields. */
export interface TextChunk {
  /** The text: a whole document, or one chunk of a plain-text document. */
  text: string;
  /** True on the first chunk of each document. */
  documentStart: boolean;
}

/** What a reader has read so far; final once `done` is true. */
export interface ReadStats {
  format: SourceFormat;
  path: string;
  /** Size of the file in bytes (for a corpus: of its data files read so far). */
  fileBytes: number;
  /** Bytes of the file read so far. */
  bytesRead: number;
  /** Documents yielded. */
  documents: number;
  /** Chunks yielded. */
  chunks: number;
  /** UTF-8 bytes of the text yielded (separators not included). */
  textBytes: number;
  /** Null or empty values skipped (JSON Lines and Parquet; blank JSON lines are not counted). */
  skipped: number;
  /** Fields of the first record (JSON Lines) or the columns, nested ones dotted (Parquet); else empty. */
  fields: readonly string[];
  /** Whether the reader reached the end of the file. */
  done: boolean;
}

/** Options of {@linkcode openTextSource}. */
export interface OpenTextOptions {
  /** Field (JSON Lines) or column (Parquet) holding the text; default {@linkcode DEFAULT_TEXT_FIELD}. */
  textField?: string;
  /** Aborts reading between blocks and row groups; the iteration then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Block size in bytes; default {@linkcode CHUNK_BYTES}. */
  chunkBytes?: number;
  /** Longest JSON line accepted; default {@linkcode MAX_LINE_CHARS}. */
  maxLineChars?: number;
  /** How error messages name the file (e.g. `data.source "x": a/b.jsonl`); default the path. */
  label?: string;
}

/** A text file opened for reading: iterate it (again, to re-read) and watch `stats`. */
export interface TextSource extends AsyncIterable<TextChunk> {
  readonly format: SourceFormat;
  readonly path: string;
  /** Stats of the current (or last) iteration. */
  readonly stats: ReadStats;
}

/** What {@linkcode inspectTextSource} finds without reading the whole file. */
export interface TextSourceInfo {
  format: TextFormat;
  path: string;
  fileBytes: number;
  /** Fields of the first record (JSON Lines) or the columns, nested ones dotted (Parquet). */
  fields: readonly string[];
  /** Rows in the file (Parquet only). */
  rows?: number;
  /** Row groups in the file (Parquet only). */
  rowGroups?: number;
}

/**
 * The format of a file by its extension: `.jsonl`/`.ndjson` are JSON Lines, `.parquet` is Parquet, anything
 * else is plain text.
 *
 * @example
 * ```ts
 * import { formatOfPath } from "./formats.ts";
 * if (formatOfPath("data/train-00000.parquet") !== "parquet") throw new Error("parquet");
 * ```
 */
export function formatOfPath(path: string): TextFormat {
  const lower = path.toLowerCase();
  if (lower.endsWith(".jsonl") || lower.endsWith(".ndjson")) return "jsonl";
  if (lower.endsWith(".parquet")) return "parquet";
  return "text";
}

/**
 * Opens `path` as a text source of `format`. Nothing is read until iteration starts; each iteration reads the
 * file from the start and resets `stats`.
 *
 * @example
 * ```ts ignore
 * import { openTextSource } from "./formats.ts";
 * const src = openTextSource("jsonl", "data/train.jsonl", { textField: "body" });
 * for await (const { text, documentStart } of src) console.log(documentStart, text.length);
 * console.log(src.stats.documents, src.stats.bytesRead);
 * ```
 */
export function openTextSource(format: TextFormat, path: string, options: OpenTextOptions = {}): TextSource {
  const read = Object.hasOwn(READERS, format) ? READERS[format] : undefined;
  if (!read) throw new DataError(`Unknown text format "${format}" (available: ${TEXT_FORMATS.join(", ")})`);
  let stats = newReadStats(format, path);
  return {
    format,
    path,
    get stats() {
      return stats;
    },
    [Symbol.asyncIterator]() {
      stats = newReadStats(format, path);
      return read(path, options, stats)[Symbol.asyncIterator]();
    },
  };
}

/**
 * Checks that `path` is a readable source of `format` without reading it all: a regular file; for Parquet, a
 * valid footer with a string column `textField`; for JSON Lines, a first record with a string `textField`;
 * for plain text, valid UTF-8 in the first block. Throws a {@linkcode DataError} otherwise.
 */
export async function inspectTextSource(
  format: TextFormat,
  path: string,
  options: OpenTextOptions = {},
): Promise<TextSourceInfo> {
  const field = options.textField ?? DEFAULT_TEXT_FIELD;
  if (format === "parquet") {
    const name = options.label ?? path;
    const file = await _openRegular(path, name);
    try {
      const { metadata } = await _parquetOpen(file, name, newReadStats(format, path));
      const tree = await _schemaTree(metadata, name);
      _findTextColumn(tree, field, name);
      return {
        format,
        path,
        fileBytes: file.size,
        fields: _leafNames(tree),
        rows: Number(metadata.num_rows),
        rowGroups: metadata.row_groups.length,
      };
    } finally {
      file.handle.close();
    }
  }
  const src = openTextSource(format, path, options);
  const it = src[Symbol.asyncIterator]();
  try {
    await it.next();
  } finally {
    await it.return?.();
  }
  return { format, path, fileBytes: src.stats.fileBytes, fields: src.stats.fields };
}

/**
 * Text of `chunks` with {@linkcode DOCUMENT_SEPARATOR} (or `separator`) before every document but the first.
 *
 * @example
 * ```ts
 * import { withSeparators } from "./formats.ts";
 * async function* docs() {
 *   yield { text: "a", documentStart: true };
 *   yield { text: "b", documentStart: false };
 *   yield { text: "c", documentStart: true };
 * }
 * let all = "";
 * for await (const s of withSeparators(docs())) all += s;
 * if (all !== "ab\n\nc") throw new Error(all);
 * ```
 */
export async function* withSeparators(
  chunks: AsyncIterable<TextChunk>,
  separator: string = DOCUMENT_SEPARATOR,
): AsyncGenerator<string> {
  let first = true;
  for await (const c of chunks) {
    if (c.documentStart && !first) yield separator;
    first = false;
    yield c.text;
  }
}

/**
 * Length of the longest prefix of `b` that does not end inside a UTF-8 sequence: the bytes after it start a
 * character whose remaining bytes are in the next block. Invalid bytes are left in the prefix for the
 * validator to report.
 *
 * @example
 * ```ts
 * import { completeUtf8Length } from "./formats.ts";
 * const b = new TextEncoder().encode("a€"); // 61 e2 82 ac
 * if (completeUtf8Length(b.subarray(0, 3)) !== 1) throw new Error("cut before €");
 * ```
 */
export function completeUtf8Length(b: Uint8Array): number {
  let i = b.length, trailing = 0;
  while (trailing < 3 && i > 0 && (b[i - 1]! & 0xc0) === 0x80) i--, trailing++;
  if (i === 0) return b.length;
  const lead = b[i - 1]!;
  if (lead < 0xc0) return b.length;
  const need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
  return trailing + 1 < need ? i - 1 : b.length;
}

/**
 * Offset of the first byte that starts an invalid UTF-8 sequence, or -1 when all of `b` is valid.
 *
 * @example
 * ```ts
 * import { firstInvalidUtf8 } from "./formats.ts";
 * if (firstInvalidUtf8(new Uint8Array([0x61, 0xff])) !== 1) throw new Error("expected 1");
 * ```
 */
export function firstInvalidUtf8(b: Uint8Array): number {
  let i = 0;
  while (i < b.length) {
    const c = b[i]!;
    let n = 0, min = 0;
    if (c < 0x80) n = 0;
    else if (c >= 0xc2 && c <= 0xdf) n = 1, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef) n = 2, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4) n = 3, min = 0x10000;
    else return i;
    if (i + n >= b.length && n > 0) return i;
    let cp = n === 0 ? c : c & (0x3f >> n);
    for (let k = 1; k <= n; k++) {
      const cc = b[i + k]!;
      if ((cc & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if (n > 0 && (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))) return i;
    i += n + 1;
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------------------
// Readers

type Reader = (path: string, options: OpenTextOptions, stats: ReadStats) => AsyncGenerator<TextChunk>;

const READERS: Record<TextFormat, Reader> = {
  text: _readPlainText,
  jsonl: _readJsonLines,
  parquet: _readParquet,
};

async function* _readPlainText(path: string, options: OpenTextOptions, stats: ReadStats) {
  let first = true;
  for await (const { text, bytes } of _decodedBlocks(path, options, stats)) {
    if (text.length === 0) continue;
    stats.chunks++;
    if (first) stats.documents++;
    stats.textBytes += bytes;
    yield { text, documentStart: first };
    first = false;
  }
  stats.done = true;
}

async function* _readJsonLines(path: string, options: OpenTextOptions, stats: ReadStats) {
  const field = options.textField ?? DEFAULT_TEXT_FIELD;
  const maxChars = options.maxLineChars ?? MAX_LINE_CHARS;
  const name = options.label ?? path;
  const parts: string[] = [];
  let pending = 0, line = 1;
  const emit = (text: string): TextChunk | null => {
    const doc = _jsonLineText(text, line++, field, name, stats);
    if (doc === null) return null;
    stats.documents++, stats.chunks++, stats.textBytes += utf8Length(doc);
    return { text: doc, documentStart: true };
  };
  for await (const { text: block } of _decodedBlocks(path, options, stats)) {
    let start = 0;
    for (;;) {
      const nl = block.indexOf("\n", start);
      const piece = nl < 0 ? block.slice(start) : block.slice(start, nl);
      if (pending + piece.length > maxChars) {
        throw new DataError(`${name}:${line}: line longer than ${maxChars} characters; is this JSON Lines?`);
      }
      if (nl < 0) {
        if (piece.length > 0) parts.push(piece), pending += piece.length;
        break;
      }
      const text = parts.length > 0 ? parts.join("") + piece : piece;
      parts.length = 0, pending = 0, start = nl + 1;
      const chunk = emit(text);
      if (chunk) yield chunk;
    }
  }
  if (parts.length > 0) {
    const chunk = emit(parts.join(""));
    if (chunk) yield chunk;
  }
  stats.done = true;
}

/** The text of one JSON line, or null for a blank line or a null/empty value; throws on bad lines. */
function _jsonLineText(text: string, line: number, field: string, name: string, stats: ReadStats) {
  if (_isBlank(text)) return null;
  let record: unknown;
  try {
    record = JSON.parse(text);
  } catch (e) {
    throw new DataError(`${name}:${line}: invalid JSON (${(e as Error).message})`);
  }
  if (record === null || typeof record !== "object" || Array.isArray(record)) {
    throw new DataError(
      `${name}:${line}: expected a JSON object with a "${field}" field, found ${_typeName(record)}`,
    );
  }
  const obj = record as Record<string, unknown>;
  if (stats.documents === 0 && stats.skipped === 0) stats.fields = Object.keys(obj);
  const found = _lookup(obj, field);
  if (!found.ok) {
    throw new DataError(
      `${name}:${line}: no "${field}" field (the line has ${_fieldList(Object.keys(obj))}); ` +
        `set data.text_field to the field that holds the text`,
    );
  }
  const value = found.value;
  if (value === null || value === "") return stats.skipped++, null;
  if (typeof value !== "string") {
    throw new DataError(
      `${name}:${line}: field "${field}" is ${_typeName(value)}, not a string; ` +
        `set data.text_field to the field that holds the text`,
    );
  }
  return value;
}

/** The value at `field`: an own key, or else a dotted path through nested objects. */
function _lookup(obj: Record<string, unknown>, field: string): { ok: boolean; value?: unknown } {
  if (Object.hasOwn(obj, field)) return { ok: true, value: obj[field] };
  if (!field.includes(".")) return { ok: false };
  let cur: unknown = obj;
  for (const key of field.split(".")) {
    if (cur === null || typeof cur !== "object" || Array.isArray(cur) || !Object.hasOwn(cur, key)) {
      return { ok: false };
    }
    cur = (cur as Record<string, unknown>)[key];
  }
  return { ok: true, value: cur };
}

function _isBlank(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c !== 0x20 && c !== 0x09 && c !== 0x0d) return false;
  }
  return true;
}

function _typeName(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "object") return "an object";
  return `a ${typeof v}`;
}

function _fieldList(names: readonly string[]): string {
  if (names.length === 0) return "no fields";
  const shown = names.slice(0, 20).map((n) => JSON.stringify(n)).join(", ");
  return `fields ${shown}${names.length > 20 ? `, … (${names.length} in all)` : ""}`;
}

// ---------------------------------------------------------------------------------------------------------
// Blocks of UTF-8

/**
 * The file's text in blocks of about `chunkBytes` with their UTF-8 byte counts, validated (an invalid byte
 * throws with its offset) and never split inside a character; a byte order mark at offset 0 is dropped.
 */
async function* _decodedBlocks(path: string, options: OpenTextOptions, stats: ReadStats) {
  const name = options.label ?? path;
  const file = await _openRegular(path, name);
  stats.fileBytes = file.size;
  const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  const blockBytes = options.chunkBytes ?? CHUNK_BYTES;
  let carry: Uint8Array = new Uint8Array(0), offset = 0;
  try {
    for await (const block of _blocks(file.handle, name, blockBytes, file.size, options.signal)) {
      stats.bytesRead += block.length;
      const nul = block.indexOf(0);
      if (nul >= 0) {
        const at = offset + carry.length + nul;
        throw new DataError(
          `${name}: a NUL byte at byte ${at}: a binary file, not text; give UTF-8 text files`,
        );
      }
      const bytes = carry.length > 0 ? _concat(carry, block) : block;
      const cut = completeUtf8Length(bytes);
      let text = _decode(decoder, bytes.subarray(0, cut), name, offset), size = cut;
      if (offset === 0 && text.charCodeAt(0) === 0xfeff) text = text.slice(1), size -= 3;
      carry = bytes.slice(cut), offset += cut;
      yield { text, bytes: size };
    }
    if (carry.length > 0) _decode(decoder, carry, name, offset); // a truncated final character: throws
  } finally {
    file.handle.close();
  }
}

/**
 * `bytes` as text; invalid UTF-8 throws with the file and absolute offset. The lenient decoder is several
 * times faster than a fatal one; a replacement character in its output sends the bytes to the exact check.
 */
function _decode(decoder: TextDecoder, bytes: Uint8Array, name: string, offset: number): string {
  const text = decoder.decode(bytes);
  if (text.includes("\ufffd")) {
    const bad = firstInvalidUtf8(bytes);
    if (bad >= 0) {
      throw new DataError(
        `${name}: invalid UTF-8 at byte ${offset + bad} (0x${
          bytes[bad]!.toString(16)
        }); re-encode the file as UTF-8`,
      );
    }
  }
  return text;
}

/** Blocks of `file` of `size` bytes (the last may be shorter), up to `limit` bytes: a growing file is not followed. */
async function* _blocks(file: Deno.FsFile, name: string, size: number, limit: number, signal?: AbortSignal) {
  let left = limit;
  while (left > 0) {
    signal?.throwIfAborted();
    const buf = new Uint8Array(Math.min(size, left));
    let n = 0;
    while (n < buf.length) {
      let got: number | null;
      try {
        got = await file.read(buf.subarray(n));
      } catch (e) {
        throw new DataError(`${name}: cannot be read: ${(e as Error).message}`);
      }
      if (got === null) break;
      n += got;
    }
    if (n > 0) yield buf.subarray(0, n);
    if (n < buf.length) return;
    left -= n;
  }
}

function _concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a), out.set(b, a.length);
  return out;
}

/** Opens a regular file; refuses directories, FIFOs, devices and sockets from `stat`, before opening. */
async function _openRegular(path: string, name: string): Promise<{ handle: Deno.FsFile; size: number }> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DataError(`${name} does not exist`);
    throw new DataError(`${name}: cannot be read: ${(e as Error).message}`);
  }
  if (!info.isFile) throw new DataError(`${name} is ${describeFileKind(info)}, not a regular file`);
  try {
    return { handle: await Deno.open(path, { read: true }), size: info.size };
  } catch (e) {
    throw new DataError(`${name}: cannot be read: ${(e as Error).message}`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Parquet

async function* _readParquet(path: string, options: OpenTextOptions, stats: ReadStats) {
  const field = options.textField ?? DEFAULT_TEXT_FIELD;
  const name = options.label ?? path;
  const file = await _openRegular(path, name);
  stats.fileBytes = file.size;
  try {
    const { metadata, buffer } = await _parquetOpen(file, name, stats);
    const tree = await _schemaTree(metadata, name);
    const column = _findTextColumn(tree, field, name);
    stats.fields = _leafNames(tree);
    const { parquetRead } = await import("hyparquet");
    const { compressors } = await import("hyparquet-compressors");
    let rowStart = 0;
    for (const [group, rowGroup] of metadata.row_groups.entries()) {
      options.signal?.throwIfAborted();
      checkRowGroupText(rowGroup, column, `${name}: row group ${group}`);
      const rowEnd = rowStart + Number(rowGroup.num_rows);
      let rows: unknown[][] = [];
      try {
        await parquetRead({
          file: buffer,
          metadata,
          columns: [column[0]!],
          rowStart,
          rowEnd,
          compressors,
          parsers: { stringFromBytes: _strictString },
          onComplete: (r: unknown[][]) => rows = r,
        });
      } catch (e) {
        const why = e instanceof DataError ? e.message : `${(e as Error).message}`;
        throw new DataError(`${name}: row group ${group}: cannot read column "${field}" (${why})`);
      }
      for (const [i, row] of rows.entries()) {
        const text = _dig(row[0], column.slice(1));
        if (text === null || text === undefined || text === "") {
          stats.skipped++;
          continue;
        }
        if (typeof text !== "string") {
          throw new DataError(`${name}: row ${rowStart + i}: column "${field}" holds ${_typeName(text)}`);
        }
        stats.documents++, stats.chunks++, stats.textBytes += utf8Length(text);
        yield { text, documentStart: true };
      }
      rows = [];
      rowStart = rowEnd;
    }
    stats.done = true;
  } finally {
    file.handle.close();
  }
}

/** Most bytes one row group's text column may decompress to (a compression bomb is refused, never read). */
export const MAX_ROW_GROUP_TEXT_BYTES = 1 << 30;

/**
 * Refuses a row group whose text column's chunks say they decompress to more than
 * {@linkcode MAX_ROW_GROUP_TEXT_BYTES}, before any of it is read.
 */
export function checkRowGroupText(
  rowGroup: {
    columns: { meta_data?: { path_in_schema: string[]; total_uncompressed_size: bigint | number } }[];
  },
  column: readonly string[],
  where: string,
): void {
  let total = 0;
  for (const c of rowGroup.columns) {
    const m = c.meta_data;
    if (m && m.path_in_schema[0] === column[0]) total += Number(m.total_uncompressed_size);
  }
  if (total > MAX_ROW_GROUP_TEXT_BYTES) {
    throw new DataError(
      `${where}: its text column decompresses to ${total} bytes, more than the ${MAX_ROW_GROUP_TEXT_BYTES} ` +
        "read at once; write the file with smaller row groups",
    );
  }
}

const _utf8Strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function _strictString(bytes: Uint8Array): string | undefined {
  if (!bytes) return bytes;
  try {
    return _utf8Strict.decode(bytes);
  } catch {
    throw new DataError(`invalid UTF-8 at byte ${Math.max(0, firstInvalidUtf8(bytes))} of a value`);
  }
}

function _dig(value: unknown, path: readonly string[]): unknown {
  let cur = value;
  for (const key of path) {
    if (cur === null || cur === undefined || typeof cur !== "object") return cur === undefined ? null : cur;
    cur = (cur as Record<string, unknown>)[key];
  }
  return cur;
}

/** Reads the footer of a Parquet file through an {@linkcode AsyncBuffer} over the open file. */
async function _parquetOpen(
  file: { handle: Deno.FsFile; size: number },
  name: string,
  stats: ReadStats,
): Promise<{ metadata: FileMetaData; buffer: AsyncBuffer }> {
  const buffer = _fileBuffer(file.handle, file.size, name, stats);
  const { parquetMetadataAsync } = await import("hyparquet");
  try {
    return { metadata: await parquetMetadataAsync(buffer), buffer };
  } catch (e) {
    if (e instanceof DataError) throw e;
    throw new DataError(`${name}: not a readable Parquet file (${(e as Error).message})`);
  }
}

/** An AsyncBuffer reading byte ranges of `file`; reads are serialised since they share one file position. */
function _fileBuffer(file: Deno.FsFile, size: number, name: string, stats: ReadStats): AsyncBuffer {
  let queue: Promise<unknown> = Promise.resolve();
  const readRange = async (start: number, end: number): Promise<ArrayBuffer> => {
    const buf = new Uint8Array(end - start);
    try {
      await file.seek(start, Deno.SeekMode.Start);
      let n = 0;
      while (n < buf.length) {
        const got = await file.read(buf.subarray(n));
        if (got === null) throw new Error(`file ended at byte ${start + n}, expected ${end}`);
        n += got;
      }
    } catch (e) {
      throw new DataError(`${name}: cannot be read: ${(e as Error).message}`);
    }
    stats.bytesRead += buf.length;
    return buf.buffer;
  };
  return {
    byteLength: size,
    slice(start: number, end?: number): Promise<ArrayBuffer> {
      const s = Math.max(0, Math.min(start, size)), e = Math.max(s, Math.min(end ?? size, size));
      const p = queue.then(() => readRange(s, e));
      queue = p.catch(() => {});
      return p;
    },
  };
}

async function _schemaTree(metadata: FileMetaData, name: string): Promise<SchemaTree> {
  const { parquetSchema } = await import("hyparquet");
  try {
    return parquetSchema(metadata);
  } catch (e) {
    throw new DataError(`${name}: not a readable Parquet file (${(e as Error).message})`);
  }
}

/** The path of the text column (top-level name first); throws when it is missing or not a string column. */
function _findTextColumn(tree: SchemaTree, field: string, name: string): string[] {
  const candidates = field.includes(".") ? [[field], field.split(".")] : [[field]];
  for (const keys of candidates) {
    const node = _schemaNode(tree, keys);
    if (!node) continue;
    const why = _notAString(node, keys.slice(0, -1), tree);
    if (why) {
      throw new DataError(
        `${name}: column "${field}" is ${why}, not a string column; set data.text_field to the column that ` +
          `holds the text (columns: ${_leafNames(tree).join(", ")})`,
      );
    }
    return keys;
  }
  throw new DataError(
    `${name}: no column "${field}" (columns: ${_leafNames(tree).join(", ") || "none"}); ` +
      `set data.text_field to the column that holds the text`,
  );
}

function _schemaNode(tree: SchemaTree, keys: readonly string[]): SchemaTree | undefined {
  let node: SchemaTree | undefined = tree;
  for (const key of keys) node = node?.children.find((c) => c.element.name === key);
  return node;
}

/** Why a schema node is not a plain string column, or null when it is one. */
function _notAString(node: SchemaTree, parents: readonly string[], tree: SchemaTree): string | null {
  let cur: SchemaTree = tree;
  for (const key of parents) {
    cur = cur.children.find((c) => c.element.name === key)!;
    if (cur.element.repetition_type === "REPEATED" || cur.element.converted_type === "LIST") {
      return `inside a list ("${key}")`;
    }
    if (cur.element.converted_type === "MAP" || cur.element.converted_type === "MAP_KEY_VALUE") {
      return `inside a map ("${key}")`;
    }
  }
  const el = node.element;
  if (node.children.length > 0) {
    return el.converted_type === "LIST" ? "a list" : el.converted_type === "MAP" ? "a map" : "a struct";
  }
  if (el.repetition_type === "REPEATED") return "a repeated field";
  if (el.type !== "BYTE_ARRAY") return `of type ${el.type}`;
  const annotation = el.logical_type?.type ?? el.converted_type;
  if (annotation && !["STRING", "UTF8", "ENUM"].includes(annotation)) return `of type ${annotation}`;
  return null;
}

/** Names of the schema's leaf columns, nested ones dotted. */
function _leafNames(tree: SchemaTree, prefix = ""): string[] {
  const out: string[] = [];
  for (const c of tree.children) {
    const name = prefix + c.element.name;
    if (
      c.children.length === 0 || c.element.converted_type === "LIST" || c.element.converted_type === "MAP"
    ) {
      out.push(name);
    } else out.push(..._leafNames(c, `${name}.`));
  }
  return out;
}

/** Fresh read statistics of a source (nothing read yet); `fields` as known before reading. */
export function newReadStats(format: SourceFormat, path: string, fields: string[] = []): ReadStats {
  return {
    format,
    path,
    fileBytes: 0,
    bytesRead: 0,
    documents: 0,
    chunks: 0,
    textBytes: 0,
    skipped: 0,
    fields,
    done: false,
  };
}

export { utf8Length };

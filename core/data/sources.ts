/**
 * Text sources named by `data.source`: a packaged corpus (`corpus:moby-dick`, `corpus:sotu`; corpora.ts),
 * `synthetic:multidomain`, a file, a directory (every regular file under it, sorted) or a glob
 * (`data/**\/*.txt`). A file's format is its extension (formats.ts `formatOfPath`): `.jsonl`/`.ndjson` are
 * JSON Lines whose `data.text_field` holds the text, `.parquet` is Parquet with a text column of that name,
 * anything else plain UTF-8 text. Text must be UTF-8; an invalid sequence or a NUL byte (a binary file) is
 * reported with the file and byte offset, never crashed on.
 *
 * Only regular files are read. Anything else — a FIFO, a socket, a character or block device (`/dev/zero`),
 * a kernel pseudo-file under `/proc` or `/sys`, a symlink to any of these, a symlink loop — is refused from
 * `stat` alone, before anything is opened, so that a source can neither block nor stream forever. The whole
 * source may hold at most {@linkcode MAX_SOURCE_BYTES} (1 GiB), in at most {@linkcode MAX_SOURCE_FILES}
 * files, and each file is read up to the size `stat` gave and no further.
 *
 * A source is used in three steps, so that bad input is refused before anything is written:
 * {@linkcode resolveSource} (names and `stat`s only), {@linkcode inspectSource} (opens every file and checks
 * its start: the text field of JSON Lines, the footer and column of Parquet, UTF-8 of plain text), then
 * {@linkcode sourceStream}: the source's text as a stream of UTF-8 bytes, its documents (a plain-text file is
 * one document) joined with formats.ts `DOCUMENT_SEPARATOR`, read in blocks and never held whole.
 * {@linkcode readSource} collects that stream in memory (small sources, tests).
 *
 * @module
 */
import { DataError } from "./errors.ts";
import { resolve } from "node:path";
import { describeFileKind } from "../util/fs.ts";
import { CORPUS_PREFIX, type CorpusInfo, corpusStats, listCorpora, readCorpus } from "./corpora.ts";
import {
  DOCUMENT_SEPARATOR,
  firstInvalidUtf8,
  formatOfPath,
  inspectTextSource,
  openTextSource,
  type TextFormat,
  type TextSource,
  type TextSourceInfo,
} from "./formats.ts";
import { DOMAINS, generateMultidomain } from "./synthetic.ts";

export { DataError };

/** Largest total size of the files of one source, in bytes (1 GiB). */
export const MAX_SOURCE_BYTES = 1 << 30;
/** Most files one directory or glob source may hold. */
export const MAX_SOURCE_FILES = 100_000;
/** Most directory entries looked at while expanding one directory or glob source. */
export const MAX_WALK_ENTRIES = 200_000;
/** Deepest directory nesting walked below a directory source or a glob's fixed prefix. */
export const MAX_WALK_DEPTH = 64;

/** The bytes of a source and, for synthetic sources, each byte's domain id. */
export interface SourceText {
  bytes: Uint8Array; // (n,)
  domains: Uint8Array | null; // (n,) or null when the source has no domain labels
  domainNames: readonly string[];
  files: readonly string[]; // files read, in order (empty for synthetic and corpora)
}

/** Options of {@linkcode readSource}. */
export interface ReadSourceOptions {
  seed: number;
  syntheticBytes: number;
  /** Directory relative paths are resolved against (the config file's directory). */
  baseDir?: string;
  /** Field (JSON Lines) or column (Parquet) holding the text; default `text`. */
  textField?: string;
}

/** One file of a source, as `stat` described it when the source was resolved. */
export interface SourceFile {
  path: string;
  size: number;
  /** Modification time in ms since the epoch (0 when the platform has none). */
  mtimeMs: number;
  format: TextFormat;
  /** How messages name it: the source's name, and the file when the source has several. */
  label: string;
}

/** A `data.source` resolved to what it reads, from names and `stat` alone (nothing opened). */
export type ResolvedSource =
  | { kind: "synthetic"; source: string; name: string }
  | { kind: "corpus"; source: string; name: string; corpus: CorpusInfo }
  | { kind: "files"; source: string; name: string; path: string; files: readonly SourceFile[] };

/** A regular file to read, with what `stat` gave it. */
interface _File {
  path: string;
  size: number;
  mtimeMs: number;
}

/** What a walk found: regular files, entries that are something else (with what they are). */
interface _Found {
  files: _File[];
  bad: { path: string; what: string }[];
  entries: number;
  visited: Set<string>; // real paths of the directories walked (each is walked once)
}

/**
 * Resolves `source` (see the module docs) from names and `stat` only: an unknown corpus lists the
 * available ones, a path that is not a regular file or directory, a glob that matches nothing and a source
 * over the size limits are refused. Problems are {@linkcode DataError}s whose message starts with
 * `data.source "<source>"` (and the resolved path when it differs).
 *
 * @example
 * ```ts ignore
 * import { resolveSource } from "./sources.ts";
 * const r = await resolveSource("corpus:sotu");
 * if (r.kind !== "corpus") throw new Error("a corpus");
 * ```
 */
export async function resolveSource(source: string, o: { baseDir?: string } = {}): Promise<ResolvedSource> {
  if (source.startsWith("synthetic:")) {
    const kind = source.slice("synthetic:".length);
    if (kind !== "multidomain") {
      throw new DataError(`Unknown synthetic source: "${source}" (available: synthetic:multidomain)`);
    }
    return { kind: "synthetic", source, name: sourceName(source) };
  }
  if (source.startsWith(CORPUS_PREFIX)) {
    const corpus = listCorpora().find((c) => `${CORPUS_PREFIX}${c.name}` === source);
    if (!corpus) {
      const available = listCorpora().map((c) => `${CORPUS_PREFIX}${c.name}`).join(", ");
      throw new DataError(`${sourceName(source)}: unknown corpus (available: ${available})`);
    }
    return { kind: "corpus", source, name: sourceName(source), corpus };
  }
  const path = _resolve(source, o.baseDir);
  const name = sourceName(source, path);
  const found = await _expand(path, name);
  const total = found.reduce((n, f) => n + f.size, 0);
  if (total > MAX_SOURCE_BYTES) {
    throw new DataError(
      `${name}: ${total} bytes in ${found.length} file(s); the limit is 1 GiB (${MAX_SOURCE_BYTES} bytes) ` +
        `of text per source: use a smaller selection of files`,
    );
  }
  const files = found.map((f) => ({
    ...f,
    format: formatOfPath(f.path),
    label: f.path === path ? name : `${name}: ${f.path}`,
  }));
  return { kind: "files", source, name, path, files };
}

/** What {@linkcode inspectSource} found: each file's format, size and fields, or the corpus's figures. */
export interface SourceInspection {
  files: readonly TextSourceInfo[];
  /** For a corpus: installed version, documents and bytes of text (separators included). */
  corpus?: { version: string; documents: number; bytes: number };
}

/**
 * Opens every file of a resolved source and checks its start (formats.ts `inspectTextSource`): a JSON
 * Lines file whose first record has no `textField` and a Parquet file without such a column are refused
 * naming the fields they have; a plain-text file whose first block is not UTF-8 text is refused with the
 * offset. A corpus is read once to count it (and cached for the process).
 */
export async function inspectSource(
  r: ResolvedSource,
  o: { textField?: string } = {},
): Promise<SourceInspection> {
  if (r.kind === "synthetic") return { files: [] };
  if (r.kind === "corpus") {
    const s = await corpusStats(r.corpus.name);
    return { files: [], corpus: { version: s.version, documents: s.documents, bytes: s.bytes } };
  }
  const files: TextSourceInfo[] = [];
  for (const f of r.files) {
    files.push(await inspectTextSource(f.format, f.path, { textField: o.textField, label: f.label }));
  }
  return { files };
}

/** The text of a source as UTF-8 bytes, with how far reading has got. */
export interface SourceStream extends AsyncIterable<Uint8Array> {
  /** Input read so far and in all (file bytes; for a corpus, bytes of text), for progress. */
  readonly progress: { done: number; total: number };
  /** Documents read so far. */
  readonly documents: number;
  /** Bytes of text yielded so far (separators included). */
  readonly bytes: number;
}

/** Options of {@linkcode sourceStream}. */
export interface SourceStreamOptions {
  textField?: string;
  signal?: AbortSignal;
  /** Synthetic sources: the seed and size of the generated corpus. */
  seed?: number;
  syntheticBytes?: number;
}

/**
 * The text of a resolved source as a stream of UTF-8 byte blocks: its documents in order, joined with
 * `DOCUMENT_SEPARATOR` (see the module docs). Each iteration reads the source again. A source with no text
 * at all throws a {@linkcode DataError} at the end ("holds no text").
 */
export function sourceStream(r: ResolvedSource, o: SourceStreamOptions = {}): SourceStream {
  const state = { done: 0, total: 0, documents: 0, bytes: 0 };
  return {
    get progress() {
      return { done: state.done, total: state.total };
    },
    get documents() {
      return state.documents;
    },
    get bytes() {
      return state.bytes;
    },
    [Symbol.asyncIterator]() {
      Object.assign(state, { done: 0, total: 0, documents: 0, bytes: 0 });
      return _stream(r, o, state)[Symbol.asyncIterator]();
    },
  };
}

async function* _stream(
  r: ResolvedSource,
  o: SourceStreamOptions,
  state: { done: number; total: number; documents: number; bytes: number },
): AsyncGenerator<Uint8Array> {
  if (r.kind === "synthetic") {
    const { bytes } = generateMultidomain(o.seed ?? 0, o.syntheticBytes ?? 0);
    state.total = bytes.length, state.done = bytes.length, state.documents = 1, state.bytes = bytes.length;
    yield bytes;
    return;
  }
  const utf8 = new TextEncoder(), separator = utf8.encode(DOCUMENT_SEPARATOR);
  const sources: { src: TextSource; size: number }[] = r.kind === "corpus"
    ? [{
      src: readCorpus(r.corpus.name, { signal: o.signal }),
      size: (await corpusStats(r.corpus.name)).bytes,
    }]
    : r.files.map((f) => ({
      src: openTextSource(f.format, f.path, { textField: o.textField, signal: o.signal, label: f.label }),
      size: f.size,
    }));
  state.total = sources.reduce((n, s) => n + s.size, 0);
  let before = 0;
  for (const { src, size } of sources) {
    for await (const chunk of src) {
      if (chunk.documentStart) {
        if (state.documents > 0) state.bytes += separator.length, yield separator;
        state.documents++;
      }
      const bytes = utf8.encode(chunk.text);
      state.bytes += bytes.length;
      state.done = before + (r.kind === "corpus" ? state.bytes : src.stats.bytesRead);
      yield bytes;
    }
    before += size;
    state.done = before;
  }
  if (state.bytes === 0) {
    const n = r.kind === "files" ? r.files.length : 0;
    const what = n === 1 ? "the file is empty" : n > 1 ? `its ${n} files are empty` : "it is empty";
    throw new DataError(`${r.name} holds no text: ${what}`);
  }
}

/**
 * Reads `source` (see module docs) whole into memory: its text as {@linkcode sourceStream} gives it.
 * Every problem is a {@linkcode DataError} whose message starts with `data.source "<source>"` (and the
 * resolved path when it differs).
 *
 * @example
 * ```ts ignore
 * import { readSource } from "./sources.ts";
 * const { bytes } = await readSource("data/corpus.txt", { seed: 1, syntheticBytes: 1024 });
 * ```
 */
export async function readSource(source: string, options: ReadSourceOptions): Promise<SourceText> {
  const r = await resolveSource(source, { baseDir: options.baseDir });
  if (r.kind === "synthetic") {
    const { bytes, domains } = generateMultidomain(options.seed, options.syntheticBytes);
    return { bytes, domains, domainNames: DOMAINS, files: [] };
  }
  await inspectSource(r, { textField: options.textField });
  const parts: Uint8Array[] = [];
  let total = 0;
  for await (const b of sourceStream(r, { textField: options.textField })) parts.push(b), total += b.length;
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const p of parts) bytes.set(p, at), at += p.length;
  return {
    bytes,
    domains: null,
    domainNames: [],
    files: r.kind === "files" ? r.files.map((f) => f.path) : [],
  };
}

/** How messages name a source: `data.source "x"`, with the resolved path when it differs. */
export function sourceName(source: string, resolved = source): string {
  return resolved === source ? `data.source "${source}"` : `data.source "${source}" (${resolved})`;
}

export { describeFileKind, firstInvalidUtf8 };

/** The kernel's pseudo-file systems: their files claim size 0 or block, and are never data. */
function _pseudoRoot(realPath: string): string | null {
  for (const root of ["/proc", "/sys"]) {
    if (realPath === root || realPath.startsWith(`${root}/`)) return root;
  }
  return null;
}

function _mtime(info: Deno.FileInfo): number {
  return info.mtime?.getTime() ?? 0;
}

function _resolve(path: string, baseDir?: string): string {
  return baseDir && !path.startsWith("/") ? `${baseDir}/${path}` : path;
}

/** What {@linkcode _classify} says of a path that does not exist. */
const _MISSING = "does not exist";

/** What `path` is, following symlinks, from `lstat`/`stat` only: never opened. */
async function _classify(path: string): Promise<{ info: Deno.FileInfo | null; what: string | null }> {
  let link: Deno.FileInfo;
  try {
    link = await Deno.lstat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { info: null, what: _MISSING };
    return { info: null, what: `cannot be read: ${(e as Error).message}` };
  }
  let info = link;
  if (link.isSymlink) {
    try {
      info = await Deno.stat(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return { info: null, what: "is a symlink to a missing file" };
      if (/loop|too many levels/i.test((e as Error).message)) {
        return { info: null, what: "is a symlink loop" };
      }
      return { info: null, what: `cannot be read: ${(e as Error).message}` };
    }
  }
  const via = link.isSymlink ? "a symlink to " : "";
  if (!info.isFile && !info.isDirectory) {
    return { info, what: `is ${via}${describeFileKind(info)}, not a regular file or directory` };
  }
  const real = await Deno.realPath(path).catch(() => path);
  const pseudo = _pseudoRoot(real);
  if (pseudo) return { info, what: `is ${via}a kernel pseudo-file under ${pseudo} (${real}), not data` };
  return { info, what: null };
}

async function _expand(pattern: string, name: string): Promise<_File[]> {
  if (!/[*?[]/.test(pattern)) {
    const { info, what } = await _classify(pattern);
    if (what === _MISSING) throw new DataError(`${name}: no such file: ${resolve(pattern)}`);
    if (what !== null || info === null) throw new DataError(`${name} ${what}`);
    if (info.isFile) return [{ path: pattern, size: info.size, mtimeMs: _mtime(info) }];
    const found = await _walkFrom(pattern, MAX_WALK_DEPTH, name);
    const bad = found.bad[0];
    if (bad) {
      throw new DataError(
        `${name}: ${bad.path} ${bad.what}; a data directory may hold only regular files and directories`,
      );
    }
    if (found.files.length === 0) throw new DataError(`${name} is a directory without any file`);
    return _capped(found.files.sort(_byPath), name);
  }
  const first = pattern.search(/[*?[]/);
  const root = pattern.slice(0, pattern.lastIndexOf("/", first) + 1) || ".";
  const re = globToRegExp(pattern);
  // Without `**`, a match lies exactly as many levels below the fixed prefix as the pattern has segments.
  const rest = pattern.slice(root === "." && !pattern.startsWith("./") ? 0 : root.length);
  const depth = pattern.includes("**") ? MAX_WALK_DEPTH : rest.split("/").length;
  const found = await _walkFrom(root === "/" ? "/" : root.replace(/\/$/, ""), depth, name);
  const matches = (p: string) => re.test(p.replace(/^\.\//, ""));
  const bad = found.bad.find((b) => matches(b.path));
  if (bad) throw new DataError(`${name}: ${bad.path} ${bad.what}; a glob may match only regular files`);
  const files = found.files.filter((f) => matches(f.path)).sort(_byPath);
  if (files.length === 0) {
    throw new DataError(`No files match ${name} (${found.entries} entries looked at under ${root})`);
  }
  return _capped(files, name);
}

function _byPath(a: _File, b: _File): number {
  return a.path < b.path ? -1 : a.path > b.path ? 1 : 0;
}

function _capped(files: _File[], name: string): _File[] {
  if (files.length > MAX_SOURCE_FILES) {
    throw new DataError(`${name}: ${files.length} files; the limit is ${MAX_SOURCE_FILES} files per source`);
  }
  return files;
}

/** Walks `dir` up to `maxDepth` levels, following symlinked directories but refusing loops. */
async function _walkFrom(dir: string, maxDepth: number, name: string): Promise<_Found> {
  const found: _Found = { files: [], bad: [], entries: 0, visited: new Set([]) };
  let real: string;
  try {
    real = await Deno.realPath(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DataError(`${name}: no such directory: ${resolve(dir)}`);
    throw new DataError(`${name}: ${dir} cannot be read: ${(e as Error).message}`);
  }
  found.visited.add(real);
  await _walk(dir, [real], maxDepth, found, name);
  return found;
}

async function _walk(dir: string, ancestors: string[], depthLeft: number, found: _Found, name: string) {
  const pseudo = _pseudoRoot(ancestors.at(-1)!);
  if (pseudo) {
    found.bad.push({ path: dir, what: `is a directory of kernel pseudo-files under ${pseudo}` });
    return;
  }
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch (e) {
    throw new DataError(`${name}: the directory ${dir} cannot be read: ${(e as Error).message}`);
  }
  found.entries += entries.length;
  if (found.entries > MAX_WALK_ENTRIES) {
    throw new DataError(
      `${name}: more than ${MAX_WALK_ENTRIES} directory entries to look through; name fewer`,
    );
  }
  for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    const p = dir === "/" ? `/${e.name}` : `${dir}/${e.name}`;
    if (e.isFile) {
      if (depthLeft >= 1) {
        const st = await Deno.lstat(p);
        found.files.push({ path: p, size: st.size, mtimeMs: _mtime(st) });
      }
      continue;
    }
    const { info, what } = e.isDirectory ? { info: null, what: null } : await _classify(p);
    if (what !== null) {
      found.bad.push({ path: p, what });
      continue;
    }
    if (info?.isFile) {
      if (depthLeft >= 1) found.files.push({ path: p, size: info.size, mtimeMs: _mtime(info) });
      continue;
    }
    // A directory, or a symlink to one.
    if (depthLeft <= 1) continue;
    const real = await Deno.realPath(p);
    if (ancestors.includes(real)) {
      found.bad.push({ path: p, what: `is a symlink loop (back to ${real})` });
      continue;
    }
    if (found.visited.has(real)) continue; // another link to a directory already walked: its files once
    found.visited.add(real);
    if (ancestors.length > MAX_WALK_DEPTH) {
      throw new DataError(`${name}: ${p} is nested deeper than ${MAX_WALK_DEPTH} directories`);
    }
    await _walk(p, [...ancestors, real], depthLeft - 1, found, name);
  }
}

/** Converts a glob (`*`, `**`, `?`, `[abc]`) to an anchored RegExp over `/`-separated paths. */
export function globToRegExp(glob: string): RegExp {
  let re = "";
  const g = glob.replace(/^\.\//, "");
  for (let i = 0; i < g.length; i++) {
    const c = g[i]!;
    if (c === "*" && g[i + 1] === "*") {
      re += g[i + 2] === "/" ? "(?:.*/)?" : ".*";
      i += g[i + 2] === "/" ? 2 : 1;
    } else if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else if (c === "[") {
      const end = g.indexOf("]", i);
      if (end < 0) re += "\\[";
      else re += g.slice(i, end + 1), i = end;
    } else re += c.replace(/[.+^${}()|\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

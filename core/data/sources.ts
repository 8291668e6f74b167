/**
 * Text sources named by `data.source`: `synthetic:multidomain`, a file, a directory (every regular file under
 * it, sorted) or a glob (`data/**\/*.txt`). Files must be UTF-8; an invalid sequence is reported with the
 * file and byte offset, never crashed on.
 *
 * @module
 */
import { DOMAINS, generateMultidomain } from "./synthetic.ts";

/** A data source could not be read; the message names the source and the problem. */
export class DataError extends Error {
  override name = "DataError";
}

/** The bytes of a source and, for synthetic sources, each byte's domain id. */
export interface SourceText {
  bytes: Uint8Array; // (n,)
  domains: Uint8Array | null; // (n,) or null when the source has no domain labels
  domainNames: readonly string[];
  files: readonly string[]; // files read, in order (empty for synthetic)
}

/** Options of {@linkcode readSource}. */
export interface ReadSourceOptions {
  seed: number;
  syntheticBytes: number;
  /** Directory relative paths are resolved against (the config file's directory). */
  baseDir?: string;
}

/** Reads `source` (see module docs). */
export async function readSource(source: string, options: ReadSourceOptions): Promise<SourceText> {
  if (source.startsWith("synthetic:")) {
    const kind = source.slice("synthetic:".length);
    if (kind !== "multidomain") {
      throw new DataError(`Unknown synthetic source: "${source}" (available: synthetic:multidomain)`);
    }
    const { bytes, domains } = generateMultidomain(options.seed, options.syntheticBytes);
    return { bytes, domains, domainNames: DOMAINS, files: [] };
  }
  const files = await _expand(_resolve(source, options.baseDir));
  if (files.length === 0) throw new DataError(`No files match data.source "${source}"`);
  const parts: Uint8Array[] = [];
  for (const f of files) {
    let data: Uint8Array;
    try {
      data = await Deno.readFile(f);
    } catch (e) {
      throw new DataError(`Cannot read ${f}: ${(e as Error).message}`);
    }
    const bad = firstInvalidUtf8(data);
    if (bad >= 0) {
      throw new DataError(
        `${f}: invalid UTF-8 at byte ${bad} (0x${data[bad]!.toString(16)}); re-encode the file as UTF-8`,
      );
    }
    parts.push(data);
  }
  const total = parts.reduce((n, p) => n + p.length, 0);
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const p of parts) bytes.set(p, at), at += p.length;
  return { bytes, domains: null, domainNames: [], files };
}

/**
 * Offset of the first byte that starts an invalid UTF-8 sequence, or -1 when all of `b` is valid.
 *
 * @example
 * ```ts
 * import { firstInvalidUtf8 } from "./sources.ts";
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

function _resolve(path: string, baseDir?: string): string {
  return baseDir && !path.startsWith("/") ? `${baseDir}/${path}` : path;
}

async function _expand(pattern: string): Promise<string[]> {
  if (!/[*?[]/.test(pattern)) {
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(pattern);
    } catch {
      throw new DataError(`data.source "${pattern}" does not exist`);
    }
    return info.isDirectory ? (await _walk(pattern)).sort() : [pattern];
  }
  const first = pattern.search(/[*?[]/);
  const root = pattern.slice(0, pattern.lastIndexOf("/", first) + 1) || ".";
  const re = globToRegExp(pattern);
  const all = await _walk(root.replace(/\/$/, "") || ".");
  return all.filter((f) => re.test(f.replace(/^\.\//, ""))).sort();
}

async function _walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) out.push(...await _walk(p));
    else if (e.isFile) out.push(p);
  }
  return out;
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

/**
 * Loading an experiment: read the YAML, resolve `extends` (bases first, the extending file wins), apply
 * `--set` overrides, validate, freeze, and expand the sweep. Every failure is a `ConfigError` naming the
 * file, line, column and key path.
 *
 * @module
 */
import { describeFileKind } from "../util/fs.ts";
import { dirname, isAbsolute, join, normalize, resolve } from "node:path";
import {
  ConfigError,
  type ConfigIssue,
  describeValue,
  formatKeyPath,
  issueAt,
  quoteClipped,
  type SourcePos,
} from "./errors.ts";
import { applySets, applySweeps, mergeSourced, withoutKey } from "./overrides.ts";
import type { Experiment } from "./schema.ts";
import { expandSweep, sweepId, type SweepPoint } from "./sweep.ts";
import { deepFreeze, validateExperiment } from "./validate.ts";
import { isPlainMap, MAX_FILE_BYTES, parseYaml, type Sourced } from "./yaml_source.ts";

/** A loaded experiment: the resolved base config and the points to run. */
export interface LoadedExperiment {
  /** The file as the caller named it. */
  file: string;
  /** Base config after `extends` and `--set`, validated and deep-frozen (`sweep` kept). */
  config: Readonly<Experiment>;
  /** One point per run; a single point (index 0, no params) when there is no `sweep` block. */
  points: SweepPoint[];
  /** Stable hash of the resolved base config and its sweep block when sweeping, else null. */
  sweepId: string | null;
}

/** Options of `loadExperiment` and `parseExperimentText`. */
export interface LoadOptions {
  /** `key=value` overrides (the CLI's `--set`), applied after `extends`, in order. */
  sets?: readonly string[];
  /** `key=v1,v2,…` grid axes (the CLI's `--sweep`), added to the `sweep:` block after the `--set`s. */
  sweeps?: readonly string[];
}

/** Longest `extends` chain followed. */
export const MAX_EXTENDS_DEPTH = 32;
/** Most distinct files one config may read, itself and everything it `extends` (each read once). */
export const MAX_EXTENDS_FILES = 64;
/** Most bytes the files of one config and its `extends` graph may hold together (4 MiB). */
export const MAX_EXTENDS_BYTES = 4 << 20;
/** Most paths one `extends` list may name. */
export const MAX_EXTENDS_LIST = 16;

interface _Link {
  abs: string;
  display: string;
}
interface _Target {
  target: string;
  at: SourcePos;
  keyPath: string;
}
/** A file resolved with its bases; `height`: the longest `extends` chain it starts (1: it extends nothing). */
interface _Resolved {
  tree: Sourced;
  height: number;
}
/**
 * One load's `extends` graph: each file is read, parsed and resolved once (by absolute path), however many
 * paths lead to it, and the files and bytes read are counted against the limits above.
 */
interface _Graph {
  done: Map<string, _Resolved>;
  files: number;
  bytes: number;
}

/**
 * Loads, resolves, validates and expands an experiment file. Throws `ConfigError` on any problem.
 *
 * @example
 * ```ts
 * import { loadExperiment } from "./load.ts";
 * const { config, points } = await loadExperiment("configs/dsmoe-tiny.yaml", { sets: ["train.steps=300"] });
 * if (config.train.steps !== 300 || points.length !== 1) throw new Error("bad");
 * ```
 */
export async function loadExperiment(file: string, options: LoadOptions = {}): Promise<LoadedExperiment> {
  const at: SourcePos = { file, line: 1, col: 1 };
  let text: string;
  try {
    _checkFileInfo(await Deno.stat(file), file, at, "");
    text = _readConfigText(file, at, "", "");
  } catch (e) {
    throw _readError(e, file, at, "", file);
  }
  return parseExperimentText(text, file, options);
}

/**
 * Like `loadExperiment` for text already in memory; `file` names it in messages and anchors relative
 * `extends` paths (which are read from disk only when the text has an `extends` key).
 *
 * @example
 * ```ts
 * import { parseExperimentText } from "./load.ts";
 * const { config, sweepId } = parseExperimentText("model: {d_model: 64}\n", "inline.yaml");
 * if (config.model.d_model !== 64 || config.model.layers !== 4 || sweepId !== null) throw new Error("bad");
 * ```
 */
export function parseExperimentText(text: string, file: string, options: LoadOptions = {}): LoadedExperiment {
  const own = parseYaml(text, file);
  const graph: _Graph = { done: new Map(), files: 1, bytes: new TextEncoder().encode(text).length };
  const merged = _resolveExtends(own, file, [{ abs: resolve(file), display: file }], graph).tree;
  const tree = applySweeps(applySets(merged, options.sets ?? []), options.sweeps ?? []);
  const config = deepFreeze(validateExperiment(tree));
  const points = expandSweep(config, tree);
  // Where runs are stored is not part of what they are: the same sweep has one id in any store.
  return { file, config, points, sweepId: config.sweep ? sweepId({ ...config, store: undefined }) : null };
}

function _resolveExtends(tree: Sourced, file: string, chain: _Link[], graph: _Graph): _Resolved {
  const root = _rootMap(tree, file);
  if (!Object.hasOwn(root.value as object, "extends")) return { tree: root, height: 1 };
  let acc: Sourced | null = null, height = 1;
  for (const t of _extendsTargets(root)) {
    const base = _loadBase(t, file, chain, graph);
    acc = acc ? mergeSourced(acc, base.tree) : base.tree;
    height = Math.max(height, base.height + 1);
  }
  const own = withoutKey(root, "extends");
  return { tree: acc ? mergeSourced(acc, own) : own, height };
}

function _rootMap(tree: Sourced, file: string): Sourced {
  if (tree.value === null) return { value: {}, src: { ...tree.src, kids: new Map() } };
  if (isPlainMap(tree.value)) return tree;
  throw new ConfigError([
    issueAt({ file, line: 1, col: 1 }, "", `expected a map of settings, got ${_rootKind(tree.value)}`),
  ]);
}

/** What a document that is not a map holds, without quoting it (it may be some other file's secrets). */
function _rootKind(value: unknown): string {
  if (Array.isArray(value)) return `a list of ${value.length}`;
  if (typeof value === "string") {
    return `a single text value of ${value.length} characters (not shown): this is not a YAML config`;
  }
  return `a single ${typeof value} value: this is not a YAML config`;
}

function _extendsTargets(root: Sourced): _Target[] {
  const ext = (root.value as Record<string, unknown>).extends;
  const src = root.src.kids?.get("extends") ?? root.src;
  const issues: ConfigIssue[] = [], targets: _Target[] = [];
  const one = (v: unknown, at: SourcePos, keyPath: string) => {
    if (typeof v !== "string" || v.trim() === "") {
      issues.push(issueAt(at, keyPath, `expected a file path, got ${describeValue(v)}`));
    } else if (!/\.ya?ml$/i.test(v)) {
      issues.push(issueAt(at, keyPath, `${quoteClipped(v, 120)} is not a .yaml or .yml file`));
    } else targets.push({ target: v, at, keyPath });
  };
  if (Array.isArray(ext)) {
    if (ext.length > MAX_EXTENDS_LIST) {
      issues.push(
        issueAt(src.at, "extends", `${ext.length} paths; an extends list holds at most ${MAX_EXTENDS_LIST}`),
      );
    } else ext.forEach((v, i) => one(v, (src.kids?.get(i) ?? src).at, formatKeyPath(["extends", i])));
  } else if (typeof ext === "string") one(ext, src.at, "extends");
  else {issues.push(
      issueAt(src.at, "extends", `expected a path or a list of paths, got ${describeValue(ext)}`),
    );}
  if (issues.length > 0) throw new ConfigError(issues);
  return targets;
}

function _loadBase(t: _Target, fromFile: string, chain: _Link[], graph: _Graph): _Resolved {
  const display = isAbsolute(t.target) ? normalize(t.target) : join(dirname(fromFile), t.target);
  const abs = resolve(display);
  const loop = chain.findIndex((l) => l.abs === abs);
  if (loop >= 0) {
    const names = [...chain.slice(loop).map((l) => l.display), display].join(" → ");
    throw new ConfigError([issueAt(t.at, t.keyPath, `extends cycle: ${names}`)]);
  }
  // A file resolved before (another path of a diamond) is reused; its chains must still fit the depth.
  const done = graph.done.get(abs);
  if (chain.length >= MAX_EXTENDS_DEPTH || (done && chain.length + done.height > MAX_EXTENDS_DEPTH)) {
    throw new ConfigError([issueAt(t.at, t.keyPath, `extends chain deeper than ${MAX_EXTENDS_DEPTH} files`)]);
  }
  if (done) return done;
  let text: string;
  try {
    const info = Deno.statSync(display);
    _checkFileInfo(info, display, t.at, t.keyPath);
    _countFile(graph, info.size, t);
    text = _readConfigText(display, t.at, t.keyPath, `"${display}" `);
  } catch (e) {
    throw _readError(e, display, t.at, t.keyPath, t.target);
  }
  const r = _resolveExtends(parseYaml(text, display), display, [...chain, { abs, display }], graph);
  graph.done.set(abs, r);
  return r;
}

/** Counts one more file of `size` bytes against the graph's limits. */
function _countFile(graph: _Graph, size: number, t: _Target): void {
  if (graph.files + 1 > MAX_EXTENDS_FILES) {
    throw new ConfigError([
      issueAt(
        t.at,
        t.keyPath,
        `the extends graph reads more than ${MAX_EXTENDS_FILES} files; the limit is ${MAX_EXTENDS_FILES}`,
      ),
    ]);
  }
  if (graph.bytes + size > MAX_EXTENDS_BYTES) {
    throw new ConfigError([
      issueAt(
        t.at,
        t.keyPath,
        `the extends graph holds more than 4 MiB (${MAX_EXTENDS_BYTES} bytes) in all; ` +
          `${graph.bytes} bytes read before this file of ${size}`,
      ),
    ]);
  }
  graph.files++;
  graph.bytes += size;
}

/**
 * Reads a config file as UTF-8 text, at most `MAX_FILE_BYTES` of it (the size `stat` gives is not trusted:
 * pseudo-files report 0). A file with a NUL byte or invalid UTF-8 is refused without quoting any of it.
 * `what` prefixes the message (the path, for an `extends` target).
 */
function _readConfigText(path: string, at: SourcePos, keyPath: string, what: string): string {
  const bytes = _readBounded(path);
  const refuse = (why: string) => {
    throw new ConfigError([issueAt(at, keyPath, `${what}is not a YAML text file: ${why}`)]);
  };
  if (bytes.length > MAX_FILE_BYTES) {
    throw new ConfigError([
      issueAt(
        { file: path, line: 1, col: 1 },
        "",
        `file is too large: the limit is 1 MiB (${MAX_FILE_BYTES} bytes)`,
      ),
    ]);
  }
  const nul = bytes.indexOf(0);
  if (nul >= 0) refuse(`it holds a NUL byte at offset ${nul} (a binary file?)`);
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return refuse("it is not valid UTF-8");
  }
}

/** Up to `MAX_FILE_BYTES` + 1 bytes of a file (one more than allowed tells that it is too large). */
function _readBounded(path: string): Uint8Array {
  using f = Deno.openSync(path, { read: true });
  const buf = new Uint8Array(MAX_FILE_BYTES + 1);
  let n = 0;
  while (n < buf.length) {
    const got = f.readSync(buf.subarray(n));
    if (got === null) break;
    n += got;
  }
  return buf.subarray(0, n);
}

function _checkFileInfo(info: Deno.FileInfo, path: string, at: SourcePos, keyPath: string): void {
  if (!info.isFile) {
    throw new ConfigError([issueAt(at, keyPath, `"${path}" is ${describeFileKind(info)}, not a file`)]);
  }
  // Kernel pseudo-files claim size 0 and may block when read (/proc/kmsg) or hold secrets (/proc/*/environ).
  const real = Deno.realPathSync(path);
  if (/^\/(proc|sys)(\/|$)/.test(real)) {
    throw new ConfigError([
      issueAt(at, keyPath, `"${path}" is a kernel pseudo-file (${real}), not a config`),
    ]);
  }
  if (info.size > MAX_FILE_BYTES) {
    throw new ConfigError([
      issueAt(
        { file: path, line: 1, col: 1 },
        "",
        `file is too large: ${info.size} bytes; the limit is 1 MiB (${MAX_FILE_BYTES} bytes)`,
      ),
    ]);
  }
}

function _readError(e: unknown, path: string, at: SourcePos, keyPath: string, asWritten: string): Error {
  if (e instanceof ConfigError) return e;
  if (e instanceof Deno.errors.NotFound) {
    // The config file itself has no line to point at: the message alone. A base names its `extends` entry.
    const message = `no such file: ${resolve(path)}`;
    if (keyPath === "" && asWritten === path) {
      return new ConfigError([{ ...at, line: 0, col: 0, keyPath, message }]);
    }
    return new ConfigError([issueAt(at, keyPath, `${message} (written "${asWritten}")`)]);
  }
  if (e instanceof Error) {
    return new ConfigError([issueAt(at, keyPath, `cannot read "${path}": ${e.message}`)]);
  }
  return new ConfigError([issueAt(at, keyPath, `cannot read "${path}"`)]);
}

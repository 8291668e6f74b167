/**
 * Loading an experiment: read the YAML, resolve `extends` (bases first, the extending file wins), apply
 * `--set` overrides, validate, freeze, and expand the sweep. Every failure is a `ConfigError` naming the
 * file, line, column and key path.
 *
 * @module
 */
import { dirname, isAbsolute, join, normalize, resolve } from "node:path";
import {
  ConfigError,
  type ConfigIssue,
  describeValue,
  formatKeyPath,
  issueAt,
  type SourcePos,
} from "./errors.ts";
import { applySets, mergeSourced, withoutKey } from "./overrides.ts";
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
}

/** Longest `extends` chain followed. */
export const MAX_EXTENDS_DEPTH = 32;

interface _Link {
  abs: string;
  display: string;
}
interface _Target {
  target: string;
  at: SourcePos;
  keyPath: string;
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
    text = await Deno.readTextFile(file);
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
  const merged = _resolveExtends(own, file, [{ abs: resolve(file), display: file }]);
  const tree = applySets(merged, options.sets ?? []);
  const config = deepFreeze(validateExperiment(tree));
  const points = expandSweep(config, tree);
  // Where runs are stored is not part of what they are: the same sweep has one id in any store.
  return { file, config, points, sweepId: config.sweep ? sweepId({ ...config, store: undefined }) : null };
}

function _resolveExtends(tree: Sourced, file: string, chain: _Link[]): Sourced {
  const root = _rootMap(tree, file);
  if (!Object.hasOwn(root.value as object, "extends")) return root;
  let acc: Sourced | null = null;
  for (const t of _extendsTargets(root)) {
    const base = _loadBase(t, file, chain);
    acc = acc ? mergeSourced(acc, base) : base;
  }
  const own = withoutKey(root, "extends");
  return acc ? mergeSourced(acc, own) : own;
}

function _rootMap(tree: Sourced, file: string): Sourced {
  if (tree.value === null) return { value: {}, src: { ...tree.src, kids: new Map() } };
  if (isPlainMap(tree.value)) return tree;
  throw new ConfigError([
    issueAt({ file, line: 1, col: 1 }, "", `expected a map of settings, got ${describeValue(tree.value)}`),
  ]);
}

function _extendsTargets(root: Sourced): _Target[] {
  const ext = (root.value as Record<string, unknown>).extends;
  const src = root.src.kids?.get("extends") ?? root.src;
  const issues: ConfigIssue[] = [], targets: _Target[] = [];
  const one = (v: unknown, at: SourcePos, keyPath: string) => {
    if (typeof v === "string" && v.trim() !== "") targets.push({ target: v, at, keyPath });
    else issues.push(issueAt(at, keyPath, `expected a file path, got ${describeValue(v)}`));
  };
  if (Array.isArray(ext)) {
    ext.forEach((v, i) => one(v, (src.kids?.get(i) ?? src).at, formatKeyPath(["extends", i])));
  } else if (typeof ext === "string") one(ext, src.at, "extends");
  else {issues.push(
      issueAt(src.at, "extends", `expected a path or a list of paths, got ${describeValue(ext)}`),
    );}
  if (issues.length > 0) throw new ConfigError(issues);
  return targets;
}

function _loadBase(t: _Target, fromFile: string, chain: _Link[]): Sourced {
  const display = isAbsolute(t.target) ? normalize(t.target) : join(dirname(fromFile), t.target);
  const abs = resolve(display);
  const loop = chain.findIndex((l) => l.abs === abs);
  if (loop >= 0) {
    const names = [...chain.slice(loop).map((l) => l.display), display].join(" → ");
    throw new ConfigError([issueAt(t.at, t.keyPath, `extends cycle: ${names}`)]);
  }
  if (chain.length >= MAX_EXTENDS_DEPTH) {
    throw new ConfigError([issueAt(t.at, t.keyPath, `extends chain deeper than ${MAX_EXTENDS_DEPTH} files`)]);
  }
  let text: string;
  try {
    _checkFileInfo(Deno.statSync(display), display, t.at, t.keyPath);
    text = Deno.readTextFileSync(display);
  } catch (e) {
    throw _readError(e, display, t.at, t.keyPath, t.target);
  }
  return _resolveExtends(parseYaml(text, display), display, [...chain, { abs, display }]);
}

function _checkFileInfo(info: Deno.FileInfo, path: string, at: SourcePos, keyPath: string): void {
  if (!info.isFile) throw new ConfigError([issueAt(at, keyPath, `"${path}" is not a file`)]);
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
    const where = asWritten === path ? "" : ` (looked for ${path})`;
    return new ConfigError([issueAt(at, keyPath, `cannot find "${asWritten}"${where}`)]);
  }
  if (e instanceof Error) {
    return new ConfigError([issueAt(at, keyPath, `cannot read "${path}": ${e.message}`)]);
  }
  return new ConfigError([issueAt(at, keyPath, `cannot read "${path}"`)]);
}

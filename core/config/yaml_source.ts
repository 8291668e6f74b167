/**
 * YAML text → plain values plus a parallel tree of source positions, so that any key path of the merged,
 * validated config can be traced back to the file, line and column it was written at.
 *
 * Strict by design: YAML 1.2 core schema, unique keys, every parser warning (an unknown tag such as
 * `!!python/object`) is an error, numbers must be finite and within ±2^53, integers must survive as JS
 * numbers, aliases may not explode (alias bombs) or refer to themselves, and files over 1 MiB or nested
 * deeper than 64 levels are refused before they can exhaust memory or the stack.
 *
 * @module
 */
import {
  type Alias,
  type Document,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  parseDocument,
  type Scalar,
  visit,
  type YAMLError,
  type YAMLMap,
  type YAMLSeq,
} from "yaml";
import {
  ConfigError,
  type ConfigIssue,
  describeKey,
  formatKeyPath,
  issueAt,
  MAX_QUOTED_CHARS,
  quoteClipped,
  type SourcePos,
} from "./errors.ts";
import { MAX_SAFE_NUMBER } from "./schema.ts";

/** Largest config file accepted, in bytes (1 MiB). */
export const MAX_FILE_BYTES = 1 << 20;
/** Deepest nesting of maps and lists accepted. */
export const MAX_DEPTH = 64;
/** Alias expansions allowed by `yaml`'s own alias-bomb guard. */
export const MAX_ALIAS_COUNT = 100;
const _MAX_NODES = 100_000;

/** Where a value (and the key that names it) was written; `kids` mirrors the map keys or list indices. */
export interface SourceNode {
  key: SourcePos | null;
  at: SourcePos;
  kids: Map<string | number, SourceNode> | null;
}

/** A plain value (maps are plain objects) with its source tree. */
export interface Sourced {
  value: unknown;
  src: SourceNode;
}

/** Where the text starts, for text cut out of a larger one (a `--set` value sits after `key=`). */
export interface ParseYamlOptions {
  line?: number;
  col?: number;
}

type _Path = readonly (string | number)[];
type _Ranged = { range: [number, number, number] };

/**
 * Parses one YAML document strictly. Throws `ConfigError` listing every problem found.
 *
 * @example
 * ```ts
 * import { parseYaml } from "./yaml_source.ts";
 * const { value, src } = parseYaml("model:\n  d_model: 64\n", "x.yaml");
 * const at = src.kids?.get("model")?.kids?.get("d_model")?.at;
 * if (at?.line !== 2 || at.col !== 12 || (value as { model: { d_model: number } }).model.d_model !== 64) {
 *   throw new Error("bad");
 * }
 * ```
 */
export function parseYaml(text: string, file: string, options: ParseYamlOptions = {}): Sourced {
  const line0 = options.line ?? 1, col0 = options.col ?? 1;
  const shift = (line: number, col: number): SourcePos => ({
    file,
    line: line + line0 - 1,
    col: line === 1 ? col + col0 - 1 : col,
  });
  _checkSize(text, shift(1, 1));
  const deep = _flowDepthProblem(text);
  if (deep !== null) {
    const { line, col } = _linePos(text, deep);
    throw new ConfigError([issueAt(shift(line, col), _topKeyBefore(text, deep), _deepMessage())]);
  }
  try {
    return _parseChecked(text, shift);
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    // yaml throws ReferenceError for alias trouble; the stack can still overflow on pathological input.
    if (e instanceof RangeError || e instanceof ReferenceError) {
      throw new ConfigError([issueAt(shift(1, 1), "", `the YAML could not be read safely: ${e.message}`)]);
    }
    throw e;
  }
}

/** The position of a key path: the value (or, with `"key"`, the key); the nearest written parent if absent. */
export function positionOf(src: SourceNode, path: _Path, kind: "key" | "value"): SourcePos {
  let node = src;
  for (const seg of path) {
    const next = node.kids?.get(seg);
    if (!next) return node.key ?? node.at;
    node = next;
  }
  return kind === "key" ? (node.key ?? node.at) : node.at;
}

/** The value at a key path of a plain value, or `undefined`. */
export function valueAt(value: unknown, path: _Path): unknown {
  let v = value;
  for (const seg of path) {
    if (v === null || typeof v !== "object" || !Object.hasOwn(v, seg)) return undefined;
    v = (v as Record<string | number, unknown>)[seg];
  }
  return v;
}

/** True for a plain map (an object that is not a list). */
export function isPlainMap(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/** Sets an own property even for keys such as `__proto__` (which plain assignment would misread). */
export function putKey(obj: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

function _parseChecked(text: string, shift: (line: number, col: number) => SourcePos): Sourced {
  const lc = new LineCounter();
  const doc = parseDocument(text, {
    lineCounter: lc,
    version: "1.2",
    schema: "core",
    uniqueKeys: true,
    prettyErrors: true,
  });
  const pos = (offset: number) => {
    const { line, col } = lc.linePos(offset);
    return shift(line, col);
  };
  const problems = [...doc.errors, ...doc.warnings];
  if (problems.length > 0) throw new ConfigError(problems.map((e) => _yamlIssue(e, doc, text, pos)));
  _aliasBombGuard(doc, pos);
  const conv = new _Converter(doc, pos), root = shift(1, 1);
  try {
    const result = conv.convert(doc.contents, [], null, root);
    if (conv.issues.length === 0) return { value: result.value, src: { ...result.src, at: root } };
  } catch (e) {
    if (e !== _STOP) throw e;
  }
  throw new ConfigError(conv.issues);
}

function _checkSize(text: string, at: SourcePos): void {
  // UTF-8 never takes fewer bytes than UTF-16 code units, so long text is refused without encoding it.
  if (text.length > MAX_FILE_BYTES || new TextEncoder().encode(text).length > MAX_FILE_BYTES) {
    throw new ConfigError([
      issueAt(at, "", `file is too large: the limit is 1 MiB (${MAX_FILE_BYTES} bytes)`),
    ]);
  }
}

function _deepMessage(): string {
  return `nesting deeper than ${MAX_DEPTH} levels`;
}

/** Offset of the first flow bracket nested deeper than `MAX_DEPTH`, found without the (recursive) parser. */
function _flowDepthProblem(text: string): number | null {
  let depth = 0, quote = "", prev = "\n";
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    if (quote) {
      if (quote === '"' && c === "\\") i++;
      else if (c === quote && quote === "'" && text[i + 1] === "'") i++;
      else if (c === quote) [quote, prev] = ["", c];
      continue;
    }
    if (c === "#" && (i === 0 || /\s/.test(text[i - 1] as string))) {
      const nl = text.indexOf("\n", i);
      i = (nl < 0 ? text.length : nl) - 1;
      continue;
    }
    const opensScalar = "\n:-,[{?".includes(prev);
    if ((c === '"' || c === "'") && opensScalar) quote = c;
    else if ((c === "[" || c === "{") && opensScalar && ++depth > MAX_DEPTH) return i;
    else if (c === "]" || c === "}") depth = Math.max(0, depth - 1);
    if (c !== " " && c !== "\t" && c !== "\r") prev = c;
  }
  return null;
}

function _linePos(text: string, offset: number): { line: number; col: number } {
  let line = 1, start = 0;
  for (let i = text.indexOf("\n"); i >= 0 && i < offset; i = text.indexOf("\n", i + 1)) {
    [line, start] = [line + 1, i + 1];
  }
  return { line, col: offset - start + 1 };
}

/** The top-level block key whose value contains `offset` (best effort; "" when there is none). */
function _topKeyBefore(text: string, offset: number): string {
  const lines = text.slice(0, offset).split("\n").reverse();
  for (const l of lines) {
    const m = /^([A-Za-z_][A-Za-z0-9_.-]*)\s*:/.exec(l);
    if (m) return m[1] as string;
  }
  return "";
}

function _yamlIssue(e: YAMLError, doc: Document, text: string, pos: (o: number) => SourcePos): ConfigIssue {
  let at = e.pos[0];
  while (text[at] === " " || text[at] === "\t") at++; // an indentation error is about the key after it
  const path = _pathAt(doc.contents, at, 0);
  let message: string;
  switch (e.code) {
    case "DUPLICATE_KEY":
      message = `duplicate key ${describeKey(String(path[path.length - 1] ?? ""))}`;
      break;
    case "TAG_RESOLVE_FAILED":
      message = `unknown YAML tag ${
        quoteClipped(text.slice(e.pos[0], Math.min(e.pos[1], e.pos[0] + 200)))
      }; configs use plain YAML 1.2 values`;
      break;
    case "MULTIPLE_DOCS":
      message = "a config is one YAML document; remove the `---` separator";
      break;
    case "RESOURCE_EXHAUSTION":
      message = `${_deepMessage()} (the YAML parser ran out of stack)`;
      break;
    default: {
      const first = (e.message.split("\n")[0] ?? "").replace(/ at line \d+, column \d+:?$/, "");
      message = _clipMessage(first.charAt(0).toLowerCase() + first.slice(1));
    }
  }
  return issueAt(pos(e.pos[0]), formatKeyPath(path), message);
}

/** A parser message cut to one short line (the parser may quote the text it stumbled on). */
function _clipMessage(message: string): string {
  const max = 2 * MAX_QUOTED_CHARS + 40;
  return message.length <= max ? message : `${message.slice(0, max - 1)}…`;
}

/** Key path of the innermost map entry or list item whose source contains `offset` (at most 8 deep). */
function _pathAt(node: unknown, offset: number, depth: number): (string | number)[] {
  if (depth >= 8) return [];
  if (isMap(node)) {
    for (const pair of node.items) {
      const k = pair.key as Partial<_Ranged> | null, v = pair.value as Partial<_Ranged> | null;
      const start = k?.range?.[0] ?? v?.range?.[0], end = Math.max(k?.range?.[1] ?? -1, v?.range?.[1] ?? -1);
      if (start === undefined || offset < start || offset > end) continue;
      const name = isScalar(pair.key) ? String(pair.key.value ?? "") : "?";
      const inValue = v?.range && offset >= v.range[0];
      return [name, ...(inValue ? _pathAt(pair.value, offset, depth + 1) : [])];
    }
  } else if (isSeq(node)) {
    const i = node.items.findIndex((it) => {
      const r = (it as Partial<_Ranged> | null)?.range;
      return r !== undefined && offset >= r[0] && offset <= r[1];
    });
    if (i >= 0) return [i, ..._pathAt(node.items[i], offset, depth + 1)];
  }
  return [];
}

/** `yaml`'s own guard against exponential alias expansion; it throws a ReferenceError we turn into an issue. */
function _aliasBombGuard(doc: Document, pos: (o: number) => SourcePos): void {
  try {
    doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT, mapAsMap: true });
  } catch (e) {
    if (!(e instanceof ReferenceError)) throw e;
    if (e.message.startsWith("Unresolved alias")) return; // reported with its position by the converter
    let first: Alias | null = null;
    visit(doc, {
      Alias(_, n) {
        first = n;
        return visit.BREAK;
      },
    });
    const at = (first as Alias | null)?.range?.[0] ?? 0;
    throw new ConfigError([
      issueAt(
        pos(at),
        formatKeyPath(_pathAt(doc.contents, at, 0)),
        `aliases expand too much (an alias bomb?): more than ${MAX_ALIAS_COUNT} expansions`,
      ),
    ]);
  }
}

const _STOP = Symbol("stop");

/** Walks the parsed document into plain values and source positions, collecting issues. */
class _Converter {
  readonly issues: ConfigIssue[] = [];
  #doc: Document;
  #pos: (offset: number) => SourcePos;
  #nodes = 0;
  #open = new Set<unknown>();

  constructor(doc: Document, pos: (offset: number) => SourcePos) {
    this.#doc = doc;
    this.#pos = pos;
  }

  convert(node: unknown, path: _Path, key: SourcePos | null, fallback: SourcePos): Sourced {
    const range = (node as Partial<_Ranged> | null)?.range;
    const at = range ? this.#pos(range[0]) : fallback;
    const leaf = (value: unknown): Sourced => ({ value, src: { key, at, kids: null } });
    if (++this.#nodes > _MAX_NODES) {
      this.#issue(at, path, `more than ${_MAX_NODES} values after expanding aliases`);
      throw _STOP;
    }
    if (path.length > MAX_DEPTH) {
      this.#issue(at, path.slice(0, 1), _deepMessage());
      throw _STOP;
    }
    if (isAlias(node)) return this.#alias(node, path, key, at);
    if (isMap(node)) return this.#map(node, path, key, at);
    if (isSeq(node)) return this.#seq(node, path, key, at);
    if (isScalar(node)) return leaf(this.#scalar(node, path, at));
    return leaf(null);
  }

  #issue(at: SourcePos, path: _Path, message: string): void {
    this.issues.push(issueAt(at, formatKeyPath(path), message));
  }

  #alias(node: Alias, path: _Path, key: SourcePos | null, at: SourcePos): Sourced {
    const target = node.resolve(this.#doc);
    if (!target) {
      this.#issue(
        at,
        path,
        `unknown alias ${quoteClipped(`*${node.source}`)} (define the anchor ${
          quoteClipped(`&${node.source}`)
        } before it)`,
      );
      return { value: null, src: { key, at, kids: null } };
    }
    if (this.#open.has(target)) {
      this.#issue(
        at,
        path,
        `alias ${quoteClipped(`*${node.source}`)} refers to a collection that contains it`,
      );
      return { value: null, src: { key, at, kids: null } };
    }
    const r = this.convert(target, path, key, at);
    return { value: r.value, src: { ...r.src, key, at } };
  }

  #map(node: YAMLMap, path: _Path, key: SourcePos | null, at: SourcePos): Sourced {
    const value: Record<string, unknown> = {}, kids = new Map<string | number, SourceNode>();
    this.#open.add(node);
    for (const pair of node.items) {
      const kr = (pair.key as Partial<_Ranged> | null)?.range;
      const keyPos = kr ? this.#pos(kr[0]) : at;
      if (!isScalar(pair.key)) {
        this.#issue(keyPos, path, "map keys must be plain text");
        continue;
      }
      const name = String(pair.key.value ?? "");
      if (Object.hasOwn(value, name)) {
        this.#issue(keyPos, [...path, name], `duplicate key ${JSON.stringify(name)}`);
        continue;
      }
      const child = this.convert(pair.value, [...path, name], keyPos, keyPos);
      putKey(value, name, child.value);
      kids.set(name, child.src);
    }
    this.#open.delete(node);
    return { value, src: { key, at, kids } };
  }

  #seq(node: YAMLSeq, path: _Path, key: SourcePos | null, at: SourcePos): Sourced {
    const value: unknown[] = [], kids = new Map<string | number, SourceNode>();
    this.#open.add(node);
    node.items.forEach((item, i) => {
      const child = this.convert(item, [...path, i], null, at);
      value.push(child.value);
      kids.set(i, child.src);
    });
    this.#open.delete(node);
    return { value, src: { key, at, kids } };
  }

  #scalar(node: Scalar, path: _Path, at: SourcePos): unknown {
    const v = node.value;
    if (typeof v === "number") {
      const problem = _numberProblem(v, (node.source ?? String(v)).trim());
      if (problem) this.#issue(at, path, problem);
    }
    return v;
  }
}

function _numberProblem(v: number, text: string): string | null {
  if (!Number.isFinite(v)) return `${text} is not a finite number`;
  const intLiteral = /^(0x[0-9a-fA-F]+|0o[0-7]+|[-+]?[0-9]+)$/.test(text);
  if (intLiteral && BigInt(text.replace(/^\+/, "")) !== BigInt(v)) {
    return `integer ${text} has more digits than a number can hold exactly (it would read as ${v})`;
  }
  if (Math.abs(v) > MAX_SAFE_NUMBER) return `${text} is too large: numbers must lie within ±2^53`;
  return null;
}

/**
 * The one error type of core/config: a `ConfigError` carries every problem found in a config, each with the
 * file, line, column and key path it is about, so that a user can fix them all in one pass.
 *
 * @module
 */

/** Where something was written: a file (as the user named it, or `--set`), 1-based line and column. */
export interface SourcePos {
  file: string;
  line: number;
  col: number;
}

/**
 * One problem in a config. `keyPath` is dotted (`model.mlp.experts`); "" means the whole file. Line 0: no
 * position (the file could not be opened); the message names the file.
 */
export interface ConfigIssue {
  file: string;
  line: number;
  col: number;
  keyPath: string;
  message: string;
}

/** At most this many issues are kept; more are summarized in one last issue. */
export const MAX_ISSUES = 20;

/**
 * A config that cannot be used. `message` lists the issues one per line as `file:line:col: key.path: message`.
 *
 * @example
 * ```ts
 * import { ConfigError } from "./errors.ts";
 * const e = new ConfigError([{ file: "x.yaml", line: 3, col: 5, keyPath: "seed", message: "expected an integer" }]);
 * if (e.message !== "x.yaml:3:5: seed: expected an integer") throw new Error(e.message);
 * ```
 */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
  /** Every problem found, in file order where known. */
  readonly issues: ConfigIssue[];

  constructor(issues: ConfigIssue[]) {
    const kept = capIssues(issues);
    super(kept.map(formatIssue).join("\n"));
    this.issues = kept;
  }
}

/**
 * Formats one issue as `file:line:col: key.path: message` (an empty key path reads `(root)`); one without a
 * position (line 0) is its message alone.
 */
export function formatIssue(issue: ConfigIssue): string {
  if (issue.line === 0) return issue.message; // about a file as a whole that could not be read: no position
  return `${issue.file}:${issue.line}:${issue.col}: ${issue.keyPath || "(root)"}: ${issue.message}`;
}

/** Builds an issue at a position. */
export function issueAt(pos: SourcePos, keyPath: string, message: string): ConfigIssue {
  return { file: pos.file, line: pos.line, col: pos.col, keyPath, message };
}

/** Keeps the first `MAX_ISSUES` issues (duplicates dropped) and says how many more there were. */
export function capIssues(issues: readonly ConfigIssue[]): ConfigIssue[] {
  const seen = new Set<string>();
  const unique = issues.filter((i) => {
    const k = formatIssue(i);
    return seen.has(k) ? false : (seen.add(k), true);
  });
  if (unique.length <= MAX_ISSUES) return unique;
  const last = unique[MAX_ISSUES - 1] as ConfigIssue;
  const more = unique.length - MAX_ISSUES + 1;
  return [...unique.slice(0, MAX_ISSUES - 1), { ...last, message: `${more} more problems not shown` }];
}

/** Longest piece of a config's text (a string value, an alias name) that a message quotes. */
export const MAX_QUOTED_CHARS = 40;

/**
 * Formats a key path: `model.mlp.experts`, list indices as `betas[1]`, odd keys quoted (`grid["a.b"]`).
 * A key that is not a plain name (spaces, `=`, quotes, …: likely a line of some other file read as YAML) is
 * not echoed: it reads `[…]`.
 *
 * @example
 * ```ts
 * import { formatKeyPath } from "./errors.ts";
 * if (formatKeyPath(["sweep", "grid", "loss.mi.mlp", 0]) !== 'sweep.grid["loss.mi.mlp"][0]') throw new Error();
 * if (formatKeyPath(["API_KEY=sk-123"]) !== "[…]") throw new Error();
 * ```
 */
export function formatKeyPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const seg of path) {
    if (typeof seg === "number") out += `[${seg}]`;
    else if (typeof seg === "string" && /^[A-Za-z_][A-Za-z0-9_-]{0,63}$/.test(seg)) {
      out += out ? `.${seg}` : seg;
    } else out += isShowableKey(String(seg)) ? `[${JSON.stringify(String(seg))}]` : "[…]";
  }
  return out;
}

/**
 * True for a key that messages may quote: 1 to 64 letters, digits, `_`, `-`, `.` or `/`. Other keys are
 * described by their length only, so that a file that is not a config (an environment file, a script) is
 * never echoed line by line.
 */
export function isShowableKey(key: string): boolean {
  return /^[\p{L}\p{N}_.\-/]{1,64}$/u.test(key);
}

/** A key for a message: quoted when {@linkcode isShowableKey}, else `a key of N characters (not shown)`. */
export function describeKey(key: string): string {
  return isShowableKey(key) ? JSON.stringify(key) : `a key of ${key.length} characters (not shown)`;
}

/**
 * `text` as one quoted line (JSON escapes), cut to `max` characters with "…" and the full length after.
 *
 * @example
 * ```ts
 * import { quoteClipped } from "./errors.ts";
 * if (quoteClipped("abcdef", 4) !== '"abc…" (6 characters)') throw new Error(quoteClipped("abcdef", 4));
 * ```
 */
export function quoteClipped(text: string, max = MAX_QUOTED_CHARS): string {
  if (text.length <= max) return JSON.stringify(text);
  let head = text.slice(0, max - 1);
  if (/[\uD800-\uDBFF]$/.test(head)) head = head.slice(0, -1); // never half a surrogate pair
  return `${JSON.stringify(head + "…")} (${text.length} characters)`;
}

/** Joins a formatted key path and a formatted sub-path (`a.b` + `c[0]` → `a.b.c[0]`). */
export function joinKeyPath(prefix: string, rest: string): string {
  if (!prefix || !rest) return prefix || rest;
  return rest.startsWith("[") ? prefix + rest : `${prefix}.${rest}`;
}

/** Describes a value for a message: strings quoted (long ones cut), numbers as written, maps and lists by kind. */
export function describeValue(value: unknown): string {
  if (value === undefined) return "nothing";
  if (value === null) return "null (an empty value)";
  if (typeof value === "string") return quoteClipped(value);
  if (Array.isArray(value)) return `a list of ${value.length}`;
  if (typeof value === "object") return "a map";
  return String(value);
}

/** `unknown key "x"` with a did-you-mean suggestion from the keys valid at that place. */
export function unknownKeyMessage(key: string, valid: readonly string[]): string {
  if (!isShowableKey(key)) return `unknown key: ${describeKey(key)}${suggestionHint("", valid)}`;
  return `unknown key ${JSON.stringify(key)}${suggestionHint(key, valid)}`;
}

/**
 * A hint for a misspelt word: ` (did you mean "experts"?)` when one candidate is close, otherwise the list
 * of candidates when it is short, otherwise "".
 *
 * @example
 * ```ts
 * import { suggestionHint } from "./errors.ts";
 * if (suggestionHint("expert", ["experts", "hidden"]) !== ' (did you mean "experts"?)') throw new Error();
 * ```
 */
export function suggestionHint(word: string, candidates: readonly string[]): string {
  const best = closestWord(word, candidates);
  if (best !== null) return ` (did you mean ${JSON.stringify(best)}?)`;
  if (candidates.length > 0 && candidates.length <= 12) {
    return ` (expected one of: ${candidates.join(", ")})`;
  }
  return "";
}

/** The candidate nearest to `word` by edit distance, if near enough to be a likely typo. */
export function closestWord(word: string, candidates: readonly string[]): string | null {
  let best: string | null = null, bestD = Infinity;
  for (const c of candidates) {
    const d = c.toLowerCase() === word.toLowerCase() ? 0 : editDistance(word, c);
    if (d < bestD) [best, bestD] = [c, d];
  }
  if (best === null) return null;
  const limit = Math.max(1, Math.floor(Math.max(word.length, best.length) / 3));
  return bestD <= limit ? best : null;
}

/** Levenshtein distance with adjacent transpositions counted as one edit. */
export function editDistance(a: string, b: string): number {
  let prev2: number[] = [], prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min((prev[j] ?? 0) + 1, (row[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d = Math.min(d, (prev2[j - 2] ?? 0) + 1);
      }
      row.push(d);
    }
    [prev2, prev] = [prev, row];
  }
  return prev[b.length] ?? 0;
}

/**
 * Validation of a merged config tree against `ExperimentSchema`, with every zod issue turned into a
 * `ConfigIssue` at the file, line and column the offending key or value was written at.
 *
 * An issue points at the value it is about; an unknown key points at the key; an issue about a key that
 * is not written (a default, e.g. `router.k` in a cross-field check) points at its nearest written parent.
 *
 * @module
 */
import type { z } from "zod";
import {
  ConfigError,
  type ConfigIssue,
  describeValue,
  formatKeyPath,
  issueAt,
  suggestionHint,
  unknownKeyMessage,
} from "./errors.ts";
import { type Experiment, ExperimentSchema } from "./schema.ts";
import { isIntegerAt, keysAt } from "./schema_paths.ts";
import { positionOf, type Sourced, valueAt } from "./yaml_source.ts";

type _Issue = z.core.$ZodIssue;
type _Path = (string | number)[];

/** Result of `checkExperiment`: the validated config, or every issue found. */
export type CheckResult = { ok: true; config: Experiment } | { ok: false; issues: ConfigIssue[] };

const _EXPECTED: Record<string, string> = {
  number: "a number",
  int: "an integer",
  string: "a string",
  boolean: "true or false",
  object: "a map",
  record: "a map",
  array: "a list",
  tuple: "a list",
  null: "null",
};

/**
 * Validates a tree (an empty document counts as `{}`), returning the config with defaults or the issues.
 *
 * @example
 * ```ts
 * import { checkExperiment } from "./validate.ts";
 * import { parseYaml } from "./yaml_source.ts";
 * const r = checkExperiment(parseYaml("seed: abc\n", "x.yaml"));
 * if (r.ok || r.issues[0]?.message !== 'expected an integer, got "abc"' || r.issues[0]?.col !== 7) {
 *   throw new Error("bad");
 * }
 * ```
 */
export function checkExperiment(tree: Sourced): CheckResult {
  const value = tree.value === null ? {} : tree.value;
  const r = ExperimentSchema.safeParse(value);
  if (r.success) return { ok: true, config: r.data };
  const t = { value, src: tree.src };
  return { ok: false, issues: r.error.issues.flatMap((i) => _toIssues(i, t, [])) };
}

/** Like `checkExperiment`, but throws `ConfigError`. */
export function validateExperiment(tree: Sourced): Experiment {
  const r = checkExperiment(tree);
  if (!r.ok) throw new ConfigError(r.issues);
  return r.config;
}

/**
 * Freezes a value and everything reachable from it.
 *
 * @example
 * ```ts
 * import { deepFreeze } from "./validate.ts";
 * const v = deepFreeze({ a: { b: [1] } });
 * if (!Object.isFrozen(v.a.b)) throw new Error("bad");
 * ```
 */
export function deepFreeze<T>(value: T, seen: WeakSet<object> = new WeakSet()): Readonly<T> {
  if (value === null || typeof value !== "object" || seen.has(value)) return value;
  seen.add(value);
  Object.freeze(value);
  for (const k of Object.keys(value)) deepFreeze((value as Record<string, unknown>)[k], seen);
  return value;
}

function _toIssues(issue: _Issue, tree: Sourced, prefix: _Path): ConfigIssue[] {
  const path: _Path = [...prefix, ...issue.path.map((p) => (typeof p === "number" ? p : String(p)))];
  switch (issue.code) {
    case "unrecognized_keys":
      return issue.keys.map((k) =>
        issueAt(
          positionOf(tree.src, [...path, k], "key"),
          formatKeyPath([...path, k]),
          unknownKeyMessage(k, keysAt(path)),
        )
      );
    case "invalid_union":
      return _unionIssues(issue, tree, path);
    default:
      return [
        issueAt(
          positionOf(tree.src, path, "value"),
          formatKeyPath(path),
          _message(issue, valueAt(tree.value, path), path),
        ),
      ];
  }
}

/** A union error: report the branch that fits the value's type, else say which types would do. */
function _unionIssues(issue: _Issue & { code: "invalid_union" }, tree: Sourced, path: _Path): ConfigIssue[] {
  const rootType = (i: _Issue) => i.code === "invalid_type" && i.path.length === 0;
  const fitting = issue.errors.find((branch) => branch.length > 0 && !branch.some(rootType));
  if (fitting) return fitting.flatMap((i) => _toIssues(i, tree, path));
  const expected = issue.errors.flat().flatMap((i) =>
    i.code === "invalid_type" && i.path.length === 0 ? [_EXPECTED[i.expected] ?? i.expected] : []
  );
  const got = describeValue(valueAt(tree.value, path));
  const message = expected.length > 0
    ? `expected ${[...new Set(expected)].join(" or ")}, got ${got}`
    : issue.message;
  return [issueAt(positionOf(tree.src, path, "value"), formatKeyPath(path), message)];
}

function _message(issue: _Issue, got: unknown, path: _Path): string {
  const desc = describeValue(got);
  switch (issue.code) {
    case "invalid_type":
      return _typeMessage(issue.expected === "number" && isIntegerAt(path) ? "int" : issue.expected, got);
    case "too_small":
    case "too_big":
      return _boundMessage(issue, got);
    case "invalid_value": {
      const hint = typeof got === "string" ? suggestionHint(got, issue.values.map(String)) : "";
      const listed = issue.values.map((v) => JSON.stringify(v)).join(", ");
      return `expected one of ${listed}, got ${desc}${hint.startsWith(" (did") ? hint : ""}`;
    }
    case "invalid_format":
      return `${issue.message}, got ${desc}`;
    case "not_multiple_of":
      return `must be a multiple of ${issue.divisor}, got ${desc}`;
    default:
      return issue.message;
  }
}

function _typeMessage(expected: string, got: unknown): string {
  if (expected === "boolean" && typeof got === "string") {
    const yes = /^(y|yes|on)$/i.test(got), no = /^(n|no|off)$/i.test(got);
    if (yes || no) return `${JSON.stringify(got)} is a string in YAML 1.2; write ${yes}`;
  }
  return `expected ${_EXPECTED[expected] ?? expected}, got ${describeValue(got)}`;
}

function _boundMessage(issue: _Issue & { code: "too_small" | "too_big" }, got: unknown): string {
  const small = issue.code === "too_small";
  const bound = String(small ? issue.minimum : issue.maximum);
  const desc = describeValue(got);
  switch (issue.origin) {
    case "array":
    case "set": {
      const n = Array.isArray(got) ? got.length : 0;
      const word = issue.exact ? "exactly" : small ? "at least" : "at most";
      return `expected ${word} ${bound} items, got ${n}`;
    }
    case "string":
      if (small && bound === "1") return "must not be empty";
      return `must be ${small ? "at least" : "at most"} ${bound} characters long, got ${desc}`;
    default: {
      const op = small ? (issue.inclusive ? "≥" : ">") : (issue.inclusive ? "≤" : "<");
      return `must be ${op} ${bound}, got ${desc}`;
    }
  }
}

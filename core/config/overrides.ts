/**
 * Layering of config sources, each keeping the positions it was written at: `extends` bases under the
 * file, then `--set key=value` arguments on top, then (per sweep point) the point's parameters.
 * Maps merge key by key and the later source wins; lists and scalars are replaced whole.
 *
 * @module
 */
import {
  ConfigError,
  type ConfigIssue,
  formatKeyPath,
  isShowableKey,
  issueAt,
  joinKeyPath,
  quoteClipped,
  type SourcePos,
} from "./errors.ts";
import { resolveDottedKey } from "./schema_paths.ts";
import { isPlainMap, parseYaml, putKey, type Sourced, type SourceNode } from "./yaml_source.ts";

/** The file name that issues about `--set` arguments carry (line 1, column = position in the argument). */
export const SET_FILE = "--set";
/** Longest `--set` argument accepted, in characters (16 KiB): long values belong in a config file. */
export const MAX_SET_CHARS = 16 << 10;

/**
 * Deep-merges `over` onto `base` without changing either: maps merge, `over` wins everywhere else. A map
 * present in both takes its position from `positions` (the extending file for `extends`; the file, not the
 * `--set` argument, for overrides).
 *
 * @example
 * ```ts
 * import { mergeSourced } from "./overrides.ts";
 * import { parseYaml } from "./yaml_source.ts";
 * const m = mergeSourced(parseYaml("a: {x: 1, y: 2}", "a.yaml"), parseYaml("a: {y: 3}", "b.yaml"));
 * if (JSON.stringify(m.value) !== '{"a":{"x":1,"y":3}}') throw new Error("bad");
 * if (m.src.kids?.get("a")?.kids?.get("y")?.at.file !== "b.yaml") throw new Error("bad");
 * ```
 */
export function mergeSourced(base: Sourced, over: Sourced, positions: "over" | "base" = "over"): Sourced {
  if (!isPlainMap(base.value) || !isPlainMap(over.value)) return over;
  const value: Record<string, unknown> = {}, kids = new Map(base.src.kids ?? []);
  for (const k of Object.keys(base.value)) putKey(value, k, base.value[k]);
  for (const k of Object.keys(over.value)) {
    const o: Sourced = { value: over.value[k], src: over.src.kids?.get(k) ?? over.src };
    const m = Object.hasOwn(base.value, k)
      ? mergeSourced({ value: base.value[k], src: base.src.kids?.get(k) ?? base.src }, o, positions)
      : o;
    putKey(value, k, m.value);
    kids.set(k, m.src);
  }
  const pos = positions === "over" ? over.src : base.src;
  return { value, src: { key: pos.key ?? base.src.key, at: pos.at, kids } };
}

/** The tree without one top-level key (e.g. `extends`, `sweep`). */
export function withoutKey(tree: Sourced, key: string): Sourced {
  if (!isPlainMap(tree.value) || !Object.hasOwn(tree.value, key)) return tree;
  const value: Record<string, unknown> = {}, kids = new Map(tree.src.kids ?? []);
  for (const k of Object.keys(tree.value)) if (k !== key) putKey(value, k, tree.value[k]);
  kids.delete(key);
  return { value, src: { ...tree.src, kids } };
}

/**
 * Sets `path` to `value` (merging when both are maps), creating the maps on the way. `keyPos[i]` is where
 * segment i was written; the root keeps its own position.
 */
export function setAt(
  tree: Sourced,
  path: readonly string[],
  value: Sourced,
  keyPos: readonly SourcePos[],
): Sourced {
  const last = path.length - 1;
  let patch: Sourced = { value: value.value, src: { ...value.src, key: keyPos[last] ?? value.src.key } };
  for (let i = last; i >= 0; i--) {
    const obj: Record<string, unknown> = {};
    putKey(obj, path[i] as string, patch.value);
    const parentPos = i > 0 ? (keyPos[i - 1] ?? tree.src.at) : tree.src.at;
    const src: SourceNode = {
      key: i > 0 ? parentPos : tree.src.key,
      at: parentPos,
      kids: new Map([[path[i] as string, patch.src]]),
    };
    patch = { value: obj, src };
  }
  return mergeSourced(tree, patch, "base");
}

/**
 * Applies `--set key=value` arguments in order. The value is YAML (`8`, `[0.9, 0.99]`, `foo.txt`), typed
 * later by validation; keys are checked against the schema here, with did-you-mean suggestions.
 *
 * @example
 * ```ts
 * import { applySets } from "./overrides.ts";
 * import { parseYaml } from "./yaml_source.ts";
 * const t = applySets(parseYaml("model: {d_model: 64}", "x.yaml"), ["model.mlp.experts=4"]);
 * if (JSON.stringify(t.value) !== '{"model":{"d_model":64,"mlp":{"experts":4}}}') throw new Error("bad");
 * ```
 */
export function applySets(tree: Sourced, sets: readonly string[]): Sourced {
  const issues: ConfigIssue[] = [];
  let out = tree;
  for (const arg of sets) {
    const parsed = _parseSet(arg, issues);
    if (parsed) out = setAt(out, parsed.path, parsed.value, parsed.keyPos);
  }
  if (issues.length > 0) throw new ConfigError(issues);
  return out;
}

interface _ParsedSet {
  path: string[];
  keyPos: SourcePos[];
  value: Sourced;
}

function _parseSet(arg: string, issues: ConfigIssue[]): _ParsedSet | null {
  const at = (col: number): SourcePos => ({ file: SET_FILE, line: 1, col });
  const eq = arg.indexOf("=");
  if (eq <= 0) {
    issues.push(
      issueAt(at(1), "", `expected key=value (e.g. model.mlp.experts=8), got ${quoteClipped(arg)}`),
    );
    return null;
  }
  const segs: { name: string; col: number }[] = [];
  let start = 0;
  for (const name of arg.slice(0, eq).split(".")) {
    segs.push({ name, col: start + 1 });
    start += name.length + 1;
  }
  const empty = segs.findIndex((s) => s.name === "");
  if (empty >= 0) {
    issues.push(
      issueAt(at(segs[empty]?.col ?? 1), "", `empty key segment in ${quoteClipped(arg.slice(0, eq))}`),
    );
    return null;
  }
  const r = resolveDottedKey(segs.map((s) => s.name));
  if (!r.ok) {
    // As written (dotted), each segment that is not a plain name left out.
    const keyPath = segs.slice(0, r.index + 1).map((s) => (isShowableKey(s.name) ? s.name : "[…]")).join(".");
    issues.push(issueAt(at(segs[r.index]?.col ?? 1), keyPath, r.message));
    return null;
  }
  if (arg.length > MAX_SET_CHARS) {
    const message = `the value is too long: the argument has ${arg.length} characters; a --set argument ` +
      `holds at most ${MAX_SET_CHARS} (write long values into the config file)`;
    issues.push(issueAt(at(eq + 2), formatKeyPath(r.path), message));
    return null;
  }
  try {
    const value = parseYaml(arg.slice(eq + 1), SET_FILE, { line: 1, col: eq + 2 });
    return { path: r.path, keyPos: r.path.map((_, i) => at(segs[i]?.col ?? 1)), value };
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    issues.push(...e.issues.map((i) => ({ ...i, keyPath: joinKeyPath(formatKeyPath(r.path), i.keyPath) })));
    return null;
  }
}

/** The file name that issues about `--sweep` arguments carry (line 1, column = position in the argument). */
export const SWEEP_FLAG = "--sweep";

/**
 * Applies `--sweep key=v1,v2,…` arguments (the CLI's Hydra-style multirun): each adds `key` to the tree's
 * `sweep.grid` with the listed values, each parsed as YAML as a `--set` value is (`0,6.3e-4,1e-3`;
 * `[0.9,0.99],[0.9,0.999]` for lists), so that several make a grid of every combination and a config
 * without `sweep:` becomes a grid sweep. A key that the config's own `sweep:` (grid or random) or an earlier
 * `--sweep` already sweeps is refused, as is an unknown key (with suggestions) or an empty list.
 *
 * @example
 * ```ts
 * import { applySweeps } from "./overrides.ts";
 * import { parseYaml } from "./yaml_source.ts";
 * const t = applySweeps(parseYaml("name: x", "x.yaml"), ["loss.mi.mlp=0,1e-3", "seed=1,2"]);
 * const want = '{"name":"x","sweep":{"grid":{"loss.mi.mlp":[0,0.001],"seed":[1,2]}}}';
 * if (JSON.stringify(t.value) !== want) throw new Error(JSON.stringify(t.value));
 * ```
 */
export function applySweeps(tree: Sourced, sweeps: readonly string[]): Sourced {
  if (sweeps.length === 0) return tree;
  const issues: ConfigIssue[] = [];
  const own = _sweptKeys(tree), mine = new Set<string>();
  let out = tree;
  for (const arg of sweeps) {
    const at = (col: number): SourcePos => ({ file: SWEEP_FLAG, line: 1, col });
    const eq = arg.indexOf("=");
    if (eq <= 0 || eq === arg.length - 1) {
      issues.push(
        issueAt(
          at(1),
          "",
          `expected key=value,value,… (e.g. loss.mi.mlp=0,6.3e-4), got ${quoteClipped(arg)}`,
        ),
      );
      continue;
    }
    const key = arg.slice(0, eq), segs = key.split(".");
    const r = segs.includes("") ? null : resolveDottedKey(segs);
    if (r === null || !r.ok) {
      issues.push(
        issueAt(
          at(1),
          isShowableKey(key) ? key : "",
          r?.message ?? `empty key segment in ${quoteClipped(key)}`,
        ),
      );
      continue;
    }
    if (r.path[0] === "sweep") {
      issues.push(issueAt(at(1), key, "the sweep: block itself cannot be swept"));
      continue;
    }
    if (own.has(key) || mine.has(key)) {
      const by = own.has(key) ? "the config's sweep:" : "an earlier --sweep";
      issues.push(issueAt(at(1), key, `${key} is swept already by ${by}; sweep a key once`));
      continue;
    }
    mine.add(key);
    if (arg.length > MAX_SET_CHARS) {
      issues.push(
        issueAt(at(eq + 2), key, `the argument has ${arg.length} characters; at most ${MAX_SET_CHARS}`),
      );
      continue;
    }
    let values: Sourced;
    try {
      // The values as one YAML flow list: `[` sits where `=` was, so columns stay those of the argument.
      values = parseYaml(`[${arg.slice(eq + 1)}]`, SWEEP_FLAG, { line: 1, col: eq + 1 });
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      issues.push(...e.issues.map((i) => ({ ...i, keyPath: joinKeyPath(key, i.keyPath) })));
      continue;
    }
    out = setAt(out, ["sweep", "grid", key], values, [at(1), at(1), at(1)]);
  }
  if (issues.length > 0) throw new ConfigError(issues);
  return out;
}

/** The keys that a tree's own `sweep:` block sweeps (grid and random), as written. */
function _sweptKeys(tree: Sourced): Set<string> {
  const sweep = isPlainMap(tree.value) ? tree.value.sweep : undefined;
  const keys = new Set<string>();
  if (!isPlainMap(sweep)) return keys;
  if (isPlainMap(sweep.grid)) { for (const k of Object.keys(sweep.grid)) keys.add(k); }
  const random = sweep.random;
  if (isPlainMap(random) && isPlainMap(random.params)) {
    for (const k of Object.keys(random.params)) keys.add(k);
  }
  return keys;
}

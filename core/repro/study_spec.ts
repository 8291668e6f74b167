/**
 * The router study manifest (`configs/study/routers.yaml`, docs/design.md "The router study"): a base
 * config, a dense baseline, the routers to compare (each a name → a config file or
 * `{extends: file, set: [key=value, …]}`), the inference rules of the matrix's columns, validation batches,
 * decoding tokens, the size tolerance, and the `--set` overrides of each scale. A new router is a new entry
 * under `routers:`; nothing else changes. Problems are reported as `ConfigError`s at the manifest's file,
 * line and column, as for the reproduction manifest (spec.ts).
 *
 * {@linkcode resolveStudy} then loads every model's config at one scale (a config that does not load is
 * reported at its manifest entry; a `--set` written in the manifest at that `set` item) and checks that all
 * models have the same total parameters within the tolerance ({@linkcode checkSizes}).
 *
 * @module
 */
import { ConfigError, type ConfigIssue, issueAt } from "../config/errors.ts";
import { type LoadedExperiment, loadExperiment } from "../config/mod.ts";
import { isPlainMap, parseYaml, positionOf, type Sourced } from "../config/yaml_source.ts";
import { parseRuleSpec, RULE_KINDS } from "../infer/rule_spec.ts";
import { countParams, layerShape } from "../plan/counts.ts";
import type { InferRules } from "../plan/model.ts";
import { ruleParam } from "../ref/routing.ts";

/** The row name of the dense baseline in the matrix (no router may take it). */
export const BASELINE = "baseline";
/** The rule column that evaluates each model under its own config's `router.infer`. */
export const OWN_RULE = "own";
/** Total parameters may differ from the baseline's by this fraction unless the manifest says otherwise. */
export const DEFAULT_SIZE_TOLERANCE = 0.02;

/** A model of the study: the baseline or a router. */
export interface StudyEntry {
  name: string;
  /** `baseline`, or `routers` (where the manifest lists it). */
  group: "baseline" | "routers";
  /** Config file, resolved against the manifest's directory. */
  file: string;
  /** `key=value` overrides of the entry, applied before the scale's. */
  set: string[];
}

/** A column of the matrix: a rule as written, and parsed (`own`: each model's own `router.infer`). */
export interface StudyRule {
  spec: string;
  rules: InferRules | typeof OWN_RULE;
}

/** One `--scale`: overrides of every model, validation batches per rule, tokens of the decode timing. */
export interface StudyScale {
  set: string[];
  evalBatches: number;
  decodeTokens: number;
}

/** What to do when the models' total parameters differ by more than the tolerance. */
export type SizePolicy = "warn" | "refuse";

/** A validated study manifest. */
export interface StudySpec {
  file: string;
  /** The manifest's text (the sweep record keeps it; positions of later errors are read from it). */
  text: string;
  /** The study's name: its report is `<runs-dir>/study/<name>/REPORT.md`. */
  name: string;
  baseline: StudyEntry;
  routers: StudyEntry[];
  /** Columns; "dense" is always first. */
  rules: StudyRule[];
  size: { tolerance: number; onMismatch: SizePolicy };
  scales: Record<string, StudyScale>;
  defaultScale: string;
}

const _KEYS = [
  "name",
  "base",
  "baseline",
  "routers",
  "rules",
  "eval_batches",
  "decode_tokens",
  "size",
  "default_scale",
  "scales",
];
const _NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$/;
const _GRID_KINDS = RULE_KINDS.filter((k) => ruleParam(k) !== null);

/** Reads and validates the manifest at `file` (config files must exist; they are loaded by resolveStudy). */
export async function loadStudySpec(file: string): Promise<StudySpec> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound
      ? `no such file: ${file}`
      : `cannot read: ${(e as Error).message}`;
    throw new ConfigError([{ file, line: 0, col: 0, keyPath: "", message: why }]);
  }
  const spec = parseStudySpec(text, file, dirOfFile(file));
  const missing: ConfigIssue[] = [];
  for (const e of [spec.baseline, ...spec.routers]) {
    try {
      await Deno.stat(e.file);
    } catch {
      const { path, pos } = _filePos(spec, e);
      missing.push(issueAt(pos, path.join("."), `no file ${e.file}`));
    }
  }
  if (missing.length > 0) throw new ConfigError(missing);
  return spec;
}

/** The directory of a file path as written (`.` for a bare name). */
export function dirOfFile(file: string): string {
  return file.includes("/") ? file.slice(0, file.lastIndexOf("/")) : ".";
}

/** Validates manifest text; config paths resolve against `dir`. */
export function parseStudySpec(text: string, file: string, dir: string): StudySpec {
  const tree = parseYaml(text, file);
  const issues: ConfigIssue[] = [];
  const at = (path: (string | number)[], message: string, kind: "key" | "value" = "value") =>
    issues.push(issueAt(positionOf(tree.src, path, kind), path.join("."), message));
  const root = isPlainMap(tree.value) ? tree.value : {};
  if (!isPlainMap(tree.value)) at([], "expected a map of name, base, baseline, routers, rules, scales, …");
  for (const k of Object.keys(root)) {
    if (!_KEYS.includes(k)) at([k], `unknown key; expected one of ${_KEYS.join(", ")}`, "key");
  }
  const resolve = (p: string) => (p.startsWith("/") ? p : `${dir}/${p}`);

  const name = root.name === undefined ? _stem(file) : root.name;
  if (typeof name !== "string" || !_NAME.test(name)) {
    at(
      ["name"],
      "expected a name of letters, digits, '.', '_' and '-' (at most 48, not starting with . _ -)",
    );
  }
  let base: string | null = null;
  if (root.base !== undefined) {
    if (typeof root.base !== "string" || root.base === "") at(["base"], "expected a config file path");
    else base = resolve(root.base);
  }
  const entry = (group: StudyEntry["group"], entryName: string, path: string[]): StudyEntry | null => {
    const v = valueAtPath(root, path);
    if (typeof v === "string" && v !== "") return { name: entryName, group, file: resolve(v), set: [] };
    if (!isPlainMap(v)) {
      at(path, "expected a config file path or {extends: file, set: [key=value, …]}");
      return null;
    }
    for (const k of Object.keys(v)) {
      if (k !== "extends" && k !== "set") at([...path, k], "unknown key; expected extends, set", "key");
    }
    let file = base;
    if (v.extends !== undefined) {
      if (typeof v.extends !== "string" || v.extends === "") {
        at([...path, "extends"], "expected a config file path");
      } else file = resolve(v.extends);
    } else if (base === null) {
      at(path, "no extends: and no base: to start from; name a config file");
    }
    const set = _sets(v.set, [...path, "set"], at);
    return file === null ? null : { name: entryName, group, file, set };
  };

  const baseline = root.baseline === undefined
    ? (at(["baseline"], "expected the dense baseline: a config file path or {extends, set}"), null)
    : entry("baseline", BASELINE, ["baseline"]);
  const routers: StudyEntry[] = [];
  if (!isPlainMap(root.routers) || Object.keys(root.routers).length === 0) {
    at(["routers"], "expected a map of router name → config file or {extends: file, set: [key=value, …]}");
  } else {
    for (const r of Object.keys(root.routers)) {
      if (!_NAME.test(r) || r === BASELINE) {
        at(
          ["routers", r],
          `a router name is letters, digits, '.', '_' and '-', and not "${BASELINE}"`,
          "key",
        );
        continue;
      }
      const e = entry("routers", r, ["routers", r]);
      if (e) routers.push(e);
    }
  }

  const rules = _rules(root.rules, at);
  const count = (path: string[], v: unknown, min: number) => {
    if (!Number.isSafeInteger(v) || (v as number) < min) {
      at(path, `expected an integer ≥ ${min}, got ${JSON.stringify(v)}`);
    }
    return Number(v);
  };
  const evalBatches = count(["eval_batches"], root.eval_batches, 1);
  const decodeTokens = root.decode_tokens === undefined ? 0 : count(["decode_tokens"], root.decode_tokens, 0);
  const size = _size(root.size, at);
  const scales: Record<string, StudyScale> = {};
  if (!isPlainMap(root.scales) || Object.keys(root.scales).length === 0) {
    at(["scales"], "expected a map of scale name to { set: [key=value, …], eval_batches?, decode_tokens? }");
  } else {
    for (const [s, sc] of Object.entries(root.scales)) {
      if (!_NAME.test(s)) {
        at(
          ["scales", s],
          "a scale name is letters, digits, '.', '_' and '-' (it names the study's sweep)",
          "key",
        );
      }
      if (!isPlainMap(sc)) {
        at(["scales", s], "expected { set: [key=value, …], eval_batches?, decode_tokens? }");
        continue;
      }
      for (const k of Object.keys(sc)) {
        if (!["set", "eval_batches", "decode_tokens"].includes(k)) {
          at(["scales", s, k], "unknown key; expected set, eval_batches, decode_tokens", "key");
        }
      }
      scales[s] = {
        set: _sets(sc.set, ["scales", s, "set"], at),
        evalBatches: sc.eval_batches === undefined
          ? evalBatches
          : count(["scales", s, "eval_batches"], sc.eval_batches, 1),
        decodeTokens: sc.decode_tokens === undefined
          ? decodeTokens
          : count(["scales", s, "decode_tokens"], sc.decode_tokens, 0),
      };
    }
  }
  const defaultScale = root.default_scale ?? Object.keys(scales)[0];
  if (root.default_scale !== undefined && (typeof defaultScale !== "string" || !scales[defaultScale])) {
    at(["default_scale"], `expected one of the scales: ${Object.keys(scales).join(", ")}`);
  }
  if (issues.length > 0) throw new ConfigError(issues);
  return {
    file,
    text,
    name: name as string,
    baseline: baseline!,
    routers,
    rules,
    size,
    scales,
    defaultScale: defaultScale as string,
  };
}

type _At = (path: (string | number)[], message: string, kind?: "key" | "value") => void;

/** A list of `key=value` overrides (absent: none). */
function _sets(v: unknown, path: (string | number)[], at: _At): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v)) {
    at(path, "expected a list of key=value overrides (as for --set)");
    return [];
  }
  v.forEach((s, i) => {
    if (typeof s !== "string" || !/^[^=\s]+=/.test(s)) {
      at([...path, i], `expected key=value (as for --set), got ${JSON.stringify(s)}`);
    }
  });
  return v.map(String);
}

/**
 * The rule columns: each item a rule as `--rule` text (`threshold:0.5`, `topk:2`, `top_p:0.9`, `dense`,
 * `mlp=…,attention=…`), `own`, or a grid `{threshold: [0.25, 0.5, 1]}` (one column per value). "dense" is
 * always the first column; a rule listed twice is an error.
 */
function _rules(v: unknown, at: _At): StudyRule[] {
  const out: StudyRule[] = [{ spec: "dense", rules: parseRuleSpec("dense") }];
  if (!Array.isArray(v) || v.length === 0) {
    at(
      ["rules"],
      "expected a non-empty list of rules (threshold:0.5, topk:2, top_p:0.9, dense, own, {threshold: [..]})",
    );
    return out;
  }
  const add = (path: (string | number)[], spec: string) => {
    if (spec === "dense") return;
    if (out.some((r) => r.spec === spec)) return at(path, `${spec} is listed twice`);
    if (spec === OWN_RULE) return void out.push({ spec, rules: OWN_RULE });
    try {
      out.push({ spec, rules: parseRuleSpec(spec) });
    } catch (e) {
      at(path, (e as Error).message);
    }
  };
  v.forEach((item, i) => {
    if (typeof item === "string") return add(["rules", i], item);
    const keys = isPlainMap(item) ? Object.keys(item) : [];
    const kind = keys[0];
    if (keys.length !== 1 || !(_GRID_KINDS as readonly string[]).includes(kind!)) {
      return at(
        ["rules", i],
        `expected a rule such as threshold:0.5, or a grid {kind: [values]} of ${_GRID_KINDS.join(", ")}`,
      );
    }
    const values = (item as Record<string, unknown>)[kind!];
    const list = Array.isArray(values) ? values : [values];
    if (list.length === 0) return at(["rules", i, kind!], "expected a list of values");
    list.forEach((x, j) => {
      const path = Array.isArray(values) ? ["rules", i, kind!, j] : ["rules", i, kind!];
      if (typeof x !== "number") return at(path, `expected a number, got ${JSON.stringify(x)}`);
      add(path, `${kind}:${x}`);
    });
  });
  return out;
}

function _size(v: unknown, at: _At): StudySpec["size"] {
  const out = { tolerance: DEFAULT_SIZE_TOLERANCE, onMismatch: "refuse" as SizePolicy };
  if (v === undefined) return out;
  if (!isPlainMap(v)) {
    at(["size"], "expected { tolerance: fraction, on_mismatch: warn | refuse }");
    return out;
  }
  for (const k of Object.keys(v)) {
    if (k !== "tolerance" && k !== "on_mismatch") {
      at(["size", k], "unknown key; expected tolerance, on_mismatch", "key");
    }
  }
  if (v.tolerance !== undefined) {
    const t = v.tolerance;
    if (typeof t !== "number" || !(t >= 0 && t < 1)) {
      at(["size", "tolerance"], `expected a fraction in [0, 1) (0.02 = 2%), got ${JSON.stringify(t)}`);
    } else out.tolerance = t;
  }
  if (v.on_mismatch !== undefined) {
    if (v.on_mismatch !== "warn" && v.on_mismatch !== "refuse") {
      at(["size", "on_mismatch"], `expected warn or refuse, got ${JSON.stringify(v.on_mismatch)}`);
    } else out.onMismatch = v.on_mismatch;
  }
  return out;
}

function _stem(file: string): string {
  return (file.split("/").at(-1) ?? file).replace(/\.ya?ml$/, "");
}

/** The value at a key path of a plain value. */
function valueAtPath(v: unknown, path: readonly string[]): unknown {
  for (const k of path) v = isPlainMap(v) ? v[k] : undefined;
  return v;
}

/** An entry's key path in the manifest: `baseline` or `routers.<name>`. */
function _entryKey(e: StudyEntry): string {
  return e.group === "baseline" ? "baseline" : `routers.${e.name}`;
}

function _entryPath(e: StudyEntry): string[] {
  return e.group === "baseline" ? ["baseline"] : ["routers", e.name];
}

/** Where an entry's config file is written: its `extends:`, its value (a path), else `base:`. */
function _filePos(spec: Pick<StudySpec, "text" | "file">, e: StudyEntry) {
  const tree = parseYaml(spec.text, spec.file);
  const v = valueAtPath(tree.value, _entryPath(e));
  const path = typeof v === "string"
    ? _entryPath(e)
    : isPlainMap(v) && v.extends !== undefined
    ? [..._entryPath(e), "extends"]
    : ["base"];
  return { path, pos: positionOf(tree.src, path, "value") };
}

// ---------------------------------------------------------------------------------------------------------
// Resolving the models at one scale.

/** A model of the study with its config loaded at the scale. */
export interface StudyModel {
  entry: StudyEntry;
  loaded: LoadedExperiment;
  /** Total parameters (core/plan/counts.ts), embeddings included. */
  paramsTotal: number;
  routed: boolean;
}

/** The size check: each model's total parameters against the baseline's. */
export interface SizeCheck {
  tolerance: number;
  onMismatch: SizePolicy;
  baselineParams: number;
  rows: { name: string; params_total: number; rel_diff: number; within: boolean }[];
  within: boolean;
}

/**
 * Loads every model's config at `scale` (entry overrides, then the scale's) and checks the sizes. A config
 * that does not load, has a `sweep:` block, or (the baseline) routes experts is a ConfigError at its manifest
 * entry; so are models whose total parameters differ from the baseline's by more than the tolerance when the
 * manifest says `on_mismatch: refuse` (with `warn`, {@linkcode SizeCheck.within} is false and the caller
 * warns).
 */
export async function resolveStudy(
  spec: StudySpec,
  scale: string,
): Promise<{ models: StudyModel[]; size: SizeCheck }> {
  const sc = spec.scales[scale];
  if (!sc) {
    throw new RangeError(`Unknown scale "${scale}"; ${spec.file} has ${Object.keys(spec.scales).join(", ")}`);
  }
  const tree = parseYaml(spec.text, spec.file);
  const issues: ConfigIssue[] = [];
  const models: StudyModel[] = [];
  for (const e of [spec.baseline, ...spec.routers]) {
    const where = positionOf(tree.src, _entryPath(e), "value");
    let loaded: LoadedExperiment;
    try {
      loaded = await loadExperiment(e.file, { sets: [...e.set, ...sc.set] });
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      issues.push(..._relocate(err.issues, e, scale, sc, tree));
      continue;
    }
    if (loaded.points.length !== 1) {
      issues.push(
        issueAt(
          where,
          _entryKey(e),
          `${e.file} sweeps ${loaded.points.length} points; a study model is one config`,
        ),
      );
      continue;
    }
    const c = loaded.points[0]!.config, shape = layerShape(c);
    const routed = shape.routedMlp || shape.routedAtt;
    if (e.group === "baseline" && routed) {
      issues.push(
        issueAt(where, "baseline", `the baseline must be dense (no routed blocks); ${e.file} routes experts`),
      );
    }
    models.push({ entry: e, loaded, paramsTotal: countParams(c).total, routed });
  }
  if (issues.length > 0) throw new ConfigError(issues);
  const size = checkSizes(models.map((m) => ({ name: m.entry.name, params: m.paramsTotal })), spec.size);
  if (!size.within && spec.size.onMismatch === "refuse") {
    throw new ConfigError(
      size.rows.filter((r) => !r.within).map((r) => {
        const e = models.find((m) => m.entry.name === r.name)!.entry;
        return issueAt(
          positionOf(tree.src, _entryPath(e), "key"),
          _entryKey(e),
          sizeMismatchText(r, size) +
            " (size.on_mismatch: refuse; set it to warn to compare anyway)",
        );
      }),
    );
  }
  return { models, size };
}

/** "1.21M parameters, +9.3% against the baseline's 1.11M, beyond the 2% tolerance (--scale …)". */
export function sizeMismatchText(
  r: SizeCheck["rows"][number],
  s: Pick<SizeCheck, "baselineParams" | "tolerance">,
): string {
  const sign = r.rel_diff >= 0 ? "+" : "";
  return `${r.params_total} parameters, ${sign}${(r.rel_diff * 100).toFixed(2)}% against the baseline's ` +
    `${s.baselineParams}, beyond the ${(s.tolerance * 100).toFixed(2)}% tolerance`;
}

/**
 * Each model's total parameters against the first one's (the baseline's): `rel_diff` = params / baseline − 1,
 * within when |rel_diff| ≤ tolerance.
 *
 * @example
 * ```ts
 * import { checkSizes } from "./study_spec.ts";
 * const s = checkSizes([{ name: "baseline", params: 1000 }, { name: "a", params: 1015 }, { name: "b", params: 1100 }],
 *   { tolerance: 0.02, onMismatch: "warn" });
 * console.log(s.rows.map((r) => r.within), s.within); // [true, true, false] false
 * ```
 */
export function checkSizes(
  models: readonly { name: string; params: number }[],
  o: StudySpec["size"],
): SizeCheck {
  const base = models[0]?.params ?? 0;
  const rows = models.map((m) => {
    const rel = base > 0 ? m.params / base - 1 : 0;
    return {
      name: m.name,
      params_total: m.params,
      rel_diff: rel,
      within: Math.abs(rel) <= o.tolerance + 1e-12,
    };
  });
  return {
    tolerance: o.tolerance,
    onMismatch: o.onMismatch,
    baselineParams: base,
    rows,
    within: rows.every((r) => r.within),
  };
}

/**
 * The issues of a config that did not load, placed in the manifest: a `--set` issue at the manifest's `set`
 * item of that key (the entry's, else the scale's), other issues as they are (in the config file) after one
 * at the entry that says which config and scale failed.
 */
function _relocate(
  issues: readonly ConfigIssue[],
  e: StudyEntry,
  scale: string,
  sc: StudyScale,
  tree: Sourced,
): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  const keyOf = (s: string) => s.slice(0, s.indexOf("="));
  const rest: ConfigIssue[] = [];
  for (const i of issues) {
    if (i.file !== "--set") {
      rest.push(i);
      continue;
    }
    const covers = (s: string) => i.keyPath === keyOf(s) || i.keyPath.startsWith(`${keyOf(s)}.`);
    const own = e.set.findLastIndex(covers), inScale = sc.set.findLastIndex(covers);
    const path = inScale >= 0
      ? ["scales", scale, "set", inScale]
      : own >= 0
      ? [..._entryPath(e), "set", own]
      : null;
    if (path) {
      out.push(issueAt(positionOf(tree.src, path, "value"), path.join("."), `${i.keyPath}: ${i.message}`));
    } else rest.push(i);
  }
  if (rest.length > 0) {
    out.push(
      issueAt(
        positionOf(tree.src, _entryPath(e), "value"),
        _entryKey(e),
        `${e.file} does not load at --scale ${scale} (the problems follow)`,
      ),
      ...rest,
    );
  }
  return out;
}

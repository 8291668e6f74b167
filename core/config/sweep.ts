/**
 * Expansion of a `sweep:` block into points: the grid's cartesian product (first key varies slowest),
 * times `random.n` samples drawn once from a seeded generator, times `repeat` seeds. Every point is the base
 * config with its parameters applied, validated on its own (a bad value is reported at the list element
 * that produced it), named after its parameters and deep-frozen.
 *
 * @module
 */
import { Rng } from "../util/rng.ts";
import { createHash } from "node:crypto";
import {
  ConfigError,
  type ConfigIssue,
  formatIssue,
  formatKeyPath,
  issueAt,
  type SourcePos,
} from "./errors.ts";
import { setAt, withoutKey } from "./overrides.ts";
import type { Experiment } from "./schema.ts";
import { resolveDottedKey } from "./schema_paths.ts";
import { checkExperiment, deepFreeze } from "./validate.ts";
import { type Sourced, type SourceNode, valueAt } from "./yaml_source.ts";

/** One run of an experiment: the base config with this point's parameters applied. */
export interface SweepPoint {
  /** 0-based position in the expansion order. */
  index: number;
  /** Base name plus a filesystem-safe parameter suffix, e.g. `sweep-mi.mlp=0.seed=2`. */
  name: string;
  /** Dotted key → value of this point (with `seed` when `repeat` > 1). */
  params: Record<string, unknown>;
  /** Validated, deep-frozen config of the point, without `sweep`. */
  config: Readonly<Experiment>;
}

/** Most points one sweep may expand to. */
export const MAX_SWEEP_POINTS = 10_000;
const _MAX_NAME = 100;

type _Sweep = NonNullable<Experiment["sweep"]>;
type _Range = { min: number; max: number; log: boolean; int: boolean };
interface _Axis {
  key: string;
  path: string[];
  keyPos: SourcePos;
  /** The listed values (grid, or a random list); empty for a random range. */
  values: Sourced[];
  range?: _Range;
  rangeSrc?: SourceNode;
}
interface _Param {
  axis: _Axis;
  value: Sourced;
}

/**
 * The points of a validated base config. Without a `sweep` block: one point, the base itself.
 *
 * @example
 * ```ts
 * import { expandSweep } from "./sweep.ts";
 * import { validateExperiment } from "./validate.ts";
 * import { parseYaml } from "./yaml_source.ts";
 * const tree = parseYaml("name: s\nsweep: {grid: {seed: [1, 2]}}\n", "s.yaml");
 * const points = expandSweep(validateExperiment(tree), tree);
 * if (points.map((p) => p.name).join() !== "s.seed=1,s.seed=2") throw new Error("bad");
 * ```
 */
export function expandSweep(base: Readonly<Experiment>, tree: Sourced): SweepPoint[] {
  if (!base.sweep) return [{ index: 0, name: base.name, params: {}, config: deepFreeze(base) }];
  const sweep = base.sweep, sweepSrc = tree.src.kids?.get("sweep") ?? tree.src;
  const issues: ConfigIssue[] = [];
  const grid = _gridAxes(sweep, sweepSrc, issues);
  const random = _randomAxes(sweep, sweepSrc, issues);
  _checkOverlap([...grid, ...random], issues);
  const total = grid.reduce((n, a) => n * a.values.length, 1) * (sweep.random?.n ?? 1) * sweep.repeat;
  if (total > MAX_SWEEP_POINTS) {
    issues.push(
      issueAt(sweepSrc.key ?? sweepSrc.at, "sweep", `${total} points; the limit is ${MAX_SWEEP_POINTS}`),
    );
  }
  if (issues.length > 0) throw new ConfigError(issues);
  const samples = sweep.random ? _drawSamples(random, sweep.random.n, sweep.random.seed) : [[]];
  const combos = _product(grid).flatMap((g) => samples.map((s) => [...g, ...s]));
  return _buildPoints(base, tree, combos, sweepSrc);
}

/**
 * A stable id of a sweep: a hash of the resolved base config (which includes the sweep block).
 *
 * @example
 * ```ts
 * import { sweepId } from "./sweep.ts";
 * if (sweepId({ a: 1, b: [2] }) !== sweepId({ b: [2], a: 1 })) throw new Error("key order must not matter");
 * ```
 */
export function sweepId(config: unknown): string {
  return createHash("sha256").update(_canonicalJson(config)).digest("hex").slice(0, 12);
}

function _buildPoints(base: Readonly<Experiment>, tree: Sourced, combos: _Param[][], sweepSrc: SourceNode) {
  const plain = withoutKey(tree, "sweep"), sweep = base.sweep as _Sweep;
  const repeatSrc = sweepSrc.kids?.get("repeat") ?? sweepSrc;
  const nameSrc = tree.src.kids?.get("name") ?? tree.src;
  const points: SweepPoint[] = [], issues: ConfigIssue[] = [], seenIssues = new Set<string>();
  const seenNames = new Set<string>();
  let index = 0;
  for (const combo of combos) {
    let t = plain;
    const params: Record<string, unknown> = {};
    for (const { axis, value } of combo) {
      t = setAt(t, axis.path, value, axis.path.map(() => axis.keyPos));
      params[axis.key] = value.value;
    }
    const seed0 = valueAt(t.value, ["seed"]);
    for (let r = 0; r < sweep.repeat; r++) {
      let pt = t;
      const p = { ...params };
      if (sweep.repeat > 1) {
        const seed = (typeof seed0 === "number" ? seed0 : base.seed) + r;
        pt = setAt(pt, ["seed"], { value: seed, src: repeatSrc }, [repeatSrc.key ?? repeatSrc.at]);
        p.seed = seed;
      }
      const name = _uniqueName(_pointName(base.name, p), index, seenNames);
      pt = setAt(pt, ["name"], { value: name, src: nameSrc }, [nameSrc.key ?? nameSrc.at]);
      const checked = checkExperiment(pt);
      if (checked.ok) points.push({ index, name, params: p, config: deepFreeze(checked.config) });
      index++;
      for (const i of checked.ok ? [] : checked.issues) {
        const k = formatIssue(i);
        if (seenIssues.has(k)) continue;
        seenIssues.add(k);
        issues.push({ ...i, message: `${i.message} (point ${name})` });
      }
    }
  }
  if (issues.length > 0) throw new ConfigError(issues);
  return points;
}

function _axis(key: string, node: SourceNode, sweepPath: string[], issues: ConfigIssue[]): _Axis | null {
  const keyPos = node.key ?? node.at, keyPath = formatKeyPath([...sweepPath, key]);
  const r = resolveDottedKey(key.split("."));
  if (!r.ok) {
    issues.push(issueAt(keyPos, keyPath, r.message));
    return null;
  }
  if (r.path[0] === "sweep" || r.path[0] === "name") {
    issues.push(issueAt(keyPos, keyPath, `cannot sweep over "${r.path[0]}"`));
    return null;
  }
  return { key, path: r.path, keyPos, values: [] };
}

function _gridAxes(sweep: _Sweep, sweepSrc: SourceNode, issues: ConfigIssue[]): _Axis[] {
  const gridSrc = sweepSrc.kids?.get("grid") ?? sweepSrc, axes: _Axis[] = [];
  for (const [key, list] of Object.entries(sweep.grid)) {
    const node = gridSrc.kids?.get(key) ?? gridSrc;
    const axis = _axis(key, node, ["sweep", "grid"], issues);
    if (!axis) continue;
    axis.values = list.map((value, i) => ({ value, src: node.kids?.get(i) ?? node }));
    axes.push(axis);
  }
  return axes;
}

function _randomAxes(sweep: _Sweep, sweepSrc: SourceNode, issues: ConfigIssue[]): _Axis[] {
  if (!sweep.random) return [];
  const paramsSrc = sweepSrc.kids?.get("random")?.kids?.get("params") ?? sweepSrc, axes: _Axis[] = [];
  for (const [key, spec] of Object.entries(sweep.random.params)) {
    const node = paramsSrc.kids?.get(key) ?? paramsSrc;
    const axis = _axis(key, node, ["sweep", "random", "params"], issues);
    if (!axis) continue;
    if (Array.isArray(spec)) {
      axis.values = spec.map((value, i) => ({ value, src: node.kids?.get(i) ?? node }));
    } else {
      const problem = _rangeProblem(spec);
      if (problem) issues.push(issueAt(node.at, formatKeyPath(["sweep", "random", "params", key]), problem));
      [axis.range, axis.rangeSrc] = [spec, node];
    }
    axes.push(axis);
  }
  return axes;
}

function _rangeProblem(r: _Range): string | null {
  if (r.min > r.max) return `min (${r.min}) exceeds max (${r.max})`;
  if (r.log && r.min <= 0) return `a log range needs min > 0, got ${r.min}`;
  if (r.int && Math.ceil(r.min) > Math.floor(r.max)) return `no integer lies between ${r.min} and ${r.max}`;
  return null;
}

function _checkOverlap(axes: _Axis[], issues: ConfigIssue[]): void {
  const seen = new Map<string, _Axis>();
  for (const a of axes) {
    const k = JSON.stringify(a.path), prev = seen.get(k);
    if (prev) issues.push(issueAt(a.keyPos, a.key, `also swept as "${prev.key}"; sweep each key once`));
    else seen.set(k, a);
  }
}

function _product(axes: _Axis[]): _Param[][] {
  let out: _Param[][] = [[]];
  for (const axis of axes) out = out.flatMap((c) => axis.values.map((value) => [...c, { axis, value }]));
  return out;
}

/** `n` samples, each one value per axis in key order, from a generator seeded by `seed`. */
function _drawSamples(axes: _Axis[], n: number, seed: number): _Param[][] {
  const rng = new Rng(seed), rand = () => rng.next(), out: _Param[][] = [];
  for (let s = 0; s < n; s++) {
    out.push(axes.map((axis) => {
      const u = rand();
      if (axis.range) {
        return { axis, value: { value: _sampleRange(axis.range, u), src: axis.rangeSrc as SourceNode } };
      }
      const i = Math.min(axis.values.length - 1, Math.floor(u * axis.values.length));
      return { axis, value: axis.values[i] as Sourced };
    }));
  }
  return out;
}

/** A value in `[min, max]` for `u` in [0, 1): uniform or log-uniform; floats keep 4 significant digits. */
function _sampleRange(r: _Range, u: number): number {
  const lo = r.int ? Math.ceil(r.min) : r.min, hi = r.int ? Math.floor(r.max) : r.max;
  const clamp = (v: number) => Math.min(hi, Math.max(lo, v));
  if (r.log) {
    const x = Math.exp(Math.log(lo) + u * (Math.log(hi) - Math.log(lo)));
    return clamp(r.int ? Math.round(x) : Number(x.toPrecision(4)));
  }
  return r.int
    ? clamp(lo + Math.floor(u * (hi - lo + 1)))
    : clamp(Number((lo + u * (hi - lo)).toPrecision(4)));
}

function _pointName(base: string, params: Record<string, unknown>): string {
  const short = shortKeys(Object.keys(params));
  const parts = Object.entries(params).map(([k, v]) =>
    `${short.get(k)}=${typeof v === "string" ? v : JSON.stringify(v)}`
  );
  const name = [base, ...parts].join(".").replace(/[^A-Za-z0-9._=-]/g, "_");
  if (name.length <= _MAX_NAME) return name;
  return `${name.slice(0, _MAX_NAME - 13)}.${sweepId(params).slice(0, 12)}`;
}

/**
 * The shortest dotted suffix of each key that no other key ends with: `loss.mi.mlp` and
 * `loss.mi.attention` become `mlp` and `attention`; `model.mlp.experts` and `x.experts` keep two segments.
 */
export function shortKeys(keys: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const k of keys) {
    const segs = k.split(".");
    let n = 1;
    const suffix = (key: string, len: number) => key.split(".").slice(-len).join(".");
    while (n < segs.length && keys.some((o) => o !== k && suffix(o, n) === suffix(k, n))) n++;
    out.set(k, suffix(k, n));
  }
  return out;
}

function _uniqueName(name: string, index: number, seen: Set<string>): string {
  const out = seen.has(name) ? `${name}.${index}` : name;
  seen.add(out);
  return out;
}

function _canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(_canonicalJson).join(",")}]`;
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v).filter((k) => (v as Record<string, unknown>)[k] !== undefined).sort();
    return `{${
      keys.map((k) => `${JSON.stringify(k)}:${_canonicalJson((v as Record<string, unknown>)[k])}`).join(",")
    }}`;
  }
  return JSON.stringify(v) ?? "null";
}

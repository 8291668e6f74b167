/**
 * Questions about the shape of `ExperimentSchema`: which keys are valid at a path (for did-you-mean
 * suggestions), and whether a dotted key from `--set` or a sweep names a real setting.
 *
 * @module
 */
import { describeKey, formatKeyPath, unknownKeyMessage } from "./errors.ts";
import { ExperimentSchema } from "./schema.ts";

// The few fields of zod's internal definitions that a walk over the schema needs.
interface _Def {
  type: string;
  innerType?: _Node;
  in?: _Node;
  shape?: Record<string, _Node>;
  valueType?: _Node;
  element?: _Node;
  items?: _Node[];
  options?: _Node[];
  format?: string;
}
interface _Node {
  _zod: { def: _Def };
}

const _WRAPPERS = new Set([
  "default",
  "prefault",
  "optional",
  "nullable",
  "readonly",
  "catch",
  "nonoptional",
]);

/** Result of `resolveDottedKey`: the key path, or the index of the first bad segment and why. */
export type DottedKey =
  | { ok: true; path: string[] }
  | { ok: false; index: number; message: string };

/**
 * The keys a map accepts at `path` (zod issue path: strings for keys, numbers for list items); `[]` where
 * the schema has no map.
 *
 * @example
 * ```ts
 * import { keysAt } from "./schema_paths.ts";
 * if (!keysAt(["model", "mlp"]).includes("experts")) throw new Error("bad");
 * ```
 */
export function keysAt(path: readonly PropertyKey[]): string[] {
  const node = _nodeAt(path);
  const obj = node && _asObject(node);
  return obj ? Object.keys(obj._zod.def.shape ?? {}) : [];
}

/**
 * True where the schema wants an integer (zod reports a string given to `z.int()` as "expected number").
 *
 * @example
 * ```ts
 * import { isIntegerAt } from "./schema_paths.ts";
 * if (!isIntegerAt(["model", "d_model"]) || isIntegerAt(["train", "optimizer", "lr"])) throw new Error("bad");
 * ```
 */
export function isIntegerAt(path: readonly PropertyKey[]): boolean {
  const def = _nodeAt(path)?._zod.def;
  return def?.type === "number" && /int/.test(def.format ?? "");
}

/**
 * Maps dotted segments (`["model", "mlp", "experts"]`) to a schema key path. Under a record (such as
 * `sweep.grid`) the remaining segments form one key, so `sweep.grid.loss.mi.mlp` names the grid entry
 * `"loss.mi.mlp"`. Paths into lists are refused: a list is set whole.
 *
 * @example
 * ```ts
 * import { resolveDottedKey } from "./schema_paths.ts";
 * const r = resolveDottedKey(["model", "mlp", "expert"]);
 * if (r.ok || r.index !== 2 || !r.message.includes('did you mean "experts"')) throw new Error("bad");
 * ```
 */
export function resolveDottedKey(segments: readonly string[]): DottedKey {
  let node = _unwrap(ExperimentSchema as unknown as _Node);
  const path: string[] = [];
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i] as string, def = node._zod.def, here = formatKeyPath(path) || "the config";
    switch (def.type) {
      case "object": {
        const shape = def.shape ?? {};
        if (!Object.hasOwn(shape, seg)) {
          return { ok: false, index: i, message: unknownKeyMessage(seg, Object.keys(shape)) };
        }
        path.push(seg);
        node = _unwrap(shape[seg] as _Node);
        break;
      }
      case "record":
        return { ok: true, path: [...path, segments.slice(i).join(".")] };
      case "array":
      case "tuple":
        return { ok: false, index: i, message: `${here} is a list; give the whole list, e.g. ${here}=[…]` };
      default:
        return {
          ok: false,
          index: i,
          message: `${here} is a single value; it has no key ${describeKey(seg)}`,
        };
    }
  }
  return { ok: true, path };
}

function _nodeAt(path: readonly PropertyKey[]): _Node | null {
  let node: _Node | null = _unwrap(ExperimentSchema as unknown as _Node);
  for (const seg of path) {
    node = node && _child(node, seg);
    if (!node) return null;
  }
  return node;
}

function _unwrap(node: _Node): _Node {
  let n = node;
  for (let def = n._zod.def; _WRAPPERS.has(def.type) || def.type === "pipe"; def = n._zod.def) {
    const inner = def.type === "pipe" ? def.in : def.innerType;
    if (!inner) break;
    n = inner;
  }
  return n;
}

function _asObject(node: _Node): _Node | null {
  const def = node._zod.def;
  if (def.type === "object") return node;
  if (def.type !== "union") return null;
  for (const o of def.options ?? []) {
    const u = _unwrap(o);
    if (u._zod.def.type === "object") return u;
  }
  return null;
}

function _child(node: _Node, seg: PropertyKey): _Node | null {
  const def = node._zod.def;
  const next = (() => {
    switch (def.type) {
      case "object":
        return typeof seg === "string" && Object.hasOwn(def.shape ?? {}, seg) ? def.shape?.[seg] : undefined;
      case "union":
        return _asObject(node) ? _child(_asObject(node) as _Node, seg) : undefined;
      case "record":
        return def.valueType;
      case "array":
        return def.element;
      case "tuple":
        return typeof seg === "number" ? def.items?.[seg] : undefined;
      default:
        return undefined;
    }
  })();
  return next ? _unwrap(next) : null;
}

/**
 * The layering of the product code, and no import cycles in it (issue 20).
 *
 * Every `.ts` file of `core/`, `gpu/` and `mod.ts` is read (`node_modules/` skipped) and its relative
 * specifiers are resolved to files: `import … from`, `export … from`, `import "…"` and `import("…")`,
 * type-only ones included. Bare, `npm:`, `jsr:`, `node:` and URL specifiers are not ours and are skipped.
 * *Product files* are those files less the `*_test.ts` ones; tests, wherever they live, may import
 * anything (tests/helpers included).
 *
 * The layers, highest first; `X ← Y` says X imports Y (every place may also import `core/util`):
 *
 * ```
 * core/cli, mod.ts           entry points ← anything
 * core/bench, core/repro     entry points ← any layer below
 * core/dashboard             ← core/runs only: it reads stored runs, never gpu/ nor core/train
 * core/train, core/infer     siblings ← gpu/, core/runs, core/plan, core/graph, core/ref, core/data, core/config
 * core/runs                  ← core/plan, core/data, core/config (never core/train nor core/infer)
 * gpu/                       ← core/graph only: it executes graphs
 * core/plan                  ← core/graph, core/data, core/config: the model as a graph, its counts
 * core/graph                 ← core/ref: the IR, autodiff, schedule and the CPU executor, which runs core/ref
 * core/data                  ← core/config: text sources, tokenizers, datasets
 * core/ref                   ← core/graph/op_types.ts only: float64 references of the ops
 * core/config                ← nothing of ours: the experiment schema
 * core/graph/op_types.ts     ← nothing: the op list (names, attributes) and op parameters of ref, graph, gpu/
 * core/util                  ← nothing: helpers of no domain
 * ```
 *
 * Read as "what runs on what", the issue's chain config → plan → graph → gpu → train, infer → runs →
 * dashboard holds but in two places: `core/plan` builds its model with `core/graph`'s ops, so the graph IR
 * sits below the plan (and gpu/ beside the plan, importing neither it nor `core/config`); and `core/train` and
 * `core/infer` write runs through `core/runs`, so `core/runs` sits below them and never imports them back.
 *
 * @module
 */
import { deepStrictEqual as assertEquals, fail, ok as assert } from "node:assert/strict";
import { fileURLToPath } from "node:url";

/** What the layers below training and inference are; and those below the entry points. */
const BELOW_TRAIN = ["core/config", "core/data", "core/graph", "core/plan", "core/ref", "core/runs", "gpu"];
const BELOW_ENTRY = [...BELOW_TRAIN, "core/train", "core/infer"];

/**
 * Each place (a folder, or a file with a layer of its own) → the places its product files may import,
 * besides their own place, places inside it and `core/util`; and the rule an import against it breaks. A
 * file's place is the longest key that is its path or a folder above it; naming a place allows the places
 * inside it too.
 */
const LAYERS: Record<string, { may: string[]; rule: string }> = {
  "core/util": { may: [], rule: "core/util imports nothing of ours" },
  "core/graph/op_types.ts": { may: [], rule: "the op parameter types import nothing" },
  "core/config": { may: [], rule: "core/config imports nothing of ours but core/util" },
  "core/ref": { may: ["core/graph/op_types.ts"], rule: "core/ref takes of core/graph only its op types" },
  "core/graph": { may: ["core/ref"], rule: "the graph IR imports no layer above it" },
  "core/data": { may: ["core/config"], rule: "core/data imports no layer above core/config" },
  "gpu": { may: ["core/graph"], rule: "gpu/ imports nothing from core/ except the graph IR" },
  "core/plan": { may: ["core/config", "core/data", "core/graph"], rule: "core/plan imports no layer above" },
  "core/runs": { may: ["core/config", "core/data", "core/plan"], rule: "core/runs never imports core/train" },
  "core/train": { may: BELOW_TRAIN, rule: "core/train imports no entry point, dashboard or core/infer" },
  "core/infer": { may: BELOW_TRAIN, rule: "core/infer imports no entry point, dashboard or core/train" },
  "core/dashboard": { may: ["core/runs"], rule: "the dashboard never imports gpu/ or core/train" },
  "core/bench": { may: BELOW_ENTRY, rule: "core/bench imports no other entry point" },
  "core/repro": { may: BELOW_ENTRY, rule: "core/repro imports no other entry point" },
  "core/cli": { may: ["*"], rule: "" },
  "mod.ts": { may: ["*"], rule: "" },
};

/** Imported by every place. */
const SHARED = "core/util";

// ---------------------------------------------------------------------------------------------------------
// Reading the imports.

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** One import (repository-relative paths). */
interface Edge {
  from: string;
  to: string;
  line: number;
  typeOnly: boolean;
}

/**
 * `src` with comments blanked, every string literal replaced by `"<n>"` (its text in `strings[n]`), the text
 * of template literals blanked (their `${…}` kept as code) and regular expression literals replaced by `/r/`:
 * what is left is code, where the import syntax can be matched. Newlines are kept, for line numbers.
 */
function skeleton(src: string): { code: string; strings: string[] } {
  const out: string[] = [];
  const strings: string[] = [];
  const templateDepths: number[] = []; // brace depth at each open `${`
  let depth = 0, i = 0, tail = "";
  const n = src.length;
  const emit = (s: string) => {
    out.push(s);
    if (s.trim() !== "") tail = (tail + s.trim()).slice(-16);
  };
  const newlinesOf = (s: string) => s.replace(/[^\n]/g, "");
  const regexMayStart = () =>
    tail === "" || "(,=:[!&|?{};+-*%<>~^".includes(tail[tail.length - 1]!) ||
    /(?:^|[^\w$.])(?:return|typeof|case|do|else|in|of|new|delete|void|throw|yield|await)$/.test(tail);
  const template = () => { // at i: just past the "`" or the "}" that closes a `${`
    let raw = "";
    while (i < n) {
      const c = src[i]!;
      if (c === "\\") {
        raw += src.slice(i, i + 2);
        i += 2;
      } else if (c === "`") {
        i++;
        emit(newlinesOf(raw) + "``");
        return;
      } else if (c === "$" && src[i + 1] === "{") {
        i += 2;
        emit(newlinesOf(raw) + "`${");
        templateDepths.push(depth++);
        return;
      } else {
        raw += c;
        i++;
      }
    }
    emit(newlinesOf(raw));
  };
  while (i < n) {
    const c = src[i]!, next = src[i + 1];
    if (c === "/" && next === "/") {
      while (i < n && src[i] !== "\n") i++;
      out.push(" ");
    } else if (c === "/" && next === "*") {
      const end = src.indexOf("*/", i + 2);
      const stop = end < 0 ? n : end + 2;
      out.push(" " + newlinesOf(src.slice(i, stop)));
      i = stop;
    } else if (c === '"' || c === "'") {
      let j = i + 1, text = "";
      while (j < n && src[j] !== c && src[j] !== "\n") {
        if (src[j] === "\\") {
          text += src.slice(j, j + 2);
          j += 2;
        } else text += src[j++];
      }
      emit(`"${strings.length}"`);
      strings.push(text);
      i = j + 1;
    } else if (c === "`") {
      i++;
      template();
    } else if (c === "/" && regexMayStart()) {
      let j = i + 1, inClass = false;
      while (j < n && src[j] !== "\n") {
        const d = src[j]!;
        if (d === "\\") j++;
        else if (d === "[") inClass = true;
        else if (d === "]") inClass = false;
        else if (d === "/" && !inClass) break;
        j++;
      }
      j++;
      while (j < n && /[a-z]/i.test(src[j]!)) j++;
      emit("/r/");
      i = j;
    } else if (c === "}" && templateDepths.at(-1) === depth - 1) {
      depth--;
      templateDepths.pop();
      i++;
      emit("}");
      template();
    } else {
      if (c === "{") depth++;
      else if (c === "}") depth--;
      emit(c);
      i++;
    }
  }
  return { code: out.join(""), strings };
}

/**
 * import x from "…", import { a, type B } from "…", import type …, export { a } from "…", export * from "…",
 * import "…", import("…"). Between the keyword and `from` no string, parenthesis, `;` or `=` can occur.
 */
const IMPORT_RE =
  /(?<![\w$.])(?:(?:import|export)\s+(type\s+)?[^"();=]*?(?<![\w$])from\s*|import\s*|import\s*\(\s*)"(\d+)"/g;

/** The specifiers `src` imports, with their lines and whether the import is of types only. */
function importSpecifiers(src: string): { specifier: string; line: number; typeOnly: boolean }[] {
  const { code, strings } = skeleton(src);
  const lineStarts = [0];
  for (let i = 0; i < code.length; i++) if (code[i] === "\n") lineStarts.push(i + 1);
  const lineOf = (at: number) => lineStarts.findLastIndex((s) => s <= at) + 1;
  return [...code.matchAll(IMPORT_RE)].map((m) => ({
    specifier: strings[Number(m[2])]!,
    line: lineOf(m.index! + m[0].length - 1),
    typeOnly: m[1] !== undefined,
  }));
}

async function sourceFiles(): Promise<string[]> {
  const files = ["mod.ts"];
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(`${ROOT}/${dir}`)) {
      const path = `${dir}/${e.name}`;
      if (e.isDirectory && e.name !== "node_modules") await walk(path);
      else if (e.isFile && e.name.endsWith(".ts")) files.push(path);
    }
  };
  await walk("core");
  await walk("gpu");
  return files.sort();
}

/** `spec` imported by `from`, as a repository-relative path; null when it is not a relative specifier. */
function resolve(from: string, spec: string): string | null {
  if (!spec.startsWith("./") && !spec.startsWith("../")) return null;
  const parts = from.split("/").slice(0, -1);
  for (const p of spec.split("/")) {
    if (p === "..") parts.pop();
    else if (p !== ".") parts.push(p);
  }
  return parts.join("/");
}

/** Every relative import of the files read, and those that name no file. */
async function importGraph(): Promise<{ files: string[]; edges: Edge[]; unresolved: string[] }> {
  const files = await sourceFiles();
  const edges: Edge[] = [], unresolved: string[] = [];
  for (const from of files) {
    for (
      const { specifier, line, typeOnly } of importSpecifiers(await Deno.readTextFile(`${ROOT}/${from}`))
    ) {
      const to = resolve(from, specifier);
      if (to === null) continue;
      const isFile = await Deno.stat(`${ROOT}/${to}`).then((s) => s.isFile, () => false);
      if (isFile) edges.push({ from, to, line, typeOnly });
      else unresolved.push(`${from}:${line} imports "${specifier}", which is no file`);
    }
  }
  return { files, edges, unresolved };
}

const isProduct = (path: string) =>
  (path === "mod.ts" || /^(core|gpu)\//.test(path)) && !path.endsWith("_test.ts");

// ---------------------------------------------------------------------------------------------------------
// The checks.

const within = (path: string, place: string) => path === place || path.startsWith(place + "/");

/** The place of `path` in {@linkcode LAYERS}: the longest key that is it or a folder above it. */
function placeOf(path: string): string | null {
  return Object.keys(LAYERS).filter((p) => within(path, p)).sort((a, b) => b.length - a.length)[0] ?? null;
}

/** Each import of a product file against the layering, or of a test by product code, as a message. */
function layerViolations(edges: readonly Edge[]): string[] {
  const out: string[] = [];
  for (const e of edges) {
    if (!isProduct(e.from)) continue;
    const at = `${e.from}:${e.line} imports ${e.to}`;
    if (!isProduct(e.to)) {
      out.push(`${at}: product code never imports tests (tests/ or *_test.ts)`);
      continue;
    }
    const from = placeOf(e.from), to = placeOf(e.to);
    if (from === null || to === null) continue; // unplaced files are named by placeless()
    const { may, rule } = LAYERS[from]!;
    const allowed = may.includes("*") || [from, SHARED, ...may].some((p) => within(to, p));
    if (!allowed) {
      out.push(`${at}: ${rule} (${from} may import ${[...may, SHARED].join(", ")})`);
    }
  }
  return [...new Set(out)];
}

/** Product files in no place of {@linkcode LAYERS}. */
function placeless(files: readonly string[]): string[] {
  return files.filter((f) => isProduct(f) && placeOf(f) === null)
    .map((f) => `${f} is in no layer: give its folder a place in LAYERS (tests/layering_test.ts)`);
}

/**
 * Each import cycle among `edges`, one per strongly connected set of files: the chain of files around it,
 * each step naming the file imported and where (`importer:line`), `(type)` where the import is of types only.
 */
function cycles(edges: readonly Edge[]): string[] {
  const next = new Map<string, Edge[]>();
  for (const e of edges) next.set(e.from, [...(next.get(e.from) ?? []), e]);
  // Tarjan's strongly connected components.
  const index = new Map<string, number>(), low = new Map<string, number>();
  const stack: string[] = [], onStack = new Set<string>(), components: string[][] = [];
  const visit = (v: string) => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    onStack.add(v);
    for (const { to: w } of next.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const c: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        c.push(w);
      } while (w !== v);
      if (c.length > 1 || (next.get(v) ?? []).some((e) => e.to === v)) components.push(c);
    }
  };
  for (const v of [...next.keys()].sort()) if (!index.has(v)) visit(v);
  // In each, the shortest way from its first file (by name) back to it.
  return components.map((c) => {
    const inside = new Set(c), start = [...c].sort()[0]!;
    const via = new Map<string, Edge>(); // file → the import that first reached it
    const queue = [start];
    for (let q = 0; q < queue.length; q++) {
      for (const e of next.get(queue[q]!) ?? []) {
        if (!inside.has(e.to) || via.has(e.to)) continue;
        via.set(e.to, e);
        if (e.to === start) {
          const chain: Edge[] = [];
          for (let f = start; chain.length === 0 || f !== start; f = via.get(f)!.from) {
            chain.unshift(via.get(f)!);
          }
          const steps = chain.map((e) => `→ ${e.typeOnly ? "(type) " : ""}${e.to} (${e.from}:${e.line})`);
          const all = c.length > chain.length
            ? ` [one of the cycles among ${c.length} files: ${c.sort().join(", ")}]`
            : "";
          return `${start} ${steps.join(" ")}${all}`;
        }
        queue.push(e.to);
      }
    }
    throw new Error(`no way back to ${start}`);
  });
}

// ---------------------------------------------------------------------------------------------------------
// The tests.

const graph = await importGraph();

Deno.test("layering: every relative import of core/, gpu/ and mod.ts names a file", () => {
  assertEquals(graph.unresolved, []);
  assert(graph.files.length > 200 && graph.edges.length > 900, `only ${graph.edges.length} imports read`);
});

Deno.test("layering: product code imports only down the layers, and never tests/", () => {
  const v = [...placeless(graph.files), ...layerViolations(graph.edges)];
  if (v.length) fail(`${v.length} imports against the layering:\n  ${v.join("\n  ")}`);
});

Deno.test("layering: no import cycle among product files (type-only imports included)", () => {
  const c = cycles(graph.edges.filter((e) => isProduct(e.from) && isProduct(e.to)));
  if (c.length) fail(`${c.length} import cycles:\n  ${c.join("\n  ")}`);
});

Deno.test("layering: the import reader finds every import form and nothing in strings or comments", () => {
  const src = `import { a, type B } from "./a.ts";
import type {
  C,
} from "../c.ts";
export * from "./d.ts";
export { e } from './e.ts';
import "./f.ts";
const g = await import("./g.ts");
// import { x } from "./comment.ts";
/* export * from "./block.ts"; */
const s = "import y from './string.ts'";
const t = \`import z from "./template.ts" \${await import("./in_template.ts")}\`;
const r = /from "x"/.test(s) ? 1 / 2 : 3;
import h from "npm:zod";
myObject.import("./not.ts");`;
  assertEquals(importSpecifiers(src), [
    { specifier: "./a.ts", line: 1, typeOnly: false },
    { specifier: "../c.ts", line: 4, typeOnly: true },
    { specifier: "./d.ts", line: 5, typeOnly: false },
    { specifier: "./e.ts", line: 6, typeOnly: false },
    { specifier: "./f.ts", line: 7, typeOnly: false },
    { specifier: "./g.ts", line: 8, typeOnly: false },
    { specifier: "./in_template.ts", line: 12, typeOnly: false },
    { specifier: "npm:zod", line: 14, typeOnly: false },
  ]);
});

Deno.test("layering: a back-import, an import of tests/ and a cycle are each named", () => {
  const edge = (from: string, to: string, typeOnly = false): Edge => ({ from, to, line: 3, typeOnly });
  assertEquals(layerViolations([edge("core/dashboard/pages.ts", "gpu/device.ts")]), [
    "core/dashboard/pages.ts:3 imports gpu/device.ts: the dashboard never imports gpu/ or core/train " +
    "(core/dashboard may import core/runs, core/util)",
  ]);
  assertEquals(layerViolations([edge("core/runs/store.ts", "tests/helpers/run_meta.ts")]), [
    "core/runs/store.ts:3 imports tests/helpers/run_meta.ts: product code never imports tests (tests/ or *_test.ts)",
  ]);
  assertEquals(layerViolations([edge("gpu/graph_ops.ts", "core/graph/op_types.ts")]), []);
  assertEquals(layerViolations([edge("gpu/graph_ops.ts", "core/ref/routing.ts")]).length, 1);
  assertEquals(layerViolations([edge("core/runs/store.ts", "core/train/trainer.ts")]).length, 1);
  assertEquals(placeless(["core/new/x.ts", "core/new/x_test.ts"]).length, 1);
  assertEquals(
    cycles([edge("a.ts", "b.ts"), edge("b.ts", "c.ts", true), edge("c.ts", "a.ts"), edge("c.ts", "d.ts")]),
    [
      "a.ts → b.ts (a.ts:3) → (type) c.ts (b.ts:3) → a.ts (c.ts:3)",
    ],
  );
  assertEquals(cycles([edge("a.ts", "b.ts"), edge("b.ts", "c.ts")]), []);
});

import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { applySets, mergeSourced, setAt, withoutKey } from "./overrides.ts";
import { parseYaml, positionOf } from "./yaml_source.ts";

Deno.test("mergeSourced() merges maps, replaces lists and keeps where each key came from", () => {
  const base = parseYaml("a: { x: 1, l: [1, 2, 3] }\nb: 2\n", "base.yaml");
  const over = parseYaml("a: { l: [9] }\nc: 3\n", "over.yaml");
  const m = mergeSourced(base, over);
  assertEquals(m.value, { a: { x: 1, l: [9] }, b: 2, c: 3 });
  assertEquals(positionOf(m.src, ["a", "x"], "value").file, "base.yaml");
  assertEquals(positionOf(m.src, ["a", "l", 0], "value"), { file: "over.yaml", line: 1, col: 10 });
  assertEquals(base.value, { a: { x: 1, l: [1, 2, 3] }, b: 2 }, "inputs are not changed");
});

Deno.test("setAt() creates missing maps and withoutKey() drops a top-level key", () => {
  const tree = parseYaml("a: 1\n", "t.yaml");
  const at = { file: "--set", line: 1, col: 1 };
  const t = setAt(tree, ["b", "c"], parseYaml("5", "--set", { col: 5 }), [at, { ...at, col: 3 }]);
  assertEquals(t.value, { a: 1, b: { c: 5 } });
  assertEquals(positionOf(t.src, ["b", "c"], "key"), { file: "--set", line: 1, col: 3 });
  assertEquals(positionOf(t.src, ["b", "c"], "value"), { file: "--set", line: 1, col: 5 });
  assertEquals(withoutKey(t, "a").value, { b: { c: 5 } });
});

Deno.test("applySets() joins the rest of a dotted key under a record such as sweep.grid", () => {
  const t = applySets(parseYaml("", "t.yaml"), ["sweep.grid.loss.mi.mlp=[0, 1]", "data.source=a=b.txt"]);
  assertEquals(t.value, { sweep: { grid: { "loss.mi.mlp": [0, 1] } }, data: { source: "a=b.txt" } });
});

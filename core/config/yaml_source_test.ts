import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { parseYaml, positionOf } from "./yaml_source.ts";

const TEXT = "model:\n  d_model: 64\n  mlp: { experts: 4 }\nlist:\n  - a\n  - &x { k: 1 }\ncopy: *x\n";

Deno.test("parseYaml() records the position of every key and value", () => {
  const { src } = parseYaml(TEXT, "p.yaml");
  assertEquals(positionOf(src, ["model", "d_model"], "key"), { file: "p.yaml", line: 2, col: 3 });
  assertEquals(positionOf(src, ["model", "d_model"], "value"), { file: "p.yaml", line: 2, col: 12 });
  assertEquals(positionOf(src, ["model", "mlp", "experts"], "value"), { file: "p.yaml", line: 3, col: 19 });
  assertEquals(positionOf(src, ["list", 1, "k"], "value"), { file: "p.yaml", line: 6, col: 13 });
  // An absent key falls back to its nearest written parent's key.
  assertEquals(positionOf(src, ["model", "attention", "kind"], "value"), { file: "p.yaml", line: 1, col: 1 });
  assertEquals(positionOf(src, [], "value"), { file: "p.yaml", line: 1, col: 1 });
});

Deno.test("parseYaml() expands an alias into a copy located at the alias", () => {
  const { value, src } = parseYaml(TEXT, "p.yaml");
  const v = value as { list: [string, { k: number }]; copy: { k: number } };
  assertEquals(v.copy, { k: 1 });
  assert(v.copy !== v.list[1], "an alias must not share the anchored object");
  assertEquals(positionOf(src, ["copy"], "value"), { file: "p.yaml", line: 7, col: 7 });
});

Deno.test("parseYaml() shifts positions for text cut from a larger line", () => {
  const { value, src } = parseYaml("[0.9, 0.99]", "--set", { line: 1, col: 23 });
  assertEquals(value, [0.9, 0.99]);
  assertEquals(positionOf(src, [1], "value"), { file: "--set", line: 1, col: 29 });
});

Deno.test("parseYaml() reads YAML 1.2: no, on and 0o17 are as the core schema says", () => {
  assertEquals(parseYaml("a: no\nb: on\nc: 0o17\nd: 0x1F\ne: True\nf: ~\n", "c.yaml").value, {
    a: "no",
    b: "on",
    c: 15,
    d: 31,
    e: true,
    f: null,
  });
});

import { deepStrictEqual as assertEquals } from "node:assert/strict";
import {
  closestWord,
  ConfigError,
  type ConfigIssue,
  editDistance,
  formatKeyPath,
  MAX_ISSUES,
  suggestionHint,
} from "./errors.ts";

Deno.test("editDistance() counts insertions, deletions, substitutions and transpositions", () => {
  assertEquals(editDistance("expert", "experts"), 1);
  assertEquals(editDistance("modle", "model"), 1);
  assertEquals(editDistance("kitten", "sitting"), 3);
  assertEquals(editDistance("", "abc"), 3);
  assertEquals(editDistance("same", "same"), 0);
});

Deno.test("closestWord() suggests only near candidates", () => {
  assertEquals(closestWord("expert", ["experts", "hidden", "activation"]), "experts");
  assertEquals(closestWord("D_MODEL", ["d_model", "layers"]), "d_model");
  assertEquals(closestWord("zzzz", ["experts", "hidden"]), null);
  assertEquals(suggestionHint("zzzz", ["a", "b"]), " (expected one of: a, b)");
});

Deno.test("formatKeyPath() writes dotted keys, list indices and quoted odd keys", () => {
  assertEquals(formatKeyPath([]), "");
  assertEquals(formatKeyPath(["model", "mlp", "experts"]), "model.mlp.experts");
  assertEquals(formatKeyPath(["train", "optimizer", "betas", 1]), "train.optimizer.betas[1]");
  assertEquals(formatKeyPath(["sweep", "grid", "loss.mi.mlp"]), 'sweep.grid["loss.mi.mlp"]');
});

Deno.test("ConfigError formats one issue a line and caps a flood of issues", () => {
  const issue = (line: number): ConfigIssue => ({
    file: "f.yaml",
    line,
    col: 2,
    keyPath: "",
    message: "bad",
  });
  const one = new ConfigError([issue(1)]);
  assertEquals(one.name, "ConfigError");
  assertEquals(one.message, "f.yaml:1:2: (root): bad");
  const many = new ConfigError(Array.from({ length: 50 }, (_, i) => issue(i + 1)));
  assertEquals(many.issues.length, MAX_ISSUES);
  assertEquals(many.issues[MAX_ISSUES - 1]?.message, "31 more problems not shown");
  assertEquals(many.message.split("\n").length, MAX_ISSUES);
  assertEquals(new ConfigError([issue(1), issue(1)]).issues.length, 1);
});

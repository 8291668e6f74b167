import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import { ConfigError } from "../config/errors.ts";
import { loadReproSpec, parseReproSpec } from "./spec.ts";

Deno.test("the shipped repro manifest names five configs, the frontier rules and both scales", async () => {
  const spec = await loadReproSpec("configs/repro/repro.yaml");
  assertEquals(Object.keys(spec.configs).sort(), ["alpha-large", "alpha0", "dense", "dsmoe", "smoe"]);
  assertEquals(spec.rules[0]!.spec, "dense");
  assert(spec.rules.some((r) => r.spec === "topk:2") && spec.rules.some((r) => r.spec === "top_p:0.9"));
  assertEquals(spec.claimRule.rules.mlp, { epsilon: 0.5, k: 2, p: 0.9, kind: "threshold" });
  assertEquals(Object.keys(spec.scales).sort(), ["micro", "small"]);
  assertEquals(spec.scales.small!.set, []);
  assertEquals(spec.scales.micro!.evalBatches, 4);
  assertEquals(spec.scales.small!.evalBatches, 32, "a scale without its own count takes the top-level one");
});

const good = `models: { dense: d.yaml, smoe: s.yaml, dsmoe: m.yaml }
ablation: { alpha0: a.yaml, alpha-large: b.yaml }
rules: [dense, "topk:2"]
claim_rule: "threshold:0.5"
eval_batches: 2
decode_tokens: 4
scales: { micro: { set: [train.steps=2] } }
`;

Deno.test("repro manifest errors name file:line:col and the key", () => {
  assertEquals(parseReproSpec(good, "r.yaml", "dir").configs.smoe, "dir/s.yaml");
  const cases: [string, string][] = [
    [good.replace('"topk:2"', '"topk:0"'), "r.yaml:3:16: rules.1: topk:0: expected an integer ≥ 1"],
    [good.replace("claim_rule:", "claim_rul:"), "r.yaml:4:1: claim_rul: unknown key"],
    [good.replace("smoe: s.yaml", "smoe: 3"), "r.yaml:1:32: models.smoe: expected a config file path"],
    [
      good.replace("eval_batches: 2", "eval_batches: 0"),
      "r.yaml:5:15: eval_batches: expected an integer ≥ 1, got 0",
    ],
    [
      good.replace("[train.steps=2]", "[steps]"),
      "r.yaml:7:25: scales.micro.set: expected a list of key=value",
    ],
  ];
  for (const [text, want] of cases) {
    const e = throws(() => parseReproSpec(text, "r.yaml", "dir"), ConfigError) as unknown;
    void e;
    try {
      parseReproSpec(text, "r.yaml", "dir");
    } catch (err) {
      assert(
        err instanceof ConfigError && err.message.startsWith(want),
        `${(err as Error).message}\nwanted ${want}`,
      );
    }
  }
});

Deno.test("a repro manifest naming a missing config is refused at that entry", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/r.yaml`, good);
    for (const f of ["d", "s", "a", "b"]) await Deno.writeTextFile(`${dir}/${f}.yaml`, "name: x\n");
    const e = await loadReproSpec(`${dir}/r.yaml`).catch((e) => e);
    assert(e instanceof ConfigError, String(e));
    assertEquals(e.issues.map((i) => [i.line, i.col, i.keyPath, i.message]), [
      [1, 47, "models.dsmoe", `no file ${dir}/m.yaml`],
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

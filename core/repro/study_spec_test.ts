import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { ConfigError } from "../config/errors.ts";
import { checkSizes, loadStudySpec, parseStudySpec, resolveStudy } from "./study_spec.ts";

Deno.test("the shipped study manifest: baseline, the routers of today, the rule grid, scales with micro", async () => {
  const spec = await loadStudySpec("configs/study/routers.yaml");
  assertEquals(spec.name, "routers");
  assertEquals(spec.baseline.file, "configs/study/dense.yaml");
  assertEquals(spec.routers.map((r) => [r.name, r.file]), [
    ["dsmoe", "configs/study/dsmoe.yaml"], // {set: []}: the base
    ["smoe", "configs/study/smoe.yaml"],
    // The routers of the literature (docs/design.md §16), each SMoE with its own settings.
    ...[
      "topk-capacity",
      "topk-seq-balance",
      "expert-choice",
      "top-p",
      "relu",
      "null-experts",
      "shared-fine",
      "aux-free",
    ]
      .map((name) => [name, "configs/study/smoe.yaml"]),
  ]);
  assertEquals(spec.rules.map((r) => r.spec), [
    "dense",
    "own",
    "threshold:0.25",
    "threshold:0.5",
    "threshold:1",
    "threshold:2",
    "topk:1",
    "topk:2",
    "top_p:0.5",
    "top_p:0.8",
    "top_p:0.9",
  ]);
  assertEquals(spec.size, { tolerance: 0.02, onMismatch: "refuse" });
  assertEquals(spec.defaultScale, "real");
  assertEquals(Object.keys(spec.scales).sort(), ["micro", "real", "small"]);
  assertEquals(spec.scales.micro!.evalBatches, 2);
  assertEquals(spec.scales.small!.evalBatches, 16, "a scale without its own count takes the top-level one");
  // At both scales every model is within the tolerance of the baseline's size.
  for (const scale of ["micro", "small", "real"]) {
    const { models, size } = await resolveStudy(spec, scale);
    assertEquals(
      models.map((m) => [m.entry.name, m.routed]),
      [["baseline", false], ...spec.routers.map((r) => [r.name, true])],
    );
    assert(size.within, JSON.stringify(size));
    assert(size.rows.every((r) => Math.abs(r.rel_diff) <= 0.02 && r.params_total > 0), JSON.stringify(size));
  }
});

const good = `name: s
base: b.yaml
baseline: d.yaml
routers:
  r1: { set: [seed=2] }
  r2: { extends: x.yaml }
rules: [dense, "topk:2", { threshold: [0.5, 1] }]
eval_batches: 2
scales: { micro: { set: [train.steps=2] } }
`;

/** The message of the ConfigError `f` throws (fails if it throws nothing or something else). */
function configErrorOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    assert(e instanceof ConfigError, String(e));
    return e.message;
  }
  throw new Error("no ConfigError");
}

Deno.test("study manifest: entries resolve against its directory; the rules grid expands", () => {
  const s = parseStudySpec(good, "m.yaml", "dir");
  assertEquals(s.baseline, { name: "baseline", group: "baseline", file: "dir/d.yaml", set: [] });
  assertEquals(s.routers, [
    { name: "r1", group: "routers", file: "dir/b.yaml", set: ["seed=2"] },
    { name: "r2", group: "routers", file: "dir/x.yaml", set: [] },
  ]);
  assertEquals(s.rules.map((r) => r.spec), ["dense", "topk:2", "threshold:0.5", "threshold:1"]);
  assertEquals(s.defaultScale, "micro");
  assertEquals(s.size, { tolerance: 0.02, onMismatch: "refuse" }, "the default tolerance and policy");
  assertEquals(s.scales.micro!.decodeTokens, 0, "no decoding unless asked");
});

Deno.test("study manifest errors name file:line:col and the key", () => {
  const cases: [string, string][] = [
    [good.replace('"topk:2"', '"topk:0"'), "m.yaml:7:16: rules.1: topk:0: expected an integer ≥ 1"],
    [
      good.replace("threshold: [0.5, 1]", "threshold: [0.5, x]"),
      'm.yaml:7:45: rules.2.threshold.1: expected a number, got "x"',
    ],
    [good.replace("threshold: [0.5, 1]", "treshold: [0.5]"), "m.yaml:7:26: rules.2: expected a rule such as"],
    [good.replace('"topk:2"', '"topk:2", "topk:2"'), "m.yaml:7:26: rules.2: topk:2 is listed twice"],
    [good.replace("eval_batches:", "eval_batch:"), "m.yaml:8:1: eval_batch: unknown key"],
    [
      good.replace("r2: { extends: x.yaml }", "r2: { extend: x.yaml }"),
      "m.yaml:6:9: routers.r2.extend: unknown key",
    ],
    [good.replace("r2:", "baseline:"), "m.yaml:6:3: routers.baseline: a router name is letters, digits"],
    [
      good.replace("seed=2", "seed"),
      'm.yaml:5:15: routers.r1.set.0: expected key=value (as for --set), got "seed"',
    ],
    [good.replace("base: b.yaml\n", ""), "m.yaml:4:7: routers.r1: no extends: and no base: to start from"],
    [good.replace("baseline: d.yaml\n", ""), "baseline: expected the dense baseline"],
    [good + "size: { tolerance: 2 }\n", "m.yaml:10:20: size.tolerance: expected a fraction in [0, 1)"],
    [
      good + "size: { on_mismatch: ignore }\n",
      'm.yaml:10:22: size.on_mismatch: expected warn or refuse, got "ignore"',
    ],
    [good + "default_scale: huge\n", "m.yaml:10:16: default_scale: expected one of the scales: micro"],
    [good.replace("[train.steps=2]", "train.steps=2"), "m.yaml:9:25: scales.micro.set: expected a list"],
    [good.replace("name: s", "name: a/b"), "m.yaml:1:7: name: expected a name of letters"],
    [
      good.replace("eval_batches: 2", "eval_batches: 0"),
      "m.yaml:8:15: eval_batches: expected an integer ≥ 1, got 0",
    ],
  ];
  for (const [text, want] of cases) {
    const msg = configErrorOf(() => parseStudySpec(text, "m.yaml", "dir"));
    assert(msg.includes(want), `${msg}\nwanted ${want}`);
  }
});

Deno.test("a study manifest naming a missing config is refused where the file is written", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/m.yaml`, good);
    for (const f of ["b", "d"]) await Deno.writeTextFile(`${dir}/${f}.yaml`, "name: x\n");
    const e = await loadStudySpec(`${dir}/m.yaml`).catch((e) => e);
    assert(e instanceof ConfigError, String(e));
    assertEquals(e.issues.map((i) => [i.line, i.col, i.keyPath, i.message]), [
      [6, 18, "routers.r2.extends", `no file ${dir}/x.yaml`],
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** A manifest over the repository's tiny configs with `routers` as written, in a temp dir. */
async function withManifest(routers: string, extra: string, f: (file: string) => Promise<void>) {
  const dir = await Deno.makeTempDir();
  const cfg = `${Deno.cwd()}/configs`;
  try {
    const file = `${dir}/m.yaml`;
    await Deno.writeTextFile(
      file,
      `base: ${cfg}/dsmoe-tiny.yaml\nbaseline: ${cfg}/dense-tiny.yaml\nrouters:\n${routers}rules: [dense]\n` +
        `eval_batches: 1\nscales:\n  s: { set: [model.layers=1] }\n${extra}`,
    );
    await f(file);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("resolveStudy: a bad --set of an entry is reported at that set item of the manifest", async () => {
  await withManifest("  r: { set: [seed=1, model.mlp.bogus=3] }\n", "", async (file) => {
    const spec = await loadStudySpec(file);
    const e = await resolveStudy(spec, "s").catch((e) => e);
    assert(e instanceof ConfigError, String(e));
    assertEquals(e.issues.length, 1, e.message);
    const i = e.issues[0]!;
    assertEquals([i.file, i.line, i.col, i.keyPath], [file, 4, 22, "routers.r.set.1"]);
    assert(i.message.startsWith('model.mlp.bogus: unknown key "bogus"'), i.message);
  });
});

Deno.test("resolveStudy refuses a routed baseline and models of unequal size, at their entries", async () => {
  // Twice the MLP experts: far beyond 2%.
  await withManifest("  big: { set: [model.mlp.experts=16] }\n  ok: { set: [] }\n", "", async (file) => {
    const spec = await loadStudySpec(file);
    const e = await resolveStudy(spec, "s").catch((e) => e);
    assert(e instanceof ConfigError, String(e));
    assertEquals(e.issues.map((i) => [i.line, i.col, i.keyPath]), [[4, 3, "routers.big"]]);
    assert(
      /parameters, \+\d+\.\d\d% against the baseline's \d+, beyond the 2\.00% tolerance/.test(e.message),
      e.message,
    );
    assert(e.message.includes("size.on_mismatch: refuse"), e.message);
  });
  // With on_mismatch: warn the study goes on; the check says which model is beyond the tolerance.
  await withManifest(
    "  big: { set: [model.mlp.experts=16] }\n",
    "size: { on_mismatch: warn }\n",
    async (file) => {
      const { size } = await resolveStudy(await loadStudySpec(file), "s");
      assertEquals(size.within, false);
      assertEquals(size.rows.map((r) => [r.name, r.within]), [["baseline", true], ["big", false]]);
      assert(size.rows[1]!.rel_diff > 0.5, JSON.stringify(size.rows));
    },
  );
  await withManifest("  r: { set: [] }\n", "", async (file) => {
    const spec = await loadStudySpec(file);
    const routed = { ...spec, baseline: { ...spec.baseline, file: spec.routers[0]!.file } };
    const e = await resolveStudy(routed, "s").catch((e) => e);
    assert(e instanceof ConfigError && e.message.includes("baseline: the baseline must be dense"), String(e));
  });
});

Deno.test("checkSizes compares each model's total parameters with the first's within the tolerance", () => {
  const s = checkSizes([{ name: "baseline", params: 1000 }, { name: "a", params: 1020 }, {
    name: "b",
    params: 979,
  }], {
    tolerance: 0.02,
    onMismatch: "warn",
  });
  assertEquals(s.rows.map((r) => [r.name, r.within]), [["baseline", true], ["a", true], ["b", false]]);
  assertEquals(s.within, false);
  assertEquals(s.baselineParams, 1000);
  assert(Math.abs(s.rows[2]!.rel_diff + 0.021) < 1e-12);
});

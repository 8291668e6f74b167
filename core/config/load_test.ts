import {
  deepStrictEqual as assertEquals,
  ok as assert,
  rejects as assertRejects,
  throws as assertThrows,
} from "node:assert/strict";
import { loadExperiment, parseExperimentText } from "./mod.ts";
import { ExperimentSchema } from "./schema.ts";

const FIX = "tests/fixtures/config";

Deno.test("parseExperimentText() fills every default into an empty file", () => {
  const loaded = parseExperimentText("# nothing set\n", "empty.yaml");
  assertEquals(loaded.config, ExperimentSchema.parse({}));
  assertEquals(loaded.config.model.mlp.experts, 8);
  assertEquals(loaded.config.train.optimizer.betas, [0.9, 0.95]);
  assertEquals(loaded.file, "empty.yaml");
  assertEquals(loaded.sweepId, null);
  assertEquals(loaded.points.length, 1);
  assertEquals(loaded.points[0]?.index, 0);
  assertEquals(loaded.points[0]?.name, "run");
  assertEquals(loaded.points[0]?.params, {});
  assert(loaded.points[0]?.config === loaded.config);
});

Deno.test("loadExperiment() merges extends: maps merge, lists replace, the extending file wins", async () => {
  const { config } = await loadExperiment(`${FIX}/child.yaml`);
  assertEquals(config.name, "child");
  assertEquals(config.seed, 7); // only in base.yaml
  assertEquals(config.model.d_model, 64);
  assertEquals(config.model.mlp, { experts: 8, hidden: 64, activation: "gelu", shared: 0, segments: 1 }); // experts from child
  assertEquals(config.train.optimizer.betas, [0.9, 0.99]); // the list is replaced, not merged
  assertEquals(config.train.optimizer.lr, 1e-3);
  assertEquals(config.train.steps, 50);
  assert(!("extends" in config));
});

Deno.test("loadExperiment() applies a list of extends in order, later bases winning", async () => {
  const { config } = await loadExperiment(`${FIX}/list_child.yaml`);
  assertEquals(config.name, "from-b"); // list_b.yaml wins over list_a.yaml
  assertEquals(config.model.d_model, 48); // list_b.yaml
  assertEquals(config.model.layers, 1); // only in list_a.yaml
  assertEquals(config.seed, 3); // the extending file wins over both
});

Deno.test("loadExperiment() applies --set after extends, typed by the schema", async () => {
  const { config } = await loadExperiment(`${FIX}/child.yaml`, {
    sets: [
      "model.mlp.experts=16",
      "train.optimizer.betas=[0.85,0.98]",
      "data.source=foo.txt",
      "seed=11",
      "seed=12",
      "router.infer_attention.kind=topk",
    ],
  });
  assertEquals(config.model.mlp.experts, 16);
  assertEquals(config.model.mlp.hidden, 64); // still from base.yaml
  assertEquals(config.train.optimizer.betas, [0.85, 0.98]);
  assertEquals(config.data.source, "foo.txt");
  assertEquals(config.seed, 12); // the later --set wins
  assertEquals(config.router.infer_attention, { kind: "topk", epsilon: 0.5, k: 2, p: 0.9 });
});

Deno.test("parseExperimentText() merges a --set map value into the map it replaces", () => {
  const { config } = parseExperimentText("model:\n  mlp: { experts: 4, hidden: 32 }\n", "m.yaml", {
    sets: ["model.mlp={experts: 2}"],
  });
  assertEquals(config.model.mlp, { experts: 2, hidden: 32, activation: "gelu", shared: 0, segments: 1 });
});

Deno.test("loadExperiment() loads every config in configs/", async () => {
  const expected: Record<string, number> = {
    "dense-tiny.yaml": 1,
    "dsmoe-tiny.yaml": 1,
    "quickstart.yaml": 1,
    "smoe-tiny.yaml": 1,
    "sweep-mi.yaml": 6,
  };
  for (const [file, points] of Object.entries(expected)) {
    const loaded = await loadExperiment(`configs/${file}`);
    assertEquals(loaded.points.length, points, file);
    assertEquals(loaded.config.name, file.replace(/\.yaml$/, ""));
  }
  const dense = await loadExperiment("configs/dense-tiny.yaml");
  assertEquals(dense.config.model.attention.kv_heads, 2);
  assertEquals(dense.config.train.steps, 800); // from dsmoe-tiny.yaml
});

Deno.test("loadExperiment() returns deep-frozen configs and points", async () => {
  const loaded = await loadExperiment("configs/sweep-mi.yaml");
  const objects: unknown[] = [
    loaded.config,
    loaded.config.model.mlp,
    loaded.config.train.optimizer.betas,
    loaded.config.sweep,
  ];
  for (const p of loaded.points) objects.push(p.config, p.config.loss.mi);
  for (const o of objects) assert(Object.isFrozen(o));
  assertThrows(() => {
    (loaded.config.model.mlp as { experts: number }).experts = 1;
  }, TypeError);
  assertThrows(() => {
    (loaded.config.train.optimizer.betas as number[]).push(0.5);
  }, TypeError);
  assertEquals(loaded.config.model.mlp.experts, 8);
});

/** Writes `files` (name → text) into a new temp dir and returns it. */
async function tempConfigs(files: Record<string, string>): Promise<string> {
  const dir = await Deno.makeTempDir();
  for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(`${dir}/${name}`, text);
  return dir;
}

Deno.test("loadExperiment() reads each file of a diamond extends graph once: 24 levels in well under a second", async () => {
  // Level i has two files, each extending both files of level i + 1: 2^25 paths, 50 distinct files.
  const L = 24, files: Record<string, string> = {};
  for (let i = 0; i < L; i++) {
    const next = i + 1 === L ? "[leaf.yaml, leaf.yaml]" : `[x${i + 1}.yaml, y${i + 1}.yaml]`;
    files[`x${i}.yaml`] = `extends: ${next}\nseed: ${i}\n`;
    files[`y${i}.yaml`] = `extends: ${next}\ntrain: { steps: ${200 + i} }\n`;
  }
  files["leaf.yaml"] = "name: leaf\nmodel: { d_model: 48 }\n";
  files["top.yaml"] = "extends: [x0.yaml, y0.yaml]\nname: top\n";
  const dir = await tempConfigs(files);
  const reads: string[] = [];
  const open = Deno.openSync;
  try {
    Deno.openSync = (path, options) => (reads.push(String(path)), open(path, options));
    const t0 = performance.now();
    const { config } = await loadExperiment(`${dir}/top.yaml`);
    const ms = performance.now() - t0;
    console.log(`24-level diamond (${reads.length} files read) loaded in ${ms.toFixed(0)} ms`);
    // Later bases win: y0 (steps 200) over x0, and y0's seed comes from the deepest x, x23.
    assertEquals([config.name, config.seed, config.train.steps, config.model.d_model], ["top", 23, 200, 48]);
    assertEquals(reads.length, 2 * L + 2); // every file once
    assert(ms < 5_000, `${ms} ms`); // a liveness bound; it was exponential (16 levels: over 30 s)
  } finally {
    Deno.openSync = open;
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadExperiment() keeps the depth limit for a file reused from a shorter path", async () => {
  // top → [s, p1]; s → base → leaf; p1 → p2 → … → p30 → base: base is read via s first, then reached
  // again 31 files deep, where its own base would be the 33rd file of the chain.
  const files: Record<string, string> = {
    "top.yaml": "extends: [s.yaml, p1.yaml]\n",
    "s.yaml": "extends: base.yaml\n",
    "base.yaml": "extends: leaf.yaml\n",
    "leaf.yaml": "seed: 3\n",
  };
  for (let i = 1; i <= 30; i++) {
    files[`p${i}.yaml`] = `extends: ${i === 30 ? "base.yaml" : `p${i + 1}.yaml`}\n`;
  }
  const dir = await tempConfigs(files);
  try {
    await assertRejects(
      () => loadExperiment(`${dir}/top.yaml`),
      (e: Error) => e.message === `${dir}/p30.yaml:1:10: extends: extends chain deeper than 32 files`,
    );
    files["p30.yaml"] = "extends: leaf.yaml\n"; // one shorter: 32 files exactly
    await Deno.writeTextFile(`${dir}/p30.yaml`, files["p30.yaml"]);
    assertEquals((await loadExperiment(`${dir}/top.yaml`)).config.seed, 3);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

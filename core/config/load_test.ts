import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
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
  assertEquals(config.model.mlp, { experts: 8, hidden: 64, activation: "gelu" }); // experts from child
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
  assertEquals(config.model.mlp, { experts: 2, hidden: 32, activation: "gelu" });
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

import { deepStrictEqual as assertEquals, notDeepStrictEqual, ok as assert } from "node:assert/strict";
import { parseExperimentText } from "./mod.ts";
import { shortKeys } from "./sweep.ts";

function load(text: string, sets: string[] = []) {
  return parseExperimentText(text, "sweep.yaml", { sets });
}

const GRID = `name: g
sweep:
  grid:
    model.mlp.experts: [2, 4, 8]
    loss.mi.mlp: [0, 0.001]
`;

Deno.test("expandSweep() expands a grid into its cartesian product, first key slowest", () => {
  const { points, config, sweepId } = load(GRID);
  assertEquals(points.map((p) => p.name), [
    "g.experts=2.mlp=0",
    "g.experts=2.mlp=0.001",
    "g.experts=4.mlp=0",
    "g.experts=4.mlp=0.001",
    "g.experts=8.mlp=0",
    "g.experts=8.mlp=0.001",
  ]);
  assertEquals(points.map((p) => p.index), [0, 1, 2, 3, 4, 5]);
  assertEquals(points[3]?.params, { "model.mlp.experts": 4, "loss.mi.mlp": 0.001 });
  for (const p of points) {
    assertEquals(p.config.model.mlp.experts, p.params["model.mlp.experts"]);
    assertEquals(p.config.loss.mi.mlp, p.params["loss.mi.mlp"]);
    assertEquals(p.config.name, p.name);
    assert(!("sweep" in p.config));
    assert(Object.isFrozen(p.config.model));
  }
  assertEquals(config.name, "g");
  assert(config.sweep !== undefined);
  assert(sweepId !== null && /^[0-9a-f]{12}$/.test(sweepId));
});

Deno.test("expandSweep() runs repeat seeds seed, seed+1, … for every point", () => {
  const { points } = load("seed: 5\nsweep:\n  grid: { model.layers: [1, 2] }\n  repeat: 3\n");
  assertEquals(points.length, 6);
  assertEquals(points.map((p) => p.config.seed), [5, 6, 7, 5, 6, 7]);
  assertEquals(points.map((p) => p.params.seed), [5, 6, 7, 5, 6, 7]);
  assertEquals(points[4]?.name, "run.layers=2.seed=6");
  assertEquals(points[4]?.params, { "model.layers": 2, seed: 6 });
  const single = load("sweep:\n  grid: { model.layers: [1, 2] }\n").points;
  assertEquals(single.map((p) => p.params), [{ "model.layers": 1 }, { "model.layers": 2 }]);
});

const RANDOM = (seed: number) =>
  `name: r
train:
  schedule: { min_lr: 0 }
sweep:
  random:
    n: 6
    seed: ${seed}
    params:
      train.optimizer.lr: { min: 1.0e-4, max: 1.0e-2, log: true }
      model.mlp.hidden: { min: 16, max: 64, int: true }
      model.norm: [layernorm, rmsnorm]
`;

Deno.test("expandSweep() draws random points deterministically from the seed", () => {
  const a = load(RANDOM(42)).points, b = load(RANDOM(42)).points, c = load(RANDOM(43)).points;
  assertEquals(a.length, 6);
  assertEquals(a.map((p) => p.params), b.map((p) => p.params));
  assertEquals(a.map((p) => p.name), b.map((p) => p.name));
  notDeepStrictEqual(a.map((p) => p.params), c.map((p) => p.params));
  for (const p of a) {
    const lr = p.params["train.optimizer.lr"] as number, hidden = p.params["model.mlp.hidden"] as number;
    assert(lr >= 1e-4 && lr <= 1e-2, `lr ${lr}`);
    assertEquals(Number(lr.toPrecision(4)), lr);
    assert(Number.isInteger(hidden) && hidden >= 16 && hidden <= 64, `hidden ${hidden}`);
    assert(["layernorm", "rmsnorm"].includes(p.params["model.norm"] as string));
    assertEquals(p.config.train.optimizer.lr, lr);
    assertEquals(p.config.model.mlp.hidden, hidden);
  }
  assertEquals(new Set(a.map((p) => p.name)).size, 6);
});

Deno.test("expandSweep() combines each grid point with the same n random samples", () => {
  const text = "sweep:\n  grid: { model.layers: [1, 2] }\n  random:\n    n: 3\n    seed: 7\n" +
    "    params: { train.optimizer.lr: { min: 0.001, max: 0.01 } }\n";
  const { points } = load(text);
  assertEquals(points.length, 6);
  assertEquals(points.map((p) => p.params["model.layers"]), [1, 1, 1, 2, 2, 2]);
  const lrs = points.map((p) => p.params["train.optimizer.lr"]);
  assertEquals(lrs.slice(0, 3), lrs.slice(3));
});

Deno.test("parseExperimentText() gives a stable sweep id that follows the config and the sweep", () => {
  const id = load(GRID).sweepId;
  assertEquals(load(GRID).sweepId, id);
  assert(load(GRID.replace("[2, 4, 8]", "[2, 4]")).sweepId !== id);
  assert(load(GRID, ["train.steps=500"]).sweepId !== id);
  assertEquals(load("name: g\n").sweepId, null);
});

Deno.test("parseExperimentText() lets --set change the sweep block", () => {
  assertEquals(load(GRID, ["sweep.repeat=2"]).points.length, 12);
  assertEquals(load(GRID, ["sweep.grid.model.mlp.experts=[16]"]).points.map((p) => p.name), [
    "g.experts=16.mlp=0",
    "g.experts=16.mlp=0.001",
  ]);
});

Deno.test("expandSweep() keeps point names filesystem-safe and unique", () => {
  const { points } = load("sweep:\n  grid:\n    data.source: ['synthetic:multidomain', 'a b/c.txt']\n");
  assertEquals(points.map((p) => p.name), [
    "run.source=synthetic_multidomain",
    "run.source=a_b_c.txt",
  ]);
  const dup = load("sweep:\n  random:\n    n: 4\n    params: { model.layers: [2] }\n").points;
  assertEquals(dup.map((p) => p.name), [
    "run.layers=2",
    "run.layers=2.1",
    "run.layers=2.2",
    "run.layers=2.3",
  ]);
});

Deno.test("shortKeys() keeps the shortest dotted suffix that no other key shares", () => {
  const m = shortKeys(["loss.mi.mlp", "loss.mi.attention", "model.mlp.experts", "router.experts"]);
  assertEquals([...m.values()], ["mlp", "attention", "mlp.experts", "router.experts"]);
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  fmtBpb,
  fmtChange,
  fmtCount,
  fmtLoss,
  fmtMetric,
  fmtNum,
  fmtPct,
  fmtPpl,
  fmtRate,
  fmtShare,
  fmtStep,
  fmtValue,
  localTime,
  PALETTE,
  paramPairs,
  runColor,
  runColors,
  utcText,
} from "./static/format.js";
import { scatterData } from "./static/scatter.js";
import { flatConfig, hyperparameters } from "./run_summary.ts";

Deno.test("one format per quantity: losses and bpb 4 decimals, ppl 2, counts K/M, percentages 1 decimal", () => {
  assertEquals([fmtLoss(2.302585), fmtLoss(1), fmtLoss(null), fmtLoss(undefined)], [
    "2.3026",
    "1.0000",
    "—",
    "—",
  ]);
  assertEquals([fmtPpl(10.0234), fmtPpl(4.481), fmtPpl(50257)], ["10.02", "4.48", "50257.00"]);
  assertEquals([fmtBpb(1.19324), fmtBpb(0.5)], ["1.1932", "0.5000"]);
  assertEquals(
    [fmtCount(512), fmtCount(12345), fmtCount(1234567), fmtCount(2.5e9), fmtCount(3e12)],
    ["512", "12.3K", "1.23M", "2.5G", "3T"],
  );
  assertEquals([fmtPct(42), fmtPct(12.345), fmtShare(0.125)], ["42.0%", "12.3%", "12.5%"]);
  assertEquals([fmtChange(1.254), fmtChange(-0.4), fmtChange(0), fmtChange(null)], [
    "+1.25%",
    "-0.40%",
    "+0.00%",
    "—",
  ]);
  assertEquals([fmtStep(12000), fmtStep(null)], ["12000", "—"]);
  assertEquals([fmtRate(0.003), fmtRate(3e-4), fmtRate(0), fmtRate(0.1)], ["3.0e-3", "3.0e-4", "0", "0.1"]);
  assertEquals([fmtNum(0.123456), fmtNum(25000), fmtNum(0.0001234), fmtNum(NaN)], [
    "0.1235",
    "25K",
    "1.23e-4",
    "—",
  ]);
});

Deno.test("a metric key picks its quantity's format", () => {
  assertEquals(
    [
      fmtMetric("train/loss", 2),
      fmtMetric("val/loss", 1.5),
      fmtMetric("train/mi_loss/mlp", 0.01),
      fmtMetric("val/ppl", 7.389),
      fmtMetric("val/bpb", 1.1),
      fmtMetric("infer/topk@1/active_pct", 30),
      fmtMetric("train/lr", 0.003),
      fmtMetric("infer/dense/active_params", 1234567),
      fmtMetric("train/tokens_per_s", 23456),
    ],
    ["2.0000", "1.5000", "0.0100", "7.39", "1.1000", "30.0%", "3.0e-3", "1.23M", "23.5K"],
  );
});

Deno.test("sweep parameters are key=value pairs in key order, strings bare", () => {
  assertEquals(paramPairs({ "model.kind": "dsmoe", "loss.mi.mlp": 0.001, "train.steps": 800, x: [1, 2] }), [
    "loss.mi.mlp=1.0e-3",
    "model.kind=dsmoe",
    "train.steps=800",
    "x=[1,2]",
  ]);
  assertEquals(paramPairs({}), []);
  assertEquals([fmtValue("a b"), fmtValue(true), fmtValue(null), fmtValue(0.25)], [
    "a b",
    "true",
    "—",
    "0.25",
  ]);
});

Deno.test("timestamps: UTC text from the server, the viewer's local time in the browser", () => {
  assertEquals(utcText("2026-11-25T10:00:00.000Z"), "2026-11-25 10:00 UTC");
  assertEquals(localTime("2026-11-25T10:00:00.000Z", "UTC"), "2026-11-25 10:00");
  assertEquals(localTime("2026-11-25T23:30:00.000Z", "Europe/Berlin"), "2026-11-26 00:30");
  assertEquals(localTime("2026-11-25T10:00:00.000Z", "America/New_York"), "2026-11-25 05:00");
  assertEquals(localTime("not a time"), "not a time");
});

Deno.test("a run's colour is a stable hash of its id; runs shown together never share one", () => {
  const ids = Array.from({ length: 40 }, (_, i) => `20261206-1200${String(i).padStart(2, "0")}-run-${i}`);
  for (const id of ids) {
    assertEquals(runColor(id), runColor(id));
    assert(PALETTE.includes(runColor(id)));
  }
  assert(new Set(ids.map(runColor)).size >= 8, "the hash spreads ids over the palette");
  // Pinned: a change of hash or palette would recolour every stored run.
  assertEquals([runColor("run-a"), runColor("run-b")], ["#843c39", "#8c6d31"]);
  const some = ids.slice(0, 12);
  const together = runColors(some);
  assertEquals(new Set(together).size, 12, "distinct within a page");
  assertEquals(together[0], runColor(some[0]!), "the first keeps its own colour");
  // Ids whose own colours differ keep them.
  const distinct = ids.filter((id, i) => ids.findIndex((j) => runColor(j) === runColor(id)) === i).slice(
    0,
    5,
  );
  assertEquals(runColors(distinct), distinct.map(runColor));
});

Deno.test("the router column reads the training mode and the inference rule from the config", () => {
  const h = (yaml: string) => {
    const x = hyperparameters(yaml);
    return [x.router_train, x.router_infer];
  };
  assertEquals(
    h("model: { kind: dsmoe }\nrouter: { train: dense, infer: { kind: threshold, epsilon: 0.5 } }"),
    [
      "dense",
      "threshold 0.5",
    ],
  );
  assertEquals(h("model: { kind: smoe }\nrouter: { train: topk, k: 2, infer: { kind: topk, k: 2 } }"), [
    "topk 2",
    "topk 2",
  ]);
  assertEquals(
    h("model: { kind: dsmoe }\nrouter: { infer: { kind: top_p, p: 0.8 }, infer_attention: { kind: dense } }"),
    ["dense", "top_p 0.8; attn dense"],
  );
  // The routers of the literature show the settings that tell them apart.
  const train = (router: string, mlp = "") => h(`model: { kind: smoe${mlp} }\nrouter: ${router}`)[0];
  assertEquals(
    train("{ train: topk, k: 3, capacity_factor: 1.25, null_experts: 4, balance: aux_free }"),
    "topk 3 cf 1.25 +4 null aux-free",
  );
  assertEquals(train("{ train: topk, capacity_factor: 0, null_experts: 0, balance: none }"), "topk 2");
  assertEquals(train("{ train: expert_choice, capacity: 2 }"), "expert_choice c 2");
  assertEquals(train("{ train: top_p, p: 0.4 }"), "top_p 0.4");
  assertEquals(train("{ train: relu, target_sparsity: 0.9 }"), "relu s 0.9");
  assertEquals(
    train("{ train: topk, k: 2 }", ", mlp: { experts: 7, shared: 1, segments: 2 }"),
    "topk 2 +1 shared ×2 seg",
  );
  assertEquals(h("model: { kind: dense }\nrouter: { train: dense }"), [null, null]);
  assertEquals(h("{ not yaml"), [null, null]);
});

Deno.test("a config flattens to dotted keys for grouping", () => {
  assertEquals(
    flatConfig("model: { kind: dsmoe, mlp: { experts: 8 } }\nloss: { mi: { mlp: 0.001 } }\nx: [1, 2]\n"),
    {
      "model.kind": "dsmoe",
      "model.mlp.experts": 8,
      "loss.mi.mlp": 0.001,
      x: "[1,2]",
    },
  );
  assertEquals(flatConfig("{ broken"), {});
  assertEquals(flatConfig(""), {});
});

Deno.test("the sweep scatter puts a categorical key on a category axis", () => {
  const points = [
    { id: "a", name: "a", sweep_params: { "model.kind": "smoe" }, best_val_loss: 2 },
    { id: "b", name: "b", sweep_params: { "model.kind": "dsmoe" }, best_val_loss: 1.5 },
    { id: "c", name: "c", sweep_params: { "model.kind": "dsmoe" }, best_val_loss: null },
    { id: "d", name: "d", sweep_params: {}, best_val_loss: 1 },
  ];
  const d = scatterData(points, "best_val_loss", "model.kind");
  assertEquals(d.categories, ["dsmoe", "smoe"]);
  assertEquals(d.x, [0, 1]);
  assertEquals(d.series.map((s) => [s.id, s.values]), [["a", [null, 2]], ["b", [1.5, null]]]);
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import type { MetricRow } from "../runs/store.ts";
import { MAX_POINTS } from "./downsample.ts";
import { SeriesBuilder } from "./series_builder.ts";

function _rows(n: number, value: (step: number) => number = (s) => 5 / Math.sqrt(s)): MetricRow[] {
  return Array.from({ length: n }, (_, i) => ({
    seq: i + 1,
    key: "train/loss",
    step: i + 1,
    tokens: (i + 1) * 64,
    time: (i + 1) / 10,
    value: value(i + 1),
  }));
}

function _fed(rows: readonly MetricRow[]): SeriesBuilder {
  const b = new SeriesBuilder("step");
  for (const r of rows) assert(b.add(r));
  return b;
}

Deno.test("SeriesBuilder keeps a short series whole", () => {
  const rows = _rows(1990);
  const b = _fed(rows);
  assertEquals(b.rows(), rows);
  assertEquals([b.count, b.lastSeq], [1990, 1990]);
  assertEquals(new SeriesBuilder("step").rows(), []);
  assertEquals(_fed(rows.slice(0, 1)).rows(), rows.slice(0, 1));
});

Deno.test("SeriesBuilder keeps a long series under MAX_POINTS: first, last, every spike and dip, in order", () => {
  const spikes = new Map([[4321, 40], [77_777, -3], [123_456, 12]]);
  const rows = _rows(200_000, (s) => spikes.get(s) ?? 5 / Math.sqrt(s) + 0.01 * Math.sin(s));
  for (const n of [2500, 10_000, 200_000]) {
    const kept = _fed(rows.slice(0, n)).rows();
    assert(kept.length <= MAX_POINTS && kept.length >= MAX_POINTS / 2, `${kept.length} points of ${n}`);
    assertEquals([kept[0], kept.at(-1)], [rows[0], rows[n - 1]]);
    for (let i = 1; i < kept.length; i++) {
      assert(kept[i]!.step > kept[i - 1]!.step, "strictly increasing steps");
    }
    for (const [step, value] of spikes) {
      assert(step > n || kept.some((r) => r.value === value), `${step} kept`);
    }
  }
});

Deno.test("SeriesBuilder fed point by point equals one built from all the points", () => {
  const rows = _rows(50_000, (s) => Math.sin(s / 97) + (s % 1009 === 0 ? 9 : 0));
  assertEquals(_fed(rows).rows(), SeriesBuilder.from([...rows].reverse(), "step").rows());
});

Deno.test("SeriesBuilder keeps the newest point of an x and refuses one before the newest", () => {
  const b = new SeriesBuilder("tokens");
  const pt = (seq: number, tokens: number, value: number) => ({
    seq,
    key: "k",
    step: seq,
    tokens,
    time: 0,
    value,
  });
  for (const r of [pt(1, 0, 5), pt(2, 64, 4), pt(3, 64, 3.5), pt(4, 128, 3)]) assert(b.add(r));
  assertEquals(b.rows().map((r) => r.value), [5, 3.5, 3]);
  assertEquals([b.count, b.lastSeq], [4, 4]);
  assertEquals(b.add(pt(5, 64, 1)), false, "a resumed run logs steps again: rebuild");
  // Rebuilt from all points: the newest of each x, in x order.
  const all = [pt(1, 0, 5), pt(2, 64, 4), pt(3, 64, 3.5), pt(4, 128, 3), pt(5, 64, 1)];
  const r = SeriesBuilder.from(all, "tokens");
  assertEquals(r.rows().map((p) => [p.tokens, p.value]), [[0, 5], [64, 1], [128, 3]]);
  assertEquals([r.count, r.lastSeq], [5, 5]);
});

import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import { downsample } from "./downsample.ts";

function _noisy(n: number): { i: number; v: number }[] {
  // Deterministic: a decaying curve with a few spikes and dips in the middle.
  return Array.from({ length: n }, (_, i) => {
    let v = 5 * Math.exp(-i / 3000) + 0.01 * Math.sin(i * 1.7);
    if (i === 4321) v = 40;
    if (i === 7777) v = -3;
    return { i, v };
  });
}

Deno.test("downsample() returns a short series unchanged", () => {
  const s = _noisy(1500);
  assertEquals(downsample(s, (p) => p.v, 2000), s);
});

Deno.test("downsample() keeps at most max points, in order, with the first and last", () => {
  const s = _noisy(100_000);
  for (const max of [2, 3, 10, 501, 2000]) {
    const d = downsample(s, (p) => p.v, max);
    assert(d.length <= max, `${d.length} > ${max}`);
    assertEquals(d[0], s[0]);
    assertEquals(d.at(-1), s.at(-1));
    for (let k = 1; k < d.length; k++) assert(d[k]!.i > d[k - 1]!.i, "strictly increasing positions");
  }
  assert(downsample(s, (p) => p.v, 2000).length >= 1990, "uses its budget");
});

Deno.test("downsample() keeps the spikes and dips a chart must show", () => {
  const s = _noisy(50_000);
  const d = downsample(s, (p) => p.v, 100);
  assert(d.some((p) => p.v === 40), "the spike survives");
  assert(d.some((p) => p.v === -3), "the dip survives");
});

Deno.test("downsample() refuses a max below 2", () => {
  assertThrows(() => downsample([1, 2, 3], (v) => v, 1), RangeError);
  assertThrows(() => downsample([1, 2, 3], (v) => v, 2.5), RangeError);
});

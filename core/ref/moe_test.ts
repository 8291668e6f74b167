import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { activationRef } from "./activation.ts";
import { matmulRef } from "./matmul.ts";
import { moeMlpRef } from "./moe.ts";
import { routerScaleRef } from "./router.ts";

const N = 5, d = 3, E = 4, h = 2;
const seq = (n: number, f: (i: number) => number) => Float64Array.from({ length: n }, (_, i) => f(i));
const x = seq(N * d, (i) => Math.sin(i + 1)), w1 = seq(d * E * h, (i) => Math.cos(0.7 * i));
const w2 = seq(E * h * d, (i) => Math.sin(0.3 * i + 2));
const dims = { N, d, E, h, activation: "gelu" as const };

/** The dense stacked MLP of the training graph: matmul, activation, router_scale, matmul. */
function dense(gate: ArrayLike<number>): Float64Array {
  const u = activationRef("gelu", matmulRef(x, w1, { m: N, k: d, n: E * h }));
  return matmulRef(routerScaleRef(u, gate, E), w2, { m: N, k: E * h, n: d });
}

const close = (a: ArrayLike<number>, b: ArrayLike<number>) =>
  Array.from(a).every((v, i) => Math.abs(v - b[i]!) <= 1e-12 * (1 + Math.abs(b[i]!)));

Deno.test("moeMlpRef equals the dense stacked formula when every gate is non-zero", () => {
  const gate = seq(N * E, (i) => 0.1 + (i % 7) / 10);
  assert(close(moeMlpRef(x, gate, w1, w2, dims), dense(gate)));
});

Deno.test("moeMlpRef: an expert with a zero gate contributes nothing, even with non-finite weights", () => {
  const gate = seq(N * E, (i) => (i % E === 2 ? 0 : 0.25));
  // Expert 2's blocks poisoned: skipping it must not read them into the sum.
  const w1bad = Float64Array.from(w1), w2bad = Float64Array.from(w2);
  for (let k = 0; k < d; k++) for (let j = 0; j < h; j++) w1bad[k * E * h + 2 * h + j] = NaN;
  for (let j = 0; j < h * d; j++) w2bad[2 * h * d + j] = Infinity;
  const y = moeMlpRef(x, gate, w1bad, w2bad, dims);
  assert(y.every(Number.isFinite));
  assert(close(y, dense(gate)));
});

Deno.test("moeMlpRef gives zero for a token routed to no expert and refuses wrong sizes", () => {
  const gate = seq(N * E, (i) => (i < E ? 0 : 0.5));
  assertEquals([...moeMlpRef(x, gate, w1, w2, dims).subarray(0, d)], [0, 0, 0]);
  let msg = "";
  try {
    moeMlpRef(x, gate.subarray(1), w1, w2, dims);
  } catch (e) {
    msg = (e as Error).message;
  }
  assert(msg.includes("gate has 19 elements, expected 20"), msg);
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { Rng } from "../util/rng.ts";
import { topkMaskRef } from "./router.ts";
import { softmaxRef } from "./softmax.ts";
import {
  balanceBiasUpdateRef,
  capacityMaskRef,
  maskedSoftmaxRef,
  renormalizeRowsBackwardRef,
  renormalizeRowsRef,
} from "./token_choice.ts";

Deno.test("capacityMaskRef keeps each expert's first C tokens in token order and drops the later ones", () => {
  // 5 tokens × 3 experts; expert 0 is chosen by tokens 0, 2, 3, 4; expert 2 by tokens 1, 2.
  const mask = [
    [1, 1, 0],
    [0, 1, 1],
    [1, 0, 1],
    [1, 1, 0],
    [1, 0, 0],
  ].flat();
  const kept = [
    [1, 1, 0],
    [0, 1, 1],
    [1, 0, 1],
    [0, 0, 0], // expert 0 full (tokens 0, 2), expert 1 full (tokens 0, 1): token 3 keeps nothing
    [0, 0, 0],
  ].flat();
  assertEquals(Array.from(capacityMaskRef(mask, 3, 2)), kept);
  assertEquals(Array.from(capacityMaskRef(mask, 3, 0)), new Array(15).fill(0));
  assertEquals(Array.from(capacityMaskRef(mask, 3, 5)), mask, "a capacity of every token drops nothing");
});

Deno.test("renormalizeRowsRef makes each row sum to 1 and leaves a zero row zero; its backward is orthogonal to y", () => {
  const x = [0.2, 0, 0.6, 0, 0, 0, 0.1, 0.1, 0.3];
  const y = renormalizeRowsRef(x, 3);
  const want = [0.25, 0, 0.75, 0, 0, 0, 0.2, 0.2, 0.6];
  assertEquals(Array.from(y).map((v) => Math.round(v * 1e12) / 1e12), want);
  // y is invariant to scaling a row, so the gradient along x itself (Σ_j x_j·dx_j) is 0.
  const dy = [1, -2, 0.5, 3, 1, 1, 0.25, 2, -1];
  const dx = renormalizeRowsBackwardRef(x, dy, 3);
  for (let r = 0; r < 3; r++) {
    const along = [0, 1, 2].reduce((a, e) => a + x[r * 3 + e]! * dx[r * 3 + e]!, 0);
    assert(Math.abs(along) < 1e-15, `row ${r}: ${along}`);
  }
  assertEquals(Array.from(dx.subarray(3, 6)), [0, 0, 0], "the zero row gets no gradient");
});

Deno.test("softmax after top-k equals the renormalised kept softmax probabilities (float64, 1e-15)", () => {
  const rng = new Rng(11), E = 6, N = 40;
  const z = Float64Array.from({ length: N * E }, () => 6 * rng.next() - 3);
  for (const k of [1, 2, 4, 6]) {
    const p = softmaxRef(z, E), mask = topkMaskRef(p, E, k);
    const after = maskedSoftmaxRef(z, mask, E);
    const renorm = renormalizeRowsRef(p.map((v, i) => v * mask[i]!), E);
    after.forEach((v, i) => assert(Math.abs(v - renorm[i]!) < 1e-15, `k ${k} [${i}]: ${v} vs ${renorm[i]}`));
  }
  assertEquals(Array.from(maskedSoftmaxRef([1, 2], [0, 0], 2)), [0, 0], "nothing kept: 0");
});

Deno.test("balanceBiasUpdateRef raises the bias of an underloaded expert, lowers an overloaded one's, and leaves the mean load's", () => {
  // 10 tokens, top-2 of 4: mean load 2·10 / 4 = 5 tokens; loads 8, 5, 5, 2 tokens.
  const load = [0.8, 0.5, 0.5, 0.2];
  const b = balanceBiasUpdateRef([0.1, 0, -0.2, 0], load, { rate: 0.01, k: 2, tokens: 10 });
  assertEquals(Array.from(b).map((v) => Math.round(v * 1e12) / 1e12), [0.09, 0, -0.2, 0.01]);
  // Shares computed in f32 (0.2 is not exact) still count whole tokens.
  const f32 = Float32Array.from(load);
  assertEquals(Array.from(balanceBiasUpdateRef([0, 0, 0, 0], f32, { rate: 1, k: 2, tokens: 10 })), [
    -1,
    0,
    0,
    1,
  ]);
});

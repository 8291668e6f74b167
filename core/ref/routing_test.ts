import { deepStrictEqual as assertEquals } from "node:assert/strict";
import type { RouteRule } from "../graph/op_types.ts";
import { routeMaskRef, thresholdTopkK } from "./routing.ts";

const rule = (r: Partial<RouteRule> & Pick<RouteRule, "kind">): RouteRule => ({
  epsilon: 0.5,
  k: 2,
  p: 0.9,
  ...r,
});
// Two tokens over four experts; E·S = [2.0, 1.2, 0.6, 0.2] and [0.4, 0.4, 3.0, 0.2].
const S = [0.5, 0.3, 0.15, 0.05, 0.1, 0.1, 0.75, 0.05];

Deno.test("routeMaskRef threshold keeps experts whose normalized probability E·S exceeds epsilon", () => {
  assertEquals([...routeMaskRef(S, 4, rule({ kind: "threshold", epsilon: 0.5 }))], [1, 1, 1, 0, 0, 0, 1, 0]);
  assertEquals([...routeMaskRef(S, 4, rule({ kind: "threshold", epsilon: 1 }))], [1, 1, 0, 0, 0, 0, 1, 0]);
});

Deno.test("routeMaskRef topk keeps the k largest, ties to the lower index", () => {
  assertEquals([...routeMaskRef(S, 4, rule({ kind: "topk", k: 2 }))], [1, 1, 0, 0, 1, 0, 1, 0]);
  assertEquals([...routeMaskRef(S, 4, rule({ kind: "topk", k: 9 }))], [1, 1, 1, 1, 1, 1, 1, 1]);
});

Deno.test("routeMaskRef threshold_topk uses the batch's rounded mean threshold count as one K", () => {
  // Counts over ε = 0.5 are 3 and 1: mean 2.
  assertEquals(thresholdTopkK(S, 4, 0.5), 2);
  assertEquals([...routeMaskRef(S, 4, rule({ kind: "threshold_topk" }))], [1, 1, 0, 0, 1, 0, 1, 0]);
  // No expert over the threshold still runs one.
  assertEquals(thresholdTopkK(S, 4, 100), 1);
  // Mean 2.5 rounds up: E·S = [2.0, 1.2, 0.6, 0.2] and [0.4, 0.6, 2.8, 0.2] give counts 3 and 2.
  assertEquals(thresholdTopkK([0.5, 0.3, 0.15, 0.05, 0.1, 0.15, 0.7, 0.05], 4, 0.5), 3);
});

Deno.test("routeMaskRef top_p keeps the smallest prefix by rank whose mass reaches p", () => {
  assertEquals([...routeMaskRef(S, 4, rule({ kind: "top_p", p: 0.7 }))], [1, 1, 0, 0, 0, 0, 1, 0]);
  assertEquals([...routeMaskRef(S, 4, rule({ kind: "top_p", p: 0.8 }))], [1, 1, 0, 0, 1, 0, 1, 0]);
  assertEquals([...routeMaskRef(S, 4, rule({ kind: "top_p", p: 0.01 }))], [1, 0, 0, 0, 0, 0, 1, 0]);
});

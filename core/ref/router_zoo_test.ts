import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { expertChoiceMaskRef } from "./router_zoo.ts";
import { trainRuleStats } from "../train/router_stats.ts";

Deno.test("expertChoiceMaskRef: each expert takes its C most probable tokens; ties to the lower token", () => {
  // 4 tokens × 2 experts. Expert 0's column 0.1, 0.4, 0.4, 0.3: C = 2 takes tokens 1 and 2 (the tie at 0.4
  // both fit); expert 1's column 0.9, 0.6, 0.6, 0.7: tokens 0 and 3.
  const s = [0.1, 0.9, 0.4, 0.6, 0.4, 0.6, 0.3, 0.7];
  assertEquals([...expertChoiceMaskRef(s, 2, 2)], [0, 1, 1, 0, 1, 0, 0, 1]);
  // C = 1: expert 0 takes token 1 of the tie (the lower index), expert 1 token 0.
  assertEquals([...expertChoiceMaskRef(s, 2, 1)], [0, 1, 1, 0, 0, 0, 0, 0]);
  // Token 0 and token 3 are taken by one expert each, and with C = 1 tokens 2 and 3 by none.
  const st = trainRuleStats(Float64Array.from(expertChoiceMaskRef(s, 2, 1), (m, i) => m * s[i]!), 2);
  assertEquals([st.load, st.dropped, st.perToken, st.sparsity], [[0.5, 0.5], 0.5, 0.5, 0.75]);
});

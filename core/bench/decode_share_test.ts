import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { loadExperiment } from "../config/mod.ts";
import { decodeShare } from "./decode.ts";

Deno.test("decodeShare() names the decode case's hidden % of the attention and MLP weights (docs/design.md §5)", async () => {
  // configs/dsmoe-tiny.yaml (d 64, 4 layers): top-2 of 4 MoA experts and top-2 of 8 MLP experts run
  // 4 × (K/V 4,096 + Q/O 8,192 + MLP 16,384) = 114,688 of 344,064 attention and MLP weights, a third (30% of
  // its routed experts under the earlier definition); 229,376 of 368,768 parameters skipped: 37.8% run.
  const c = (await loadExperiment("configs/dsmoe-tiny.yaml")).config;
  assertEquals(decodeShare(c), "hidden 33.3%, 37.8% of all");
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { learningRate } from "./lr_schedule.ts";

const train = (kind: "cosine" | "linear" | "constant") =>
  ({ steps: 110, optimizer: { lr: 1e-3 }, schedule: { kind, warmup: 10, min_lr: 1e-4 } }) as const;

Deno.test("learningRate() warms up linearly, then decays to min_lr on the last step", () => {
  const t = train("cosine");
  assertEquals(learningRate(t, 0), 1e-4);
  assertEquals(learningRate(t, 9), 1e-3);
  assertEquals(learningRate(t, 10), 1e-3);
  assert(Math.abs(learningRate(t, 109) - 1e-4) < 1e-12);
  // Halfway through the decay the cosine is at the midpoint.
  assert(Math.abs(learningRate(t, 10 + 49.5) - 5.5e-4) < 1e-12);
  for (let s = 11; s < 110; s++) assert(learningRate(t, s) <= learningRate(t, s - 1));
});

Deno.test("learningRate() linear and constant schedules", () => {
  assert(Math.abs(learningRate(train("linear"), 109) - 1e-4) < 1e-12);
  assert(Math.abs(learningRate(train("linear"), 10 + 49.5) - 5.5e-4) < 1e-12);
  assertEquals(learningRate(train("constant"), 100), 1e-3);
});

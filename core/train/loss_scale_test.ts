import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert/strict";
import {
  checkLossScaleSettings,
  initialLossScale,
  LOSS_SCALE_DEFAULTS,
  nextLossScale,
} from "./loss_scale.ts";
import { stateToTensors, tensorsToState } from "./trainer.ts";
import { f32Tensor } from "../runs/safetensors.ts";

Deno.test("nextLossScale halves on an overflow (not below min), doubles after growthInterval finite steps (not above max)", () => {
  const s = { init: 8, growthInterval: 3, factor: 2, min: 2, max: 16 };
  let st = initialLossScale(s);
  const seen: number[] = [];
  // finite ×3 → 16; ×3 → 16 (max); overflow → 8; overflow → 4; overflow → 2; overflow → 2 (min); finite ×2, overflow, finite ×3 → 4.
  const flags = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1].map((x) => x === 1);
  for (const f of flags) {
    st = nextLossScale(st, f, s);
    seen.push(st.scale);
  }
  assertEquals(seen, [8, 8, 16, 16, 16, 16, 8, 4, 2, 2, 2, 2, 2, 2, 2, 4]);
  assertEquals(st.good, 0);
  assertEquals(nextLossScale({ scale: 8, good: 1 }, true, s), { scale: 8, good: 2 });
  assertEquals(initialLossScale(), { scale: 65536, good: 0 });
});

Deno.test("loss scaling settings must be powers of two with min ≤ init ≤ max (exact scaling)", () => {
  checkLossScaleSettings(LOSS_SCALE_DEFAULTS);
  for (
    const bad of [
      { ...LOSS_SCALE_DEFAULTS, init: 1000 },
      { ...LOSS_SCALE_DEFAULTS, factor: 1 },
      { ...LOSS_SCALE_DEFAULTS, min: 2 ** 20, init: 2 ** 16 },
      { ...LOSS_SCALE_DEFAULTS, growthInterval: 0 },
    ]
  ) {
    assertThrows(() => checkLossScaleSettings(bad), /powers of two/);
  }
});

Deno.test("a checkpoint keeps the loss scale as loss_scale [scale, good steps] and gives it back", () => {
  const params = new Map([["w", { shape: [2], data: Float32Array.of(1, 2) }]]);
  const m = new Map([["w", Float32Array.of(0, 0)]]), v = new Map([["w", Float32Array.of(0, 0)]]);
  const t = stateToTensors({ params, adamM: m, adamV: v, step: 5, lossScale: { scale: 1024, good: 17 } });
  assertEquals(t.get("loss_scale"), f32Tensor([2], Float32Array.of(1024, 17)));
  assertEquals(tensorsToState(t).lossScale, { scale: 1024, good: 17 });
  const plain = stateToTensors({ params, adamM: m, adamV: v, step: 5 });
  assertEquals([plain.has("loss_scale"), tensorsToState(plain).lossScale], [false, undefined]);
});

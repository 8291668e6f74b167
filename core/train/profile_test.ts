import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { formatProfile, ProfileAccumulator, profileMfu } from "./profile.ts";

Deno.test("the profile's wall time per step spans the arrivals of its steps; MFU over GPU and wall time, or unknown", () => {
  const flops = { matmul: 3e12, attention: 1e12, total: 4e12 };
  const acc = new ProfileAccumulator({ adapter: "x", modelFlops: flops });
  acc.add([{ label: "matmul_nn", ms: 150 }, { label: "adamw", ms: 50 }], 10);
  acc.add([{ label: "matmul_nn", ms: 150 }, { label: "adamw", ms: 50 }], 10.25);
  acc.add([{ label: "matmul_nn", ms: 150 }, { label: "adamw", ms: 50 }], 10.5);
  const p = acc.result()!;
  assertEquals([p.gpu_ms_per_step, p.wall_ms_per_step, p.model_flops_per_step, p.adapter], [
    200,
    250,
    flops,
    "x",
  ]);
  const m = profileMfu(p, { flops: 40e12, source: "test" }, "")!;
  // 4e12 FLOPs per 0.2 s of GPU time = 20 TFLOP/s (50% of 40); per 0.25 s of wall time 16 (40%).
  assertEquals([m.tflops_gpu, m.tflops_wall, m.mfu_gpu_pct, m.mfu_wall_pct], [20, 16, 50, 40]);
  const text = formatProfile({ ...p, mfu: m });
  assert(
    text.includes("MFU 50.0% of GPU time, 40.0% of wall time, over the fp32 peak 40 TFLOP/s of test"),
    text,
  );
  const u = profileMfu(p, null, "unknown peak: why")!;
  assertEquals([u.mfu_gpu_pct, u.mfu_wall_pct, u.tflops_gpu, u.peak_unknown], [
    null,
    null,
    20,
    "unknown peak: why",
  ]);
  assert(formatProfile({ ...p, mfu: u }).includes("MFU: unknown peak: why"));
  const one = new ProfileAccumulator();
  one.add([{ label: "k", ms: 1 }], 3);
  assertEquals([one.result()!.wall_ms_per_step, profileMfu(one.result()!, null, "")], [null, null]);
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { fp32Peak } from "./peak.ts";

Deno.test("fp32Peak: the vendors' FP32 figures by adapter description, NVL boards and unknown adapters left to --peak-tflops", () => {
  const tf = (d: string) =>
    (fp32Peak(d).peak?.flops ?? null) === null ? null : fp32Peak(d).peak!.flops / 1e12;
  assertEquals(tf("NVIDIA H100 80GB HBM3"), 67);
  assertEquals(tf("NVIDIA H100 PCIe"), 51);
  assertEquals(tf("NVIDIA H200"), 67);
  assertEquals(tf("NVIDIA A100-SXM4-80GB"), 19.5);
  assertEquals(tf("NVIDIA H100 NVL"), null);
  assertEquals(tf("NVIDIA H200 NVL"), null);
  assertEquals(tf("llvmpipe (LLVM 15.0.6, 256 bits)"), null);
  const unknown = fp32Peak("llvmpipe (LLVM 15.0.6, 256 bits)");
  assert(/unknown peak: .*llvmpipe.*pass --peak-tflops/.test(unknown.why), unknown.why);
  assert(
    /H100 NVL.*pass --peak-tflops/.test(fp32Peak("NVIDIA H100 NVL").why),
    fp32Peak("NVIDIA H100 NVL").why,
  );
  assert(fp32Peak("NVIDIA H100 PCIe").peak!.source.includes("datasheet"));
  assertEquals(fp32Peak("NVIDIA H100 PCIe", 40).peak, { flops: 40e12, source: "--peak-tflops" });
});

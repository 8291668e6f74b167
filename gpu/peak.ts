/**
 * The fp32 peak of an adapter, for model FLOPs utilization (MFU, docs/performance.md "MFU"): a small table
 * of vendors' published non-tensor-core FP32 figures keyed by the adapter's description, or a peak the user
 * gives (`--peak-tflops`). An adapter the table does not know (llvmpipe, a GPU not listed) has no peak: MFU
 * is then reported as unknown, never estimated.
 *
 * @module
 */

/** One known adapter: a pattern on its description and its vendor-published fp32 (non-tensor) peak. */
export interface PeakEntry {
  /** Matched against the adapter's description (e.g. "NVIDIA H100 80GB HBM3"); the first match wins. */
  pattern: RegExp;
  /** The product the figure is for. */
  product: string;
  /** FP32 TFLOP/s without tensor cores; null for a product whose variants the description cannot tell. */
  tflops: number | null;
  /** Where the figure is published. */
  source: string;
}

/**
 * Known adapters, most specific first. Figures: the FP32 rows of NVIDIA's datasheets (docs/performance.md
 * "MFU" cites them); the NVL boards run at another clock than the SXM parts their names share a chip with
 * and are left to `--peak-tflops`.
 */
export const FP32_PEAKS: readonly PeakEntry[] = [
  {
    pattern: /\bH100\b.*\bNVL\b/i,
    product: "NVIDIA H100 NVL",
    tflops: null,
    source: "not in the table (its clocks differ from the SXM part)",
  },
  {
    pattern: /\bH100\b.*\bPCIe\b/i,
    product: "NVIDIA H100 PCIe",
    tflops: 51,
    source: "NVIDIA H100 Tensor Core GPU datasheet, FP32",
  },
  {
    pattern: /\bH100\b/i,
    product: "NVIDIA H100 SXM5",
    tflops: 67,
    source: "NVIDIA H100 Tensor Core GPU datasheet, FP32",
  },
  {
    pattern: /\bH200\b.*\bNVL\b/i,
    product: "NVIDIA H200 NVL",
    tflops: null,
    source: "not in the table (its clocks differ from the SXM part)",
  },
  {
    pattern: /\bH200\b/i,
    product: "NVIDIA H200 SXM",
    tflops: 67,
    source: "NVIDIA H200 Tensor Core GPU datasheet, FP32",
  },
  {
    pattern: /\bA100\b/i,
    product: "NVIDIA A100",
    tflops: 19.5,
    source: "NVIDIA A100 Tensor Core GPU datasheet, FP32",
  },
];

/** An adapter's fp32 peak and where it came from. */
export interface Peak {
  /** FP32 FLOP/s. */
  flops: number;
  /** "NVIDIA H100 SXM5 (NVIDIA H100 Tensor Core GPU datasheet, FP32)" or "--peak-tflops". */
  source: string;
}

/**
 * The fp32 peak of the adapter described by `description`: `overrideTflops` when given, else the table's
 * entry, else null (with `why` saying what to pass).
 *
 * @example
 * ```ts
 * import { fp32Peak } from "./peak.ts";
 * if (fp32Peak("NVIDIA H100 80GB HBM3").peak?.flops !== 67e12) throw new Error("H100 SXM");
 * if (fp32Peak("llvmpipe (LLVM 15.0.6, 256 bits)").peak !== null) throw new Error("no estimate");
 * if (fp32Peak("llvmpipe", 1.5).peak?.flops !== 1.5e12) throw new Error("override");
 * ```
 */
export function fp32Peak(description: string, overrideTflops?: number): { peak: Peak | null; why: string } {
  if (overrideTflops !== undefined) {
    return { peak: { flops: overrideTflops * 1e12, source: "--peak-tflops" }, why: "" };
  }
  const e = FP32_PEAKS.find((x) => x.pattern.test(description));
  if (e && e.tflops !== null) {
    return { peak: { flops: e.tflops * 1e12, source: `${e.product} (${e.source})` }, why: "" };
  }
  const what = e ? `${e.product} is ${e.source}` : `no published fp32 peak is known for "${description}"`;
  return { peak: null, why: `unknown peak: ${what}; pass --peak-tflops` };
}

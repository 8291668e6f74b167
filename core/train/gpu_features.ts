/**
 * What a config's training needs of the WebGPU adapter beyond its defaults (docs/performance.md "Half
 * precision"): `shader-f16` for `hardware.precision: f16`.
 *
 * @module
 */
import { type Experiment, precisionOf } from "../config/schema.ts";

/** What a config's training needs of the adapter beyond WebGPU's defaults, and why. */
export interface GpuRequirement {
  features: GPUFeatureName[];
  why: string;
  fix: string;
}

/**
 * The WebGPU features a config's training needs: `shader-f16` for `hardware.precision: f16` (its matmuls
 * read f16 operands, docs/performance.md "Half precision"); undefined when it needs none.
 */
export function requiredGpuFeatures(c: Readonly<Experiment>): GpuRequirement | undefined {
  if (c.hardware.backend !== "webgpu" || precisionOf(c) !== "f16") return undefined;
  return {
    features: ["shader-f16"],
    why: "hardware.precision f16 (f16 matmul operands)",
    fix: "train with hardware.precision f32 (the default) here, or on an adapter that has shader-f16",
  };
}

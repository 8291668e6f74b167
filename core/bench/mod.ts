/**
 * Benchmarks of our WebGPU kernels beside tfjs-webgpu on the same device (`deno task bench`): every
 * implementation is checked against the float64 reference, then timed as the median of submit-and-wait
 * repetitions.
 *
 * @module
 */
export * from "./bench.ts";
export * from "./case.ts";
export * from "./check.ts";
export * from "./decode.ts";
export * from "./kernels.ts";
export * from "./matmul.ts";
export * from "./moe.ts";
export * from "./report.ts";
export * from "./timing.ts";

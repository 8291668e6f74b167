/**
 * The WebGPU layer: device, buffers, pipeline cache, dispatch and the kernel library.
 *
 * @module
 */
export * from "./errors.ts";
export * from "./device.ts";
export * from "./buffers.ts";
export * from "./pipeline_cache.ts";
export * from "./dispatch.ts";

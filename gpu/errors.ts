/**
 * Errors of the GPU layer: one class per failure a user must be able to tell apart.
 *
 * @module
 */

/** No WebGPU adapter or device could be obtained. */
export class GpuUnavailableError extends Error {
  override name = "GpuUnavailableError";
}

/** The device was lost (driver reset, out of memory, destroyed); the run must stop. */
export class GpuLostError extends Error {
  override name = "GpuLostError";
}

/** A WGSL module failed to compile; the message shows line:col and the source around it. */
export class WgslCompileError extends Error {
  override name = "WgslCompileError";
}

/** A shape or buffer exceeds a device limit; raised before anything is dispatched. */
export class GpuLimitError extends RangeError {
  override name = "GpuLimitError";
}

/**
 * The adapter lacks a WebGPU feature the plan needs (`shader-f16` for `hardware.precision: f16`); raised
 * before a device is requested, so before anything is allocated. A kind of {@linkcode GpuLimitError}: every
 * caller that refuses a plan over a device's limits (exit 2, no run created) refuses this the same way.
 */
export class GpuFeatureError extends GpuLimitError {
  override name = "GpuFeatureError";
}

/** A WebGPU validation or out-of-memory error caught by an error scope. */
export class GpuValidationError extends Error {
  override name = "GpuValidationError";
}

/** The device refused to allocate a buffer; the message names the tensor and its size. */
export class GpuOutOfMemoryError extends Error {
  override name = "GpuOutOfMemoryError";
}

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

/** A WebGPU validation or out-of-memory error caught by an error scope. */
export class GpuValidationError extends Error {
  override name = "GpuValidationError";
}

/** The device refused to allocate a buffer; the message names the tensor and its size. */
export class GpuOutOfMemoryError extends Error {
  override name = "GpuOutOfMemoryError";
}

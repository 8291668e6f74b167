/**
 * Runs on disk: safetensors checkpoints with a manifest, crash-safe writes (the run store comes next).
 *
 * @module
 */
export * from "./safetensors.ts";
export * from "./atomic_write.ts";
export * from "./checkpoints.ts";
export * from "./run_dir.ts";

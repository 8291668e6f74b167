/**
 * Runs: the run store (SQLite, or Postgres for many machines), run directories with safetensors checkpoints
 * and a manifest, crash-safe writes.
 *
 * @module
 */
export * from "./safetensors.ts";
export * from "../util/atomic_write.ts";
export * from "./checkpoints.ts";
export * from "./run_dir.ts";
export * from "./store.ts";
export * from "./sqlite_store.ts";
export * from "./postgres_store.ts";
export * from "./sweep_queue.ts";
export * from "./postgres_url.ts";
export * from "./open_store.ts";
export * from "./stored_run.ts";
export * from "./resolve_run.ts";

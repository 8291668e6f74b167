/**
 * The planner: from a validated config to counts, FLOPs and memory, and to compute graphs (`plan`).
 *
 * @module
 */
export * from "./counts.ts";
export * from "./model.ts";
export * from "./plan.ts";

/**
 * The planner: from a validated config to counts, FLOPs and memory (and, later, compute graphs).
 *
 * @module
 */
export * from "./counts.ts";

/**
 * dsmoe: Mixture-of-Experts language models trained densely (DS-MoE) and run sparsely, on WebGPU,
 * from one YAML file. This module re-exports the public API; run it directly for the CLI
 * (`deno task run|eval|generate|dashboard|bench|repro|study`).
 *
 * @example
 * ```ts ignore
 * import { countParams, loadExperiment } from "./mod.ts";
 * const { points } = await loadExperiment("configs/dsmoe-tiny.yaml");
 * console.log(countParams(points[0]!.config).total);
 * ```
 *
 * @module
 */
export * from "./core/config/mod.ts";
export * from "./core/plan/mod.ts";
export * from "./gpu/mod.ts";
export { evaluateRules, type LayerActivity, ruleName, type RuleResult } from "./core/infer/evaluate.ts";
export { routeMaskRef } from "./core/ref/routing.ts";
export type { RouteRule } from "./core/graph/op_types.ts";
export { main } from "./core/cli/main.ts";

if (import.meta.main) {
  const { main } = await import("./core/cli/main.ts");
  Deno.exit(await main(Deno.args));
}

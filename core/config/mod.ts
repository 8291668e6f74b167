/**
 * core/config: experiment YAML → validated, deep-frozen configs, with errors that name the file, line,
 * column and key path. `extends` composes files, `--set key=value` overrides, `sweep` expands into points.
 *
 * @example
 * ```ts
 * import { ConfigError, parseExperimentText } from "./mod.ts";
 * try {
 *   parseExperimentText("model:\n  mlp: { expert: 4 }\n", "x.yaml");
 * } catch (e) {
 *   if (!(e instanceof ConfigError)) throw e;
 *   if (!e.message.startsWith('x.yaml:2:10: model.mlp.expert: unknown key "expert"')) throw e;
 * }
 * ```
 *
 * @module
 */
export { ConfigError, type ConfigIssue } from "./errors.ts";
export { type LoadedExperiment, loadExperiment, type LoadOptions, parseExperimentText } from "./load.ts";
export type { SweepPoint } from "./sweep.ts";
export { experimentToYaml } from "./to_yaml.ts";
export { experimentJsonSchema } from "./write_schema.ts";
export * from "./schema.ts";

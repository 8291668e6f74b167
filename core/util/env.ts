/**
 * Reading environment variables that are optional settings: without `--allow-env` they read as unset.
 *
 * @module
 */

/**
 * The value of environment variable `name`, or undefined when it is unset or the environment may not be
 * read.
 *
 * @example
 * ```ts
 * import { optionalEnv } from "./env.ts";
 * if (optionalEnv("DSMOE_SURELY_UNSET_VARIABLE") !== undefined) throw new Error();
 * ```
 */
export function optionalEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

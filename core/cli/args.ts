/**
 * Argument parsing shared by every command: `node:util` parseArgs with strict options, turned into
 * {@linkcode UsageError}s that name the bad flag.
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { UsageError } from "./errors.ts";

/** Options every command accepts. */
export const COMMON_OPTIONS = {
  help: { type: "boolean", short: "h" },
  json: { type: "boolean" },
  "runs-dir": { type: "string" },
  store: { type: "string" },
} as const satisfies ParseArgsConfig["options"];

/**
 * Parses `args` for a command; unknown flags and missing values become {@linkcode UsageError}.
 *
 * @example
 * ```ts
 * import { parseCommandArgs } from "./args.ts";
 * const { values } = parseCommandArgs("run", ["--dry-run"], { "dry-run": { type: "boolean" } });
 * if (values["dry-run"] !== true) throw new Error("not parsed");
 * ```
 */
export function parseCommandArgs<O extends NonNullable<ParseArgsConfig["options"]>>(
  command: string,
  args: string[],
  options: O,
) {
  try {
    return parseArgs({
      args,
      options: { ...COMMON_OPTIONS, ...options },
      allowPositionals: true,
      strict: true,
      tokens: true, // order matters for flags that qualify the one before (eval's --rule … --epsilon)
    });
  } catch (e) {
    const msg = (e as Error).message.replace(/\. To specify a positional argument.*$/s, "");
    throw new UsageError(`${command}: ${msg}`);
  }
}

/** Parses a positive integer flag value or throws a {@linkcode UsageError} naming the flag. */
export function positiveInt(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new UsageError(`--${flag} expects a positive integer, got "${value}"`);
  }
  return n;
}

/**
 * Parses a positive finite number flag (`--peak-tflops 67`, `1.5`, `2e1`) or throws a {@linkcode UsageError}
 * naming the flag; `undefined` when the flag is absent.
 *
 * @example
 * ```ts
 * import { positiveNumber } from "./args.ts";
 * if (positiveNumber("peak-tflops", "19.5") !== 19.5) throw new Error("parsed");
 * ```
 */
export function positiveNumber(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = /^\s*[0-9.eE+-]+\s*$/.test(value) ? Number(value) : NaN;
  if (!(n > 0 && Number.isFinite(n))) {
    const shown = value.length > 40 ? `${value.slice(0, 39)}…` : value;
    throw new UsageError(`--${flag} expects a positive number, got "${shown}"`);
  }
  return n;
}

/**
 * Parses a whole-number flag from 1 to `max` written in decimal digits (no exponent, sign or fraction), or
 * throws a {@linkcode UsageError} naming the flag and the range; `undefined` when the flag is absent. For
 * flags that size work or memory, so that no value costs without bound.
 *
 * @example
 * ```ts
 * import { boundedInt } from "./args.ts";
 * if (boundedInt("max-tokens", "64", 100_000) !== 64) throw new Error("parsed");
 * ```
 */
export function boundedInt(flag: string, value: string | undefined, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = /^[0-9]{1,16}$/.test(value) ? Number(value) : NaN;
  if (!(n >= 1 && n <= max)) {
    const shown = value.length > 40 ? `${value.slice(0, 39)}…` : value;
    throw new UsageError(`--${flag} expects a whole number from 1 to ${max}, got "${shown}"`);
  }
  return n;
}

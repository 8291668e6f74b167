/**
 * `deno task bench [--json] [--suite NAME] [--quick] [--per-sync N]`: our kernels beside tfjs-webgpu, checked then timed.
 * Progress goes to stderr; stdout gets the table, or with `--json` one JSON object per row and a summary
 * object last. Any row that failed its correctness check (or errored) makes the exit code 1.
 *
 * @module
 */
import { runBench, type SuiteName, SUITES } from "../bench/bench.ts";
import { formatTable, jsonLines } from "../bench/report.ts";
import { parseCommandArgs, positiveInt } from "./args.ts";
import { EXIT_OK, EXIT_RUN_FAILURE, UsageError } from "./errors.ts";
import type { CliIo } from "./main.ts";
import { BENCH_USAGE } from "./usage.ts";

/**
 * Runs the bench command with its arguments (after `bench`) and returns the exit code.
 *
 * @example
 * ```ts ignore
 * const code = await benchCommand(["--suite", "matmul", "--quick"], io);
 * ```
 */
export async function benchCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseCommandArgs("bench", args, {
    suite: { type: "string", multiple: true },
    quick: { type: "boolean" },
    "per-sync": { type: "string" },
  });
  if (values.help) {
    io.out(BENCH_USAGE);
    return EXIT_OK;
  }
  if (positionals.length > 0) {
    throw new UsageError(`bench takes no positional arguments, got "${positionals[0]}"`);
  }
  const suites = (values.suite ?? [...SUITES]).map((s) => {
    if (!(SUITES as readonly string[]).includes(s)) {
      throw new UsageError(`--suite expects one of ${SUITES.join(", ")}, got "${s}"`);
    }
    return s as SuiteName;
  });
  const quick = !!values.quick;
  const perSync = positiveInt("per-sync", values["per-sync"]);
  const result = await runBench({ suites, quick, perSync, progress: (line) => io.err(`bench: ${line}`) });
  const errors = result.rows.filter((r) => r.error).length;
  if (values.json) {
    const summary = {
      suite: suites.length === 1 ? suites[0]! : "all",
      rows: result.rows.length,
      errors,
      adapter: result.adapter,
      quick,
      warmup: result.warmup,
      reps: result.reps,
      per_sync: result.perSync,
    };
    for (const line of jsonLines(result.rows, summary)) io.out(line);
  } else {
    io.out(formatTable(result.rows, result.adapter));
  }
  if (errors > 0) {
    io.err(
      `bench: ${errors} row(s) failed their correctness check or errored; no timing is reported for them`,
    );
    return EXIT_RUN_FAILURE;
  }
  return EXIT_OK;
}

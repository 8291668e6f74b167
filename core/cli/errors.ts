/**
 * The CLI's error types and their exit codes (docs/design.md §1: 0 ok, 1 run failure, 2 usage or config
 * error).
 *
 * @module
 */

/** Bad command-line usage: exit code 2, message plus a pointer to `--help`. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Exit code of a successful command. */
export const EXIT_OK = 0;
/** Exit code of a run that failed (training diverged, device lost, I/O error …). */
export const EXIT_RUN_FAILURE = 1;
/** Exit code of a usage or config error. */
export const EXIT_USAGE = 2;

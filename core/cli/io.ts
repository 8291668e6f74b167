/**
 * Where the CLI writes: {@linkcode CliIo}, taken by `main()` and every command (tests pass collectors).
 *
 * @module
 */

/** Where stdout/stderr go; tests pass collectors. */
export interface CliIo {
  out: (line: string) => void;
  err: (line: string) => void;
  /** Text to stdout without a newline, shown at once (streamed generation). */
  write: (text: string) => void;
}

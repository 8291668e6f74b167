/**
 * Runs the CLI in-process with captured output, for tests of commands.
 *
 * @module
 */
import { type CliIo, main } from "../../core/cli/main.ts";

/** What one CLI invocation printed and returned. */
export interface CliResult {
  code: number;
  out: string[];
  err: string[];
  /** The last stdout line parsed as JSON (the `--json` contract); its shape depends on the command. */
  // deno-lint-ignore no-explicit-any
  json: () => any;
}

/** `main(argv)` with stdout and stderr lines collected. */
export async function cli(...argv: string[]): Promise<CliResult> {
  const out: string[] = [], err: string[] = [];
  const io: CliIo = { out: (l) => out.push(l), err: (l) => err.push(l) };
  const code = await main(argv, io);
  return { code, out, err, json: () => JSON.parse(out.at(-1)!) };
}

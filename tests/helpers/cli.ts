/**
 * Runs the CLI in-process with captured output, for tests of commands.
 *
 * @module
 */
import type { CliIo } from "../../core/cli/io.ts";
import { main } from "../../core/cli/main.ts";

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
  // Streamed text joins stdout's current line; a newline in it ends the line.
  let partial = "";
  const write = (text: string) => {
    const lines = (partial + text).split("\n");
    partial = lines.pop()!;
    out.push(...lines);
  };
  const io: CliIo = {
    out: (l) => {
      write(l + "\n");
    },
    err: (l) => err.push(l),
    write,
  };
  const code = await main(argv, io);
  if (partial) out.push(partial);
  return { code, out, err, json: () => JSON.parse(out.at(-1)!) };
}

/**
 * Trains `tests/fixtures/micro.yaml` (with `sets`, e.g. `--set train.steps=10`) into `runsDir` without a
 * dashboard, fails the test unless it exits 0, and returns its run id and the `--json` result.
 */
export async function trainMicro(
  runsDir: string,
  ...sets: string[]
): Promise<{ id: string; result: CliResult }> {
  const result = await cli(
    "run",
    "tests/fixtures/micro.yaml",
    ...sets,
    "--runs-dir",
    runsDir,
    "--no-dashboard",
    "--json",
  );
  if (result.code !== 0) throw new Error(`training exited ${result.code}:\n${result.err.join("\n")}`);
  return { id: result.json().run_id, result };
}

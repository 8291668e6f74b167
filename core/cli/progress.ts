/**
 * Progress output of long commands on stderr, shared by `run`, `eval`, `prepare` and `repro`.
 *
 * @module
 */
import { type PrepareProgress, progressPrinter } from "../data/prepare.ts";
import type { CliIo } from "./io.ts";

/**
 * The progress bar of preparing token shards, on stderr: one line redrawn in place on a terminal, plain
 * lines (each tenth) otherwise.
 */
export function dataProgress(io: CliIo): (p: PrepareProgress) => void {
  const terminal = Deno.stderr.isTerminal();
  const enc = new TextEncoder();
  return progressPrinter(
    terminal ? (t) => Deno.stderr.writeSync(enc.encode(t)) : (t) => io.err(t.replace(/\n$/, "")),
    terminal,
  );
}

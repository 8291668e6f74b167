/**
 * The journal of a run's metric points, `<run>/metrics.jsonl`: one JSON point per line, appended after the
 * store took them (run_dir.ts). `deno task store rebuild` reads it back when the store is lost, and run
 * folders written before the store existed kept their points in the same format.
 *
 * @module
 */
import type { MetricPoint } from "./store.ts";

/** The journal's file name inside a run directory. */
export const METRICS_JOURNAL = "metrics.jsonl";

/** One journal line of `p` (its five fields, nothing else). */
export function journalLine(p: MetricPoint): string {
  return JSON.stringify({ key: p.key, step: p.step, tokens: p.tokens, time: p.time, value: p.value });
}

/**
 * The points of a journal file (none when it is missing); a torn last line (a process killed mid-append) and
 * lines that are not a point with finite numbers are skipped.
 *
 * @example
 * ```ts
 * import { journalLine, readMetricJournal } from "./journal.ts";
 * const path = await Deno.makeTempFile();
 * const p = { key: "train/loss", step: 1, tokens: 64, time: 0.5, value: 2.5 };
 * await Deno.writeTextFile(path, `${journalLine(p)}\n{"key":"torn`);
 * console.log((await readMetricJournal(path)).length); // 1
 * await Deno.remove(path);
 * ```
 */
export async function readMetricJournal(path: string): Promise<MetricPoint[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    return [];
  }
  const out: MetricPoint[] = [];
  for (const line of text.split("\n")) {
    if (!line) continue;
    try {
      const p = JSON.parse(line) as MetricPoint;
      if (typeof p.key === "string" && [p.step, p.tokens, p.time, p.value].every(Number.isFinite)) {
        out.push(p);
      }
    } catch {
      // a torn line
    }
  }
  return out;
}

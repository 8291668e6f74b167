/**
 * Output of the bench: JSON lines (one per row, then one summary object last) and a human table with
 * ours and tfjs side by side per case.
 *
 * @module
 */
import { type BenchRow, IMPLS } from "./case.ts";

/** The last `--json` line: what ran, where, and how many rows failed. */
export interface BenchSummary {
  suite: string;
  rows: number;
  errors: number;
  adapter: string;
  quick: boolean;
  warmup: number;
  reps: number;
}

/**
 * One JSON object per row, in run order, then the summary (the project rule: the last stdout line of
 * `--json` is one JSON object).
 *
 * @example
 * ```ts
 * import { jsonLines } from "./report.ts";
 * const lines = jsonLines([], { suite: "all", rows: 0, errors: 0, adapter: "x", quick: true, warmup: 1, reps: 2 });
 * if (JSON.parse(lines.at(-1)!).suite !== "all") throw new Error("summary last");
 * ```
 */
export function jsonLines(rows: readonly BenchRow[], summary: BenchSummary): string[] {
  return [...rows.map((r) => JSON.stringify(r)), JSON.stringify(summary)];
}

/**
 * A fixed-width table: per case, ours and tfjs ms and GFLOP/s and the time ratio ours/tfjs (below 1:
 * ours is faster); failed rows show ERROR and their messages follow the table.
 *
 * @example
 * ```ts
 * import { formatTable } from "./report.ts";
 * const row = { suite: "matmul", case: "8x8x8", ms: 2, gflops: 0.5e-3, flops: 1024, max_err: 0 };
 * const text = formatTable([{ ...row, impl: "dsmoe" }, { ...row, impl: "tfjs-webgpu", ms: 4 }], "llvmpipe");
 * if (!text.includes("0.50")) throw new Error("ratio");
 * ```
 */
export function formatTable(rows: readonly BenchRow[], adapter: string): string {
  const header = ["suite", "case", "dsmoe ms", "dsmoe GFLOP/s", "tfjs ms", "tfjs GFLOP/s", "ours/tfjs (ms)"];
  const cases = new Map<string, Map<string, BenchRow>>();
  for (const r of rows) {
    const key = `${r.suite}\u0000${r.case}`;
    if (!cases.has(key)) cases.set(key, new Map());
    cases.get(key)!.set(r.impl, r);
  }
  const body: string[][] = [];
  for (const byImpl of cases.values()) {
    const [ours, theirs] = IMPLS.map((i) => byImpl.get(i));
    const first = (ours ?? theirs)!;
    const ms = (r?: BenchRow) => (r?.error ? "ERROR" : typeof r?.ms === "number" ? r.ms.toFixed(2) : "–");
    const gf = (r?: BenchRow) => (typeof r?.gflops === "number" ? r.gflops.toFixed(2) : "–");
    const ratio = typeof ours?.ms === "number" && typeof theirs?.ms === "number"
      ? (ours.ms / theirs.ms).toFixed(2)
      : "–";
    body.push([first.suite, first.case, ms(ours), gf(ours), ms(theirs), gf(theirs), ratio]);
  }
  const width = header.map((h, c) => Math.max(h.length, ...body.map((r) => r[c]!.length)));
  const line = (cells: string[]) =>
    cells.map((x, c) => (c < 2 ? x.padEnd(width[c]!) : x.padStart(width[c]!))).join("  ").trimEnd();
  const errors = rows.filter((r) => r.error).map((r) => `  ${r.suite} ${r.case} ${r.impl}: ${r.error}`);
  return [
    `adapter: ${adapter}`,
    line(header),
    line(width.map((w) => "-".repeat(w))),
    ...body.map(line),
    ...(errors.length > 0 ? ["errors:", ...errors] : []),
  ].join("\n");
}

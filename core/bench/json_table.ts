/**
 * The text table of a `deno task bench --json` run, made from its JSON lines, so that one run gives both
 * (.ci/gpu_measure.sh; docs/performance.md "Measuring on a real GPU"):
 *
 *   deno run -A core/bench/json_table.ts decode.jsonl > decode.txt
 *
 * The rows are every line but the last, the summary (adapter, host) the last; a line that is not a JSON
 * object is an error naming its number (exit 2, no stack trace).
 *
 * @module
 */
import type { BenchRow } from "./case.ts";
import { skippedDecodeLine } from "./decode.ts";
import type { HostInfo, LlvmpipeThreadsSource } from "./host.ts";
import { type BenchSummary, formatTable } from "./report.ts";

/** JSON lines that are not a bench run's output. */
export class BenchJsonError extends Error {
  override name = "BenchJsonError";
}

/**
 * The table {@linkcode formatTable} prints for the rows and summary of `--json` output `text` (blank lines
 * ignored).
 *
 * @example
 * ```ts
 * import { tableFromJsonLines } from "./json_table.ts";
 * const row = { suite: "matmul", case: "8x8x8", impl: "dsmoe", ms: 2, gflops: 0.5e-3, flops: 1024, max_err: 0 };
 * const summary = { suite: "matmul", rows: 1, errors: 0, adapter: "llvmpipe", quick: true, warmup: 1, reps: 2 };
 * const text = tableFromJsonLines([row, summary].map((o) => JSON.stringify(o)).join("\n"));
 * if (!text.startsWith("adapter: llvmpipe")) throw new Error("adapter line");
 * ```
 */
export function tableFromJsonLines(text: string): string {
  const objects = text.split("\n").map((line, i) => ({ line: line.trim(), n: i + 1 }))
    .filter((l) => l.line !== "")
    .map(({ line, n }) => {
      let v: unknown;
      try {
        v = JSON.parse(line);
      } catch {
        throw new BenchJsonError(`line ${n} is not JSON: ${line.slice(0, 80)}`);
      }
      if (typeof v !== "object" || v === null || Array.isArray(v)) {
        throw new BenchJsonError(`line ${n} is not a JSON object: ${line.slice(0, 80)}`);
      }
      return v as Record<string, unknown>;
    });
  const summary = objects.at(-1) as Partial<BenchSummary> | undefined;
  if (!summary || typeof summary.adapter !== "string") {
    throw new BenchJsonError('the last line is not a bench summary (no "adapter")');
  }
  const rows = objects.slice(0, -1) as unknown as BenchRow[];
  for (const [i, r] of rows.entries()) {
    if (typeof r.suite !== "string" || typeof r.case !== "string" || typeof r.impl !== "string") {
      throw new BenchJsonError(`line ${i + 1} is not a bench row (suite, case, impl)`);
    }
  }
  const host: HostInfo | undefined = typeof summary.cpu === "string"
    ? {
      cpu: summary.cpu,
      threads: summary.cpu_threads ?? null,
      llvmpipeThreads: summary.llvmpipe_threads ?? null,
      llvmpipeThreadsFrom: (summary.llvmpipe_threads_from ?? null) as LlvmpipeThreadsSource | null,
      simd: summary.cpu_simd ?? null,
      llvmpipeVectorWidth: summary.llvmpipe_vector_width ?? null,
      mesa: summary.mesa ?? null,
      webgpuBackend: summary.webgpu_backend ?? null,
    }
    : undefined;
  const skipped = summary.decode_skipped ?? [];
  const notes = skipped.length > 0 ? [skippedDecodeLine(skipped, summary.adapter)] : [];
  return formatTable(rows, summary.adapter, { host, notes });
}

if (import.meta.main) {
  const path = Deno.args[0];
  try {
    const text = path === undefined || path === "-"
      ? await new Response(Deno.stdin.readable).text()
      : await Deno.readTextFile(path);
    console.log(tableFromJsonLines(text));
  } catch (e) {
    console.error(`json_table: ${path ?? "stdin"}: ${(e as Error).message}`);
    Deno.exit(2);
  }
}

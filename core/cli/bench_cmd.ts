/**
 * `deno task bench [--json] [--suite NAME] [--quick] [--reps N] [--per-sync N] [--decode-sizes A,B]`: our kernels beside
 * tfjs-webgpu, checked then timed;
 * `--suite tokenizer` (CPU only, run only when named): BPE training and encoding (core/bench/tokenizer.ts).
 * Progress goes to stderr; stdout gets the table, or with `--json` one JSON object per row and a summary
 * object last. Any row that failed its correctness check (or errored) makes the exit code 1.
 *
 * @module
 */
import { runBench, type SuiteName, SUITES } from "../bench/bench.ts";
import { DECODE_SIZE_NAMES } from "../bench/decode.ts";
import { formatHost, hostInfo } from "../bench/host.ts";
import { formatTable, hostSummary, jsonLines } from "../bench/report.ts";
import {
  formatTokenizerTable,
  progressBar,
  runTokenizerBench,
  TOKENIZER_SIZE,
  TOKENIZER_SIZE_QUICK,
  TOKENIZER_SUITE,
} from "../bench/tokenizer.ts";
import { parseCommandArgs, positiveInt, positiveNumber } from "./args.ts";
import { EXIT_OK, EXIT_RUN_FAILURE, UsageError } from "./errors.ts";
import type { CliIo } from "./io.ts";
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
    large: { type: "boolean" },
    "peak-tflops": { type: "string" },
    "per-sync": { type: "string" },
    reps: { type: "string" },
    "decode-sizes": { type: "string", multiple: true },
  });
  if (values.help) {
    io.out(BENCH_USAGE);
    return EXIT_OK;
  }
  if (positionals.length > 0) {
    throw new UsageError(`bench takes no positional arguments, got "${positionals[0]}"`);
  }
  // The tokenizer suite runs on the CPUs and only when named; the others share one GPU device.
  const known = [...SUITES, TOKENIZER_SUITE] as readonly string[];
  const named = (values.suite ?? [...SUITES]).map((s) => {
    if (!known.includes(s)) throw new UsageError(`--suite expects one of ${known.join(", ")}, got "${s}"`);
    return s;
  });
  const suites = named.filter((s) => s !== TOKENIZER_SUITE) as SuiteName[];
  const quick = !!values.quick;
  const perSync = positiveInt("per-sync", values["per-sync"]);
  const reps = positiveInt("reps", values.reps);
  const peakTflops = positiveNumber("peak-tflops", values["peak-tflops"]);
  if (values.large && quick) throw new UsageError("--large does not go with --quick (small sizes only)");
  const decodeSizes = decodeSizesFlag(values["decode-sizes"], suites);
  const progress = (line: string) => io.err(`bench: ${line}`);
  const result = suites.length > 0
    ? await runBench({ suites, quick, reps, perSync, decodeSizes, progress, large: values.large, peakTflops })
    : null;
  const tokenizerRows = named.includes(TOKENIZER_SUITE)
    ? await runTokenizerBench({
      quick,
      progress,
      // On a terminal the bar redraws its line; elsewhere it is a line per 10% through io.
      onTrainProgress: Deno.stderr.isTerminal()
        ? progressBar(_stderr, true)
        : progressBar((text) => io.err(text.trimEnd()), false),
    })
    : [];
  const rows = result?.rows ?? [];
  const errors = rows.filter((r) => r.error).length + tokenizerRows.filter((r) => r.error).length;
  if (values.json) {
    const summary = {
      suite: named.length === 1 ? named[0]! : "all",
      rows: rows.length + tokenizerRows.length,
      errors,
      adapter: result?.adapter ?? "cpu",
      quick,
      warmup: result?.warmup ?? 1,
      reps: result?.reps ?? (quick ? TOKENIZER_SIZE_QUICK : TOKENIZER_SIZE).reps,
      per_sync: result?.perSync ?? null,
      peak_tflops: result?.peak ? result.peak.flops / 1e12 : null,
      peak_source: result?.peak?.source ?? null,
      ...hostSummary(result?.host ?? hostInfo("cpu")),
      ...(result && result.decodeSkipped.length > 0 ? { decode_skipped: result.decodeSkipped } : {}),
    };
    for (const line of jsonLines(rows, summary).slice(0, -1)) io.out(line);
    for (const row of tokenizerRows) io.out(JSON.stringify(row));
    io.out(JSON.stringify(summary)); // last, as jsonLines puts it
  } else {
    if (result) {
      io.out(formatTable(result.rows, result.adapter, {
        peak: _peakLine(result),
        host: result.host,
        notes: result.notes,
      }));
    }
    if (tokenizerRows.length > 0) {
      // Without a GPU table above it, the CPU benchmark names its host itself.
      if (!result) io.out(formatHost(hostInfo("cpu")));
      io.out(formatTokenizerTable(tokenizerRows));
    }
  }
  if (errors > 0) {
    io.err(
      `bench: ${errors} row(s) failed their correctness check or errored; no timing is reported for them`,
    );
    return EXIT_RUN_FAILURE;
  }
  return EXIT_OK;
}

/** The table's peak line: the fp32 peak the "% of peak" column is of, or why there is none. */
function _peakLine(r: { peak: { flops: number; source: string } | null; peakUnknown: string }): string {
  return r.peak
    ? `fp32 peak: ${r.peak.flops / 1e12} TFLOP/s (${r.peak.source})`
    : `fp32 peak: ${r.peakUnknown}`;
}

/**
 * `--decode-sizes` (repeatable, comma-separated): the decode sizes to run, validated; undefined when absent.
 * Throws a {@linkcode UsageError} for an unknown size, or when neither the decode nor the serve suite runs.
 */
export function decodeSizesFlag(
  values: readonly string[] | undefined,
  suites: readonly SuiteName[],
): string[] | undefined {
  if (values === undefined) return undefined;
  const names = values.flatMap((v) => v.split(",")).map((n) => n.trim());
  for (const n of names) {
    if (!DECODE_SIZE_NAMES.includes(n)) {
      throw new UsageError(`--decode-sizes expects names from ${DECODE_SIZE_NAMES.join(", ")}, got "${n}"`);
    }
  }
  if (!suites.includes("decode") && !suites.includes("serve")) {
    throw new UsageError(
      `--decode-sizes sizes the decode and serve suites, and this run has neither (--suite decode or serve)`,
    );
  }
  return [...new Set(names)];
}

/** Raw text to stderr (the training progress bar redraws its line). */
function _stderr(text: string): void {
  const bytes = new TextEncoder().encode(text);
  for (let i = 0; i < bytes.length;) i += Deno.stderr.writeSync(bytes.subarray(i));
}

/**
 * Output of the bench: JSON lines (one per row, then one summary object last) and human tables with
 * ours and tfjs (or, for the moe suite, dense and sparse execution; for the decode and serve suites, a dense
 * and a DS-MoE model) side by side per case.
 *
 * @module
 */
import { type BenchRow, IMPLS, MOE_IMPLS } from "./case.ts";
import { formatHost, type HostInfo, type MesaDriver } from "./host.ts";

/** The last `--json` line: what ran, where, and how many rows failed. */
export interface BenchSummary {
  suite: string;
  rows: number;
  errors: number;
  adapter: string;
  quick: boolean;
  warmup: number;
  reps: number;
  /** Runs queued per host wait when fixed for the whole run; null when sized per case. */
  per_sync?: number | null;
  /** The adapter's fp32 peak (TFLOP/s) the rows' `peak_pct` are of, and its source; null when unknown. */
  peak_tflops?: number | null;
  peak_source?: string | null;
  /** The host's CPU model ("unknown" when the system does not say) and its threads (core/bench/host.ts). */
  cpu?: string;
  cpu_threads?: number | null;
  /** Threads llvmpipe uses and where that comes from ("LP_NUM_THREADS" or "cpu count"); null off llvmpipe. */
  llvmpipe_threads?: number | null;
  llvmpipe_threads_from?: string | null;
  /** The CPU's vector extensions (core/bench/host.ts) and LP_NATIVE_VECTOR_WIDTH when set on llvmpipe. */
  cpu_simd?: string[] | null;
  llvmpipe_vector_width?: number | null;
  /** Mesa's software drivers loaded on llvmpipe, with their releases, and DENO_WEBGPU_BACKEND when set. */
  mesa?: MesaDriver[] | null;
  webgpu_backend?: string | null;
  /** Decode sizes skipped on a software adapter (`--decode-sizes` runs them). */
  decode_skipped?: string[];
}

/** The host fields of a {@linkcode BenchSummary}. */
export function hostSummary(h: HostInfo): Pick<
  BenchSummary,
  | "cpu"
  | "cpu_threads"
  | "llvmpipe_threads"
  | "llvmpipe_threads_from"
  | "cpu_simd"
  | "llvmpipe_vector_width"
  | "mesa"
  | "webgpu_backend"
> {
  return {
    cpu: h.cpu,
    cpu_threads: h.threads,
    llvmpipe_threads: h.llvmpipeThreads,
    llvmpipe_threads_from: h.llvmpipeThreadsFrom,
    cpu_simd: h.simd,
    llvmpipe_vector_width: h.llvmpipeVectorWidth,
    mesa: h.mesa,
    webgpu_backend: h.webgpuBackend,
  };
}

/** What a table prints under its adapter line. */
export interface TableHeader {
  /** The host's CPU and threads: a "host: …" line. */
  host?: HostInfo;
  /** The fp32 peak the rows' % of peak are of (or why it is unknown): a line after the adapter's. */
  peak?: string;
  /** Further lines (e.g. the decode sizes a software adapter skipped). */
  notes?: readonly string[];
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

/** Columns of one table: the two implementations compared side by side and the ratio's name. */
const _TABLES = [
  { impls: IMPLS, names: ["dsmoe", "tfjs"], ratio: "ours/tfjs (ms)", decode: false },
  {
    impls: ["dsmoe", "jax-js-webgpu"],
    names: ["dsmoe", "jax-js webgpu"],
    ratio: "ours/jax-js (ms)",
    decode: false,
  },
  {
    impls: ["dsmoe", "jax-js-wasm"],
    names: ["dsmoe", "jax-js wasm"],
    ratio: "ours/jax-js (ms)",
    decode: false,
  },
  { impls: MOE_IMPLS, names: ["dense", "sparse"], ratio: "sparse/dense (ms)", decode: false },
  { impls: MOE_IMPLS, names: ["dense model", "DS-MoE"], ratio: "DS-MoE/dense (ms)", decode: true },
  // The serve suite (batched decoding): the speed-up, DS-MoE's total tokens/s over the dense model's.
  {
    impls: MOE_IMPLS,
    names: ["dense model", "DS-MoE"],
    ratio: "DS-MoE/dense (tokens/s)",
    decode: true,
    serve: true,
  },
] as const;

/**
 * Fixed-width tables under an `adapter:` line (and, when given, a `host:` line with the CPU and threads, and
 * notes): per case, the two implementations' ms and GFLOP/s (tokens/s for the decode suite)
 * and the time ratio second/first for the moe and decode suites' dense and sparse rows, first/second
 * (ours/tfjs: below 1, ours is faster) otherwise, and the runs queued per host wait when timing;
 * failed rows show ERROR and their messages follow the tables.
 *
 * @example
 * ```ts
 * import { formatTable } from "./report.ts";
 * const row = { suite: "matmul", case: "8x8x8", ms: 2, gflops: 0.5e-3, flops: 1024, max_err: 0 };
 * const text = formatTable([{ ...row, impl: "dsmoe" }, { ...row, impl: "tfjs-webgpu", ms: 4 }], "llvmpipe");
 * if (!text.includes("0.50")) throw new Error("ratio");
 * ```
 */
export function formatTable(rows: readonly BenchRow[], adapter: string, header: TableHeader = {}): string {
  const out = [
    `adapter: ${adapter}`,
    ...(header.peak ? [header.peak] : []),
    ...(header.host ? [formatHost(header.host)] : []),
    ...(header.notes ?? []),
  ];
  for (const table of _TABLES) {
    // A peer table after the first shows only the cases that peer ran.
    const peer = table.impls[1] as string,
      ran = new Set(rows.filter((r) => r.impl === peer).map((r) => r.case));
    const mine = rows.filter((r) =>
      (table.impls as readonly string[]).includes(r.impl) && (r.tokens !== undefined) === table.decode &&
      (r.suite === "serve") === ("serve" in table) &&
      (table.impls === IMPLS || table.impls === MOE_IMPLS || ran.has(r.case))
    );
    if (mine.length > 0 || table.impls === IMPLS && rows.length === 0) out.push(..._table(mine, table));
  }
  const errors = rows.filter((r) => r.error).map((r) => `  ${r.suite} ${r.case} ${r.impl}: ${r.error}`);
  return [...out, ...(errors.length > 0 ? ["errors:", ...errors] : [])].join("\n");
}

/** A decode row's dispatches per token and per layer, e.g. "69 (16)"; "–" when unknown. */
function _dispatches(r?: BenchRow): string {
  if (r?.dispatches_per_token === undefined) return "–";
  const layer = r.dispatches_per_layer;
  return `${r.dispatches_per_token}${layer === undefined ? "" : ` (${+layer.toFixed(2)})`}`;
}

function _table(rows: readonly BenchRow[], t: typeof _TABLES[number]): string[] {
  const [a, b] = t.names;
  const rate = t.decode ? "tokens/s" : "GFLOP/s";
  // The first implementation's GFLOP/s as a % of the adapter's fp32 peak, when it is known.
  const pct = rows.some((r) => r.impl === t.impls[0] && r.peak_pct !== undefined);
  const header = [
    "suite",
    "case",
    `${a} ms`,
    `${a} ${rate}`,
    ...(pct ? [`${a} % of peak`] : []),
    `${b} ms`,
    `${b} ${rate}`,
    t.ratio,
    "runs/wait",
    ...(t.decode ? [`dispatches/${"serve" in t ? "step" : "token"} (/layer) ${a} | ${b}`] : []),
  ];
  const cases = new Map<string, Map<string, BenchRow>>();
  for (const r of rows) {
    const key = `${r.suite}\u0000${r.case}`;
    if (!cases.has(key)) cases.set(key, new Map());
    cases.get(key)!.set(r.impl, r);
  }
  const body: string[][] = [];
  for (const byImpl of cases.values()) {
    const [first, second] = t.impls.map((i) => byImpl.get(i));
    const any = (first ?? second)!;
    const ms = (r?: BenchRow) => (r?.error ? "ERROR" : typeof r?.ms === "number" ? r.ms.toFixed(2) : "–");
    const gf = (r?: BenchRow) => {
      const v = t.decode ? r?.tokens_per_s : r?.gflops;
      return typeof v === "number" ? v.toFixed(t.decode ? 1 : 2) : "–";
    };
    // ours/tfjs for the peer tables; sparse/dense for the moe suite (the share of the dense time left);
    // dense/sparse time for the serve suite (DS-MoE's tokens/s over the dense model's).
    const [num, den] = t.impls[0] === "dsmoe" || "serve" in t ? [first, second] : [second, first];
    const ratio = typeof num?.ms === "number" && typeof den?.ms === "number"
      ? (num.ms / den.ms).toFixed(2)
      : "–";
    // Both rows of a case share p, except a host-bound peer (timed with p = 1): then both are shown.
    const ps = [...new Set([first?.per_sync, second?.per_sync].filter((x) => x !== undefined))];
    const perSync = ps.length === 0 ? undefined : ps.join("/");
    body.push([
      any.suite,
      any.case,
      ms(first),
      gf(first),
      ...(pct ? [first?.peak_pct === undefined ? "–" : `${first.peak_pct.toFixed(1)}%`] : []),
      ms(second),
      gf(second),
      ratio,
      perSync ?? "–",
      ...(t.decode ? [`${_dispatches(first)} | ${_dispatches(second)}`] : []),
    ]);
  }
  const width = header.map((h, c) => Math.max(h.length, ...body.map((r) => r[c]!.length)));
  const line = (cells: string[]) =>
    cells.map((x, c) => (c < 2 ? x.padEnd(width[c]!) : x.padStart(width[c]!))).join("  ").trimEnd();
  return [line(header), line(width.map((w) => "-".repeat(w))), ...body.map(line)];
}

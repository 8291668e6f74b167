/**
 * `deno task bench`: opens the GPU, puts tfjs's WebGPU backend on the same device, builds the selected
 * suites and runs them (check, warm-up, timed repetitions).
 *
 * @module
 */
import { openGpu } from "../../gpu/device.ts";
import { fp32Peak, type Peak } from "../../gpu/peak.ts";
import { type BenchCase, type BenchRow, runCases } from "./case.ts";
import { KERNEL_DIMS, KERNEL_DIMS_QUICK, kernelCases } from "./kernels.ts";
import { MATMUL_LARGE, MATMUL_SHAPES, MATMUL_SHAPES_QUICK, matmulCases, type MatmulShape } from "./matmul.ts";
import { MOE_DIMS, MOE_DIMS_QUICK, moeCases } from "./moe.ts";
import {
  DECODE_SIZES_QUICK,
  type DecodeBenchSize,
  decodeCases,
  decodeSizesFor,
  quickDecodeSize,
  skippedDecodeLine,
} from "./decode.ts";
import { type HostInfo, hostInfo } from "./host.ts";
import { SERVE_BENCH, SERVE_BENCH_QUICK, serveCases } from "./serve.ts";
import { TRAIN_DIMS, TRAIN_DIMS_QUICK, trainStepCases } from "./train_step.ts";
import { openTfjs } from "./tfjs.ts";

/** Suite names `--suite` accepts. */
export const SUITES = ["matmul", "kernels", "moe", "decode", "serve", "train"] as const;

/** One of {@linkcode SUITES}. */
export type SuiteName = typeof SUITES[number];

/** Options of {@linkcode runBench}. */
export interface BenchOptions {
  /** Suites to run, in order. Default all. */
  suites?: readonly SuiteName[];
  /** Small sizes, 1 warm-up and 2 timed repetitions (tests); else full sizes, 1 warm-up, 5 repetitions. */
  quick?: boolean;
  /** Runs queued per host↔GPU wait; default chosen per case (timing.ts), 2 with `quick`. */
  perSync?: number;
  /**
   * Timed samples per implementation of a case, the median reported; default 5 (2 with `quick`). More give a
   * steadier median on a shared machine.
   */
  reps?: number;
  /** Add the 4096³ matmul ({@linkcode MATMUL_LARGE}); default on real GPUs (the `gpu` kernel profile). */
  large?: boolean;
  /** The adapter's fp32 peak in TFLOP/s for the rows' % of peak; default gpu/peak.ts's table. */
  peakTflops?: number;
  /**
   * Decode suite sizes to run (names of `DECODE_SIZES`); default all but the large ones on a software adapter.
   * With `quick`, each named size runs one layer of its shape (`quickDecodeSize`).
   */
  decodeSizes?: readonly string[];
  progress?: (line: string) => void;
}

/** Rows of a bench run and where it ran. */
export interface BenchResult {
  rows: BenchRow[];
  adapter: string;
  warmup: number;
  reps: number;
  /** The fixed runs per wait, or null when chosen per case. */
  perSync: number | null;
  /** The adapter's fp32 peak, or null with `peakUnknown` saying why. */
  peak: Peak | null;
  peakUnknown: string;
  /** The host's CPU and threads (and llvmpipe's threads on llvmpipe). */
  host: HostInfo;
  /** Decode sizes skipped on a software adapter (none named), and the line that said so. */
  decodeSkipped: string[];
  notes: string[];
}

/** The matmul suite's shapes: the full or quick list, and the 4096³ product when `large`. */
export function matmulShapes(quick: boolean, large: boolean): MatmulShape[] {
  return [...(quick ? MATMUL_SHAPES_QUICK : MATMUL_SHAPES), ...(large ? [MATMUL_LARGE] : [])];
}

/** `rows` with each GFLOP/s as a % of `peak` (rows unchanged without a peak). */
export function withPeakShare(rows: readonly BenchRow[], peak: Peak | null): BenchRow[] {
  return rows.map((r) =>
    peak && typeof r.gflops === "number" ? { ...r, peak_pct: (100 * r.gflops * 1e9) / peak.flops } : r
  );
}

/**
 * Runs the benchmark suites on a fresh device, closed again at the end.
 *
 * @example
 * ```ts ignore
 * const { rows, adapter } = await runBench({ suites: ["matmul"], quick: true });
 * ```
 */
export async function runBench(o: BenchOptions = {}): Promise<BenchResult> {
  const warmup = 1, reps = o.reps ?? (o.quick ? 2 : 5), perSync = o.perSync ?? (o.quick ? 2 : undefined);
  const ctx = await openGpu({ timestamps: false });
  try {
    const tfjs = await openTfjs(ctx);
    const cases: BenchCase[] = [], decodeSkipped: string[] = [], notes: string[] = [];
    for (const s of o.suites ?? SUITES) {
      switch (s) {
        case "matmul":
          cases.push(...matmulCases(ctx, tfjs, matmulShapes(!!o.quick, o.large ?? ctx.profile === "gpu")));
          break;
        case "kernels":
          cases.push(...kernelCases(ctx, tfjs, o.quick ? KERNEL_DIMS_QUICK : KERNEL_DIMS));
          break;
        case "moe":
          cases.push(...moeCases(ctx, o.quick ? MOE_DIMS_QUICK : MOE_DIMS));
          break;
        case "decode": {
          const { sizes, skipped } = _decodeSizes(ctx.adapter, o);
          if (skipped.length > 0) {
            decodeSkipped.push(...skipped.map((s) => s.name));
            notes.push(skippedDecodeLine(decodeSkipped, ctx.adapter.description));
            o.progress?.(notes.at(-1)!);
          }
          cases.push(...await decodeCases(ctx, sizes, { progress: o.progress }));
          break;
        }
        case "serve": {
          // `--decode-sizes` picks the serve suite's sizes too (the same pairs of models).
          const base = o.quick ? SERVE_BENCH_QUICK : SERVE_BENCH;
          const bench = o.decodeSizes ? { ...base, sizes: _decodeSizes(ctx.adapter, o).sizes } : base;
          cases.push(...await serveCases(ctx, bench, "configs", o.progress));
          break;
        }
        case "train":
          cases.push(...trainStepCases(ctx, tfjs, o.quick ? TRAIN_DIMS_QUICK : TRAIN_DIMS));
          break;
        default:
          s satisfies never;
      }
    }
    o.progress?.(
      `${cases.length} cases (dsmoe vs tfjs-webgpu; moe: dense vs sparse layer; decode, serve: dense vs DS-MoE model) on ${ctx.adapter.description}; ` +
        `${warmup} warm-up + ${reps} timed repetitions each, median; ` +
        (perSync ? `${perSync} runs queued per host wait` : "runs queued per host wait sized per case"),
    );
    const { peak, why } = fp32Peak(ctx.adapter.description, o.peakTflops);
    const rows = withPeakShare(await runCases(cases, { warmup, reps, perSync, progress: o.progress }), peak);
    ctx.assertAlive();
    return {
      rows,
      adapter: ctx.adapter.description,
      warmup,
      reps,
      perSync: perSync ?? null,
      peak,
      peakUnknown: why,
      host: hostInfo(ctx.adapter.description),
      decodeSkipped,
      notes,
    };
  } finally {
    ctx.destroy();
  }
}

/** The decode sizes of a run: `--quick`'s one size, the named ones (one layer of each with `quick`), or all. */
function _decodeSizes(
  adapter: Parameters<typeof decodeSizesFor>[0],
  o: BenchOptions,
): { sizes: readonly DecodeBenchSize[]; skipped: DecodeBenchSize[] } {
  if (o.quick && !o.decodeSizes) return { sizes: DECODE_SIZES_QUICK, skipped: [] };
  const picked = decodeSizesFor(adapter, o.decodeSizes);
  return o.quick ? { sizes: picked.sizes.map(quickDecodeSize), skipped: [] } : picked;
}

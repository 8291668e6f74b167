/**
 * `deno task bench`: opens the GPU, puts tfjs's WebGPU backend on the same device, builds the selected
 * suites and runs them (check, warm-up, timed repetitions).
 *
 * @module
 */
import { openGpu } from "../../gpu/device.ts";
import { type BenchCase, type BenchRow, runCases } from "./case.ts";
import { KERNEL_DIMS, KERNEL_DIMS_QUICK, kernelCases } from "./kernels.ts";
import { MATMUL_SHAPES, MATMUL_SHAPES_QUICK, matmulCases } from "./matmul.ts";
import { MOE_DIMS, MOE_DIMS_QUICK, moeCases } from "./moe.ts";
import { DECODE_SIZES, DECODE_SIZES_QUICK, decodeCases } from "./decode.ts";
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
  const warmup = 1, reps = o.quick ? 2 : 5, perSync = o.perSync ?? (o.quick ? 2 : undefined);
  const ctx = await openGpu({ timestamps: false });
  try {
    const tfjs = await openTfjs(ctx);
    const cases: BenchCase[] = [];
    for (const s of o.suites ?? SUITES) {
      switch (s) {
        case "matmul":
          cases.push(...matmulCases(ctx, tfjs, o.quick ? MATMUL_SHAPES_QUICK : MATMUL_SHAPES));
          break;
        case "kernels":
          cases.push(...kernelCases(ctx, tfjs, o.quick ? KERNEL_DIMS_QUICK : KERNEL_DIMS));
          break;
        case "moe":
          cases.push(...moeCases(ctx, o.quick ? MOE_DIMS_QUICK : MOE_DIMS));
          break;
        case "decode":
          cases.push(...await decodeCases(ctx, o.quick ? DECODE_SIZES_QUICK : DECODE_SIZES));
          break;
        case "serve":
          cases.push(
            ...await serveCases(ctx, o.quick ? SERVE_BENCH_QUICK : SERVE_BENCH, "configs", o.progress),
          );
          break;
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
    const rows = await runCases(cases, { warmup, reps, perSync, progress: o.progress });
    ctx.assertAlive();
    return { rows, adapter: ctx.adapter.description, warmup, reps, perSync: perSync ?? null };
  } finally {
    ctx.destroy();
  }
}

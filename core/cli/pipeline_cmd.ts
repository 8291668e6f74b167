/**
 * What `repro` and `study` share around their pipelines: the `--scale` check against a manifest, and running
 * the pipeline with the command's stop signal (Ctrl-C, SIGTERM, SIGHUP: core/cli/stop_signals.ts), its
 * progress on stderr and the live dashboard, stopped however the pipeline ends.
 *
 * @module
 */
import { UsageError } from "./errors.ts";
import type { CliIo } from "./io.ts";
import { liveDashboard, type LiveDashboardFlags } from "./live_dashboard.ts";
import { abortOnSignal } from "./train_cmd.ts";

/** `scale` if the manifest at `file` defines it, else a UsageError listing the scales it does. */
export function checkScale(scale: string, file: string, scales: Readonly<Record<string, unknown>>): string {
  if (!Object.hasOwn(scales, scale)) {
    throw new UsageError(`--scale ${scale}: ${file} defines ${Object.keys(scales).join(", ")}`);
  }
  return scale;
}

/** What a pipeline is given by {@linkcode runPipeline}. */
export interface PipelineContext {
  progress: (line: string) => void;
  signal: AbortSignal;
  dashboardUrl?: string;
}

/** Runs `work` with the command's stop signal, progress on stderr and the live dashboard of `runsDir`. */
export async function runPipeline<T>(
  runsDir: string,
  flags: LiveDashboardFlags,
  io: CliIo,
  work: (ctx: PipelineContext) => Promise<T>,
): Promise<T> {
  const ac = abortOnSignal(io);
  const live = await liveDashboard(runsDir, flags, io);
  try {
    return await work({ progress: (l) => io.err(l), signal: ac.signal, dashboardUrl: live?.url });
  } finally {
    await live?.stop();
  }
}

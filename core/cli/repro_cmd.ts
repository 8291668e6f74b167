/**
 * `deno task repro [--scale micro|small]`: the DS-MoE paper's claims reproduced at small scale
 * (core/repro). Prints progress to stderr and a summary of the report (the claims held or not, the path of
 * REPORT.md; micro's caveat that it is a smoke test first) to stdout; `--json` ends with
 * `{"id","scale","report","claims":[{"id","claim","held","evidence"}],"models":[…]}`.
 *
 * @module
 */
import { loadReproSpec } from "../repro/spec.ts";
import { runRepro } from "../repro/run_repro.ts";
import type { ReproReport } from "../repro/report.ts";
import { createBackend } from "../train/backends.ts";
import { parseCommandArgs } from "./args.ts";
import { EXIT_OK, EXIT_RUN_FAILURE, UsageError } from "./errors.ts";
import type { CliIo } from "./io.ts";
import { storeUsage, useStore } from "./store_flag.ts";
import { checkScale, runPipeline } from "./pipeline_cmd.ts";

/** The manifest `repro` reads unless told otherwise. */
export const DEFAULT_MANIFEST = "configs/repro/repro.yaml";

/** The manifest of each `--data`: the synthetic grammar (default) or real English with a BPE tokenizer. */
export const DATA_MANIFESTS: Record<string, string> = {
  synthetic: DEFAULT_MANIFEST,
  real: "configs/real/repro.yaml",
};

/** Usage of `repro`. */
export const REPRO_USAGE = `Usage: deno task repro [options]

Reproduces the DS-MoE paper's claims at small scale: trains a dense model, a sparse MoE (top-2, Switch
loss) and DS-MoE (MoA + MoE, MI loss) of the same total size on the same data, plus DS-MoE at MI weights
0 and 10x; evaluates each under threshold / top-K / top-p rules; times sparse decoding; then writes a report
(claims held or not, with the measured numbers) into the run store and <runs-dir>/repro/REPORT.md.
Models finished by an earlier invocation of the same scale are reused.

Options:
  --scale S            micro (a smoke test of the pipeline whose claims mean nothing: about a minute, 52 s
                       on llvmpipe with 2 cores) or small (the configs as written: under an hour on a
                       software adapter); default small
  --data KIND          synthetic (default: the multi-domain grammar read byte by byte) or real (State of
                       the Union addresses through a 4,096-token BPE: ${DATA_MANIFESTS.real},
                       with the MI weight swept over 0, the paper's, 3x and 10x)
  --manifest FILE      the reproduction manifest (default ${DEFAULT_MANIFEST}; not with --data)
  --dashboard-port N   serve the live dashboard while training (default 8000; 0 = any free port)
  --no-dashboard       do not serve the dashboard
  --json               last stdout line: {"id","scale","report","claims":[…],"models":[…]}
${storeUsage(23)}`;

/**
 * The lines `repro` prints when it is done, instead of the whole report: the smoke-test caveat first (micro),
 * then each claim held or not with its measured numbers, then where the report is.
 *
 * @example
 * ```ts ignore
 * for (const line of reproSummary(outcome.report, "runs/repro/REPORT.md")) console.log(line);
 * ```
 */
export function reproSummary(r: ReproReport, path: string): string[] {
  const held = r.claims.filter((c) => c.held === true).length;
  const verdict = (c: ReproReport["claims"][number]) =>
    c.held === null ? "not measured" : c.held ? "held" : "did not hold";
  return [
    ...(r.caveat ? [`Smoke test (--scale ${r.scale}): ${r.caveat}`, ""] : []),
    `Claims (scale ${r.scale}): ${held} of ${r.claims.length} held`,
    ...r.claims.map((c) => `  ${c.id}. ${verdict(c).padEnd(12)} ${c.claim}: ${c.evidence}`),
    `Report ${r.id}: ${path} (also in the run store; deno task dashboard → /sweeps/${r.id})`,
  ];
}

/** Runs `repro`. */
export async function reproCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseCommandArgs("repro", args, {
    scale: { type: "string" },
    manifest: { type: "string" },
    data: { type: "string" },
    "dashboard-port": { type: "string" },
    "no-dashboard": { type: "boolean" },
  });
  if (values.help) {
    io.out(REPRO_USAGE);
    return EXIT_OK;
  }
  if (positionals.length > 0) {
    throw new UsageError(`repro takes no positional arguments, got "${positionals[0]}"`);
  }
  if (values.data !== undefined && values.manifest !== undefined) {
    throw new UsageError("--data picks a manifest: give --data or --manifest, not both");
  }
  const byData = values.data === undefined ? undefined : DATA_MANIFESTS[values.data];
  if (values.data !== undefined && byData === undefined) {
    throw new UsageError(`--data expects ${Object.keys(DATA_MANIFESTS).join(" or ")}, got "${values.data}"`);
  }
  const spec = await loadReproSpec(values.manifest ?? byData ?? DEFAULT_MANIFEST);
  const scale = checkScale(values.scale ?? "small", spec.file, spec.scales);
  const runsDir = useStore(values);
  const manifest = await Deno.readTextFile(spec.file);
  const outcome = await runPipeline(
    runsDir,
    values,
    io,
    (ctx) => runRepro(spec, manifest, { ...ctx, scale, runsDir, backendFactory: createBackend }),
  );
  for (const line of reproSummary(outcome.report, outcome.path)) io.out(line);
  if (outcome.failed.length > 0) {
    io.err(`Training failed for: ${outcome.failed.join(", ")} (reported as not measured)`);
  }
  if (values.json) {
    const r = outcome.report;
    io.out(JSON.stringify({
      id: outcome.id,
      scale,
      report: outcome.path,
      claims: r.claims.map(({ id, claim, held, evidence }) => ({ id, claim, held, evidence })),
      models: r.models,
    }));
  }
  return outcome.failed.length > 0 ? EXIT_RUN_FAILURE : EXIT_OK;
}

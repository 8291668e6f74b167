/**
 * `deno task study [manifest.yaml] [--scale S]`: the router study (core/repro/run_study.ts). Prints progress
 * to stderr and a short summary (the smoke-test caveat first on micro, the size check, one line per model,
 * the path of REPORT.md and the dashboard page) to stdout; `--json` ends with
 * `{"id","name","scale","report","size","rules","models","cells"}`.
 *
 * @module
 */
import { loadStudySpec } from "../repro/study_spec.ts";
import { runStudy } from "../repro/run_study.ts";
import { cellOf, signedPct } from "../repro/study_markdown.ts";
import type { StudyReport } from "../runs/study_types.ts";
import { createBackend } from "../train/backends.ts";
import { fmtPct, fmtPpl } from "../util/quantities.js";
import { parseCommandArgs } from "./args.ts";
import { EXIT_OK, EXIT_RUN_FAILURE, UsageError } from "./errors.ts";
import type { CliIo } from "./io.ts";
import { checkScale, runPipeline } from "./pipeline_cmd.ts";
import { storeUsage, useStore } from "./store_flag.ts";

/** The manifest `study` reads unless told otherwise. */
export const DEFAULT_STUDY_MANIFEST = "configs/study/routers.yaml";

/** Usage of `study`. */
export const STUDY_USAGE = `Usage: deno task study [manifest.yaml] [options]

The router study: trains the manifest's routers and its dense baseline (same data, same total size within
the manifest's tolerance) as one sweep, evaluates each under every inference rule of the manifest, and writes
a report from the run store: the matrix (router × rule: ppl, bpb, hidden % and active % measured, tokens/s
of the sparse evaluation), each router's frontier and the routing diagnostics, into the store and
<runs-dir>/study/<name>/REPORT.md (dashboard: /studies/<id>, a heatmap). A model whose config is unchanged
is reused from an earlier invocation; a rule already evaluated is not evaluated again.

Options:
  manifest.yaml        the study manifest (default ${DEFAULT_STUDY_MANIFEST})
  --scale S            a scale of the manifest (its --set overrides; default: its default_scale). micro is
                       a smoke test of the pipeline whose numbers mean nothing (about 20 s)
  --dashboard-port N   serve the live dashboard while training (default 8000; 0 = any free port)
  --no-dashboard       do not serve the dashboard
  --json               last stdout line: {"id","name","scale","report","size","rules","models","cells"}
${storeUsage(23)}`;

/**
 * The lines `study` prints when it is done: the smoke-test caveat (micro), the size check, each model's own
 * rule and its best cell, then where the report is.
 *
 * @example
 * ```ts ignore
 * for (const line of studySummary(outcome.report, "runs/study/routers/REPORT.md")) console.log(line);
 * ```
 */
export function studySummary(r: StudyReport, path: string): string[] {
  const width = Math.max(...r.models.map((m) => m.name.length));
  const lines = r.models.map((m) => {
    const name = m.name.padEnd(width);
    if (!m.run_id) return `  ${name}  not trained (its training failed)`;
    const own = r.cells.find((c) => c.model === m.name && c.rule_name === m.infer);
    const measured = r.cells.filter((c) => c.model === m.name && c.ppl !== null);
    const best = measured.reduce<typeof measured[number] | null>(
      (b, c) => (b && b.ppl! <= c.ppl! ? b : c),
      null,
    );
    if (!m.routed) return `  ${name}  dense ppl ${fmtPpl(cellOf(r, m.name, "dense")?.ppl ?? null)}`;
    const say = (c: typeof own) =>
      c ? `ppl ${fmtPpl(c.ppl)} (${signedPct(c.dppl_pct)}), hidden ${fmtPct(c.hidden_pct)}` : "not measured";
    return `  ${name}  own rule ${m.infer}: ${say(own)}; lowest ppl under ${best?.rule_name ?? "—"}: ${
      say(best ?? undefined)
    }`;
  });
  const beyond = r.size.rows.filter((x) => !x.within).map((x) => x.name);
  return [
    ...(r.caveat ? [`Smoke test (--scale ${r.scale}): ${r.caveat}`, ""] : []),
    `Study ${r.name} (scale ${r.scale}): ${
      r.models.length - 1
    } routers and the baseline × ${r.rules.length} rules; ` +
    `equal size within ${(r.size.tolerance * 100).toFixed(2)}%: ${
      r.size.within ? "yes" : `no (${beyond.join(", ")})`
    }`,
    ...lines,
    `Report ${r.id}: ${path} (also in the run store; deno task dashboard → /studies/${r.id})`,
  ];
}

/** Runs `study`. */
export async function studyCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseCommandArgs("study", args, {
    scale: { type: "string" },
    "dashboard-port": { type: "string" },
    "no-dashboard": { type: "boolean" },
  });
  if (values.help) {
    io.out(STUDY_USAGE);
    return EXIT_OK;
  }
  if (positionals.length > 1) {
    throw new UsageError(`study takes one manifest, got ${positionals.length}: ${positionals.join(" ")}`);
  }
  const spec = await loadStudySpec(positionals[0] ?? DEFAULT_STUDY_MANIFEST);
  const scale = checkScale(values.scale ?? spec.defaultScale, spec.file, spec.scales);
  const runsDir = useStore(values);
  const outcome = await runPipeline(
    runsDir,
    values,
    io,
    (ctx) => runStudy(spec, { ...ctx, scale, runsDir, backendFactory: createBackend }),
  );
  for (const line of studySummary(outcome.report, outcome.path)) io.out(line);
  if (outcome.failed.length > 0) {
    io.err(`Training failed for: ${outcome.failed.join(", ")} (their cells are not measured)`);
  }
  if (values.json) {
    const r = outcome.report;
    io.out(JSON.stringify({
      id: outcome.id,
      name: r.name,
      scale,
      report: outcome.path,
      size: r.size,
      rules: r.rules,
      models: r.models,
      cells: r.cells,
    }));
  }
  return outcome.failed.length > 0 ? EXIT_RUN_FAILURE : EXIT_OK;
}

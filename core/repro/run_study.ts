/**
 * `deno task study`: the router study (docs/design.md "The router study"). Loads every model of the
 * manifest at one scale and checks their sizes, trains the baseline and the routers as one sweep of the run
 * store (a model whose config is unchanged is reused from an earlier invocation, also when routers were added
 * to the manifest since), evaluates each under every rule column it has no stored result for, times decoding
 * under each model's own rule, then builds the report from the store and writes it to the store (a report
 * of kind "study", id = the sweep's) and to `<runs-dir>/study/<name>/REPORT.md`. The training, evaluation,
 * decoding and saving are repro's (pipeline.ts).
 *
 * @module
 */
import { createHash } from "node:crypto";
import { experimentToYaml } from "../config/mod.ts";
import { denseRules } from "../infer/rule_spec.ts";
import { configRules } from "../plan/plan.ts";
import { openRunStore } from "../runs/open_store.ts";
import { STUDY_REPORT_KIND, type StudyReport } from "../runs/study_types.ts";
import { openGpu } from "../../gpu/device.ts";
import {
  evaluateMissing,
  openTrainedRun,
  routedSides,
  saveReport,
  type SweepModel,
  timeDecoding,
  type TrainModelsOptions,
  trainSweepModels,
} from "./pipeline.ts";
import { renderStudyMarkdown } from "./study_markdown.ts";
import { buildStudyReport, cellRuleName, modelRules } from "./study_report.ts";
import {
  resolveStudy,
  type SizeCheck,
  sizeMismatchText,
  type StudyModel,
  type StudySpec,
} from "./study_spec.ts";

/** Options of {@linkcode runStudy}. */
export interface StudyOptions extends TrainModelsOptions {
  scale: string;
}

/** What a study produced. */
export interface StudyOutcome {
  id: string;
  report: StudyReport;
  markdown: string;
  path: string; // REPORT.md
  failed: string[]; // models whose training failed (their cells not measured)
  size: SizeCheck;
}

/** The sweep (and report) id of a study at a scale. */
export function studyId(name: string, scale: string): string {
  return `study-${name}-${scale}`;
}

/**
 * The run name of a model: the study, the model and a hash of its resolved config, so that a rerun finds the
 * model it trained before, and a changed config (a new base, another scale's overrides) trains anew.
 */
export function studyPointName(study: string, m: StudyModel): string {
  const yaml = experimentToYaml(m.loaded.points[0]!.config);
  return `${study}-${m.entry.name}-${createHash("sha256").update(yaml).digest("hex").slice(0, 8)}`;
}

/** Runs the study at `o.scale` (a key of `spec.scales`). */
export async function runStudy(spec: StudySpec, o: StudyOptions): Promise<StudyOutcome> {
  const scale = spec.scales[o.scale];
  if (!scale) {
    throw new RangeError(
      `Unknown scale "${o.scale}"; ${spec.file} has ${Object.keys(spec.scales).join(", ")}`,
    );
  }
  const { models, size } = await resolveStudy(spec, o.scale);
  for (const r of size.rows.filter((x) => !x.within)) {
    o.progress(`Warning: ${r.name}: ${sizeMismatchText(r, size)} (size.on_mismatch: warn)`);
  }
  const id = studyId(spec.name, o.scale);
  const store = await openRunStore(o.runsDir);
  await store.createSweep({
    id,
    name: `study ${spec.name} ${o.scale}`,
    config_yaml: `# ${spec.file}, --scale ${o.scale}\n${spec.text}`,
    created_at: new Date().toISOString(),
  });
  o.progress(
    `study ${id}: ${spec.routers.length} routers and the baseline × ${spec.rules.length} rules at scale ` +
      `${o.scale}`,
  );
  const points = new Map(models.map((m) => [m.entry.name, studyPointName(spec.name, m)]));
  const sweep: SweepModel[] = models.map((m) => ({
    key: m.entry.name,
    file: m.entry.file,
    loaded: m.loaded,
    params: { router: m.entry.name, scale: o.scale },
    pointName: points.get(m.entry.name)!,
  }));
  const { runIds, failed } = await trainSweepModels(sweep, id, o);
  if (o.signal?.aborted) {
    throw new Error("Interrupted: the models trained so far are kept; run the study again to go on");
  }

  const gpu = await openGpu();
  try {
    for (const [name, runId] of runIds) {
      const m = await openTrainedRun(o.runsDir, runId);
      await evaluateMissing(gpu, m, modelRules(spec.rules, m.config), {
        batches: scale.evalBatches,
        runsDir: o.runsDir,
        label: name,
        progress: o.progress,
        sameBatches: true,
        diagnostics: true,
      });
      if (scale.decodeTokens === 0) continue;
      const s = routedSides(m.config), routed = s.mlp || s.attention;
      const own = { spec: "own", rules: "own" as const };
      await timeDecoding(gpu, m, routed ? configRules(m.config) : denseRules(), cellRuleName(own, m.config), {
        tokens: scale.decodeTokens,
        label: name,
        progress: o.progress,
      });
    }
  } finally {
    gpu.destroy();
  }

  const report = await buildStudyReport(store, id, {
    name: spec.name,
    scale: o.scale,
    models: models.map((m) => ({ name: m.entry.name, pointName: points.get(m.entry.name)! })),
    rules: spec.rules,
    size: spec.size,
  });
  const markdown = renderStudyMarkdown(report, { store: store.url });
  const path = `${o.runsDir}/study/${spec.name}/REPORT.md`;
  await saveReport(store, {
    id,
    kind: STUDY_REPORT_KIND,
    sweep_id: id,
    created_at: report.created_at,
    markdown,
    data: report as unknown as Record<string, unknown>,
  }, path);
  return { id, report, markdown, path, failed, size };
}

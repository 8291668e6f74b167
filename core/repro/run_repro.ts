/**
 * `deno task repro`: trains the manifest's five models at one scale as one sweep of the run store (a model
 * finished by an earlier invocation is reused), evaluates the routed ones under every frontier rule, times
 * greedy decoding of the three main models on the sparse engine, then builds the report from the store and
 * writes it to the store and to `<runs-dir>/repro/REPORT.md`.
 *
 * @module
 */
import { type LoadedExperiment, loadExperiment } from "../config/mod.ts";
import { ruleName } from "../infer/evaluate.ts";
import { denseRules } from "../infer/rule_spec.ts";
import type { InferRules } from "../plan/model.ts";
import { configRules } from "../plan/plan.ts";
import { openRunStore } from "../runs/open_store.ts";
import type { BackendFactory } from "../train/run_experiment.ts";
import { openGpu } from "../../gpu/device.ts";
import { renderReproMarkdown } from "./markdown.ts";
import {
  configsHash,
  evaluateMissing,
  openTrainedRun,
  routedSides,
  saveReport,
  timeDecoding,
  trainSweepModels,
} from "./pipeline.ts";
import { buildReproReport, type ReproReport } from "./report.ts";
import { ABLATION_ROLES, MODEL_ROLES, type ReproSpec, type Role } from "./spec.ts";

/** Options of {@linkcode runRepro}. */
export interface ReproOptions {
  scale: string;
  runsDir: string;
  backendFactory: BackendFactory;
  progress: (line: string) => void;
  signal?: AbortSignal;
  dashboardUrl?: string;
}

/** What a reproduction produced. */
export interface ReproOutcome {
  id: string;
  report: ReproReport;
  markdown: string;
  path: string; // REPORT.md
  failed: Role[]; // roles whose training failed (reported as not measured)
}

/** Runs the reproduction at `o.scale` (a key of `spec.scales`). */
export async function runRepro(
  spec: ReproSpec,
  manifestText: string,
  o: ReproOptions,
): Promise<ReproOutcome> {
  const scale = spec.scales[o.scale];
  if (!scale) {
    throw new RangeError(
      `Unknown scale "${o.scale}"; ${spec.file} has ${Object.keys(spec.scales).join(", ")}`,
    );
  }
  const roles = [...MODEL_ROLES, ...ABLATION_ROLES].filter((r) => spec.configs[r] !== undefined);
  const loaded = new Map<Role, LoadedExperiment>();
  for (const role of roles) loaded.set(role, await loadExperiment(spec.configs[role]!, { sets: scale.set }));
  const id = _reproId(manifestText, o.scale, [...loaded.values()].map((l) => l.config));
  const store = await openRunStore(o.runsDir);
  await store.createSweep({
    id,
    name: `repro ${o.scale}`,
    config_yaml: `# ${spec.file}, --scale ${o.scale}\n${manifestText}`,
    created_at: new Date().toISOString(),
  });
  o.progress(`repro ${id}: ${roles.length} models at scale ${o.scale}`);

  const models = roles.map((role) => ({
    key: role,
    file: spec.configs[role]!,
    loaded: loaded.get(role)!,
    params: { role, scale: o.scale },
  }));
  const trained = await trainSweepModels(models, id, o);
  const runIds = trained.runIds as Map<Role, string>, failed = trained.failed as Role[];
  if (o.signal?.aborted) {
    throw new Error("Interrupted: the models trained so far are kept; run repro again to go on");
  }

  const gpu = await openGpu();
  try {
    for (const [role, runId] of runIds) {
      const m = await openTrainedRun(o.runsDir, runId);
      const routed = routedSides(m.config);
      const anyRouted = routed.mlp || routed.attention;
      const ablation = (ABLATION_ROLES as readonly string[]).includes(role);
      // The frontier for the three models; the ablation needs only its claim-rule point unless the manifest
      // asks for its frontier too (how the frontier moves with the MI weight).
      const rules = !anyRouted
        ? [denseRules()]
        : ablation && !spec.ablationFrontier
        ? [denseRules(), spec.claimRule.rules]
        : [...spec.rules.map((r) => r.rules), ...(role === "smoe" ? [configRules(m.config)] : [])];
      await evaluateMissing(gpu, m, rules, {
        batches: scale.evalBatches,
        runsDir: o.runsDir,
        label: role,
        progress: o.progress,
      });
      if (ablation) continue;
      const rule: InferRules = role === "dsmoe" ? spec.claimRule.rules : configRules(m.config);
      const name = anyRouted ? ruleName(rule, routed) : "dense";
      await timeDecoding(gpu, m, rule, name, {
        tokens: scale.decodeTokens,
        label: role,
        progress: o.progress,
      });
    }
  } finally {
    gpu.destroy();
  }

  const report = await buildReproReport(store, id, { scale: o.scale, claimRule: spec.claimRule.rules });
  const markdown = renderReproMarkdown(report, { store: store.url });
  const path = `${o.runsDir}/repro/REPORT.md`;
  await saveReport(store, {
    id,
    kind: "repro",
    sweep_id: id,
    created_at: report.created_at,
    markdown,
    data: report as unknown as Record<string, unknown>,
  }, path);
  return { id, report, markdown, path, failed };
}

/** A stable id of the reproduction: the manifest, the scale and every resolved model config. */
function _reproId(manifest: string, scale: string, configs: Parameters<typeof configsHash>[2]): string {
  return `repro-${scale}-${configsHash(manifest, scale, configs)}`;
}

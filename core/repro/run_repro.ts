/**
 * `deno task repro`: trains the manifest's five models at one scale as one sweep of the run store (a model
 * finished by an earlier invocation is reused), evaluates the routed ones under every frontier rule, times
 * greedy decoding of the three main models on the sparse engine, then builds the report from the store and
 * writes it to the store and to `<runs-dir>/repro/REPORT.md`.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { experimentToYaml, type LoadedExperiment, loadExperiment } from "../config/mod.ts";
import type { Experiment } from "../config/schema.ts";
import { loadDataset } from "../data/dataset.ts";
import { defaultCacheDir } from "../data/prepare.ts";

import { evaluateRules, ruleName } from "../infer/evaluate.ts";
import { Decoder, generate } from "../infer/generate.ts";
import { recordGeneration, recordRuleResults } from "../infer/record.ts";
import { denseRules } from "../infer/rule_spec.ts";
import { layerShape } from "../plan/counts.ts";
import type { InferRules } from "../plan/model.ts";
import { configRules } from "../plan/plan.ts";
import { atomicWriteText } from "../util/atomic_write.ts";
import { openRunStore } from "../runs/open_store.ts";
import { modelTokenizer, openStoredRun } from "../runs/stored_run.ts";
import type { BackendFactory } from "../train/run_experiment.ts";
import { runExperiment } from "../train/run_experiment.ts";
import { paramValues } from "../train/trainer.ts";
import { openGpu } from "../../gpu/device.ts";
import { renderReproMarkdown } from "./markdown.ts";
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

const _PROMPT = "The small ";

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

  const runIds = new Map<Role, string>(), failed: Role[] = [];
  for (const [i, role] of roles.entries()) {
    if (o.signal?.aborted) break;
    const l = loaded.get(role)!;
    o.progress(`[${i + 1}/${roles.length}] ${role}: ${spec.configs[role]}`);
    const file = spec.configs[role]!;
    const [out] = await runExperiment(
      { ...l, sweepId: id, points: l.points.map((p) => ({ ...p, params: { role, scale: o.scale } })) },
      {
        runsDir: o.runsDir,
        backendFactory: o.backendFactory,
        progress: o.progress,
        signal: o.signal,
        baseDir: file.includes("/") ? file.slice(0, file.lastIndexOf("/")) : ".",
        dashboardUrl: o.dashboardUrl,
      },
    );
    if (!out || out.status !== "finished" && out.status !== "skipped") failed.push(role); // failed, interrupted, busy
    else runIds.set(role, out.runId);
  }
  if (o.signal?.aborted) {
    throw new Error("Interrupted: the models trained so far are kept; run repro again to go on");
  }

  const gpu = await openGpu();
  try {
    for (const [role, runId] of runIds) {
      const m = await _openRun(o.runsDir, runId);
      const shape = layerShape(m.config), routed = { mlp: shape.routedMlp, attention: shape.routedAtt };
      const anyRouted = routed.mlp || routed.attention;
      const ablation = (ABLATION_ROLES as readonly string[]).includes(role);
      // The frontier for the three models; the ablation needs only its claim-rule point unless the manifest
      // asks for its frontier too (how the frontier moves with the MI weight).
      const rules = !anyRouted
        ? [denseRules()]
        : ablation && !spec.ablationFrontier
        ? [denseRules(), spec.claimRule.rules]
        : [...spec.rules.map((r) => r.rules), ...(role === "smoe" ? [configRules(m.config)] : [])];
      const todo = rules.filter((r) => !m.has(`infer/${ruleName(r, routed)}/ppl`));
      if (todo.length > 0) {
        o.progress(
          `${role}: evaluating ${todo.length} rules on ${scale.evalBatches} validation batches each`,
        );
        const dataset = await loadDataset(m.config, undefined, {
          cacheDir: defaultCacheDir(o.runsDir),
          tokenizer: m.tokenizer,
        });
        const results = await evaluateRules(gpu, m.config, m.params, dataset, todo, {
          batches: scale.evalBatches,
        });
        await recordRuleResults(m.run, m.step, results);
      }
      if (ablation) continue;
      const rule: InferRules = role === "dsmoe" ? spec.claimRule.rules : configRules(m.config);
      const name = anyRouted ? ruleName(rule, routed) : "dense";
      if (m.has(`generate/${name}/tokens_per_s`)) continue;
      const dec = await Decoder.create(gpu, m.config, m.params, rule);
      try {
        const r = await generate(dec, [...m.tokenizer.encode(_PROMPT)], {
          maxTokens: scale.decodeTokens,
          temperature: 0,
          topK: 0,
          seed: 1,
        });
        o.progress(`${role}: ${r.tokens.length} tokens at ${r.tokensPerS.toFixed(1)} tokens/s (${name})`);
        await recordGeneration(m.run, m.step, name, r);
      } finally {
        dec.destroy();
      }
    }
  } finally {
    gpu.destroy();
  }

  const report = await buildReproReport(store, id, { scale: o.scale, claimRule: spec.claimRule.rules });
  const markdown = renderReproMarkdown(report, { store: store.url });
  await store.saveReport({
    id,
    kind: "repro",
    sweep_id: id,
    created_at: report.created_at,
    markdown,
    data: report as unknown as Record<string, unknown>,
  });
  await Deno.mkdir(`${o.runsDir}/repro`, { recursive: true });
  const path = `${o.runsDir}/repro/REPORT.md`;
  await atomicWriteText(path, markdown);
  return { id, report, markdown, path, failed };
}

/** A stable id of the reproduction: the manifest, the scale and every resolved model config. */
function _reproId(manifest: string, scale: string, configs: readonly Readonly<Experiment>[]): string {
  const h = createHash("sha256").update(manifest).update(`\0${scale}\0`);
  for (const c of configs) h.update(experimentToYaml(c));
  return `repro-${scale}-${h.digest("hex").slice(0, 10)}`;
}

/** A trained run: its config, newest checkpoint's parameters and step, and which metric keys it has there. */
async function _openRun(runsDir: string, id: string) {
  const stored = await openStoredRun(runsDir, id, { purpose: "infer" });
  const { run, config, ck } = stored;
  if (!ck) throw new Error(`Run ${id} has no complete checkpoint to evaluate`);
  const keys = new Set(
    (await run.store.metrics(id)).filter((m) => m.step === ck.entry.step).map((m) => m.key),
  );
  return {
    run,
    config,
    params: paramValues(ck.file.tensors),
    step: ck.entry.step,
    tokenizer: await modelTokenizer(stored),
    has: (key: string) => keys.has(key),
  };
}

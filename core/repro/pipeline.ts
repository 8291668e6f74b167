/**
 * The pieces that `deno task repro` (run_repro.ts) and `deno task study` (run_study.ts) share: train a list
 * of models as one sweep of the run store (a model finished by an earlier invocation is reused), open a
 * trained run at its newest checkpoint, evaluate it under the inference rules it has no stored result for
 * (`infer/<rule>/…`, docs/design.md §5), time greedy decoding on the sparse engine (`generate/<rule>/…`), and
 * save a report built from the store into the store and a Markdown file. What each command trains, evaluates
 * and reports stays in its own module.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { experimentToYaml, type LoadedExperiment } from "../config/mod.ts";
import type { Experiment } from "../config/schema.ts";
import { loadDataset } from "../data/dataset.ts";
import { defaultCacheDir } from "../data/prepare.ts";
import { compareRouting, evaluateRules, ruleName } from "../infer/evaluate.ts";
import { Decoder, generate } from "../infer/generate.ts";
import { recordGeneration, recordRoutingDiagnostics, recordRuleResults } from "../infer/record.ts";
import { denseRules } from "../infer/rule_spec.ts";
import { layerShape } from "../plan/counts.ts";
import type { InferRules } from "../plan/model.ts";
import type { ReportRecord, RunStore } from "../runs/store.ts";
import {
  checkCheckpointContent,
  maxCheckpointBytes,
  modelTokenizer,
  openStoredRun,
} from "../runs/stored_run.ts";
import { CheckpointError, latestCheckpoint } from "../runs/checkpoints.ts";
import type { BackendFactory } from "../train/run_experiment.ts";
import { runExperiment } from "../train/run_experiment.ts";
import { paramValues } from "../train/trainer.ts";
import { atomicWriteText } from "../util/atomic_write.ts";
import type { GpuContext } from "../../gpu/device.ts";

/** One model of a sweep: its config as loaded, and what its run records. */
export interface SweepModel {
  /** What the model is called in progress lines and outcomes (a repro role, a study's router name). */
  key: string;
  /** Its config file (progress lines; the model's data paths resolve against its directory). */
  file: string;
  loaded: LoadedExperiment;
  /** The run's sweep parameters. */
  params: Record<string, unknown>;
  /** The run's name, which also identifies the point when it is reused (default the config's name). */
  pointName?: string;
}

/** Options of {@linkcode trainSweepModels}. */
export interface TrainModelsOptions {
  runsDir: string;
  backendFactory: BackendFactory;
  progress: (line: string) => void;
  signal?: AbortSignal;
  dashboardUrl?: string;
}

/**
 * Trains `models` in turn as points of sweep `sweepId` (a point with a finished run in that sweep is reused,
 * not trained again). Stops early when `o.signal` is aborted (the caller says what that means). Returns the
 * run of each model trained or reused, and the keys of those that failed, were interrupted or are busy.
 */
export async function trainSweepModels(
  models: readonly SweepModel[],
  sweepId: string,
  o: TrainModelsOptions,
): Promise<{ runIds: Map<string, string>; failed: string[] }> {
  const runIds = new Map<string, string>(), failed: string[] = [];
  for (const [i, m] of models.entries()) {
    if (o.signal?.aborted) break;
    o.progress(`[${i + 1}/${models.length}] ${m.key}: ${m.file}`);
    const l = m.loaded;
    const points = l.points.map((p) => ({ ...p, name: m.pointName ?? p.name, params: m.params }));
    const [out] = await runExperiment(
      { ...l, sweepId, points },
      {
        runsDir: o.runsDir,
        backendFactory: o.backendFactory,
        progress: o.progress,
        signal: o.signal,
        baseDir: dirOf(m.file),
        dashboardUrl: o.dashboardUrl,
      },
    );
    if (!out || out.status !== "finished" && out.status !== "skipped") failed.push(m.key); // failed, interrupted, busy
    else runIds.set(m.key, out.runId);
  }
  return { runIds, failed };
}

/** The directory of a path as written (`.` for a bare file name). */
export function dirOf(file: string): string {
  return file.includes("/") ? file.slice(0, file.lastIndexOf("/")) : ".";
}

/** A trained run opened for inference: {@linkcode openTrainedRun}. */
export type TrainedRun = Awaited<ReturnType<typeof openTrainedRun>>;

/**
 * A trained run: its config, newest checkpoint's parameters and step, and which metric keys it has at that
 * step (`has`; `tokens` gives the tokens a stored point was measured on, or null).
 */
export async function openTrainedRun(runsDir: string, id: string) {
  const stored = await openStoredRun(runsDir, id, { purpose: "infer" });
  const { run, config, ck } = stored;
  if (!ck) throw new Error(`Run ${id} has no complete checkpoint to evaluate`);
  const tokens = new Map(
    (await run.store.metrics(id)).filter((m) => m.step === ck.entry.step).map((m) => [m.key, m.tokens]),
  );
  return {
    run,
    config,
    params: paramValues(ck.file.tensors),
    step: ck.entry.step,
    tokenizer: await modelTokenizer(stored),
    has: (key: string) => tokens.has(key),
    tokens: (key: string) => tokens.get(key) ?? null,
  };
}

/** Which sides of a model route (the second argument of `ruleName`). */
export function routedSides(c: Readonly<Experiment>): { mlp: boolean; attention: boolean } {
  const shape = layerShape(c);
  return { mlp: shape.routedMlp, attention: shape.routedAtt };
}

/**
 * Evaluates run `m` under each of `rules` that it has no stored result for at its checkpoint (a rule whose
 * name another rule of the list shares is evaluated once), on `o.batches` validation batches, and records the
 * results as `infer/<rule>/…` metrics. With `o.sameBatches`, a result stored on another number of tokens
 * counts as missing too. Returns how many rules were evaluated.
 */
export async function evaluateMissing(
  gpu: GpuContext,
  m: TrainedRun,
  rules: readonly InferRules[],
  o: {
    batches: number;
    runsDir: string;
    label: string;
    progress: (line: string) => void;
    sameBatches?: boolean;
    /**
     * Also the routing diagnostics of a routed model under each rule (`diag/<rule>/…`, core/infer/record.ts),
     * and its routing stability against its previous checkpoint (under the dense rule: the top-1 expert is
     * the same under every rule), when it has one.
     */
    diagnostics?: boolean;
  },
): Promise<number> {
  const routed = routedSides(m.config), byName = new Map<string, InferRules>();
  const tokens = o.batches * m.config.train.batch * m.config.data.seq_len;
  const diagnostics = (o.diagnostics ?? false) && (routed.mlp || routed.attention);
  for (const r of rules) {
    const name = ruleName(r, routed), key = `infer/${name}/ppl`;
    const stored = m.has(key) && (!o.sameBatches || m.tokens(key) === tokens) &&
      (!diagnostics || m.has(`diag/${name}/entropy`));
    if (!stored && !byName.has(key)) byName.set(key, r);
  }
  const todo = [...byName.values()];
  if (todo.length === 0) return 0;
  o.progress(`${o.label}: evaluating ${todo.length} rules on ${o.batches} validation batches each`);
  const dataset = await loadDataset(m.config, undefined, {
    cacheDir: defaultCacheDir(o.runsDir),
    tokenizer: m.tokenizer,
  });
  const results = await evaluateRules(gpu, m.config, m.params, dataset, todo, {
    batches: o.batches,
    diagnostics,
  });
  await recordRuleResults(m.run, m.step, results);
  if (diagnostics) {
    const dense = results.find((r) => r.rule === "dense");
    const prev = dense ? await previousCheckpoint(m) : null;
    if (dense && prev) {
      o.progress(`${o.label}: routing stability against its checkpoint at step ${prev.step}`);
      const [other] = await evaluateRules(gpu, m.config, prev.params, dataset, [denseRules()], {
        batches: o.batches,
        diagnostics: true,
      });
      compareRouting(dense.routing!, other!.routing!);
    }
    await recordRoutingDiagnostics(m.run, m.step, results, prev?.step ?? null);
  }
  return todo.length;
}

/**
 * The parameters and step of the newest intact checkpoint of `m` older than the one it was opened at (what
 * routing stability compares with); null when it has none.
 */
export async function previousCheckpoint(
  m: TrainedRun,
): Promise<{ step: number; params: ReturnType<typeof paramValues> } | null> {
  const ck = await latestCheckpoint(m.run.path, () => {}, (file, entry) => {
    if (entry.step >= m.step) throw new CheckpointError(`not older than step ${m.step}`);
    checkCheckpointContent(file, m.config, { step: entry.step, purpose: "infer" });
  }, maxCheckpointBytes(m.config));
  return ck ? { step: ck.entry.step, params: paramValues(ck.file.tensors) } : null;
}

/** The prompt of the decoding speed comparison. */
export const DECODE_PROMPT = "The small ";

/**
 * Times greedy decoding of `tokens` tokens of run `m` under `rule` (named `name` in its metrics) on the
 * sparse engine and records `generate/<name>/…`, unless the run has that measurement at its checkpoint.
 */
export async function timeDecoding(
  gpu: GpuContext,
  m: TrainedRun,
  rule: InferRules,
  name: string,
  o: { tokens: number; label: string; progress: (line: string) => void },
): Promise<void> {
  if (m.has(`generate/${name}/tokens_per_s`)) return;
  const dec = await Decoder.create(gpu, m.config, m.params, rule);
  try {
    const r = await generate(dec, [...m.tokenizer.encode(DECODE_PROMPT)], {
      maxTokens: o.tokens,
      temperature: 0,
      topK: 0,
      seed: 1,
    });
    o.progress(`${o.label}: ${r.tokens.length} tokens at ${r.tokensPerS.toFixed(1)} tokens/s (${name})`);
    await recordGeneration(m.run, m.step, name, r);
  } finally {
    dec.destroy();
  }
}

/** Saves a report into the store (replacing one of its id) and as Markdown at `path` (its folder made). */
export async function saveReport(store: RunStore, record: ReportRecord, path: string): Promise<void> {
  await store.saveReport(record);
  await Deno.mkdir(dirOf(path), { recursive: true });
  await atomicWriteText(path, record.markdown);
}

/** A stable hash of a manifest, a scale and resolved model configs (10 hex digits). */
export function configsHash(
  manifest: string,
  scale: string,
  configs: readonly Readonly<Experiment>[],
): string {
  const h = createHash("sha256").update(manifest).update(`\0${scale}\0`);
  for (const c of configs) h.update(experimentToYaml(c));
  return h.digest("hex").slice(0, 10);
}

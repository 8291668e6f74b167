/**
 * `deno task run`: every point of a loaded experiment in turn, each its own run (in the run store, with
 * its directory for checkpoints) recording the sweep id and the point's parameters. A failed point is
 * recorded and the sweep goes on; points already finished in an earlier invocation of the same sweep are
 * skipped (resumable), and so are points that another live process is training (the same sweep started
 * twice at once: each point gets one run); a summary table ends it.
 *
 * Every point's data is loaded and checked first (points of identical data settings and seed share one
 * load): bad data (a DataError: empty, too short, not UTF-8, not a regular file …) stops the command before
 * any store, run record or run directory exists.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import type { LoadedExperiment, SweepPoint } from "../config/mod.ts";
import { experimentToYaml } from "../config/mod.ts";
import { type Dataset, loadDataset, type LoadDatasetOptions } from "../data/dataset.ts";
import { defaultCacheDir, type PrepareProgress } from "../data/prepare.ts";
import { DataError } from "../data/sources.ts";
import { atomicWriteText } from "../util/atomic_write.ts";
import { countParams } from "../plan/counts.ts";
import { cleanCheckpointTemps } from "../runs/checkpoints.ts";
import { openRunStore } from "../runs/open_store.ts";
import { gitCommit, newRunId, type PointTaken, RunDir } from "../runs/run_dir.ts";
import type { RunMeta } from "../runs/run_types.ts";
import { preferredRun, type RunStore } from "../runs/store.ts";
import { fmtBytes, fmtCount, table } from "../util/format.ts";
import { fmtBpb, fmtLoss, fmtPpl } from "../util/quantities.js";
import { GpuLimitError } from "../../gpu/errors.ts";
import type { TrainBackend } from "./backend.ts";
import { FailureNotRecordedError, recordRunFailure, trainRun } from "./train_run.ts";
import type { TrainResult } from "./trainer.ts";

/** Makes the backend of a config (WebGPU or CPU reference). */
export type BackendFactory = (config: Readonly<Experiment>) => Promise<TrainBackend>;

/** Options of {@linkcode runExperiment}. */
export interface RunExperimentOptions {
  runsDir: string;
  backendFactory: BackendFactory;
  stopAfter?: number;
  progress: (line: string) => void;
  signal?: AbortSignal;
  baseDir?: string; // data paths resolve against the config file's directory
  dashboardUrl?: string; // where a dashboard serving this runs directory is (a run's page is printed)
  profile?: boolean; // time every kernel of every step (see TrainOptions.profile)
  data?: ExperimentData; // the points' datasets, loaded already ({@linkcode loadExperimentData})
  onDataProgress?: (p: PrepareProgress) => void; // the progress bar of preparing token shards
}

/**
 * How the points' data load: token shards prepared (once) under `<runs-dir>/cache`, with the progress bar
 * and notices of `o`.
 */
export function dataLoadOptions(
  o: Pick<RunExperimentOptions, "runsDir" | "progress" | "onDataProgress" | "signal">,
): LoadDatasetOptions {
  return {
    cacheDir: defaultCacheDir(o.runsDir),
    progress: o.progress,
    onProgress: o.onDataProgress,
    signal: o.signal,
  };
}

/** The datasets of an experiment's points, by {@linkcode dataKey}. */
export type ExperimentData = Map<string, Dataset>;

/** Options of {@linkcode runPoint}: those of the experiment, and where the point's run belongs. */
export interface RunPointOptions extends RunExperimentOptions {
  sweepId: string | null;
  commit: string | null;
  runId?: string; // the run's id (a sweep worker's claim fixes it); default a new one
  abandon?: AbortSignal; // see TrainOptions.abandon: thrown on, with the run left as it is
}

/** Which loads of data are the same: the data settings, the seed (it draws the split) and where paths resolve. */
export function dataKey(c: Readonly<Experiment>, baseDir?: string): string {
  return JSON.stringify([c.data, c.seed, baseDir ?? null]);
}

/** The dataset of a config, checked (bad data is a DataError naming the source). */
export function loadPointData(
  c: Readonly<Experiment>,
  baseDir?: string,
  load: LoadDatasetOptions = {},
): Promise<Dataset> {
  return loadDataset(c, baseDir, load);
}

/**
 * Loads and checks the dataset of every point of `loaded` (once per distinct {@linkcode dataKey}), before
 * anything is written: the first bad one throws (DataError, naming the point where the sweep has several).
 */
export async function loadExperimentData(
  loaded: LoadedExperiment,
  baseDir?: string,
  load: LoadDatasetOptions = {},
): Promise<ExperimentData> {
  const data: ExperimentData = new Map();
  for (const point of loaded.points) {
    const key = dataKey(point.config, baseDir);
    if (data.has(key)) continue;
    try {
      data.set(key, await loadPointData(point.config, baseDir, load));
    } catch (e) {
      if (e instanceof DataError && loaded.points.length > 1) {
        throw new DataError(`Sweep point ${point.name}: ${e.message}`);
      }
      throw e;
    }
  }
  return data;
}

/** Outcome of one point. */
export interface PointOutcome {
  point: SweepPoint;
  runId: string;
  runDir: string;
  status: "finished" | "interrupted" | "failed" | "skipped" | "busy"; // busy: another process trains it
  params: number;
  final: TrainResult["final"] | null;
  error: string | null;
  profile?: TrainResult["profile"];
}

/**
 * Trains every point; never throws for a point's failure (it is recorded), only for setup errors. Bad data
 * throws before the store is opened.
 */
export async function runExperiment(
  loaded: LoadedExperiment,
  o: RunExperimentOptions,
): Promise<PointOutcome[]> {
  const data = o.data ?? await loadExperimentData(loaded, o.baseDir, dataLoadOptions(o));
  try {
    return await _runPoints(loaded, o, data);
  } finally {
    if (!o.data) closeExperimentData(data);
  }
}

/** Closes the shard files of every dataset of `data`. */
export function closeExperimentData(data: ExperimentData): void {
  for (const d of data.values()) d.close();
}

async function _runPoints(
  loaded: LoadedExperiment,
  o: RunExperimentOptions,
  data: ExperimentData,
): Promise<PointOutcome[]> {
  const store = await openRunStore(o.runsDir);
  const commit = await gitCommit();
  if (loaded.sweepId) {
    await store.createSweep({
      id: loaded.sweepId,
      name: loaded.config.name,
      config_yaml: experimentToYaml(loaded.config),
      created_at: new Date().toISOString(),
    });
  }
  const outcomes: PointOutcome[] = [];
  for (const point of loaded.points) {
    if (o.signal?.aborted) break;
    const label = `[${point.index + 1}/${loaded.points.length}] ${point.name}`;
    const prev = loaded.sweepId ? await findSweepPoint(store, loaded.sweepId, point.name) : null;
    if (prev?.status === "finished") {
      o.progress(`${label}: finished earlier in run ${prev.id}, skipped`);
      const final = await storedFinal(store, prev.id);
      outcomes.push(_outcome(point, prev.id, `${o.runsDir}/${prev.id}`, "skipped", final, null));
      continue;
    }
    if (loaded.points.length > 1) o.progress(label);
    const dataset = data.get(dataKey(point.config, o.baseDir));
    const out = await runPoint(point, { ...o, sweepId: loaded.sweepId, commit, dataset });
    if (out.status === "busy") o.progress(`${label}: ${out.error}, skipped`);
    if (out.status === "skipped") {
      o.progress(`${label}: finished meanwhile in run ${out.runId}, skipped`);
      out.final ??= await storedFinal(store, out.runId);
    }
    outcomes.push(out);
  }
  return outcomes;
}

/**
 * Trains one point as a new run; never throws for the point's failure (it is recorded in the run and the
 * outcome), only for setup errors (bad data, before anything is written) and `abandon`. A sweep point
 * trained here (no `runId`) is skipped when it has a finished run or another live process trains it
 * (status `skipped` or `busy`, nothing created).
 */
export async function runPoint(
  point: SweepPoint,
  o: RunPointOptions & { dataset?: Dataset },
): Promise<PointOutcome> {
  if (o.dataset) return await _runPoint(point, o, o.dataset);
  const dataset = await loadPointData(point.config, o.baseDir, dataLoadOptions(o));
  try {
    return await _runPoint(point, o, dataset);
  } finally {
    dataset.close(); // its shard files
  }
}

async function _runPoint(point: SweepPoint, o: RunPointOptions, dataset: Dataset): Promise<PointOutcome> {
  const c = point.config, yaml = experimentToYaml(c);
  const meta: RunMeta = {
    id: o.runId ?? newRunId(point.name),
    name: point.name,
    status: "running",
    seed: c.seed,
    git_commit: o.commit,
    adapter: null,
    started_at: new Date().toISOString(),
    ended_at: null,
    sweep_id: o.sweepId,
    sweep_params: point.params,
    error: null,
    step: 0,
  };
  // The device and the plan come first: a config past this device's limits (GpuLimitError: llvmpipe's loop
  // limit, a binding too large …) is refused here, before any run exists. Other setup failures (the device
  // refusing a buffer) are the run's: recorded below.
  const made = await o.backendFactory(c).then((b) => ({ backend: b, error: null }), (e) => {
    if (e instanceof GpuLimitError) throw e;
    return { backend: null, error: e as Error };
  });
  const backend: TrainBackend | null = made.backend;
  let created;
  try {
    created = o.sweepId !== null && o.runId === undefined
      ? await RunDir.createPoint(o.runsDir, meta, yaml)
      : await RunDir.create(o.runsDir, meta, yaml);
  } catch (e) {
    backend?.destroy();
    throw e;
  }
  if (!(created instanceof RunDir)) {
    backend?.destroy();
    return _taken(point, created, o.runsDir);
  }
  const run = created;
  await cleanCheckpointTemps(run.path);
  await atomicWriteText(`${run.path}/tokenizer.json`, dataset.tokenizer.toJSON());
  await run.event("start", `started ${point.name}`, 0, { params: point.params });
  o.progress(`run ${meta.id} → ${run.path}`);
  if (o.dashboardUrl) o.progress(`live: ${o.dashboardUrl}runs/${meta.id}`);
  try {
    o.progress(dataLine(dataset));
    if (!backend) throw made.error;
    await run.update({ adapter: backend.description });
    const memory = backend.memoryBytes === undefined
      ? ""
      : `; ${fmtBytes(backend.memoryBytes)} of device memory`;
    o.progress(`device: ${backend.description}; ${fmtCount(countParams(c).total)} parameters${memory}`);
    const r = await trainRun({ config: c, configYaml: yaml, dataset, backend, run }, o);
    return {
      ..._outcome(point, meta.id, run.path, r.status, r.final, null, countParams(c).total),
      profile: r.profile,
    };
  } catch (e) {
    if (o.abandon?.aborted) {
      await run.releaseLease().catch(() => {}); // the run is another process's now
      throw e;
    }
    let msg = `${(e as Error).name}: ${(e as Error).message}`;
    try {
      await recordRunFailure(run, msg);
    } catch (f) {
      if (!(f instanceof FailureNotRecordedError)) throw f;
      msg = f.message; // the real error first, then why the store could not record it
    }
    o.progress(`run ${meta.id} failed: ${msg}`);
    return _outcome(point, meta.id, run.path, "failed", null, msg, countParams(c).total);
  } finally {
    backend?.destroy();
  }
}

/**
 * The `data:` line of a run's start: tokens per split, the tokenizer and its bytes per token, and the unigram
 * baseline (the loss of predicting each token from its frequency alone, the number a model must get far
 * below).
 */
export function dataLine(d: Dataset): string {
  const tok = d.tokenizer, perToken = d.valBytes / d.valTokens;
  const what = tok.kind === "byte"
    ? "bytes"
    : `${tok.kind} ${fmtCount(tok.vocabSize)}, ${perToken.toFixed(2)} bytes/token`;
  return `data: ${fmtCount(d.trainTokens)} train / ${fmtCount(d.valTokens)} val tokens (${what}); ` +
    `unigram baseline ${d.unigramLoss().toFixed(4)} nats/token`;
}

/** The outcome of a point that another run has: finished (skipped) or trained by another process (busy). */
function _taken(point: SweepPoint, t: PointTaken, runsDir: string): PointOutcome {
  const dir = `${runsDir}/${t.run.id}`;
  if (t.kind === "finished") return _outcome(point, t.run.id, dir, "skipped", null, null);
  return _outcome(point, t.run.id, dir, "busy", null, `trained by ${t.holder} in run ${t.run.id}`);
}

function _outcome(
  point: SweepPoint,
  runId: string,
  runDir: string,
  status: PointOutcome["status"],
  final: PointOutcome["final"],
  error: string | null,
  params = countParams(point.config).total,
): PointOutcome {
  return { point, runId, runDir, status, params, final, error };
}

/** The most recent run of `pointName` in sweep `sweepId` (a finished one first), if any. */
export async function findSweepPoint(
  store: RunStore,
  sweepId: string,
  pointName: string,
): Promise<RunMeta | null> {
  return preferredRun((await store.listRuns({ sweepId })).filter((m) => m.name === pointName));
}

/**
 * The final metrics of a finished run as its store holds them (the last point of each key; NaN for a key it
 * has none of), for a sweep point skipped because it finished earlier; null when it has none of them.
 */
export async function storedFinal(store: RunStore, runId: string): Promise<TrainResult["final"] | null> {
  const keys = ["train/loss", "val/loss", "val/ppl", "val/bpb"] as const;
  const last = await store.lastMetrics(runId, keys);
  if (last.size === 0) return null;
  const v = (k: (typeof keys)[number]) => last.get(k)?.value ?? NaN;
  return {
    "train/loss": v("train/loss"),
    "val/loss": v("val/loss"),
    "val/ppl": v("val/ppl"),
    "val/bpb": v("val/bpb"),
  };
}

/**
 * The end-of-run summary table: point, params, status, final train and validation loss (for a point skipped
 * as finished earlier, its stored ones).
 */
export function summaryTable(outcomes: readonly PointOutcome[]): string {
  return table(
    ["point", "params", "status", "train loss", "val loss", "val ppl", "val bpb", "run"],
    outcomes.map((x) => [
      x.point.name,
      fmtCount(x.params),
      x.status,
      fmtLoss(x.final?.["train/loss"]),
      fmtLoss(x.final?.["val/loss"]),
      fmtPpl(x.final?.["val/ppl"]),
      fmtBpb(x.final?.["val/bpb"]),
      x.runId,
    ]),
    ["left", "right", "left", "right", "right", "right", "right", "left"],
  );
}

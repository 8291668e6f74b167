/**
 * `deno task run`: every point of a loaded experiment in turn, each its own run (in the run store, with
 * its directory for checkpoints) recording the sweep id and the point's parameters. A failed point is recorded and the sweep goes on; points already
 * finished in an earlier invocation of the same sweep are skipped (resumable); a summary table ends it.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import type { LoadedExperiment, SweepPoint } from "../config/mod.ts";
import { experimentToYaml } from "../config/mod.ts";
import { loadDataset, unigramLoss } from "../data/dataset.ts";
import { countParams, vocabSize } from "../plan/counts.ts";
import { cleanCheckpointTemps } from "../runs/checkpoints.ts";
import { openRunStore } from "../runs/open_store.ts";
import { gitCommit, newRunId, RunDir, type RunMeta } from "../runs/run_dir.ts";
import { preferredRun, type RunStore } from "../runs/store.ts";
import { fmtCount, table } from "../util/format.ts";
import type { TrainBackend } from "./backend.ts";
import { recordRunFailure, trainRun } from "./train_run.ts";
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
}

/** Options of {@linkcode runPoint}: those of the experiment, and where the point's run belongs. */
export interface RunPointOptions extends RunExperimentOptions {
  sweepId: string | null;
  commit: string | null;
  runId?: string; // the run's id (a sweep worker's claim fixes it); default a new one
  abandon?: AbortSignal; // see TrainOptions.abandon: thrown on, with the run left as it is
}

/** Outcome of one point. */
export interface PointOutcome {
  point: SweepPoint;
  runId: string;
  runDir: string;
  status: "finished" | "interrupted" | "failed" | "skipped";
  params: number;
  final: TrainResult["final"] | null;
  error: string | null;
  profile?: TrainResult["profile"];
}

/** Trains every point; never throws for a point's failure (it is recorded), only for setup errors. */
export async function runExperiment(
  loaded: LoadedExperiment,
  o: RunExperimentOptions,
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
    const prev = loaded.sweepId ? await findSweepPoint(store, loaded.sweepId, point.name) : null;
    if (prev?.status === "finished") {
      o.progress(
        `[${
          point.index + 1
        }/${loaded.points.length}] ${point.name}: finished earlier in run ${prev.id}, skipped`,
      );
      outcomes.push(_outcome(point, prev.id, `${o.runsDir}/${prev.id}`, "skipped", null, null));
      continue;
    }
    if (loaded.points.length > 1) o.progress(`[${point.index + 1}/${loaded.points.length}] ${point.name}`);
    outcomes.push(await runPoint(point, { ...o, sweepId: loaded.sweepId, commit }));
  }
  return outcomes;
}

/**
 * Trains one point as a new run; never throws for the point's failure (it is recorded in the run and the
 * outcome), only for setup errors and `abandon`.
 */
export async function runPoint(point: SweepPoint, o: RunPointOptions): Promise<PointOutcome> {
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
  const run = await RunDir.create(o.runsDir, meta, yaml);
  await cleanCheckpointTemps(run.path);
  await run.event("start", `started ${point.name}`, 0, { params: point.params });
  o.progress(`run ${meta.id} → ${run.path}`);
  if (o.dashboardUrl) o.progress(`live: ${o.dashboardUrl}runs/${meta.id}`);
  let backend: TrainBackend | null = null;
  try {
    const dataset = await loadDataset(c, o.baseDir);
    o.progress(
      `data: ${fmtCount(dataset.train.length)} train / ${
        fmtCount(dataset.val.length)
      } val tokens; unigram baseline ` +
        `${unigramLoss(dataset.train, dataset.val, vocabSize(c.data)).toFixed(4)} nats/token`,
    );
    backend = await o.backendFactory(c);
    await run.update({ adapter: backend.description });
    o.progress(`device: ${backend.description}; ${fmtCount(countParams(c).total)} parameters`);
    const r = await trainRun({ config: c, configYaml: yaml, dataset, backend, run }, o);
    return {
      ..._outcome(point, meta.id, run.path, r.status, r.final, null, countParams(c).total),
      profile: r.profile,
    };
  } catch (e) {
    if (o.abandon?.aborted) throw e; // the run is another process's now
    const msg = `${(e as Error).name}: ${(e as Error).message}`;
    await recordRunFailure(run, msg);
    o.progress(`run ${meta.id} failed: ${msg}`);
    return _outcome(point, meta.id, run.path, "failed", null, msg, countParams(c).total);
  } finally {
    backend?.destroy();
  }
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

/** The end-of-run summary table: point, params, status, final train and validation loss. */
export function summaryTable(outcomes: readonly PointOutcome[]): string {
  return table(
    ["point", "params", "status", "train loss", "val loss", "val ppl", "run"],
    outcomes.map((x) => [
      x.point.name,
      fmtCount(x.params),
      x.status,
      x.final ? x.final["train/loss"].toFixed(4) : "-",
      x.final ? x.final["val/loss"].toFixed(4) : "-",
      x.final ? x.final["val/ppl"].toFixed(2) : "-",
      x.runId,
    ]),
    ["left", "right", "left", "right", "right", "right", "left"],
  );
}

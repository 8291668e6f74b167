/**
 * Continuing a stored run from its newest complete checkpoint (`run --resume`, and a sweep worker taking
 * over a point whose worker died): the training state comes back from the checkpoint, a `resume` event is
 * recorded, what interrupted writes left in the run directory is removed, and the run trains to its end in
 * the same run record. The checkpoint was checked when the run was opened (core/runs/stored_run.ts).
 *
 * @module
 */
import { dirname } from "node:path";
import { type Dataset, loadDataset } from "../data/dataset.ts";
import { defaultCacheDir, type PrepareProgress } from "../data/prepare.ts";
import { cleanRunLeftovers, manifestPath } from "../runs/checkpoints.ts";
import { runTokenizer, type StoredRun } from "../runs/stored_run.ts";
import type { TrainBackend } from "./backend.ts";
import { recordRunFailure, trainRun } from "./train_run.ts";
import { tensorsToState, type TrainResult } from "./trainer.ts";

/** Options of {@linkcode continueRun}. */
export interface ContinueRunOptions {
  progress: (line: string) => void;
  signal?: AbortSignal; // interrupt: checkpoint, then stop
  abandon?: AbortSignal; // see TrainOptions.abandon: thrown on, with the run left as it is
  stopAfter?: number;
  profile?: boolean;
  baseDir?: string; // where relative data paths resolve
  cacheDir?: string; // token shards (default: the cache of the run's runs directory)
  onDataProgress?: (p: PrepareProgress) => void; // the progress bar of preparing token shards
}

/**
 * Trains `stored` on `backend` from its newest complete checkpoint (step 0 if it has none) and records the
 * outcome in the run. A failure marks the run failed, with an event, and is thrown.
 */
export async function continueRun(
  stored: StoredRun,
  backend: TrainBackend,
  o: ContinueRunOptions,
): Promise<TrainResult> {
  const { run, yaml, config: c, ck } = stored;
  await run.takeLease(); // one trainer per run: RunBusyError, naming the holder, before anything is written
  // The data first: bad data (a DataError) stops here with nothing of the run changed.
  let dataset: Dataset;
  try {
    dataset = await loadDataset(c, o.baseDir, {
      cacheDir: o.cacheDir ?? defaultCacheDir(dirname(run.path)),
      progress: o.progress,
      onProgress: o.onDataProgress,
      signal: o.signal,
      tokenizer: (await runTokenizer(stored)) ?? undefined,
    });
  } catch (e) {
    await run.releaseLease().catch(() => {});
    throw e;
  }
  try {
    let start = 0, skipped = 0;
    if (ck) {
      skipped = Number(ck.file.metadata.skipped_steps ?? 0);
      await backend.importState(tensorsToState(ck.file.tensors));
      start = ck.entry.step;
      o.progress(`Resuming ${run.meta.id} from step ${start}`);
      await run.event("resume", `resumed from step ${start}`, start);
    } else {
      o.progress(
        `Run ${run.meta.id} has no checkpoint yet (${manifestPath(run.path)} lists none): starting it from ` +
          "step 0; the points of its earlier steps, if any, are logged again",
      );
    }
    // Interrupted writes of an earlier process (temp files, checkpoints never listed) go before any new one.
    const left = await cleanRunLeftovers(run.path);
    if (left > 0) o.progress(`removed ${left} file${left === 1 ? "" : "s"} left by interrupted writes`);
    await run.update({ status: "running", ended_at: null, error: null });
    return await trainRun(
      { config: c, configYaml: yaml, dataset, backend, run, startStep: start, startSkipped: skipped },
      o,
    );
  } catch (e) {
    if (o.abandon?.aborted) throw e; // the run is another process's now
    // As for a new run (run_experiment.ts): the error's name and message; where the store cannot record
    // them, a FailureNotRecordedError carrying the real error first.
    await recordRunFailure(run, `${(e as Error).name}: ${(e as Error).message}`);
    throw e;
  } finally {
    dataset.close(); // its shard files
  }
}

/**
 * Continuing a stored run from its newest complete checkpoint (`run --resume`, and a sweep worker taking
 * over a point whose worker died): the training state comes back from the checkpoint, a `resume` event is
 * recorded, and the run trains to its end in the same run record.
 *
 * @module
 */
import { loadDataset } from "../data/dataset.ts";
import type { StoredRun } from "../runs/stored_run.ts";
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
  try {
    let start = 0, skipped = 0;
    if (ck) {
      skipped = Number(ck.file.metadata.skipped_steps ?? 0) || 0;
      await backend.importState(tensorsToState(ck.file.tensors));
      start = ck.entry.step;
      o.progress(`Resuming ${run.meta.id} from step ${start}`);
      await run.event("resume", `resumed from step ${start}`, start);
    } else o.progress(`No complete checkpoint in ${run.path}: starting ${run.meta.id} from step 0`);
    await run.update({ status: "running", ended_at: null, error: null });
    const dataset = await loadDataset(c, o.baseDir);
    return await trainRun(
      { config: c, configYaml: yaml, dataset, backend, run, startStep: start, startSkipped: skipped },
      o,
    );
  } catch (e) {
    if (o.abandon?.aborted) throw e; // the run is another process's now
    await recordRunFailure(run, (e as Error).message);
    throw e;
  }
}

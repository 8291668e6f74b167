/**
 * Training into a run's record, the same whether the run is new (`runPoint`, run_experiment.ts) or
 * continued from a checkpoint (`continueRun`, continue_run.ts): the end of training is recorded in the run
 * (status, end time, steps), and so is a failure (status, error, an `error` event) after the points logged
 * before it are written.
 *
 * @module
 */
import type { RunDir } from "../runs/run_dir.ts";
import { train, type TrainOptions, type TrainResult } from "./trainer.ts";

/** The options of {@linkcode train} that a caller passes through as its own caller gave them. */
export type PassedTrainOptions = Pick<
  TrainOptions,
  "stopAfter" | "progress" | "signal" | "abandon" | "profile"
>;

/**
 * Trains (`train()` with `what` and the options of `pass`) and records how the run ended: its status, end
 * time and steps.
 */
export async function trainRun(
  what: Omit<TrainOptions, keyof PassedTrainOptions>,
  pass: PassedTrainOptions,
): Promise<TrainResult> {
  const { run } = what;
  const r = await train({
    ...what,
    stopAfter: pass.stopAfter,
    progress: pass.progress,
    signal: pass.signal,
    abandon: pass.abandon,
    profile: pass.profile,
  });
  await run.update({ status: r.status, ended_at: new Date().toISOString(), step: r.steps });
  return r;
}

/**
 * The run failed and the store could not record it either (a full disk often takes both): the message is
 * the failure's own, then what the store said. The run stays `running` in the store until the next command
 * that opens it finds this process gone and marks it `interrupted`.
 */
export class FailureNotRecordedError extends Error {
  override name = "FailureNotRecordedError";
}

/**
 * Records that `run` failed with `message`: the points logged before the failure are written if the store
 * still takes them, then the run is marked failed and an `error` event names the step. Where the store
 * refuses that, throws {@linkcode FailureNotRecordedError} carrying `message` first, so the real error is
 * never replaced by the store's.
 */
export async function recordRunFailure(run: RunDir, message: string): Promise<void> {
  await run.flush().catch(() => {});
  try {
    await run.update({ status: "failed", ended_at: new Date().toISOString(), error: message });
    await run.event("error", message, run.meta.step);
  } catch (e) {
    throw new FailureNotRecordedError(
      `${message}\nThe run store could not record this failure of run ${run.meta.id} either: ` +
        `${(e as Error).message}`,
    );
  }
}

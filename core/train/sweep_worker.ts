/**
 * A sweep worker (`deno task worker`): claims points from the sweep queue of a Postgres store one at a
 * time and trains each as a run, on any number of machines at once. A point claimed for the first time
 * trains a new run (the claim fixed its id); a point claimed again, because its worker died or stopped,
 * continues that same run from its newest checkpoint, so each point ends with one run.
 *
 * While it trains, a timer heartbeats the claim (and the run) every `staleSeconds / 4` (at most 5 s). When
 * a heartbeat finds the point taken over by another worker, or none has reached the store for most of
 * `staleSeconds`, this worker has lost the point: it stops before its next step and writes nothing more.
 * Checkpoints are files under the runs directory, which must be the same shared directory on every worker.
 *
 * A worker holds the run of its point (the run's lease, core/runs/store.ts) while it trains it. Taking a
 * point over, it takes the run over with the same stale limit as the queue (`staleSeconds`, not the run's
 * default 600 s), waiting out the few seconds by which the dead worker's last heartbeat of the run may
 * trail its last one of the point; a run that another live process trains (say a `run --resume` by hand)
 * fails the point with RunBusyError's message, naming that process.
 *
 * @module
 */
import { parseExperimentText } from "../config/mod.ts";
import { checkpointRecordPath } from "../runs/checkpoints.ts";
import { openStoredRun } from "../runs/stored_run.ts";
import { gitCommit, newRunId, type RunDir } from "../runs/run_dir.ts";
import { RunBusyError } from "../runs/store_errors.ts";
import type { RunStore } from "../runs/store.ts";
import type { Claim, ClaimResult, QueuedPoint, SweepQueue } from "../runs/sweep_queue.ts";
import { continueRun } from "./continue_run.ts";
import { type BackendFactory, runPoint } from "./run_experiment.ts";
import type { TrainResult } from "./trainer.ts";

/** Default stale limit (seconds): a point whose worker sent no heartbeat for this long is taken over. */
export const DEFAULT_STALE_SECONDS = 60;
/** Default number of claims after which a point that never finished is given up. */
export const DEFAULT_MAX_ATTEMPTS = 3;

/** Options of {@linkcode runSweepWorker}. */
export interface SweepWorkerOptions {
  runsDir: string; // shared by every worker: checkpoints live here
  store: RunStore; // the store of `runsDir` (openRunStore), whose queue `queue` is
  queue: SweepQueue;
  workerId: string;
  sweepId?: string; // only this sweep's points
  maxPoints?: number; // stop after claiming this many
  staleSeconds: number; // a point with no heartbeat for this long is taken over
  maxAttempts: number; // a point claimed this many times is given up (failed)
  exitWhenEmpty: boolean; // stop when no point is queued or running (else wait for new ones)
  backendFactory: BackendFactory;
  progress: (line: string) => void;
  signal?: AbortSignal; // stop: the point in hand is checkpointed and handed back to the queue
}

/** What became of one claimed point. */
export interface WorkedPoint {
  point: QueuedPoint; // as claimed
  status: "finished" | "failed" | "released" | "lost" | "gave_up";
  error: string | null;
  final: TrainResult["final"] | null;
}

/** The runs directory is not the one the other workers share: the point is handed back, the worker stops. */
export class RunsDirNotSharedError extends Error {
  override name = "RunsDirNotSharedError";
}

/** Claims and trains points until the queue is done (`exitWhenEmpty`), `maxPoints`, or the signal. */
export async function runSweepWorker(o: SweepWorkerOptions): Promise<WorkedPoint[]> {
  const done: WorkedPoint[] = [];
  const periodMs = Math.min(5000, Math.max(250, (o.staleSeconds * 1000) / 4));
  const commit = await gitCommit();
  let waiting = -1;
  while (!o.signal?.aborted && (o.maxPoints === undefined || done.length < o.maxPoints)) {
    const r = await _claim(o, periodMs);
    if (r === null) break; // stopped while the store was unreachable
    if (r.kind === "none") {
      if (o.exitWhenEmpty && r.pending === 0) break;
      if (r.pending !== waiting) {
        o.progress(
          r.pending > 0
            ? `waiting: ${r.pending} point${r.pending === 1 ? "" : "s"} running on other workers ` +
              `(taken over if silent for ${o.staleSeconds} s)`
            : "waiting for points to be enqueued",
        );
      }
      waiting = r.pending;
      await _sleep(periodMs, o.signal);
      continue;
    }
    waiting = -1;
    if (r.kind === "gave_up") {
      done.push(await _giveUp(r.point, o));
      continue;
    }
    if (o.signal?.aborted) { // stopped while claiming: nothing trained, nothing to keep
      await o.queue.release(r.claim);
      break;
    }
    const w = await _work(r.claim, o, commit, periodMs);
    done.push(w);
    if (w.status === "released") break;
  }
  return done;
}

/**
 * One claim; while the store cannot be reached, tries again every `periodMs` for up to a minute (or the stale
 * limit, if longer) before giving up. Null if the signal stops it meanwhile.
 */
async function _claim(o: SweepWorkerOptions, periodMs: number): Promise<ClaimResult | null> {
  const t0 = performance.now(), patienceMs = Math.max(60, o.staleSeconds) * 1000;
  for (;;) {
    try {
      return await o.queue.claim({
        workerId: o.workerId,
        sweepId: o.sweepId,
        staleSeconds: o.staleSeconds,
        maxAttempts: o.maxAttempts,
        newRunId: (name) => newRunId(name), // as `run` makes them: <utc>-<point name>-<4 hex>
      });
    } catch (e) {
      if (performance.now() - t0 > patienceMs) throw e;
      o.progress(`cannot claim a point: ${(e as Error).message}; trying again`);
      await _sleep(periodMs, o.signal);
      if (o.signal?.aborted) return null;
    }
  }
}

async function _work(claim: Claim, o: SweepWorkerOptions, commit: string | null, periodMs: number) {
  const p = claim.point, label = `[${p.point_index + 1}/${claim.sweepPoints}] ${p.point_name}`;
  const from = claim.takenFrom
    ? `, taken over from worker ${claim.takenFrom.worker_id}, silent for ${
      Math.round(claim.takenFrom.silent_s)
    } s`
    : "";
  o.progress(`${label}: claimed from sweep ${p.sweep_id} (attempt ${p.attempts}${from}) → run ${p.run_id}`);
  const lost = new AbortController();
  const beat = _heartbeat(o.queue, claim, periodMs, o.staleSeconds * 1000, (why) => {
    o.progress(`${label}: lost the point: ${why}; stopping it without writing more`);
    lost.abort(new Error(`Lost point ${p.point_name}: ${why}`));
  });
  const out = (status: WorkedPoint["status"], error: string | null, final: WorkedPoint["final"] = null) => ({
    point: p,
    status,
    error,
    final,
  });
  let result: WorkedPoint;
  try {
    const r = await _train(claim, o, commit, lost.signal, (l) => o.progress(`${label} ${l}`));
    result = out(r.status === "interrupted" ? "released" : r.status, r.error, r.final);
  } catch (e) {
    if (lost.signal.aborted) return out("lost", (lost.signal.reason as Error).message);
    if (e instanceof RunsDirNotSharedError) {
      await o.queue.release(claim);
      throw e;
    }
    result = out("failed", `${(e as Error).name}: ${(e as Error).message}`);
  } finally {
    beat.stop();
  }
  const kept = result.status === "finished"
    ? await o.queue.finish(claim)
    : result.status === "released"
    ? await o.queue.release(claim)
    : await o.queue.fail(claim, result.error ?? "failed");
  if (!kept) {
    o.progress(`${label}: another worker took the point over meanwhile; it continues run ${p.run_id}`);
    return out("lost", "taken over by another worker");
  }
  const what = result.status === "released" ? "handed back to the queue" : result.status;
  o.progress(`${label}: ${what}${result.error ? `: ${result.error}` : ""} (run ${p.run_id})`);
  return result;
}

/** Trains the claimed point: a new run, or the point's run continued from its newest checkpoint. */
async function _train(
  claim: Claim,
  o: SweepWorkerOptions,
  commit: string | null,
  abandon: AbortSignal,
  progress: (line: string) => void,
): Promise<
  { status: "finished" | "interrupted" | "failed"; error: string | null; final: WorkedPoint["final"] }
> {
  const p = claim.point, runId = p.run_id!, baseDir = p.base_dir ?? undefined;
  if (!await o.store.getRun(runId)) {
    const config =
      parseExperimentText(p.config_yaml, `${p.point_name} (sweep ${p.sweep_id})`).points[0]!.config;
    const point = { index: p.point_index, name: p.point_name, params: p.params, config };
    const r = await runPoint(point, {
      runsDir: o.runsDir,
      backendFactory: o.backendFactory,
      progress,
      signal: o.signal,
      abandon,
      baseDir,
      sweepId: p.sweep_id,
      commit,
      runId,
    });
    // A claimed point trains its own run id (RunDir.create): never "busy".
    const status = r.status === "skipped" ? "finished" : r.status === "busy" ? "failed" : r.status;
    return { status, error: r.error, final: r.final };
  }
  await _checkShared(o, runId);
  const stored = await openStoredRun(
    o.runsDir,
    runId,
    (e, why) => progress(`skipping checkpoint ${e.step}: ${why}`),
  );
  await _takeRun(stored.run, o, abandon, progress);
  let backend;
  try {
    backend = await o.backendFactory(stored.config);
  } catch (e) {
    await stored.run.releaseLease().catch(() => {});
    throw e;
  }
  try {
    const r = await continueRun(stored, backend, { progress, signal: o.signal, abandon, baseDir });
    return { status: r.status, error: null, final: r.final };
  } catch (e) {
    if (abandon.aborted) {
      await stored.run.releaseLease().catch(() => {}); // the run is the new claim's
      throw e;
    }
    return { status: "failed", error: `${(e as Error).name}: ${(e as Error).message}`, final: null };
  } finally {
    backend.destroy();
  }
}

/**
 * Takes the run of a point claimed again: its lease, with the queue's stale limit. The dead worker's last
 * heartbeat of the run may trail its last one of the point by up to a heartbeat period, so while the run
 * looks held this tries again for up to `staleSeconds` (plus a margin) before giving up with RunBusyError.
 */
async function _takeRun(
  run: RunDir,
  o: SweepWorkerOptions,
  abandon: AbortSignal,
  progress: (line: string) => void,
): Promise<void> {
  const giveUpAt = performance.now() + (o.staleSeconds + 5) * 1000;
  for (;;) {
    try {
      const took = await run.takeLease({ staleSeconds: o.staleSeconds });
      if (took) progress(`took run ${run.meta.id} over from ${took}`);
      return;
    } catch (e) {
      if (!(e instanceof RunBusyError) || performance.now() > giveUpAt || abandon.aborted) throw e;
      await _sleep(Math.min(1000, (o.staleSeconds * 1000) / 4), abandon);
    }
  }
}

/** Throws {@linkcode RunsDirNotSharedError} where the run's files, which the store lists, are not here. */
async function _checkShared(o: SweepWorkerOptions, runId: string): Promise<void> {
  const newest = (await o.store.checkpoints(runId)).at(-1);
  // A record's path is the store's word: only its own run's ckpt/step-<step>.safetensors is looked at.
  if (newest) checkpointRecordPath(o.runsDir, newest);
  const must = [`${runId}/config.yaml`, ...(newest ? [newest.path] : [])];
  for (const rel of must) {
    const there = await Deno.stat(`${o.runsDir}/${rel}`).then(() => true, () => false);
    if (!there) {
      throw new RunsDirNotSharedError(
        `Run ${runId} has ${rel} in the store but not under --runs-dir ${o.runsDir}: every worker needs ` +
          "the same shared runs directory (checkpoints are files there); the point is back in the queue",
      );
    }
  }
}

/** A point whose attempts ran out: its run, if it has one, is marked failed too. */
async function _giveUp(p: QueuedPoint, o: SweepWorkerOptions): Promise<WorkedPoint> {
  o.progress(`[${p.point_index + 1}] ${p.point_name}: failed: ${p.error}`);
  if (p.run_id && await o.store.getRun(p.run_id)) {
    await o.store.updateRun(p.run_id, {
      status: "failed",
      ended_at: new Date().toISOString(),
      error: p.error,
    });
    await o.store.logEvent(p.run_id, { kind: "error", message: p.error ?? "gave up" });
  }
  return { point: p, status: "gave_up", error: p.error, final: null };
}

/**
 * Heartbeats `claim` every `periodMs`; calls `onLost` once if the point is no longer this worker's: a
 * heartbeat found it claimed by another, or none has been accepted for `staleMs − periodMs` (timed from when
 * the last accepted one was sent, so this worker gives up before any other may take the point over).
 */
function _heartbeat(
  queue: SweepQueue,
  claim: Claim,
  periodMs: number,
  staleMs: number,
  onLost: (why: string) => void,
): { stop: () => void } {
  let lastOk = performance.now(), busy = false, over = false, lastError = "";
  const lose = (why: string) => {
    if (over) return;
    over = true;
    clearInterval(timer);
    onLost(why);
  };
  const timer = setInterval(async () => {
    if (over) return;
    const silent = performance.now() - lastOk;
    if (silent >= staleMs - periodMs) {
      return lose(`no heartbeat reached the store for ${(silent / 1000).toFixed(1)} s${lastError}`);
    }
    if (busy) return; // the previous one is still on its way
    busy = true;
    const sent = performance.now();
    try {
      if (await queue.heartbeat(claim)) lastOk = sent;
      else lose("another worker claimed it after this one's heartbeat was late");
    } catch (e) {
      lastError = ` (${(e as Error).message})`;
    } finally {
      busy = false;
    }
  }, periodMs);
  return {
    stop: () => {
      over = true;
      clearInterval(timer);
    },
  };
}

function _sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

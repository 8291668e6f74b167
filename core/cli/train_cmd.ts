/**
 * `deno task run` without --dry-run: trains every point (core/train/run_experiment.ts), prints progress to
 * stderr and a summary table, and with --json ends with `{"run_id","run_dir","final":{…}}` (the last point's
 * run; a sweep also lists every point under "points"). `--resume <run-id>` continues a run.
 *
 * @module
 */
import { experimentToYaml, type LoadedExperiment, parseExperimentText } from "../config/mod.ts";
import { learningRate } from "../train/lr_schedule.ts";
import { fmtRate } from "../util/quantities.js";
import { assertTrainableHere, createBackend } from "../train/backends.ts";
import type { Experiment } from "../config/schema.ts";
import type { TrainBackend } from "../train/backend.ts";
import { GpuLimitError } from "../../gpu/errors.ts";
import {
  type BackendFactory,
  closeExperimentData,
  dataLoadOptions,
  loadExperimentData,
  type PointOutcome,
  runExperiment,
  summaryTable,
} from "../train/run_experiment.ts";
import { formatProfile, profileMfu, type StepProfile } from "../train/profile.ts";
import { fp32Peak } from "../../gpu/peak.ts";
import { continueRun } from "../train/continue_run.ts";
import { openStoredRun, type StoredRun } from "../runs/stored_run.ts";
import { resolveRunRef } from "../runs/resolve_run.ts";
import { positiveInt, positiveNumber } from "./args.ts";
import type { CliIo } from "./io.ts";
import { EXIT_OK, EXIT_RUN_FAILURE, UsageError } from "./errors.ts";
import { liveDashboard } from "./live_dashboard.ts";
import { dataProgress } from "./progress.ts";
import { abortOnStop } from "./stop_signals.ts";
import { openRunStore } from "../runs/open_store.ts";

/** Flags of `run` used here. */
export interface RunFlags {
  json?: boolean;
  "runs-dir"?: string;
  "stop-after"?: string;
  "dashboard-port"?: string;
  "no-dashboard"?: boolean;
  profile?: boolean;
  "peak-tflops"?: string; // the adapter's fp32 peak for --profile's MFU (default: gpu/peak.ts's table)
  set?: string[]; // with --resume: keys of RESUME_SET_KEYS only
}

/**
 * A profile with its MFU (docs/performance.md "MFU"): the adapter's fp32 peak from gpu/peak.ts's table, or
 * `--peak-tflops`; the MFU is null when the backend counts no model FLOPs.
 */
export function profileWithMfu(p: StepProfile, flags: RunFlags): StepProfile {
  const { peak, why } = fp32Peak(p.adapter ?? "", positiveNumber("peak-tflops", flags["peak-tflops"]));
  return { ...p, mfu: profileMfu(p, peak, why) };
}

/**
 * Aborted by SIGINT, SIGTERM or SIGHUP, or when the task runner that started this process is gone: the
 * trainer then finishes its step, writes a checkpoint and marks the run interrupted (core/cli/stop_signals.ts).
 */
export function abortOnSignal(io: CliIo): AbortController {
  return abortOnStop(io);
}

/** Trains every point of `loaded`. */
export async function trainRuns(loaded: LoadedExperiment, io: CliIo, flags: RunFlags): Promise<number> {
  const runsDir = flags["runs-dir"] ?? "runs";
  const ac = abortOnSignal(io);
  const dir = loaded.file.includes("/") ? loaded.file.slice(0, loaded.file.lastIndexOf("/")) : ".";
  const load = {
    runsDir,
    progress: (l: string) => io.err(l),
    onDataProgress: dataProgress(io),
    signal: ac.signal,
  };
  // Bad data stops the command (exit 2) before the dashboard opens, and so creates, the store.
  const data = await loadExperimentData(loaded, dir, dataLoadOptions(load));
  // So does a first point past this adapter's limits (its device and plan are made first).
  let first: _Premade;
  try {
    first = await _premade(loaded.points[0]!.config);
  } catch (e) {
    closeExperimentData(data);
    throw e;
  }
  const live = await liveDashboard(runsDir, flags, io);
  if (live && loaded.sweepId) io.err(`live sweep: ${live.url}sweeps/${loaded.sweepId}`);
  let outcomes: PointOutcome[];
  try {
    outcomes = await runExperiment(loaded, {
      ...load,
      backendFactory: first.factory,
      stopAfter: positiveInt("stop-after", flags["stop-after"]),
      baseDir: dir,
      profile: flags.profile,
      dashboardUrl: live?.url,
      data,
    });
  } finally {
    first.release();
    await live?.stop();
    closeExperimentData(data);
  }
  io.out(summaryTable(outcomes));
  for (const o of outcomes) {
    if (!o.profile) continue;
    o.profile = profileWithMfu(o.profile, flags);
    io.out(`\nProfile of ${o.point.name}:\n${formatProfile(o.profile)}`);
  }
  const store = (await openRunStore(runsDir)).url;
  io.out(
    `Runs are in ${store} (records and metrics) and ${runsDir}/<run-id>/ (config.yaml, ckpt/). ` +
      `Resume one with: deno task run --resume <run-id>`,
  );
  if (loaded.sweepId) {
    const dirFlag = runsDir === "runs" ? "" : ` --runs-dir ${runsDir}`;
    io.out(
      `Sweep ${loaded.sweepId}: its page is /sweeps/${loaded.sweepId} on the dashboard ` +
        `(deno task dashboard${dirFlag}, then http://127.0.0.1:8000/sweeps/${loaded.sweepId})`,
    );
  }
  if (flags.json) io.out(JSON.stringify(_json(outcomes)));
  return outcomes.some((o) => o.status === "failed") ? EXIT_RUN_FAILURE : EXIT_OK;
}

/** The first point's backend, made before anything is created, and the factory that hands it out once. */
interface _Premade {
  factory: BackendFactory;
  /** Frees the backend if no point took it (a sweep's first point finished earlier). */
  release(): void;
}

/**
 * Makes the backend of `first` (the experiment's first point) now: a config past the adapter's limits
 * (GpuLimitError) is refused before the dashboard or the store exist, so a refused run leaves no runs.db
 * behind. Any other failure is kept for the run to record, as runPoint does.
 */
async function _premade(first: Readonly<Experiment>): Promise<_Premade> {
  let pending: { backend: TrainBackend } | { error: unknown } | null = await createBackend(first).then(
    (backend) => ({ backend }),
    (error) => {
      if (error instanceof GpuLimitError) throw error;
      return { error };
    },
  );
  return {
    factory(c) {
      if (!pending || c !== first) return createBackend(c);
      const p = pending;
      pending = null;
      return "backend" in p ? Promise.resolve(p.backend) : Promise.reject(p.error);
    },
    release() {
      if (pending && "backend" in pending) pending.backend.destroy();
      pending = null;
    },
  };
}

function _json(outcomes: PointOutcome[]) {
  const last = outcomes.at(-1);
  const point = (o: PointOutcome) => ({
    run_id: o.runId,
    run_dir: o.runDir,
    status: o.status,
    final: o.final,
    ...(o.profile ? { profile: o.profile } : {}),
    error: o.error,
  });
  return { ...(last ? point(last) : {}), points: outcomes.map(point) };
}

/** `run --resume <id>`: rebuilds the run's backend from its config and continues from its newest checkpoint. */
export async function resumeRun(id: string, io: CliIo, flags: RunFlags): Promise<number> {
  // Refusals (no such run, a damaged or tampered checkpoint, a config over budget) come before anything is
  // allocated or written: exit 2, the run as it was. A run name means its newest run (core/runs/resolve_run.ts).
  const runId = await resolveRunRef(flags["runs-dir"] ?? "runs", id, { purpose: "any", notice: io.err });
  const stored = await openStoredRun(flags["runs-dir"] ?? "runs", runId, {
    purpose: "resume",
    onSkip: (e, why) => io.err(`skipping checkpoint step ${e.step}: ${why}; resuming from an older one`),
  }).catch((e) => {
    throw e instanceof Deno.errors.NotFound ? new UsageError(`run --resume: ${e.message}`) : e;
  });
  const done = stored.ck?.entry.step ?? 0;
  if (flags.set?.length) await _extendRun(stored, flags.set, done, io);
  const steps = stored.config.train.steps;
  if (done >= steps) {
    io.err(
      `Run ${stored.run.meta.id} has finished its ${steps} steps (checkpoint at step ${done}): nothing to ` +
        `resume; to train it longer: deno task run --resume ${stored.run.meta.id} --set train.steps=${
          2 * steps
        }`,
    );
    return EXIT_OK;
  }
  // An adapter without a feature the run needs (shader-f16 for hardware.precision f16): exit 2, untouched.
  await assertTrainableHere([stored.config]);
  // One trainer per run: a second one stops here (exit 2, naming the holder) before the device is opened.
  await stored.run.takeLease();
  const backend = await createBackend(stored.config).catch(async (e) => {
    await stored.run.releaseLease().catch(() => {}); // nothing ran: the run is free again
    throw e;
  });
  const live = await liveDashboard(flags["runs-dir"] ?? "runs", flags, io).catch(async (e) => {
    backend.destroy();
    await stored.run.releaseLease().catch(() => {});
    throw e;
  });
  const { run } = stored;
  if (live) io.err(`live: ${live.url}runs/${run.meta.id}`);
  try {
    const r = await continueRun(stored, backend, {
      progress: (l) => io.err(l),
      signal: abortOnSignal(io).signal,
      stopAfter: positiveInt("stop-after", flags["stop-after"]),
      profile: flags.profile,
      onDataProgress: dataProgress(io),
    });
    const profile = r.profile ? profileWithMfu(r.profile, flags) : null;
    if (profile) io.out(`Profile:\n${formatProfile(profile)}`);
    if (flags.json) {
      io.out(JSON.stringify({ run_id: run.meta.id, run_dir: run.path, final: r.final, profile }));
    }
    return EXIT_OK;
  } finally {
    await live?.stop();
    backend.destroy();
  }
}

/**
 * What `--set` may change in a resumed run: how long it trains and how often it evaluates, checkpoints and
 * logs — nothing its weights or optimizer state were trained with.
 */
export const RESUME_SET_KEYS = [
  "train.steps",
  "train.eval_every",
  "train.eval_batches",
  "train.checkpoint_every",
  "train.log_every",
] as const;

/**
 * Applies `sets` to a stored run about to be resumed (`stored` is changed in place): refuses (exit 2) a key
 * outside {@linkcode RESUME_SET_KEYS} or a `train.steps` not past the checkpoint, then writes the new config
 * (run directory and store) and says what changed, the learning rate's jump included: the schedule is
 * recomputed over the new number of steps.
 */
async function _extendRun(
  stored: StoredRun,
  sets: readonly string[],
  done: number,
  io: CliIo,
): Promise<void> {
  const id = stored.run.meta.id, allowed: readonly string[] = RESUME_SET_KEYS;
  for (const s of sets) {
    const key = s.slice(0, Math.max(0, s.indexOf("="))) || s;
    if (!allowed.includes(key)) {
      throw new UsageError(
        `--set ${key} does not go with --resume: a resumed run may change only ${allowed.join(", ")} ` +
          `(its weights and optimizer state were trained with the rest); to change ${key}, start a new run ` +
          `from an edited copy of ${stored.run.path}/config.yaml`,
      );
    }
  }
  const label = `${stored.run.path}/config.yaml`;
  const next = parseExperimentText(stored.yaml, label, { sets: [...sets] }).points[0]!.config;
  const old = stored.config;
  if (next.train.steps <= done) {
    throw new UsageError(
      `--set train.steps=${next.train.steps} does not extend run ${id}: its newest checkpoint is at step ${done}`,
    );
  }
  const changes = allowed.map((k) => {
    const f = k.slice("train.".length) as
      | "steps"
      | "eval_every"
      | "eval_batches"
      | "checkpoint_every"
      | "log_every";
    return [k, old.train[f], next.train[f]] as const;
  }).filter(([, a, b]) => a !== b);
  if (changes.length === 0) return;
  const yaml = experimentToYaml(next);
  await stored.run.replaceConfig(yaml);
  await stored.run.event(
    "info",
    `config changed on resume: ${changes.map(([k, a, b]) => `${k} ${a} → ${b}`).join(", ")}`,
    done,
  );
  io.err(
    `Run ${id}: ${
      changes.map(([k, a, b]) => `${k} ${a} → ${b}`).join(", ")
    } (config.yaml and the store updated)`,
  );
  if (next.train.steps !== old.train.steps && done > 0) {
    const a = learningRate(old.train, done), b = learningRate(next.train, done);
    io.err(
      `  the learning-rate schedule now spans ${next.train.steps} steps: lr at step ${done} ${fmtRate(a)} → ${
        fmtRate(b)
      }`,
    );
  }
  stored.yaml = yaml;
  stored.config = next;
}

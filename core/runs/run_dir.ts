/**
 * A run: its record, metrics and events in the run store of its runs directory (`<runs-dir>/runs.db`), its
 * files in `<runs-dir>/<id>/`: `config.yaml` (resolved, also in the store), `ckpt/` (checkpoints, also
 * listed in the store) and `metrics.jsonl`. Metric points are queued and written in one transaction per
 * flush, so a killed run keeps every point it flushed; after each commit they are also appended to
 * `metrics.jsonl`, a journal that `deno task store rebuild` reads back when the store is lost.
 *
 * The process that trains a run holds its lease (`RunStore.acquireRun`): a new run is held from its
 * creation, a stored one from {@linkcode RunDir.takeLease} (or its first {@linkcode RunDir.update}); a
 * heartbeat renews it at most every 10 s (at a flush), and a status other than `running` ends it. Readers
 * (`eval`, `generate`) open a run without taking it and never create a store.
 *
 * @module
 */
import { atomicWriteText } from "../util/atomic_write.ts";
import { resolve } from "node:path";
import {
  type CheckpointEntry,
  CheckpointError,
  isRunId,
  syncCheckpoints,
  writeCheckpoint,
} from "./checkpoints.ts";
import { journalLine, METRICS_JOURNAL } from "./journal.ts";
import { openRunStore } from "./open_store.ts";
import { RUN_STALE_SECONDS } from "./run_liveness.ts";
import type { SafeTensor } from "./safetensors.ts";
import type { EventKind, RunLease, RunRecord, RunStore } from "./store.ts";
import { RunBusyError } from "./store_errors.ts";
import type { MetricPoint, RunMeta } from "./run_types.ts";

/** A new run id: UTC time, the name and 4 random hex digits (`20261122-163501-dsmoe-tiny-9f2c`). */
export function newRunId(name: string, now = new Date()): string {
  const t = now.toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
  const safe = name.replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 60);
  return `${t}-${safe}-${crypto.randomUUID().slice(0, 4)}`;
}

/** The current git commit of the working directory, or null outside a repository. */
export async function gitCommit(): Promise<string | null> {
  try {
    const out = await new Deno.Command("git", {
      args: ["rev-parse", "HEAD"],
      stdout: "piped",
      stderr: "null",
    }).output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : null;
  } catch {
    return null;
  }
}

export { METRICS_JOURNAL };

/** What {@linkcode RunDir.createPoint} found instead of starting the point: its finished or busy run. */
export type PointTaken =
  | { kind: "finished"; run: RunRecord }
  | { kind: "busy"; run: RunRecord; holder: string };

/** A run directory: metadata, metrics and checkpoints of one run, through the run store. */
export class RunDir {
  readonly path: string; // <runs-dir>/<id>
  readonly store: RunStore;
  #meta: RunMeta;
  #pending: MetricPoint[] = [];
  #beat = 0; // performance.now() of the last heartbeat
  #lease: RunLease | null = null;

  private constructor(path: string, store: RunStore, meta: RunMeta) {
    this.path = path;
    this.store = store;
    this.#meta = meta;
  }

  /**
   * Records a new run in the store of `runsDir`, held by this process, then creates
   * `<runsDir>/<meta.id>/config.yaml` (a store that refuses the run leaves no directory behind).
   */
  static async create(runsDir: string, meta: RunMeta, configYaml: string): Promise<RunDir> {
    const store = await openRunStore(runsDir);
    await store.createRun(meta, configYaml);
    const lease = await store.acquireRun(meta.id);
    return await RunDir.#materialize(runsDir, store, meta, configYaml, lease);
  }

  /**
   * Starts sweep point (`meta.sweep_id`, `meta.name`) as the new run `meta`, held by this process, unless
   * the point has a finished run or one that another live process trains: then nothing is created and that
   * run is returned (one transaction: two processes starting one sweep at once make one run per point).
   */
  static async createPoint(runsDir: string, meta: RunMeta, configYaml: string): Promise<RunDir | PointTaken> {
    const store = await openRunStore(runsDir);
    const r = await store.createPointRun(meta, configYaml);
    if (r.kind !== "created") return r;
    return await RunDir.#materialize(runsDir, store, meta, configYaml, r.lease);
  }

  static async #materialize(
    runsDir: string,
    store: RunStore,
    meta: RunMeta,
    configYaml: string,
    lease: RunLease,
  ): Promise<RunDir> {
    const path = `${runsDir}/${meta.id}`;
    try {
      await Deno.mkdir(path, { recursive: true });
      await atomicWriteText(`${path}/config.yaml`, configYaml);
    } catch (e) {
      const error = `Cannot write ${path}/config.yaml: ${(e as Error).message}`;
      await store.updateRun(meta.id, { status: "failed", ended_at: new Date().toISOString(), error }, {
        lease,
      });
      throw new Error(error);
    }
    const run = new RunDir(path, store, meta);
    run.#lease = lease;
    run.#beat = performance.now();
    return run;
  }

  /**
   * Opens a stored run by id, or by its directory path (`runs/<id>`, a direct child of `runsDir`: see
   * {@linkcode runIdOf}), without taking it: nothing is written, and a missing store is StoreMissingError
   * (never created).
   */
  static async open(runsDir: string, id: string): Promise<RunDir> {
    const runId = await runIdOf(runsDir, id);
    const store = await openRunStore(runsDir, { create: false });
    const rec = await store.getRun(runId);
    if (!rec) throw new Deno.errors.NotFound(`No run "${runId}" in ${store.url}`);
    const { config_yaml: _c, host: _h, pid: _p, heartbeat_at: _b, ...meta } = rec;
    return new RunDir(`${runsDir}/${runId}`, store, meta);
  }

  /** Whether this process holds the run's lease (it may train the run). */
  get holdsLease(): boolean {
    return this.#lease !== null;
  }

  /**
   * Takes the run's lease for this process, unless it holds it already: RunBusyError naming the holder while
   * another live process trains the run (one whose process is gone, or silent for `staleSeconds`, default
   * 600, is taken over). Returns who was taken over and why, or null.
   */
  async takeLease(o: { staleSeconds?: number } = {}): Promise<string | null> {
    if (this.#lease) return null;
    this.#lease = await this.store.acquireRun(this.#meta.id, {
      staleSeconds: o.staleSeconds ?? RUN_STALE_SECONDS,
    });
    this.#beat = performance.now();
    return this.#lease.took_over;
  }

  /** Gives the run's lease up, if this process still holds it (a run left to another process). */
  async releaseLease(): Promise<void> {
    const lease = this.#lease;
    this.#lease = null;
    if (lease) await this.store.releaseRun(lease);
  }

  /** Current metadata (a copy). */
  get meta(): Readonly<RunMeta> {
    return { ...this.#meta };
  }

  /**
   * Updates the stored record, taking the run's lease first if this process does not hold it (RunBusyError
   * while another live process does, or after it took the run over). A status other than `running` ends
   * the lease.
   */
  async update(patch: Partial<RunMeta>): Promise<void> {
    if (!this.#lease) await this.takeLease();
    await this.store.updateRun(this.#meta.id, patch, { lease: this.#lease! });
    this.#meta = { ...this.#meta, ...patch };
    this.#beat = performance.now();
    if (patch.status !== undefined && patch.status !== "running") this.#lease = null;
  }

  /**
   * Replaces the run's resolved config (a resumed run trained longer, `run --resume <id> --set
   * train.steps=N`): `config.yaml` first, atomically — what a resume reads and `store rebuild` restores
   * from — then the store's copy, under the run's lease.
   */
  async replaceConfig(configYaml: string): Promise<void> {
    if (!this.#lease) await this.takeLease();
    await atomicWriteText(`${this.path}/config.yaml`, configYaml);
    await this.store.updateRun(this.#meta.id, { config_yaml: configYaml }, { lease: this.#lease! });
  }

  /** Queues a metric point; {@linkcode RunDir.flush} writes queued points. Non-finite values are not points. */
  log(point: MetricPoint): void {
    if (!Number.isFinite(point.value)) return; // non-finite steps are counted, not logged as points
    this.#pending.push(point);
  }

  /**
   * Writes queued points in one transaction (kept queued if that fails), then appends them to the run's
   * `metrics.jsonl`; renews the lease (at most every 10 s) while this process holds it: RunBusyError once
   * another process has taken the run over.
   */
  async flush(): Promise<void> {
    if (this.#pending.length > 0) {
      const points = this.#pending;
      await this.store.logMetrics(this.#meta.id, points);
      this.#pending = this.#pending.slice(points.length);
      await this.#journal(points);
    }
    if (this.#lease && performance.now() - this.#beat > 10_000) {
      this.#beat = performance.now();
      if (!await this.store.renewRun(this.#lease)) {
        const now = await this.store.getRun(this.#meta.id);
        throw new RunBusyError(
          `Run ${this.#meta.id} was taken over by another process (now pid ${now?.pid} on host ${now?.host}): ` +
            "this process writes no more to it",
        );
      }
    }
  }

  /** Appends `points` to `metrics.jsonl` (after the store took them: the journal never holds more). */
  async #journal(points: readonly MetricPoint[]): Promise<void> {
    const file = `${this.path}/${METRICS_JOURNAL}`;
    const text = points.map(journalLine).join("\n") + "\n";
    // Never written through a link (or into a FIFO or device) that someone put in the run directory.
    const info = await Deno.lstat(file).catch((e) => {
      if (e instanceof Deno.errors.NotFound) return null;
      throw e;
    });
    if (info && !info.isFile) {
      throw new Error(`Cannot append to ${file}: it is not a regular file (a link, a FIFO or a device)`);
    }
    try {
      await Deno.writeTextFile(file, text, { append: true });
    } catch (e) {
      throw new Error(`Cannot append to ${file}: ${(e as Error).message}`);
    }
  }

  /** Records an event of the run (skipped step, checkpoint, error …). */
  event(
    kind: EventKind,
    message: string,
    step: number | null = null,
    data?: Record<string, unknown>,
  ): Promise<void> {
    return this.store.logEvent(this.#meta.id, { kind, message, step, data });
  }

  /** Seconds since the run started (the time axis of its metric points). */
  secondsSinceStart(): number {
    const t0 = Date.parse(this.#meta.started_at);
    return Number.isFinite(t0) ? Math.max(0, (Date.now() - t0) / 1000) : 0;
  }

  /** Every metric point recorded so far, in commit order. */
  async readMetrics(): Promise<MetricPoint[]> {
    return (await this.store.metrics(this.#meta.id)).map(({ seq: _s, ...p }) => p);
  }

  /** Writes a checkpoint (atomically, into the manifest) and makes the store list the same files. */
  async checkpoint(
    step: number,
    tensors: ReadonlyMap<string, SafeTensor>,
    metadata: Record<string, string>,
    keep: number,
  ): Promise<CheckpointEntry> {
    const entry = await writeCheckpoint(this.path, step, tensors, metadata, { keep });
    await syncCheckpoints(this.store, this.#meta.id, this.path);
    await this.event("checkpoint", `checkpoint step ${step} (${entry.bytes} bytes)`, step);
    return entry;
  }
}

/**
 * The run id that `arg` names: a plain id, or a path `<runsDir>/<id>` whose parent is the runs directory.
 * Anything else (another directory, `..`, separators in the id) is refused with CheckpointError.
 */
export async function runIdOf(runsDir: string, arg: string): Promise<string> {
  if (!arg.includes("/")) {
    if (!isRunId(arg)) throw new CheckpointError(`${JSON.stringify(arg)} is not a run id`);
    return arg;
  }
  const trimmed = arg.replace(/\/+$/, ""), cut = trimmed.lastIndexOf("/");
  const parent = trimmed.slice(0, cut) || "/", id = trimmed.slice(cut + 1);
  if (!isRunId(id) || !await _sameDir(parent, runsDir)) {
    throw new CheckpointError(
      `${arg} is not a run directory of the runs directory ${runsDir}: pass the run id, or its runs ` +
        `directory with --runs-dir`,
    );
  }
  return id;
}

async function _sameDir(a: string, b: string): Promise<boolean> {
  const real = (p: string) => Deno.realPath(p).catch(() => p);
  return resolve(await real(a)) === resolve(await real(b));
}

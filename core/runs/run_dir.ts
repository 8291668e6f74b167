/**
 * A run: its record, metrics and events in the run store of its runs directory (`<runs-dir>/runs.db`), its
 * files in `<runs-dir>/<id>/`: `config.yaml` (resolved, also in the store) and `ckpt/` (checkpoints, also
 * listed in the store). Metric points are queued and written in one transaction per flush, so a killed run
 * keeps every point it flushed.
 *
 * @module
 */
import { atomicWriteText } from "./atomic_write.ts";
import { type CheckpointEntry, syncCheckpoints, writeCheckpoint } from "./checkpoints.ts";
import { openRunStore } from "./open_store.ts";
import type { SafeTensor } from "./safetensors.ts";
import type { EventKind, RunStore } from "./store.ts";

/** Lifecycle of a run. */
export type RunStatus = "running" | "finished" | "failed" | "interrupted";

/** A run's record (also `run.json` of run folders written before the store). */
export interface RunMeta {
  id: string;
  name: string;
  status: RunStatus;
  seed: number;
  git_commit: string | null;
  adapter: string | null;
  started_at: string;
  ended_at: string | null;
  sweep_id: string | null;
  sweep_params: Record<string, unknown>;
  error: string | null;
  step: number; // last completed optimizer step
}

/** One metric point. */
export interface MetricPoint {
  key: string;
  step: number;
  tokens: number;
  time: number; // seconds since the run started
  value: number;
}

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

/** A run directory: metadata, metrics and checkpoints of one run, through the run store. */
export class RunDir {
  readonly path: string; // <runs-dir>/<id>
  readonly store: RunStore;
  #meta: RunMeta;
  #pending: MetricPoint[] = [];
  #beat = 0; // performance.now() of the last heartbeat

  private constructor(path: string, store: RunStore, meta: RunMeta) {
    this.path = path;
    this.store = store;
    this.#meta = meta;
  }

  /** Records a new run in the store of `runsDir` and creates `<runsDir>/<meta.id>/config.yaml`. */
  static async create(runsDir: string, meta: RunMeta, configYaml: string): Promise<RunDir> {
    const path = `${runsDir}/${meta.id}`;
    await Deno.mkdir(path, { recursive: true });
    await atomicWriteText(`${path}/config.yaml`, configYaml);
    const store = await openRunStore(runsDir);
    await store.createRun(meta, configYaml);
    const run = new RunDir(path, store, meta);
    run.#beat = performance.now();
    return run;
  }

  /** Opens a stored run by id, or by its directory path (`runs/<id>`). */
  static async open(runsDir: string, id: string): Promise<RunDir> {
    if (id.includes("/")) {
      const trimmed = id.replace(/\/+$/, "");
      const cut = trimmed.lastIndexOf("/");
      return RunDir.open(trimmed.slice(0, cut) || "/", trimmed.slice(cut + 1));
    }
    const store = await openRunStore(runsDir);
    const rec = await store.getRun(id);
    if (!rec) throw new Deno.errors.NotFound(`No run "${id}" in ${store.url}`);
    const { config_yaml: _c, host: _h, pid: _p, heartbeat_at: _b, ...meta } = rec;
    return new RunDir(`${runsDir}/${id}`, store, meta);
  }

  /** Current metadata (a copy). */
  get meta(): Readonly<RunMeta> {
    return { ...this.#meta };
  }

  /** Updates the stored record (and claims the run for this process). */
  async update(patch: Partial<RunMeta>): Promise<void> {
    await this.store.updateRun(this.#meta.id, patch);
    this.#meta = { ...this.#meta, ...patch };
    this.#beat = performance.now();
  }

  /** Queues a metric point; {@linkcode RunDir.flush} writes queued points. Non-finite values are not points. */
  log(point: MetricPoint): void {
    if (!Number.isFinite(point.value)) return; // non-finite steps are counted, not logged as points
    this.#pending.push(point);
  }

  /** Writes queued points in one transaction (kept queued if that fails) and keeps the heartbeat fresh. */
  async flush(): Promise<void> {
    if (this.#pending.length > 0) {
      const points = this.#pending;
      await this.store.logMetrics(this.#meta.id, points);
      this.#pending = this.#pending.slice(points.length);
    }
    if (performance.now() - this.#beat > 10_000) {
      this.#beat = performance.now();
      await this.store.heartbeat(this.#meta.id);
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

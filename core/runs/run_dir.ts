/**
 * A run on disk (until the SQLite run store lands): `runs/<id>/config.yaml` (resolved), `run.json`
 * (id, name, status, seed, git commit, adapter, times, sweep), `metrics.jsonl` (one
 * `{"key","step","tokens","time","value"}` a line) and `ckpt/`. Metadata is rewritten atomically; metrics
 * are appended in batches, and a reader ignores a torn last line, so a killed run keeps what it logged.
 *
 * @module
 */
import { atomicWriteText } from "./atomic_write.ts";

/** Lifecycle of a run. */
export type RunStatus = "running" | "finished" | "failed" | "interrupted";

/** `run.json`. */
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

/** A run directory: metadata, metrics and checkpoints of one run. */
export class RunDir {
  readonly path: string;
  #meta: RunMeta;
  #pending: string[] = [];

  private constructor(path: string, meta: RunMeta) {
    this.path = path;
    this.#meta = meta;
  }

  /** Creates `<runsDir>/<meta.id>/` with config.yaml and run.json. */
  static async create(runsDir: string, meta: RunMeta, configYaml: string): Promise<RunDir> {
    const path = `${runsDir}/${meta.id}`;
    await Deno.mkdir(path, { recursive: true });
    await atomicWriteText(`${path}/config.yaml`, configYaml);
    const run = new RunDir(path, meta);
    await run.#writeMeta();
    return run;
  }

  /** Opens an existing run directory (for resume or eval). */
  static async open(runsDir: string, id: string): Promise<RunDir> {
    const path = id.includes("/") ? id : `${runsDir}/${id}`;
    let text: string;
    try {
      text = await Deno.readTextFile(`${path}/run.json`);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        throw new Deno.errors.NotFound(`No run "${id}" in ${runsDir} (no run.json)`);
      }
      throw e;
    }
    return new RunDir(path, JSON.parse(text) as RunMeta);
  }

  /** Current metadata (a copy). */
  get meta(): Readonly<RunMeta> {
    return { ...this.#meta };
  }

  /** Updates and atomically rewrites run.json. */
  async update(patch: Partial<RunMeta>): Promise<void> {
    this.#meta = { ...this.#meta, ...patch };
    await this.#writeMeta();
  }

  /** Queues a metric point; {@linkcode RunDir.flush} appends queued points. */
  log(point: MetricPoint): void {
    if (!Number.isFinite(point.value)) return; // non-finite steps are counted, not logged as points
    this.#pending.push(JSON.stringify(point));
  }

  /** Appends queued metric points to metrics.jsonl. */
  async flush(): Promise<void> {
    if (this.#pending.length === 0) return;
    const text = this.#pending.join("\n") + "\n";
    this.#pending = [];
    await Deno.writeTextFile(`${this.path}/metrics.jsonl`, text, { append: true });
  }

  /** Every metric point recorded so far (a torn last line from a killed writer is skipped). */
  async readMetrics(): Promise<MetricPoint[]> {
    let text: string;
    try {
      text = await Deno.readTextFile(`${this.path}/metrics.jsonl`);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return [];
      throw e;
    }
    const out: MetricPoint[] = [];
    for (const line of text.split("\n")) {
      if (!line) continue;
      try {
        out.push(JSON.parse(line) as MetricPoint);
      } catch {
        // A torn final line of an interrupted append.
      }
    }
    return out;
  }

  async #writeMeta(): Promise<void> {
    await atomicWriteText(`${this.path}/run.json`, JSON.stringify(this.#meta, null, 2) + "\n");
  }
}

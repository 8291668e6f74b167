/**
 * The run store of a runs directory, opened once per process (one writer connection each): on first open it
 * imports run folders written before the store existed (`run.json` + `metrics.jsonl`), and marks runs whose
 * writer died (SIGKILL, power loss) as interrupted.
 *
 * Which store: `<runs-dir>/runs.db` (SQLite) unless {@linkcode selectRunStore} chose another for the runs
 * directory, such as a Postgres database (`--store postgres://…`). Checkpoint files stay under the runs
 * directory either way.
 *
 * @module
 */
import { resolve } from "node:path";
import { syncCheckpoints } from "./checkpoints.ts";
import { openPostgresStore } from "./postgres_store.ts";
import { isPostgresUrl, parsePostgresUrl } from "./postgres_url.ts";
import type { MetricPoint, RunMeta } from "./run_dir.ts";
import { openSqliteStore, storePath } from "./sqlite_store.ts";
import type { RunStore } from "./store.ts";

/** Where a run store is: a SQLite file (null: `<runs-dir>/runs.db`) or a Postgres URL. */
export type StoreLocation =
  | { kind: "sqlite"; path: string | null }
  | { kind: "postgres"; url: string };

/**
 * Reads a store location: `postgres://…` or `postgresql://…` is a Postgres database, `sqlite:PATH` or a
 * plain path a SQLite file, "" the default. Throws a TypeError (that never repeats a password) for other
 * URL schemes and malformed Postgres URLs.
 *
 * @example
 * ```ts
 * import { parseStoreLocation } from "./open_store.ts";
 * console.log(parseStoreLocation("postgres://me@db.lab/runs").kind); // "postgres"
 * console.log(parseStoreLocation("").kind); // "sqlite"
 * ```
 */
export function parseStoreLocation(text: string): StoreLocation {
  if (text === "") return { kind: "sqlite", path: null };
  if (isPostgresUrl(text)) {
    parsePostgresUrl(text);
    return { kind: "postgres", url: text };
  }
  if (text.startsWith("sqlite:")) {
    const path = text.slice("sqlite:".length);
    if (path === "") {
      throw new TypeError('Invalid run store "sqlite:": name the file, as sqlite:runs/runs.db');
    }
    return { kind: "sqlite", path };
  }
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(text);
  if (scheme) {
    throw new TypeError(
      `Unsupported run store "${
        scheme[1]
      }://…": expected postgres://… (or postgresql://…), or a SQLite file path`,
    );
  }
  return { kind: "sqlite", path: text };
}

const _selected = new Map<string, StoreLocation>(); // absolute runs dir → its store, where not the default
const _open = new Map<string, Promise<RunStore>>();
const _ready = new Map<string, RunStore>(); // the opened ones, to close without waiting

/**
 * Chooses the store that {@linkcode openRunStore} opens for `runsDir` in this process (a location text as
 * {@linkcode parseStoreLocation} reads it); undefined or "" goes back to `<runs-dir>/runs.db`.
 *
 * @example
 * ```ts
 * import { closeRunStores, openRunStore, selectRunStore } from "./open_store.ts";
 * const dir = await Deno.makeTempDir();
 * selectRunStore(dir, `sqlite:${dir}/other.db`);
 * console.log((await openRunStore(dir)).url.endsWith("/other.db")); // true
 * await closeRunStores();
 * selectRunStore(dir, undefined);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function selectRunStore(runsDir: string, location: string | undefined): void {
  const loc = parseStoreLocation(location ?? "");
  if (loc.kind === "sqlite" && loc.path === null) _selected.delete(resolve(runsDir));
  else _selected.set(resolve(runsDir), loc);
}

/** Where {@linkcode openRunStore} finds the store of `runsDir`, as {@linkcode selectRunStore} chose it. */
export function selectedRunStore(runsDir: string): StoreLocation {
  return _selected.get(resolve(runsDir)) ?? { kind: "sqlite", path: null };
}

/**
 * The store of `runsDir` (created if missing), shared by every caller in this process.
 *
 * @example
 * ```ts
 * const dir = await Deno.makeTempDir();
 * const store = await openRunStore(dir);
 * console.log((await store.listRuns()).length); // 0
 * closeRunStores();
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function openRunStore(runsDir: string): Promise<RunStore> {
  await Deno.mkdir(runsDir, { recursive: true });
  const loc = selectedRunStore(runsDir);
  const key = `${await Deno.realPath(runsDir)}\n${loc.kind === "sqlite" ? loc.path ?? "" : loc.url}`;
  let opening = _open.get(key);
  if (!opening) {
    opening = _openFor(runsDir, loc).then((store) => {
      if (_open.get(key) === opening) _ready.set(key, store);
      else store.close(); // closed by closeRunStores() while opening
      return store;
    });
    _open.set(key, opening);
    opening.catch(() => _open.get(key) === opening && _open.delete(key));
  }
  return await opening;
}

/** Opens a store at a location text, on its own (not shared, no run folders imported); the caller closes it. */
export async function openStoreAt(location: string): Promise<RunStore> {
  const loc = parseStoreLocation(location);
  if (loc.kind === "postgres") return await openPostgresStore(loc.url);
  if (loc.path === null) throw new TypeError("openStoreAt() needs a store location, not the default");
  return openSqliteStore(loc.path);
}

async function _openFor(runsDir: string, loc: StoreLocation): Promise<RunStore> {
  const store = loc.kind === "postgres"
    ? await openPostgresStore(loc.url)
    : openSqliteStore(loc.path ?? storePath(runsDir));
  try {
    await importRunFolders(store, runsDir);
    await store.markInterrupted();
  } catch (e) {
    await store.close();
    throw e;
  }
  return store;
}

/**
 * Closes every store this process opened (tests; a process exiting closes them anyway). SQLite stores are
 * closed at once; the promise resolves when network stores have closed their connections too.
 */
export function closeRunStores(): Promise<void> {
  const pending = [..._open.entries()].filter(([k]) => !_ready.has(k)).map(([, p]) => p);
  const closing: unknown[] = [..._ready.values()].map((s) => s.close());
  _open.clear();
  _ready.clear();
  return Promise.all([
    ...closing,
    ...pending.map((p) => p.then((s) => s.close(), () => {})),
  ]).then(() => {});
}

/**
 * Imports each `<runsDir>/<id>/run.json` run folder not yet in the store: its record, config.yaml, metrics
 * (a torn last line of a killed writer skipped) and checkpoints. The files are left as they are. Returns the
 * ids imported.
 */
export async function importRunFolders(store: RunStore, runsDir: string): Promise<string[]> {
  const imported: string[] = [];
  for await (const e of Deno.readDir(runsDir)) {
    if (!e.isDirectory) continue;
    const dir = `${runsDir}/${e.name}`;
    let meta: RunMeta;
    try {
      meta = JSON.parse(await Deno.readTextFile(`${dir}/run.json`)) as RunMeta;
    } catch {
      continue; // not an old run folder
    }
    if (meta.id !== e.name || await store.getRun(meta.id)) continue;
    const yaml = await Deno.readTextFile(`${dir}/config.yaml`).catch(() => "");
    // A run that was running when its writer stopped did not finish.
    const status = meta.status === "running" ? "interrupted" : meta.status;
    if (!await store.importRun({ ...meta, status }, yaml)) continue;
    const points = await _readJsonl(`${dir}/metrics.jsonl`);
    for (let i = 0; i < points.length; i += 5000) await store.logMetrics(meta.id, points.slice(i, i + 5000));
    await syncCheckpoints(store, meta.id, dir);
    await store.logEvent(meta.id, { kind: "info", message: `imported from ${dir}/run.json` });
    imported.push(meta.id);
  }
  return imported;
}

async function _readJsonl(path: string): Promise<MetricPoint[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    return [];
  }
  const out: MetricPoint[] = [];
  for (const line of text.split("\n")) {
    if (!line) continue;
    try {
      const p = JSON.parse(line) as MetricPoint;
      if ([p.step, p.tokens, p.time, p.value].every(Number.isFinite)) out.push(p);
    } catch {
      // A torn final line of an interrupted append.
    }
  }
  return out;
}

/**
 * The run store of a runs directory, opened once per process (one writer connection each): on first open it
 * imports run folders written before the store existed (`run.json` + `metrics.jsonl`), and marks runs whose
 * writer died (SIGKILL, power loss) as interrupted.
 *
 * Commands that train create the runs directory and the store where missing, and refuse a store they cannot
 * write (read-only, damaged). Commands that read (`eval`, `generate`, `dashboard`, `run --resume`) pass
 * `create: false`: they create nothing (a missing store is StoreMissingError), and open a write-protected or
 * damaged store for reading only, without importing or marking anything.
 *
 * Which store: `<runs-dir>/runs.db` (SQLite) unless {@linkcode selectRunStore} chose another for the runs
 * directory, such as a Postgres database (`--store postgres://…`). Checkpoint files stay under the runs
 * directory either way.
 *
 * @module
 */
import { dirname, resolve } from "node:path";
import { syncCheckpoints } from "./checkpoints.ts";
import { METRICS_JOURNAL, readMetricJournal } from "./journal.ts";
import { describeFileKind } from "../util/fs.ts";
import { StoreDamagedError, StoreMissingError, StoreReadOnlyError } from "./store_errors.ts";
import { openPostgresStore } from "./postgres_store.ts";
import { isPostgresUrl, parsePostgresUrl } from "./postgres_url.ts";
import type { RunMeta } from "./run_types.ts";
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

/** Options of {@linkcode openRunStore}. */
export interface OpenRunStoreOptions {
  /**
   * True (the default, for commands that train): create the runs directory and the store where missing, and
   * refuse a store that takes no writes (StoreReadOnlyError, StoreDamagedError). False (commands that read or
   * continue a run): create nothing; a missing store is StoreMissingError; a write-protected or damaged store
   * is opened for reading only (its `access` says so, its writes throw).
   */
  create?: boolean;
}

/**
 * The store of `runsDir`, shared by every caller in this process. A runs directory that is not a directory
 * is StoreMissingError.
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
export async function openRunStore(runsDir: string, o: OpenRunStoreOptions = {}): Promise<RunStore> {
  const create = o.create ?? true;
  const loc = selectedRunStore(runsDir);
  const exists = await _checkRunsDir(runsDir, create, loc);
  const dir = exists ? await Deno.realPath(runsDir) : resolve(runsDir);
  const key = `${dir}\n${loc.kind === "sqlite" ? loc.path ?? "" : loc.url}`;
  let opening = _open.get(key);
  if (!opening) {
    opening = _openFor(runsDir, loc, create).then((store) => {
      if (_open.get(key) === opening) _ready.set(key, store);
      else store.close(); // closed by closeRunStores() while opening
      return store;
    });
    _open.set(key, opening);
    opening.catch(() => _open.get(key) === opening && _open.delete(key));
  }
  const store = await opening;
  const a = store.access;
  if (create && a.mode === "damaged") throw new StoreDamagedError(a.reason);
  if (create && a.mode === "read-only") throw new StoreReadOnlyError(a.reason);
  return store;
}

/**
 * Checks the runs directory: not a directory is StoreMissingError; missing, it is created (`create`) or,
 * where the store would be in it, StoreMissingError. Returns whether it exists now.
 */
async function _checkRunsDir(runsDir: string, create: boolean, loc: StoreLocation): Promise<boolean> {
  let info: Deno.FileInfo | null = null;
  try {
    info = await Deno.stat(runsDir);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      throw new StoreMissingError(`Cannot use runs directory ${runsDir}: ${(e as Error).message}`);
    }
  }
  if (info && !info.isDirectory) {
    throw new StoreMissingError(
      `Runs directory ${runsDir} is ${describeFileKind(info)}, not a directory: name another with --runs-dir`,
    );
  }
  if (info) return true;
  if (create) {
    _checkStoreDir(runsDir, loc); // before the runs directory is made: a refused command creates nothing
    try {
      await Deno.mkdir(runsDir, { recursive: true });
    } catch (e) {
      throw new StoreMissingError(`Cannot create runs directory ${runsDir}: ${(e as Error).message}`);
    }
    return true;
  }
  if (loc.kind === "sqlite" && loc.path === null) {
    throw new StoreMissingError(
      `No runs directory ${runsDir}, so no run store ${storePath(runsDir)}: nothing was trained there yet ` +
        "(train a run with `deno task run`, or name the runs with --runs-dir or --store)",
    );
  }
  return false;
}

/** A SQLite store named outside `runsDir` must be in an existing directory (StoreMissingError). */
function _checkStoreDir(runsDir: string, loc: StoreLocation): void {
  if (loc.kind !== "sqlite" || loc.path === null) return;
  const dir = dirname(resolve(loc.path)), runs = resolve(runsDir);
  if (dir === runs || dir.startsWith(`${runs}/`)) return;
  let ok = false;
  try {
    ok = Deno.statSync(dir).isDirectory;
  } catch {
    // reported below
  }
  if (!ok) {
    throw new StoreMissingError(`Cannot create run store ${loc.path}: ${dir} is not an existing directory`);
  }
}

/** Opens a store at a location text, on its own (not shared, no run folders imported); the caller closes it. */
export async function openStoreAt(location: string): Promise<RunStore> {
  const loc = parseStoreLocation(location);
  if (loc.kind === "postgres") return await openPostgresStore(loc.url);
  if (loc.path === null) throw new TypeError("openStoreAt() needs a store location, not the default");
  return openSqliteStore(loc.path);
}

async function _openFor(runsDir: string, loc: StoreLocation, create: boolean): Promise<RunStore> {
  const store = loc.kind === "postgres"
    ? await openPostgresStore(loc.url, { create })
    : openSqliteStore(loc.path ?? storePath(runsDir), { create, runsDir });
  if (store.access.mode !== "read-write") return store; // read only: nothing imported, nothing marked
  try {
    if (await Deno.stat(runsDir).then((i) => i.isDirectory, () => false)) {
      await importRunFolders(store, runsDir);
    }
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
    const points = await readMetricJournal(`${dir}/${METRICS_JOURNAL}`);
    for (let i = 0; i < points.length; i += 5000) await store.logMetrics(meta.id, points.slice(i, i + 5000));
    let note = "";
    try {
      await syncCheckpoints(store, meta.id, dir);
    } catch (e) {
      note = `; its checkpoints were not imported: ${(e as Error).message}`; // a bad manifest stops no command
    }
    await store.logEvent(meta.id, { kind: "info", message: `imported from ${dir}/run.json${note}` });
    imported.push(meta.id);
  }
  return imported;
}

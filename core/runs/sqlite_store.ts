/**
 * The SQLite run store (`node:sqlite`): WAL journal so readers never block the writer, one connection per
 * process, short `BEGIN IMMEDIATE` transactions that wait out other writers (busy timeout) and retry, metric
 * points inserted in batches through one prepared statement, an index on (run, key, step). The schema is
 * versioned by `PRAGMA user_version` and migrated forward on open, inside a write transaction so that two
 * processes opening a new store at once do not both migrate.
 *
 * Opening checks the file before anything is written: what is at the path (a regular file, not a directory
 * or a FIFO), the SQLite header, an empty file beside run directories (records lost: refused), a
 * write-ahead log that is not one, then SQLite's own check, the schema version and its tables. The check is
 * `PRAGMA integrity_check` (which also matches every index against its table, so flipped bytes inside
 * records show) up to {@linkcode FULL_CHECK_MAX_BYTES} (0.8 s for 500K metric points, 44 MB, on 2 CPU
 * cores), `PRAGMA quick_check` (the b-tree structure, not the records) above it (0.7 s for 3M points,
 * 267 MB, where integrity_check takes 6 s even with a 64 MB page cache); `deno task store check --full`
 * runs integrity_check at any size. A store the process cannot write is opened read-only
 * (SQLite `immutable` where no write-ahead log is pending, so nothing is created beside it); one that fails
 * `quick_check`, or whose statements later report corruption, is `damaged`: reads are served as far as they
 * go, writes throw `StoreDamagedError`. Every error names the store file.
 *
 * @module
 */
import { describeFileKind } from "../util/fs.ts";
import { DatabaseSync, type SQLInputValue, type StatementSync } from "node:sqlite";
import { dirname, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import {
  describeHolder,
  interruptReason,
  pointTaken,
  RUN_STALE_SECONDS,
  runBusyMessage,
  runLostMessage,
  thisHost,
} from "./run_liveness.ts";
import type {
  CheckpointRecord,
  EventKind,
  MetricPoint,
  MetricQuery,
  MetricRow,
  PointRunStart,
  ReportRecord,
  RunEvent,
  RunLease,
  RunMeta,
  RunPatch,
  RunQuery,
  RunRecord,
  RunStore,
  StoreAccess,
  SweepRecord,
} from "./store.ts";
import { RunBusyError, StoreDamagedError, StoreMissingError, StoreReadOnlyError } from "./store_errors.ts";
import {
  checkpointFromRow,
  eventFromRow,
  metricFromRow,
  metricPointsError,
  reportFromRow,
  RUN_FIELDS,
  runFromRow,
  runValue,
  sweepFromRow,
} from "./store_rows.ts";

/** The store file of a runs directory. */
export function storePath(runsDir: string): string {
  return `${runsDir}/runs.db`;
}

/**
 * The run directories of a runs directory: its subdirectories that hold a `config.yaml` (what `run` writes
 * first), sorted; none where it cannot be read.
 */
export function runDirectoryNames(runsDir: string): string[] {
  const names: string[] = [];
  try {
    for (const e of Deno.readDirSync(runsDir)) {
      if (!e.isDirectory) continue;
      try {
        if (Deno.statSync(`${runsDir}/${e.name}/config.yaml`).isFile) names.push(e.name);
      } catch {
        // not a run directory
      }
    }
  } catch {
    return [];
  }
  return names.sort();
}

/** Schema migrations: entry i brings a store from version i to i + 1. Never edit one that has shipped. */
const _MIGRATIONS: readonly string[] = [
  `CREATE TABLE sweeps (
     id TEXT PRIMARY KEY, name TEXT NOT NULL, config_yaml TEXT NOT NULL, created_at TEXT NOT NULL);
   CREATE TABLE runs (
     id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, seed INTEGER NOT NULL,
     git_commit TEXT, adapter TEXT, started_at TEXT NOT NULL, ended_at TEXT, sweep_id TEXT,
     sweep_params TEXT NOT NULL, error TEXT, step INTEGER NOT NULL, config_yaml TEXT NOT NULL,
     host TEXT, pid INTEGER, heartbeat_at TEXT);
   CREATE INDEX runs_sweep ON runs (sweep_id);
   CREATE TABLE metrics (
     seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, key TEXT NOT NULL, step INTEGER NOT NULL,
     tokens INTEGER NOT NULL, time REAL NOT NULL, value REAL NOT NULL);
   CREATE INDEX metrics_run_key_step ON metrics (run_id, key, step);
   CREATE TABLE events (
     seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, time TEXT NOT NULL, step INTEGER,
     kind TEXT NOT NULL, message TEXT NOT NULL, data TEXT);
   CREATE INDEX events_run ON events (run_id, seq);
   CREATE TABLE checkpoints (
     run_id TEXT NOT NULL, step INTEGER NOT NULL, path TEXT NOT NULL, bytes INTEGER NOT NULL,
     sha256 TEXT NOT NULL, time TEXT NOT NULL, PRIMARY KEY (run_id, step));`,
  `CREATE TABLE reports (
     id TEXT PRIMARY KEY, kind TEXT NOT NULL, sweep_id TEXT, created_at TEXT NOT NULL,
     markdown TEXT NOT NULL, data TEXT NOT NULL);
   CREATE INDEX reports_sweep ON reports (sweep_id);`,
  // Leases: the process that trains a run holds it (host, pid, heartbeat_at, and these).
  `ALTER TABLE runs ADD COLUMN lease_id TEXT;
   ALTER TABLE runs ADD COLUMN leased_at TEXT;`,
];

/** The schema version this code writes. */
export const SCHEMA_VERSION = _MIGRATIONS.length;

/** The tables a store of schema version `v` has (what `openSqliteStore` checks are there). */
export function sqliteTables(v: number): string[] {
  return v >= 2 ? [..._V1_TABLES, "reports"] : v >= 1 ? [..._V1_TABLES] : [];
}

const _V1_TABLES = ["sweeps", "runs", "metrics", "events", "checkpoints"] as const;

/** Largest store (file and write-ahead log) that opening checks with `integrity_check` (64 MiB). */
export const FULL_CHECK_MAX_BYTES = 64 * 1024 * 1024;

const _BUSY_TIMEOUT_MS = 15_000;
const _RETRIES = 8;

type _Row = Record<string, SQLInputValue>;

/** What is at a store's path, from `stat` and its first 16 bytes: nothing is opened as a database. */
export type StoreFileState =
  | { kind: "missing" }
  | { kind: "not-a-file"; what: string } // a directory, a FIFO …
  | { kind: "empty" } // 0 bytes
  | { kind: "not-sqlite"; size: number } // no SQLite header
  | { kind: "sqlite"; size: number };

const _HEADER = new TextEncoder().encode("SQLite format 3\0");

/**
 * What is at `path` (following symlinks); a FIFO or device is never opened. Throws an Error naming the path
 * where it cannot be looked at.
 */
export function inspectStoreFile(path: string): StoreFileState {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { kind: "missing" };
    throw new Error(`Cannot open run store ${path}: ${(e as Error).message}`);
  }
  if (!info.isFile) return { kind: "not-a-file", what: describeFileKind(info) };
  if (info.size === 0) return { kind: "empty" };
  const head = new Uint8Array(_HEADER.length);
  let n = 0;
  try {
    const f = Deno.openSync(path, { read: true });
    try {
      while (n < head.length) {
        const r = f.readSync(head.subarray(n));
        if (r === null) break;
        n += r;
      }
    } finally {
      f.close();
    }
  } catch (e) {
    throw new Error(`Cannot read run store ${path}: ${(e as Error).message}`);
  }
  const ok = n === head.length && head.every((b, i) => b === _HEADER[i]);
  return ok ? { kind: "sqlite", size: info.size } : { kind: "not-sqlite", size: info.size };
}

/**
 * Why the write-ahead log beside `path` cannot be one (its magic number is wrong), or null. Another process
 * may hold the store: its last connection's close checkpoints the log and removes it (or truncates it), so a
 * log that goes or shrinks while it is read is no problem. Only a log that reads the same bad header twice
 * is one.
 */
export function walProblem(path: string): string | null {
  const wal = `${path}-wal`;
  let last: string | null = null;
  for (let attempt = 0; attempt < 2; attempt++) {
    const seen = _walHeader(wal);
    if (seen.kind === "none" || seen.kind === "ok") return null;
    if (seen.kind === "not-file" || seen.kind === "unreadable") return seen.why;
    if (last === seen.why) break; // the same bad header (and size) twice: not a log being replaced
    last = seen.why;
  }
  return last;
}

type _WalHeader =
  | { kind: "none" } // absent, or shorter than its header: SQLite reads it as empty
  | { kind: "ok" }
  | { kind: "not-file" | "unreadable" | "bad-magic"; why: string };

/** What the first bytes of the log `wal` are, read once. */
function _walHeader(wal: string): _WalHeader {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(wal);
  } catch {
    return { kind: "none" };
  }
  if (!info.isFile) {
    return { kind: "not-file", why: `its write-ahead log ${wal} is ${describeFileKind(info)}` };
  }
  if (info.size < 32) return { kind: "none" }; // no header yet: nothing committed is in it
  const magic = new Uint8Array(4);
  let n = 0;
  try {
    const f = Deno.openSync(wal, { read: true });
    try {
      while (n < magic.length) {
        const r = f.readSync(magic.subarray(n));
        if (r === null) break;
        n += r;
      }
    } finally {
      f.close();
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { kind: "none" }; // checkpointed and removed meanwhile
    return { kind: "unreadable", why: `its write-ahead log ${wal} cannot be read: ${(e as Error).message}` };
  }
  if (n < magic.length) return { kind: "none" }; // truncated meanwhile
  const m = ((magic[0]! << 24) | (magic[1]! << 16) | (magic[2]! << 8) | magic[3]!) >>> 0;
  if (m === 0x377f0682 || m === 0x377f0683) return { kind: "ok" };
  return {
    kind: "bad-magic",
    why: `its write-ahead log ${wal} (${info.size} bytes) is not a SQLite write-ahead log: committed ` +
      `changes may be lost in it`,
  };
}

/** How to check and rebuild the store at `path` (of runs directory `runsDir`), as a command line. */
export function repairHint(path: string, runsDir?: string): string {
  const dir = runsDir ?? dirname(path);
  const store = resolve(path) === resolve(storePath(dir)) ? "" : ` --store sqlite:${path}`;
  return `see what is readable with \`deno task store check --runs-dir ${dir}${store}\`, rebuild it from ` +
    `the run directories with \`deno task store rebuild --runs-dir ${dir}${store}\``;
}

/** Options of {@linkcode openSqliteStore}. */
export interface SqliteOpenOptions {
  /** Create a missing store (or initialise an empty file with no run directories beside it); default true. */
  create?: boolean;
  /** "read": write nothing at all (no migration, no journal change; writes throw); default "write". */
  mode?: "write" | "read";
  /** The runs directory the store belongs to: run directories beside an empty store are counted. */
  runsDir?: string;
  /** Run SQLite's check on open (default true; `deno task store check` runs its own). */
  check?: boolean;
}

/** The message of a node:sqlite error, or null for other errors (ours pass as they are). */
function _sqliteMessage(e: unknown): string | null {
  return e instanceof Error && (e as { code?: string }).code === "ERR_SQLITE_ERROR" ? e.message : null;
}

const _CORRUPT = /database disk image is malformed|file is not a database|SQLITE_CORRUPT|SQLITE_NOTADB/i;
const _READ_ONLY = /attempt to write a readonly database|SQLITE_READONLY/i;
const _CANT_OPEN = /unable to open database file|SQLITE_CANTOPEN/i;

/**
 * Opens (creating and migrating if needed) the SQLite store at `path` (":memory:" for a private one). Refuses
 * (StoreDamagedError) what is not a store: a directory, a FIFO, a file without the SQLite header, an empty
 * file beside run directories, a broken write-ahead log, a missing table; a store newer than this code. A
 * store that fails `quick_check` is opened `damaged` (reads only); one it cannot write, `read-only`.
 *
 * @example
 * ```ts
 * const store = openSqliteStore(":memory:");
 * console.log(store.url, store.access.mode); // "sqlite::memory: read-write"
 * store.close();
 * ```
 */
export function openSqliteStore(path: string, o: SqliteOpenOptions = {}): RunStore {
  if (path === ":memory:") {
    const db = new DatabaseSync(path);
    _migrate(db, path);
    return new _SqliteStore(db, path, { mode: "read-write" }, o.runsDir);
  }
  const readMode = (o.mode ?? "write") === "read";
  const state = _checkFile(path, { ...o, create: readMode ? false : o.create });
  const fresh = state.kind !== "sqlite";
  const protectedWhy = fresh ? null : _writeProtected(path);
  // "read" never opens for writing: a read-write connection's close would checkpoint a pending log.
  let writable = protectedWhy === null && !readMode;
  let access: StoreAccess = protectedWhy === null && !readMode
    ? { mode: "read-write" }
    : { mode: "read-only", reason: _readOnlyReason(path, protectedWhy ?? "opened for reading") };
  let db: DatabaseSync;
  try {
    db = writable ? _connect(path) : _connectReadOnly(path);
  } catch (e) {
    const msg = _sqliteMessage(e);
    if (msg === null || !_CANT_OPEN.test(msg) || fresh) throw _openError(path, e, o.runsDir);
    // The file is writable, its directory is not (WAL needs files beside it): read it without them.
    try {
      db = _connectReadOnly(path);
    } catch (e2) {
      throw _openError(path, e2, o.runsDir);
    }
    writable = false;
    access = { mode: "read-only", reason: _readOnlyReason(path, "its directory is write-protected") };
  }
  try {
    if (!fresh && o.check !== false) {
      const problems = _integrity(db, _storeBytes(path) <= FULL_CHECK_MAX_BYTES);
      if (problems !== "ok") access = { mode: "damaged", reason: _damagedReason(path, problems, o.runsDir) };
    }
    if (access.mode === "damaged") return new _SqliteStore(db, path, access, o.runsDir);
    if (writable && access.mode === "read-write") {
      _withRetry(() => db.exec("PRAGMA journal_mode = WAL"));
      db.exec("PRAGMA synchronous = NORMAL");
      _migrate(db, path);
    } else _refuseNewer(_version(db), path);
    _checkTables(db, path, o.runsDir);
  } catch (e) {
    db.close();
    throw _openError(path, e, o.runsDir);
  }
  return new _SqliteStore(db, path, access, o.runsDir);
}

/** The checks of what is at `path` before SQLite opens it (see {@linkcode openSqliteStore}). */
function _checkFile(path: string, o: SqliteOpenOptions): StoreFileState {
  const state = inspectStoreFile(path);
  const hint = repairHint(path, o.runsDir);
  switch (state.kind) {
    case "missing": {
      if (o.create === false) {
        throw new StoreMissingError(
          `No run store at ${path}: nothing was trained into ${o.runsDir ?? dirname(path)} yet ` +
            "(train a run with `deno task run`, or name the runs with --runs-dir or --store)",
        );
      }
      const dir = dirname(path);
      let info: Deno.FileInfo | null = null;
      try {
        info = Deno.statSync(dir);
      } catch {
        // reported below
      }
      if (!info?.isDirectory) {
        throw new StoreMissingError(
          `Cannot create run store ${path}: ${dir} ${info ? "is not a directory" : "does not exist"}`,
        );
      }
      return state;
    }
    case "not-a-file":
      throw new StoreDamagedError(
        `Cannot open run store ${path}: it is ${state.what}, not a database file`,
      );
    case "empty": {
      const runs = o.runsDir ? runDirectoryNames(o.runsDir).length : 0;
      if (runs > 0) {
        throw new StoreDamagedError(
          `Run store ${path} is empty (0 bytes) while ${runs} run director${
            runs === 1 ? "y is" : "ies are"
          } ` +
            `beside it in ${o.runsDir}: their records are lost. Nothing was written; ${hint}`,
        );
      }
      if (o.create === false) {
        throw new StoreMissingError(`Run store ${path} is an empty file: it holds no runs`);
      }
      return state;
    }
    case "not-sqlite":
      throw new StoreDamagedError(
        `Cannot open run store ${path}: it is not a SQLite database (its first bytes are not the SQLite ` +
          `header; ${state.size} bytes). Nothing was written; ${hint}`,
      );
    case "sqlite": {
      const wal = walProblem(path);
      if (wal) {
        throw new StoreDamagedError(`Cannot open run store ${path}: ${wal}. Nothing was written; ${hint}`);
      }
      return state;
    }
  }
}

/** Why this process cannot write the existing store file `path`, or null when it can. */
function _writeProtected(path: string): string | null {
  try {
    Deno.openSync(path, { read: true, write: true }).close();
    return null;
  } catch (e) {
    if (e instanceof Deno.errors.PermissionDenied) return "the file is write-protected";
    if ((e as { code?: string }).code === "EROFS") return "it is on a read-only file system";
    throw new Error(`Cannot open run store ${path}: ${(e as Error).message}`);
  }
}

function _readOnlyReason(path: string, why: string): string {
  return `Run store ${path} is read-only (${why}): it can be browsed but takes no writes`;
}

function _damagedReason(path: string, problems: string, runsDir?: string): string {
  const first = problems.split("; ").slice(0, 3).join("; ");
  return `Run store ${path} is damaged (${first}): it takes no writes; ${repairHint(path, runsDir)}`;
}

/** A read-write connection with the busy timeout set (SQLite opens the file at the first statement). */
function _connect(path: string): DatabaseSync {
  const db = new DatabaseSync(path);
  try {
    db.exec(`PRAGMA busy_timeout = ${_BUSY_TIMEOUT_MS}`);
    db.prepare("PRAGMA user_version").get();
  } catch (e) {
    db.close();
    throw e;
  }
  return db;
}

/**
 * A read-only connection that creates nothing beside the file: `immutable` where no write-ahead log is
 * pending (no locks, no -shm); else SQLite's read-only mode, which reads the log (and needs its -shm).
 */
/**
 * A read-only connection to the SQLite file at `path` that creates nothing beside it: a write-ahead log with
 * changes in it is read (SQLite needs its shared-memory file then), otherwise the file is opened `immutable`,
 * which needs neither (a write-protected directory, a read-only mount). `ignoreWal`: open it immutable even
 * so (a log that is itself damaged). `pending` says whether the log was read.
 */
export function openSqliteReadOnly(
  path: string,
  o: { ignoreWal?: boolean } = {},
): { db: DatabaseSync; pending: boolean } {
  let pending = false;
  try {
    pending = !o.ignoreWal && Deno.statSync(`${path}-wal`).size > 0;
  } catch {
    // no write-ahead log
  }
  if (pending) return { db: new DatabaseSync(path, { readOnly: true }), pending };
  const url = pathToFileURL(resolve(path));
  url.searchParams.set("immutable", "1");
  return { db: new DatabaseSync(url, { readOnly: true }), pending };
}

function _connectReadOnly(path: string): DatabaseSync {
  const { db, pending } = openSqliteReadOnly(path);
  try {
    db.exec(`PRAGMA busy_timeout = ${_BUSY_TIMEOUT_MS}`);
    db.prepare("PRAGMA user_version").get();
  } catch (e) {
    db.close();
    const msg = _sqliteMessage(e) ?? String(e);
    if (pending && _CANT_OPEN.test(msg)) {
      throw new StoreReadOnlyError(
        `Cannot open run store ${path} read-only: its write-ahead log ${path}-wal holds changes that SQLite ` +
          `can only read with a -shm file beside it, and it cannot create one there; copy the store with ` +
          `its -wal file to a writable directory`,
      );
    }
    throw e;
  }
  return db;
}

/** The bytes of the store at `path` and its write-ahead log. */
function _storeBytes(path: string): number {
  const size = (p: string) => {
    try {
      return Deno.statSync(p).size;
    } catch {
      return 0;
    }
  };
  return size(path) + size(`${path}-wal`);
}

/**
 * `PRAGMA integrity_check` (`full`, with a 64 MB page cache for the while) or `quick_check`: "ok" or the
 * problems joined by "; " (a corruption error counts as one).
 */
function _integrity(db: DatabaseSync, full: boolean): string {
  const cache = full ? Number((db.prepare("PRAGMA cache_size").get() as _Row).cache_size) : 0;
  try {
    if (full) db.exec("PRAGMA cache_size = -65536");
    const rows = db.prepare(full ? "PRAGMA integrity_check" : "PRAGMA quick_check").all() as _Row[];
    return rows.flatMap((r) => String(Object.values(r)[0]).split("\n"))
      .map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("*** in database")).join("; ");
  } catch (e) {
    const msg = _sqliteMessage(e);
    if (msg !== null && _CORRUPT.test(msg)) return msg;
    throw e;
  } finally {
    if (full) db.exec(`PRAGMA cache_size = ${cache}`);
  }
}

/** An error of opening `path`: node:sqlite's errors reworded to name the store, corruption as damage. */
function _openError(path: string, e: unknown, runsDir?: string): Error {
  const msg = _sqliteMessage(e);
  if (msg === null) return e as Error;
  if (_CORRUPT.test(msg)) {
    return new StoreDamagedError(
      `Cannot open run store ${path}: ${msg}. Nothing was written; ${repairHint(path, runsDir)}`,
    );
  }
  if (_CANT_OPEN.test(msg)) {
    return new Error(
      `Cannot open run store ${path}: ${msg.replace(/: \/.*$/, "")} (check that ${
        dirname(path)
      } exists and ` +
        "this user may write it)",
    );
  }
  return new Error(`Cannot open run store ${path}: ${msg}`);
}

function _version(db: DatabaseSync): number {
  return Number((db.prepare("PRAGMA user_version").get() as _Row).user_version);
}

function _refuseNewer(v: number, path: string): void {
  if (v > SCHEMA_VERSION) {
    throw new Error(
      `The run store ${path} has schema version ${v}, newer than this dsmoe's ${SCHEMA_VERSION}: update dsmoe`,
    );
  }
}

/** Refuses a store that lacks a table of its schema version (StoreDamagedError naming it). */
function _checkTables(db: DatabaseSync, path: string, runsDir?: string): void {
  const v = _version(db);
  const have = new Set(
    (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as _Row[]).map((r) =>
      String(r.name)
    ),
  );
  const missing = sqliteTables(v).filter((t) => !have.has(t));
  if (missing.length > 0) {
    throw new StoreDamagedError(
      `Run store ${path} has no table ${missing.join(", ")} (its schema version ${v} has ${
        missing.length === 1 ? "it" : "them"
      }): it is damaged. Nothing was written; ${repairHint(path, runsDir)}`,
    );
  }
}

function _migrate(db: DatabaseSync, path: string): void {
  if (_version(db) === SCHEMA_VERSION) return;
  _transaction(db, () => {
    const v = _version(db); // again, under the write lock: another process may have migrated meanwhile
    _refuseNewer(v, path);
    for (let i = v; i < SCHEMA_VERSION; i++) db.exec(_MIGRATIONS[i]!);
    db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
  });
}

/** Runs `fn` in a BEGIN IMMEDIATE transaction (taking the write lock first), retrying when the store is busy. */
function _transaction<T>(db: DatabaseSync, fn: () => T): T {
  return _withRetry(() => {
    db.exec("BEGIN IMMEDIATE");
    try {
      const out = fn();
      db.exec("COMMIT");
      return out;
    } catch (e) {
      try {
        if (db.isTransaction) db.exec("ROLLBACK");
      } catch {
        // A damaged store may refuse the rollback too; the error that matters is `e`.
      }
      throw e;
    }
  });
}

function _isBusy(e: unknown): boolean {
  const m = e instanceof Error ? e.message : String(e);
  return /database is locked|database is busy|SQLITE_BUSY/i.test(m);
}

/** Retries `fn` while SQLite reports the database busy past its timeout (many writers at once). */
function _withRetry<T>(fn: () => T): T {
  for (let attempt = 0;; attempt++) {
    try {
      return fn();
    } catch (e) {
      if (!_isBusy(e) || attempt >= _RETRIES) throw e;
      // Back off a little (synchronously: node:sqlite is synchronous) before trying again.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20 * (attempt + 1) + Math.random() * 50);
    }
  }
}

class _SqliteStore implements RunStore {
  readonly url: string;
  readonly #db: DatabaseSync;
  readonly #path: string;
  readonly #runsDir: string | undefined;
  readonly #host = thisHost();
  readonly #stmts = new Map<string, StatementSync>();
  #access: StoreAccess;

  constructor(db: DatabaseSync, path: string, access: StoreAccess, runsDir: string | undefined) {
    this.#db = db;
    this.#path = path;
    this.#access = access;
    this.#runsDir = runsDir;
    this.url = `sqlite:${path}`;
  }

  get access(): StoreAccess {
    return this.#access;
  }

  #q(sql: string): StatementSync {
    let s = this.#stmts.get(sql);
    if (!s) {
      s = this.#db.prepare(sql);
      this.#stmts.set(sql, s);
    }
    return s;
  }

  /**
   * node:sqlite's errors, reworded to name the store: corruption makes the store `damaged` from then on
   * (StoreDamagedError), a refused write is StoreReadOnlyError. The store's own errors pass as they are.
   */
  #translate(e: unknown): unknown {
    const msg = _sqliteMessage(e);
    if (msg === null) return e;
    if (_CORRUPT.test(msg)) {
      if (this.#access.mode !== "damaged") {
        this.#access = { mode: "damaged", reason: _damagedReason(this.#path, msg, this.#runsDir) };
      }
      return new StoreDamagedError((this.#access as { reason: string }).reason);
    }
    if (_READ_ONLY.test(msg)) {
      if (this.#access.mode === "read-write") {
        this.#access = { mode: "read-only", reason: _readOnlyReason(this.#path, msg) };
      }
      return new StoreReadOnlyError((this.#access as { reason: string }).reason);
    }
    return new Error(`Run store ${this.#path}: ${msg}`);
  }

  /** A read: `fn`'s result, or its error reworded. */
  #read<T>(fn: () => T): Promise<T> {
    try {
      return Promise.resolve(fn());
    } catch (e) {
      return Promise.reject(this.#translate(e));
    }
  }

  /** A write transaction, refused at once by a read-only or damaged store. */
  #write<T>(fn: () => T): Promise<T> {
    const a = this.#access;
    if (a.mode === "damaged") return Promise.reject(new StoreDamagedError(a.reason));
    if (a.mode === "read-only") return Promise.reject(new StoreReadOnlyError(a.reason));
    return this.#read(() => _transaction(this.#db, fn));
  }

  createSweep(s: SweepRecord): Promise<void> {
    return this.#write(() => {
      this.#q("INSERT OR IGNORE INTO sweeps (id, name, config_yaml, created_at) VALUES (?, ?, ?, ?)")
        .run(s.id, s.name, s.config_yaml, s.created_at);
    });
  }

  getSweep(id: string): Promise<SweepRecord | null> {
    return this.#read(() => {
      const r = this.#q("SELECT * FROM sweeps WHERE id = ?").get(id) as _Row | undefined;
      return r ? sweepFromRow(r) : null;
    });
  }

  listSweeps(): Promise<SweepRecord[]> {
    return this.#read(() =>
      (this.#q("SELECT * FROM sweeps ORDER BY created_at DESC").all() as _Row[]).map(sweepFromRow)
    );
  }

  createRun(meta: RunMeta, configYaml: string): Promise<void> {
    return this.#write(() => this.#insertRun(meta, configYaml, null));
  }

  /** Inserts run `meta` written by this process, held by `leaseId` where given. */
  #insertRun(meta: RunMeta, configYaml: string, leaseId: string | null): void {
    if (this.#q("SELECT 1 FROM runs WHERE id = ?").get(meta.id)) {
      throw new Error(`Run "${meta.id}" already exists in ${this.url}`);
    }
    const now = new Date().toISOString();
    this.#q(
      `INSERT INTO runs (id, ${
        RUN_FIELDS.join(", ")
      }, config_yaml, host, pid, heartbeat_at, lease_id, leased_at)
       VALUES (?, ${RUN_FIELDS.map(() => "?").join(", ")}, ?, ?, ?, ?, ?, ?)`,
    ).run(
      meta.id,
      ...RUN_FIELDS.map((f) => runValue(f, meta[f])),
      configYaml,
      this.#host,
      Deno.pid,
      now,
      leaseId,
      leaseId === null ? null : now,
    );
  }

  createPointRun(
    meta: RunMeta,
    configYaml: string,
    o: { staleSeconds?: number } = {},
  ): Promise<PointRunStart> {
    if (meta.sweep_id === null) return Promise.reject(new TypeError(`Run "${meta.id}" has no sweep point`));
    const stale = o.staleSeconds ?? RUN_STALE_SECONDS;
    return this.#write((): PointRunStart => {
      const rows = this.#q(
        "SELECT * FROM runs WHERE sweep_id = ? AND name = ? ORDER BY started_at DESC, id DESC",
      )
        .all(meta.sweep_id, meta.name) as _Row[];
      const taken = pointTaken(rows, { host: this.#host, nowMs: Date.now(), staleSeconds: stale });
      if (taken) return taken;
      const lease: RunLease = { run_id: meta.id, lease_id: crypto.randomUUID(), took_over: null };
      this.#insertRun(meta, configYaml, lease.lease_id);
      return { kind: "created", lease };
    });
  }

  importRun(meta: RunMeta, configYaml: string): Promise<boolean> {
    return this.#write(() => {
      const r = this.#q(
        `INSERT OR IGNORE INTO runs (id, ${RUN_FIELDS.join(", ")}, config_yaml)
         VALUES (?, ${RUN_FIELDS.map(() => "?").join(", ")}, ?)`,
      ).run(meta.id, ...RUN_FIELDS.map((f) => runValue(f, meta[f])), configYaml);
      return Number(r.changes) > 0;
    });
  }

  updateRun(id: string, patch: RunPatch, o: { lease?: RunLease } = {}): Promise<void> {
    const fields = RUN_FIELDS.filter((f) => f in patch);
    const config = patch.config_yaml === undefined ? [] : [patch.config_yaml];
    const ends = patch.status !== undefined && patch.status !== "running";
    return this.#write(() => {
      // Without a lease, the writer is recorded only where no process holds the run.
      const mine = o.lease
        ? (v: string) => `${v} = ?`
        : (v: string) => `${v} = CASE WHEN lease_id IS NULL THEN ? ELSE ${v} END`;
      const sets = [
        ...fields.map((f) => `${f} = ?`),
        ...config.map(() => "config_yaml = ?"),
        mine("host"),
        mine("pid"),
        mine("heartbeat_at"),
        ...(ends ? ["lease_id = NULL", "leased_at = NULL"] : []),
      ].join(", ");
      const where = o.lease ? "id = ? AND lease_id = ?" : "id = ?";
      const r = this.#q(`UPDATE runs SET ${sets} WHERE ${where}`).run(
        ...fields.map((f) => runValue(f, patch[f])),
        ...config,
        this.#host,
        Deno.pid,
        new Date().toISOString(),
        id,
        ...(o.lease ? [o.lease.lease_id] : []),
      );
      if (Number(r.changes) > 0) return;
      const now = this.#q("SELECT host, pid, heartbeat_at, lease_id, leased_at FROM runs WHERE id = ?").get(
        id,
      ) as
        | _Row
        | undefined;
      if (!now) throw new Error(`No run "${id}" in ${this.url}`);
      throw new RunBusyError(runLostMessage(id, now, Date.now()));
    });
  }

  acquireRun(id: string, o: { staleSeconds?: number } = {}): Promise<RunLease> {
    const stale = o.staleSeconds ?? RUN_STALE_SECONDS;
    return this.#write(() => {
      const r = this.#q("SELECT host, pid, heartbeat_at, lease_id, leased_at FROM runs WHERE id = ?").get(
        id,
      ) as
        | _Row
        | undefined;
      if (!r) throw new Deno.errors.NotFound(`No run "${id}" in ${this.url}`);
      const now = Date.now();
      let tookOver: string | null = null;
      if (r.lease_id !== null) {
        const why = interruptReason(r, { host: this.#host, nowMs: now, staleSeconds: stale });
        if (why === null) throw new RunBusyError(runBusyMessage(id, r, now, stale));
        tookOver = `${describeHolder(r, now)}: ${why}`;
      }
      const lease: RunLease = { run_id: id, lease_id: crypto.randomUUID(), took_over: tookOver };
      const t = new Date(now).toISOString();
      this.#q("UPDATE runs SET host = ?, pid = ?, heartbeat_at = ?, lease_id = ?, leased_at = ? WHERE id = ?")
        .run(this.#host, Deno.pid, t, lease.lease_id, t, id);
      return lease;
    });
  }

  renewRun(lease: RunLease): Promise<boolean> {
    return this.#write(() => {
      const r = this.#q("UPDATE runs SET heartbeat_at = ? WHERE id = ? AND lease_id = ?")
        .run(new Date().toISOString(), lease.run_id, lease.lease_id);
      return Number(r.changes) > 0;
    });
  }

  releaseRun(lease: RunLease): Promise<void> {
    return this.#write(() => {
      this.#q("UPDATE runs SET lease_id = NULL, leased_at = NULL WHERE id = ? AND lease_id = ?")
        .run(lease.run_id, lease.lease_id);
    });
  }

  heartbeat(id: string): Promise<void> {
    return this.#write(() => {
      this.#q("UPDATE runs SET heartbeat_at = ? WHERE id = ?").run(new Date().toISOString(), id);
    });
  }

  getRun(id: string): Promise<RunRecord | null> {
    return this.#read(() => {
      const r = this.#q("SELECT * FROM runs WHERE id = ?").get(id) as _Row | undefined;
      return r ? runFromRow(r) : null;
    });
  }

  listRuns(q: RunQuery = {}): Promise<RunRecord[]> {
    const where: string[] = [], args: SQLInputValue[] = [];
    if (q.sweepId !== undefined) (where.push("sweep_id = ?"), args.push(q.sweepId));
    if (q.status !== undefined) (where.push("status = ?"), args.push(q.status));
    const sql = `SELECT * FROM runs ${where.length ? "WHERE " + where.join(" AND ") : ""}
                 ORDER BY started_at DESC, id DESC`;
    return this.#read(() => (this.#db.prepare(sql).all(...args) as _Row[]).map(runFromRow));
  }

  deleteRun(lease: RunLease): Promise<boolean> {
    return this.#write(() => {
      const id = lease.run_id;
      const r = this.#q("DELETE FROM runs WHERE id = ? AND lease_id = ?").run(id, lease.lease_id);
      if (Number(r.changes) === 0) return false;
      for (const table of ["metrics", "events", "checkpoints"]) {
        this.#q(`DELETE FROM ${table} WHERE run_id = ?`).run(id);
      }
      return true;
    });
  }

  logMetrics(runId: string, points: readonly MetricPoint[]): Promise<void> {
    const bad = metricPointsError(points);
    if (bad) return Promise.reject(bad);
    if (points.length === 0) return Promise.resolve();
    return this.#write(() => {
      const ins = this.#q(
        "INSERT INTO metrics (run_id, key, step, tokens, time, value) VALUES (?, ?, ?, ?, ?, ?)",
      );
      for (const p of points) ins.run(runId, p.key, p.step, p.tokens, p.time, p.value);
    });
  }

  metrics(runId: string, q: MetricQuery = {}): Promise<MetricRow[]> {
    const where = ["run_id = ?"], args: SQLInputValue[] = [runId];
    if (q.keys) {
      if (q.keys.length === 0) return Promise.resolve([]);
      where.push(`key IN (${q.keys.map(() => "?").join(", ")})`);
      args.push(...q.keys);
    }
    if (q.prefix !== undefined) {
      // A range, not LIKE: keys hold "_" and "%" literally, and the (run, key) index serves a range.
      where.push("key >= ? AND key < ?");
      args.push(q.prefix, q.prefix + "\uffff");
    }
    if (q.afterSeq !== undefined) (where.push("seq > ?"), args.push(q.afterSeq));
    const limit = q.limit !== undefined ? ` LIMIT ${Math.max(0, Math.floor(q.limit))}` : "";
    // After a seq, scan by seq (the rowid): a live reader's new points, however many the run has. The
    // (run, key) index would read every point of the run and sort them, at each poll.
    const from = q.afterSeq !== undefined ? "metrics NOT INDEXED" : "metrics";
    const sql = `SELECT seq, key, step, tokens, time, value FROM ${from} WHERE ${where.join(" AND ")}
                 ORDER BY seq${limit}`;
    return this.#read(() => (this.#db.prepare(sql).all(...args) as _Row[]).map(metricFromRow));
  }

  metricKeys(runId: string): Promise<string[]> {
    return this.#read(() => this.#keys(runId));
  }

  /** The keys of a run, by skipping from one key to the next in the (run, key) index: not a point each. */
  #keys(runId: string): string[] {
    const rows = this.#q(
      `WITH RECURSIVE k (key) AS (
         SELECT MIN(key) FROM metrics WHERE run_id = ?1
         UNION ALL
         SELECT (SELECT MIN(key) FROM metrics WHERE run_id = ?1 AND key > k.key) FROM k WHERE k.key IS NOT NULL)
       SELECT key FROM k WHERE key IS NOT NULL`,
    ).all(runId) as _Row[];
    return rows.map((r) => String(r.key));
  }

  lastMetrics(runId: string, keys?: readonly string[]): Promise<Map<string, MetricRow>> {
    return this.#perKey(runId, keys, "step DESC, seq DESC");
  }

  bestMetrics(runId: string, keys: readonly string[]): Promise<Map<string, MetricRow>> {
    return this.#perKey(runId, keys, "value ASC, step ASC");
  }

  #perKey(
    runId: string,
    keys: readonly string[] | undefined,
    order: string,
  ): Promise<Map<string, MetricRow>> {
    return this.#read(() => {
      const ks = keys ?? this.#keys(runId);
      const out = new Map<string, MetricRow>();
      const s = this.#q(
        `SELECT seq, key, step, tokens, time, value FROM metrics WHERE run_id = ? AND key = ? ORDER BY ${order} LIMIT 1`,
      );
      for (const k of ks) {
        const r = s.get(runId, k) as _Row | undefined;
        if (r) out.set(k, metricFromRow(r));
      }
      return out;
    });
  }

  lastSeq(): Promise<number> {
    return this.#read(() => Number((this.#q("SELECT MAX(seq) AS s FROM metrics").get() as _Row).s ?? 0));
  }

  logEvent(
    runId: string,
    e: { kind: EventKind; message: string; step?: number | null; data?: Record<string, unknown> },
  ): Promise<void> {
    return this.#write(() => {
      this.#q("INSERT INTO events (run_id, time, step, kind, message, data) VALUES (?, ?, ?, ?, ?, ?)").run(
        runId,
        new Date().toISOString(),
        e.step ?? null,
        e.kind,
        e.message,
        e.data ? JSON.stringify(e.data) : null,
      );
    });
  }

  events(runId: string, afterSeq = 0): Promise<RunEvent[]> {
    return this.#read(() =>
      (this.#q("SELECT * FROM events WHERE run_id = ? AND seq > ? ORDER BY seq").all(
        runId,
        afterSeq,
      ) as _Row[])
        .map(eventFromRow)
    );
  }

  recordCheckpoint(c: CheckpointRecord): Promise<void> {
    return this.#write(() => {
      this.#q(
        `INSERT OR REPLACE INTO checkpoints (run_id, step, path, bytes, sha256, time) VALUES (?, ?, ?, ?, ?, ?)`,
      ).run(c.run_id, c.step, c.path, c.bytes, c.sha256, c.time);
    });
  }

  removeCheckpoint(runId: string, step: number): Promise<void> {
    return this.#write(() => {
      this.#q("DELETE FROM checkpoints WHERE run_id = ? AND step = ?").run(runId, step);
    });
  }

  checkpoints(runId: string): Promise<CheckpointRecord[]> {
    return this.#read(() =>
      (this.#q("SELECT * FROM checkpoints WHERE run_id = ? ORDER BY step").all(runId) as _Row[]).map(
        checkpointFromRow,
      )
    );
  }

  markInterrupted(staleSeconds = RUN_STALE_SECONDS): Promise<string[]> {
    return this.#write(() => {
      const now = Date.now(), ids: string[] = [];
      const running = this.#q("SELECT id, host, pid, heartbeat_at FROM runs WHERE status = 'running'")
        .all() as _Row[];
      for (const r of running) {
        const why = interruptReason(r, { host: this.#host, nowMs: now, staleSeconds });
        if (why === null) continue;
        this.#q(
          `UPDATE runs SET status = 'interrupted', ended_at = ?, error = ?, lease_id = NULL, leased_at = NULL
           WHERE id = ?`,
        ).run(new Date().toISOString(), `Interrupted: ${why}`, String(r.id));
        this.#q(
          "INSERT INTO events (run_id, time, step, kind, message, data) VALUES (?, ?, NULL, ?, ?, NULL)",
        ).run(
          String(r.id),
          new Date().toISOString(),
          "interrupted",
          `Marked interrupted: ${why}`,
        );
        ids.push(String(r.id));
      }
      return ids;
    });
  }

  saveReport(r: ReportRecord): Promise<void> {
    return this.#write(() => {
      this.#q(
        "INSERT OR REPLACE INTO reports (id, kind, sweep_id, created_at, markdown, data) VALUES (?, ?, ?, ?, ?, ?)",
      ).run(r.id, r.kind, r.sweep_id, r.created_at, r.markdown, JSON.stringify(r.data));
    });
  }

  getReport(id: string): Promise<ReportRecord | null> {
    return this.#read(() => {
      const r = this.#q("SELECT * FROM reports WHERE id = ?").get(id) as _Row | undefined;
      return r ? reportFromRow(r) : null;
    });
  }

  listReports(sweepId?: string): Promise<ReportRecord[]> {
    return this.#read(() => {
      const rows = sweepId === undefined
        ? this.#q("SELECT * FROM reports ORDER BY created_at DESC").all()
        : this.#q("SELECT * FROM reports WHERE sweep_id = ? ORDER BY created_at DESC").all(sweepId);
      return (rows as _Row[]).map(reportFromRow);
    });
  }

  integrityCheck(o: { quick?: boolean } = {}): Promise<string> {
    try {
      return Promise.resolve(_integrity(this.#db, !o.quick));
    } catch (e) {
      return Promise.reject(this.#translate(e));
    }
  }

  close(): void {
    this.#stmts.clear();
    if (this.#db.isOpen) this.#db.close();
  }
}

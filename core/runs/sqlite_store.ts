/**
 * The SQLite run store (`node:sqlite`): WAL journal so readers never block the writer, one connection per
 * process, short `BEGIN IMMEDIATE` transactions that wait out other writers (busy timeout) and retry, metric
 * points inserted in batches through one prepared statement, an index on (run, key, step). The schema is
 * versioned by `PRAGMA user_version` and migrated forward on open, inside a write transaction so that two
 * processes opening a new store at once do not both migrate.
 *
 * @module
 */
import { DatabaseSync, type SQLInputValue, type StatementSync } from "node:sqlite";
import { interruptReason, thisHost } from "./run_liveness.ts";
import type {
  CheckpointRecord,
  EventKind,
  MetricPoint,
  MetricQuery,
  MetricRow,
  ReportRecord,
  RunEvent,
  RunMeta,
  RunQuery,
  RunRecord,
  RunStore,
  SweepRecord,
} from "./store.ts";
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
];

/** The schema version this code writes. */
export const SCHEMA_VERSION = _MIGRATIONS.length;

const _BUSY_TIMEOUT_MS = 15_000;
const _RETRIES = 8;

type _Row = Record<string, SQLInputValue>;

/**
 * Opens (creating and migrating if needed) the SQLite store at `path` (":memory:" for a private one).
 *
 * @example
 * ```ts
 * const store = openSqliteStore(":memory:");
 * console.log(store.url); // "sqlite::memory:"
 * store.close();
 * ```
 */
export function openSqliteStore(path: string): RunStore {
  let db: DatabaseSync;
  try {
    db = new DatabaseSync(path);
  } catch (e) {
    throw new Error(`Cannot open the run store ${path}: ${(e as Error).message}`);
  }
  try {
    db.exec(`PRAGMA busy_timeout = ${_BUSY_TIMEOUT_MS}`);
    if (path !== ":memory:") _withRetry(() => db.exec("PRAGMA journal_mode = WAL"));
    db.exec("PRAGMA synchronous = NORMAL");
    _migrate(db, path);
  } catch (e) {
    db.close();
    throw e;
  }
  return new _SqliteStore(db, path);
}

function _migrate(db: DatabaseSync, path: string): void {
  const version = () => Number((db.prepare("PRAGMA user_version").get() as _Row).user_version);
  if (version() === SCHEMA_VERSION) return;
  _transaction(db, () => {
    const v = version(); // again, under the write lock: another process may have migrated meanwhile
    if (v > SCHEMA_VERSION) {
      throw new Error(
        `The run store ${path} has schema version ${v}, newer than this dsmoe's ${SCHEMA_VERSION}: update dsmoe`,
      );
    }
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
      if (db.isTransaction) db.exec("ROLLBACK");
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
  readonly #host = thisHost();
  readonly #stmts = new Map<string, StatementSync>();

  constructor(db: DatabaseSync, path: string) {
    this.#db = db;
    this.url = `sqlite:${path}`;
  }

  #q(sql: string): StatementSync {
    let s = this.#stmts.get(sql);
    if (!s) {
      s = this.#db.prepare(sql);
      this.#stmts.set(sql, s);
    }
    return s;
  }

  #write<T>(fn: () => T): Promise<T> {
    try {
      return Promise.resolve(_transaction(this.#db, fn));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  createSweep(s: SweepRecord): Promise<void> {
    return this.#write(() => {
      this.#q("INSERT OR IGNORE INTO sweeps (id, name, config_yaml, created_at) VALUES (?, ?, ?, ?)")
        .run(s.id, s.name, s.config_yaml, s.created_at);
    });
  }

  getSweep(id: string): Promise<SweepRecord | null> {
    const r = this.#q("SELECT * FROM sweeps WHERE id = ?").get(id) as _Row | undefined;
    return Promise.resolve(r ? sweepFromRow(r) : null);
  }

  listSweeps(): Promise<SweepRecord[]> {
    const rows = this.#q("SELECT * FROM sweeps ORDER BY created_at DESC").all() as _Row[];
    return Promise.resolve(rows.map(sweepFromRow));
  }

  createRun(meta: RunMeta, configYaml: string): Promise<void> {
    return this.#write(() => {
      if (this.#q("SELECT 1 FROM runs WHERE id = ?").get(meta.id)) {
        throw new Error(`Run "${meta.id}" already exists in ${this.url}`);
      }
      this.#q(
        `INSERT INTO runs (id, ${RUN_FIELDS.join(", ")}, config_yaml, host, pid, heartbeat_at)
         VALUES (?, ${RUN_FIELDS.map(() => "?").join(", ")}, ?, ?, ?, ?)`,
      ).run(
        meta.id,
        ...RUN_FIELDS.map((f) => runValue(f, meta[f])),
        configYaml,
        this.#host,
        Deno.pid,
        new Date().toISOString(),
      );
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

  updateRun(id: string, patch: Partial<RunMeta>): Promise<void> {
    const fields = RUN_FIELDS.filter((f) => f in patch);
    return this.#write(() => {
      const sets = [...fields.map((f) => `${f} = ?`), "host = ?", "pid = ?", "heartbeat_at = ?"].join(", ");
      const r = this.#q(`UPDATE runs SET ${sets} WHERE id = ?`).run(
        ...fields.map((f) => runValue(f, patch[f])),
        this.#host,
        Deno.pid,
        new Date().toISOString(),
        id,
      );
      if (Number(r.changes) === 0) throw new Error(`No run "${id}" in ${this.url}`);
    });
  }

  heartbeat(id: string): Promise<void> {
    return this.#write(() => {
      this.#q("UPDATE runs SET heartbeat_at = ? WHERE id = ?").run(new Date().toISOString(), id);
    });
  }

  getRun(id: string): Promise<RunRecord | null> {
    const r = this.#q("SELECT * FROM runs WHERE id = ?").get(id) as _Row | undefined;
    return Promise.resolve(r ? runFromRow(r) : null);
  }

  listRuns(q: RunQuery = {}): Promise<RunRecord[]> {
    const where: string[] = [], args: SQLInputValue[] = [];
    if (q.sweepId !== undefined) (where.push("sweep_id = ?"), args.push(q.sweepId));
    if (q.status !== undefined) (where.push("status = ?"), args.push(q.status));
    const sql = `SELECT * FROM runs ${where.length ? "WHERE " + where.join(" AND ") : ""}
                 ORDER BY started_at DESC, id DESC`;
    return Promise.resolve((this.#db.prepare(sql).all(...args) as _Row[]).map(runFromRow));
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
    return Promise.resolve((this.#db.prepare(sql).all(...args) as _Row[]).map(metricFromRow));
  }

  metricKeys(runId: string): Promise<string[]> {
    return Promise.resolve(this.#keys(runId));
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
    const ks = keys ?? this.#keys(runId);
    const out = new Map<string, MetricRow>();
    const s = this.#q(
      `SELECT seq, key, step, tokens, time, value FROM metrics WHERE run_id = ? AND key = ? ORDER BY ${order} LIMIT 1`,
    );
    for (const k of ks) {
      const r = s.get(runId, k) as _Row | undefined;
      if (r) out.set(k, metricFromRow(r));
    }
    return Promise.resolve(out);
  }

  lastSeq(): Promise<number> {
    const r = this.#q("SELECT MAX(seq) AS s FROM metrics").get() as _Row;
    return Promise.resolve(Number(r.s ?? 0));
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
    const rows = this.#q("SELECT * FROM events WHERE run_id = ? AND seq > ? ORDER BY seq").all(
      runId,
      afterSeq,
    );
    return Promise.resolve((rows as _Row[]).map(eventFromRow));
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
    const rows = this.#q("SELECT * FROM checkpoints WHERE run_id = ? ORDER BY step").all(runId) as _Row[];
    return Promise.resolve(rows.map(checkpointFromRow));
  }

  markInterrupted(staleSeconds = 600): Promise<string[]> {
    return this.#write(() => {
      const now = Date.now(), ids: string[] = [];
      const running = this.#q("SELECT id, host, pid, heartbeat_at FROM runs WHERE status = 'running'")
        .all() as _Row[];
      for (const r of running) {
        const why = interruptReason(r, { host: this.#host, nowMs: now, staleSeconds });
        if (why === null) continue;
        this.#q("UPDATE runs SET status = 'interrupted', ended_at = ?, error = ? WHERE id = ?").run(
          new Date().toISOString(),
          `Interrupted: ${why}`,
          String(r.id),
        );
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
    const r = this.#q("SELECT * FROM reports WHERE id = ?").get(id) as _Row | undefined;
    return Promise.resolve(r ? reportFromRow(r) : null);
  }

  listReports(sweepId?: string): Promise<ReportRecord[]> {
    const rows = sweepId === undefined
      ? this.#q("SELECT * FROM reports ORDER BY created_at DESC").all()
      : this.#q("SELECT * FROM reports WHERE sweep_id = ? ORDER BY created_at DESC").all(sweepId);
    return Promise.resolve((rows as _Row[]).map(reportFromRow));
  }

  integrityCheck(): Promise<string> {
    const rows = this.#db.prepare("PRAGMA integrity_check").all() as _Row[];
    return Promise.resolve(rows.map((r) => String(Object.values(r)[0])).join("; "));
  }

  close(): void {
    this.#stmts.clear();
    if (this.#db.isOpen) this.#db.close();
  }
}

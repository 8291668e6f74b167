/**
 * The Postgres run store's tables, in one schema of a database (default `dsmoe`, or `?schema=NAME` in the
 * URL), versioned by a row of `store_meta` and migrated forward on open. Migrations run in one transaction
 * under an advisory lock, so that processes opening a new store at once do not race on `CREATE TABLE`;
 * a store that is already current is only read (a role without CREATE rights can use it).
 *
 * Text that is sorted or compared by range (ids, times, metric keys) is `COLLATE "C"`: byte order, as in
 * SQLite, whatever the database's locale.
 *
 * Migration 2 adds the sweep queue (sweep_queue.ts): one row per sweep point, claimed with
 * `SELECT … FOR UPDATE SKIP LOCKED`, with the claiming worker and its heartbeat. Its times are TIMESTAMPTZ
 * from the server's clock (staleness is compared in SQL); the other tables keep ISO 8601 text.
 *
 * Migration 3 adds the lease of a run (`lease_id`, `leased_at` beside its writer's host, pid and heartbeat):
 * one process trains a run at a time.
 *
 * @module
 */
import type { Sql, TransactionSql } from "postgres";

/** Schema migrations: entry i brings a store from version i to i + 1. Never edit one that has shipped. */
const _MIGRATIONS: readonly (readonly string[])[] = [
  [
    `CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)`,
    `CREATE TABLE IF NOT EXISTS sweeps (
       id TEXT COLLATE "C" PRIMARY KEY, name TEXT NOT NULL, config_yaml TEXT NOT NULL,
       created_at TEXT COLLATE "C" NOT NULL)`,
    `CREATE TABLE IF NOT EXISTS runs (
       id TEXT COLLATE "C" PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, seed BIGINT NOT NULL,
       git_commit TEXT, adapter TEXT, started_at TEXT COLLATE "C" NOT NULL, ended_at TEXT,
       sweep_id TEXT COLLATE "C", sweep_params TEXT NOT NULL, error TEXT, step BIGINT NOT NULL,
       config_yaml TEXT NOT NULL, host TEXT, pid BIGINT, heartbeat_at TEXT)`,
    `CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep_id)`,
    `CREATE INDEX IF NOT EXISTS runs_status ON runs (status)`,
    `CREATE TABLE IF NOT EXISTS metrics (
       seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, run_id TEXT COLLATE "C" NOT NULL,
       key TEXT COLLATE "C" NOT NULL, step BIGINT NOT NULL, tokens BIGINT NOT NULL,
       time DOUBLE PRECISION NOT NULL, value DOUBLE PRECISION NOT NULL)`,
    `CREATE INDEX IF NOT EXISTS metrics_run_key_step ON metrics (run_id, key, step)`,
    // A run's points in commit order, and a live reader's new ones, without sorting the run.
    `CREATE INDEX IF NOT EXISTS metrics_run_seq ON metrics (run_id, seq)`,
    `CREATE TABLE IF NOT EXISTS events (
       seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, run_id TEXT COLLATE "C" NOT NULL,
       time TEXT NOT NULL, step BIGINT, kind TEXT NOT NULL, message TEXT NOT NULL, data TEXT)`,
    `CREATE INDEX IF NOT EXISTS events_run ON events (run_id, seq)`,
    `CREATE TABLE IF NOT EXISTS checkpoints (
       run_id TEXT COLLATE "C" NOT NULL, step BIGINT NOT NULL, path TEXT NOT NULL, bytes BIGINT NOT NULL,
       sha256 TEXT NOT NULL, time TEXT NOT NULL, PRIMARY KEY (run_id, step))`,
    `CREATE TABLE IF NOT EXISTS reports (
       id TEXT COLLATE "C" PRIMARY KEY, kind TEXT NOT NULL, sweep_id TEXT COLLATE "C",
       created_at TEXT COLLATE "C" NOT NULL, markdown TEXT NOT NULL, data TEXT NOT NULL)`,
    `CREATE INDEX IF NOT EXISTS reports_sweep ON reports (sweep_id)`,
  ],
  [
    `CREATE TABLE IF NOT EXISTS sweep_queue (
       sweep_id TEXT COLLATE "C" NOT NULL REFERENCES sweeps (id), point_index INTEGER NOT NULL,
       point_name TEXT NOT NULL, params TEXT NOT NULL, config_yaml TEXT NOT NULL, base_dir TEXT,
       status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'finished', 'failed')),
       worker_id TEXT, claim_id TEXT, heartbeat_at TIMESTAMPTZ, attempts INTEGER NOT NULL DEFAULT 0,
       run_id TEXT COLLATE "C", enqueued_at TIMESTAMPTZ NOT NULL, claimed_at TIMESTAMPTZ,
       finished_at TIMESTAMPTZ, error TEXT,
       PRIMARY KEY (sweep_id, point_index), UNIQUE (sweep_id, point_name))`,
    // What a claim scans: only the points still to do, oldest first.
    `CREATE INDEX IF NOT EXISTS sweep_queue_open ON sweep_queue (enqueued_at, sweep_id, point_index)
       WHERE status IN ('queued', 'running')`,
  ],
  [
    // Leases: the process that trains a run holds it (host, pid, heartbeat_at, and these).
    `ALTER TABLE runs ADD COLUMN IF NOT EXISTS lease_id TEXT`,
    `ALTER TABLE runs ADD COLUMN IF NOT EXISTS leased_at TEXT`,
  ],
];

/** The schema version this code writes. */
export const POSTGRES_SCHEMA_VERSION = _MIGRATIONS.length;

/**
 * SQL for the server's current time as ISO 8601 text, like JavaScript's `toISOString()`: what the tables
 * other than `sweep_queue` hold, where a time comes from the server's clock (heartbeats).
 */
export const SQL_NOW_ISO = `to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;

/** The tables of the current schema (checked by `integrityCheck`). */
export const POSTGRES_TABLES = [
  "store_meta",
  "sweeps",
  "runs",
  "metrics",
  "events",
  "checkpoints",
  "reports",
  "sweep_queue",
] as const;

/** The schema version of the store that `sql` reaches (its search_path is the store's schema); 0 if none. */
export async function schemaVersion(sql: Sql | TransactionSql): Promise<number> {
  const [t] = await sql`SELECT to_regclass('store_meta') IS NOT NULL AS present`;
  if (!t?.present) return 0;
  const [row] = await sql`SELECT value FROM store_meta WHERE key = 'schema_version'`;
  return row ? Number(row.value) : 0;
}

/**
 * Creates or migrates the store's tables in `schema` (the first entry of the connection's search_path).
 * Refuses a store written by a newer dsmoe.
 */
export async function migrate(sql: Sql, schema: string): Promise<void> {
  const current = await schemaVersion(sql);
  if (current === POSTGRES_SCHEMA_VERSION) return;
  _refuseNewer(current);
  await sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(hashtext(${`dsmoe.migrate.${schema}`}))`;
    const [ns] = await tx`SELECT 1 AS present FROM pg_namespace WHERE nspname = ${schema}`;
    if (!ns) await tx`CREATE SCHEMA IF NOT EXISTS ${tx(schema)}`;
    const v = await schemaVersion(tx); // again, under the lock: another process may have migrated meanwhile
    _refuseNewer(v);
    for (let i = v; i < POSTGRES_SCHEMA_VERSION; i++) {
      for (const statement of _MIGRATIONS[i]!) await tx.unsafe(statement);
    }
    await tx`INSERT INTO store_meta (key, value) VALUES ('schema_version', ${String(POSTGRES_SCHEMA_VERSION)})
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value`;
  });
}

function _refuseNewer(v: number): void {
  if (v > POSTGRES_SCHEMA_VERSION) {
    throw new Error(
      `the store has schema version ${v}, newer than this dsmoe's ${POSTGRES_SCHEMA_VERSION}: update dsmoe`,
    );
  }
}

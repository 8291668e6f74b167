/**
 * The sweep queue of a Postgres store (sweep_queue.ts): table `sweep_queue` (migration 2 of
 * postgres_schema.ts), one row per point, primary key (sweep, index).
 *
 * A claim is one transaction: `SELECT … LIMIT 1 FOR UPDATE SKIP LOCKED` finds a row that no other claim is
 * looking at (a running point gone stale first, else the oldest queued one), then an UPDATE makes it this
 * worker's with a fresh claim id. Concurrent claimers never wait for each other and never get the same
 * row. Staleness compares `heartbeat_at` with the server's `clock_timestamp()`: the workers' own clocks do
 * not matter.
 *
 * @module
 */
import type { Row, Sql, TransactionSql } from "postgres";
import { SQL_NOW_ISO } from "./postgres_schema.ts";
import { describePostgresError, isPostgresFailure, type PostgresUrl } from "./postgres_url.ts";
import type { SweepRecord } from "./store.ts";
import type {
  Claim,
  ClaimOptions,
  ClaimResult,
  EnqueueOutcome,
  PointStatus,
  PointToEnqueue,
  QueuedPoint,
  SweepQueue,
} from "./sweep_queue.ts";

/** The sweep queue over a Postgres store's connection pool. */
export class PostgresSweepQueue implements SweepQueue {
  readonly #sql: Sql;
  readonly #u: PostgresUrl;

  constructor(sql: Sql, u: PostgresUrl) {
    this.#sql = sql;
    this.#u = u;
  }

  enqueue(sweep: SweepRecord, points: readonly PointToEnqueue[]): Promise<EnqueueOutcome[]> {
    return this.#run((sql) =>
      sql.begin(async (tx) => {
        await tx`INSERT INTO sweeps (id, name, config_yaml, created_at)
                 VALUES (${sweep.id}, ${sweep.name}, ${sweep.config_yaml}, ${sweep.created_at})
                 ON CONFLICT (id) DO NOTHING`;
        const col = <T>(f: (p: PointToEnqueue) => T) => points.map(f);
        const added = await tx`
          INSERT INTO sweep_queue (sweep_id, point_index, point_name, params, config_yaml, base_dir, run_id,
                                   status, enqueued_at, finished_at)
          SELECT ${sweep.id}, p.*, CASE WHEN p.run_id IS NULL THEN 'queued' ELSE 'finished' END,
                 clock_timestamp(), CASE WHEN p.run_id IS NULL THEN NULL ELSE clock_timestamp() END
          FROM unnest(${col((p) => p.index)}::int4[], ${col((p) => p.name)}::text[],
                      ${col((p) => JSON.stringify(p.params))}::text[], ${col((p) => p.config_yaml)}::text[],
                      ${col((p) => p.base_dir)}::text[], ${col((p) => p.finished_run_id ?? null)}::text[])
               AS p (point_index, point_name, params, config_yaml, base_dir, run_id)
          ON CONFLICT DO NOTHING RETURNING point_index, status`;
        const requeued = await tx`
          UPDATE sweep_queue SET status = 'queued', attempts = 0, error = NULL, claim_id = NULL,
                                 finished_at = NULL, enqueued_at = clock_timestamp()
          WHERE sweep_id = ${sweep.id} AND status = 'failed'
            AND point_index = ANY(${col((p) => p.index)}::int4[])
          RETURNING point_index`;
        const fresh = new Map(added.map((r) => [Number(r.point_index), String(r.status)]));
        const again = new Set(requeued.map((r) => Number(r.point_index)));
        const rows = await tx`SELECT point_index, point_name, status, run_id FROM sweep_queue
                              WHERE sweep_id = ${sweep.id} ORDER BY point_index`;
        return rows.map((r): EnqueueOutcome => {
          const i = Number(r.point_index), added = fresh.get(i);
          const state = added === "queued"
            ? "enqueued"
            : added === "finished"
            ? "finished_earlier"
            : again.has(i)
            ? "requeued"
            : String(r.status) as PointStatus;
          return { point_index: i, point_name: String(r.point_name), state, run_id: _str(r.run_id) };
        });
      })
    );
  }

  claim(o: ClaimOptions): Promise<ClaimResult> {
    return this.#run((sql) =>
      sql.begin(async (tx): Promise<ClaimResult> => {
        const scope = o.sweepId === undefined ? tx`TRUE` : tx`sweep_id = ${o.sweepId}`;
        const [row] = await tx`
          SELECT *, EXTRACT(EPOCH FROM clock_timestamp() - heartbeat_at)::float8 AS silent_s
          FROM sweep_queue
          WHERE ${scope} AND (status = 'queued' OR (status = 'running'
            AND heartbeat_at < clock_timestamp() - make_interval(secs => ${o.staleSeconds}::float8)))
          ORDER BY status = 'running' DESC, enqueued_at, sweep_id, point_index
          LIMIT 1 FOR UPDATE SKIP LOCKED`;
        if (!row) {
          const [n] = await tx`SELECT count(*)::int AS n FROM sweep_queue
                               WHERE ${scope} AND status IN ('queued', 'running')`;
          return { kind: "none", pending: Number(n?.n ?? 0) };
        }
        const takenFrom = row.status === "running"
          ? { worker_id: _str(row.worker_id), silent_s: Number(row.silent_s) }
          : null;
        const key = tx`sweep_id = ${row.sweep_id} AND point_index = ${row.point_index}`;
        if (Number(row.attempts) >= o.maxAttempts) {
          const why = takenFrom
            ? `: the last, by worker ${takenFrom.worker_id}, stopped heartbeating ` +
              `${Math.round(takenFrom.silent_s)} s ago`
            : "";
          const [failed] = await tx`
            UPDATE sweep_queue SET status = 'failed', claim_id = NULL, finished_at = clock_timestamp(),
              error = ${`Gave up after ${row.attempts} attempts${why}`}
            WHERE ${key} RETURNING *`;
          return { kind: "gave_up", point: queuedPointFromRow(failed!) };
        }
        const [claimed] = await tx`
          UPDATE sweep_queue SET status = 'running', worker_id = ${o.workerId},
            claim_id = ${crypto.randomUUID()}, heartbeat_at = clock_timestamp(), claimed_at = clock_timestamp(),
            attempts = attempts + 1, run_id = COALESCE(run_id, ${o.newRunId(String(row.point_name))}),
            error = NULL
          WHERE ${key} RETURNING *`;
        const [n] = await tx`SELECT count(*)::int AS n FROM sweep_queue WHERE sweep_id = ${row.sweep_id}`;
        return {
          kind: "claimed",
          claim: { point: queuedPointFromRow(claimed!), sweepPoints: Number(n?.n ?? 0), takenFrom },
        };
      })
    );
  }

  heartbeat(c: Claim): Promise<boolean> {
    return this.#run(async (sql) => {
      // The run's heartbeat too (the dashboard and markInterrupted read it), once its record exists.
      const [r] = await sql`
        WITH q AS (
          UPDATE sweep_queue SET heartbeat_at = clock_timestamp() WHERE ${_mine(sql, c)} RETURNING run_id),
        r AS (UPDATE runs SET heartbeat_at = ${sql.unsafe(SQL_NOW_ISO)} FROM q WHERE runs.id = q.run_id)
        SELECT count(*)::int AS n FROM q`;
      return Number(r?.n ?? 0) > 0;
    });
  }

  finish(c: Claim): Promise<boolean> {
    return this.#end(c, "finished", null);
  }

  fail(c: Claim, error: string): Promise<boolean> {
    return this.#end(c, "failed", error);
  }

  release(c: Claim): Promise<boolean> {
    return this.#run(async (sql) => {
      const r = await sql`
        UPDATE sweep_queue SET status = 'queued', claim_id = NULL, attempts = GREATEST(attempts - 1, 0),
          heartbeat_at = clock_timestamp()
        WHERE ${_mine(sql, c)}`;
      return r.count > 0;
    });
  }

  points(sweepId?: string): Promise<QueuedPoint[]> {
    return this.#run(async (sql) => {
      const where = sweepId === undefined ? sql`TRUE` : sql`sweep_id = ${sweepId}`;
      const rows = await sql`SELECT * FROM sweep_queue WHERE ${where} ORDER BY sweep_id, point_index`;
      return rows.map(queuedPointFromRow);
    });
  }

  #end(c: Claim, status: "finished" | "failed", error: string | null): Promise<boolean> {
    return this.#run(async (sql) => {
      const r = await sql`
        UPDATE sweep_queue SET status = ${status}, error = ${error}, claim_id = NULL,
          heartbeat_at = clock_timestamp(), finished_at = clock_timestamp()
        WHERE ${_mine(sql, c)}`;
      return r.count > 0;
    });
  }

  /** Runs `fn`; a failure reads as one line naming the store, without the password. */
  async #run<T>(fn: (sql: Sql) => Promise<T>): Promise<T> {
    try {
      return await fn(this.#sql);
    } catch (e) {
      if (!isPostgresFailure(e)) throw e;
      throw new Error(`Sweep queue of ${this.#u.display}: ${describePostgresError(e, this.#u)}`);
    }
  }
}

/** The row of claim `c`, while it is still running under that claim. */
function _mine(sql: Sql | TransactionSql, c: Claim) {
  return sql`sweep_id = ${c.point.sweep_id} AND point_index = ${c.point.point_index}
             AND claim_id = ${c.point.claim_id} AND status = 'running'`;
}

const _str = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));
const _iso = (v: unknown): string | null =>
  v instanceof Date
    ? v.toISOString()
    : v === null || v === undefined
    ? null
    : new Date(String(v)).toISOString();

/** A `sweep_queue` row. */
export function queuedPointFromRow(r: Row): QueuedPoint {
  return {
    sweep_id: String(r.sweep_id),
    point_index: Number(r.point_index),
    point_name: String(r.point_name),
    params: JSON.parse(String(r.params)),
    config_yaml: String(r.config_yaml),
    base_dir: _str(r.base_dir),
    status: String(r.status) as PointStatus,
    worker_id: _str(r.worker_id),
    claim_id: _str(r.claim_id),
    heartbeat_at: _iso(r.heartbeat_at),
    attempts: Number(r.attempts),
    run_id: _str(r.run_id),
    enqueued_at: _iso(r.enqueued_at)!,
    claimed_at: _iso(r.claimed_at),
    finished_at: _iso(r.finished_at),
    error: _str(r.error),
  };
}

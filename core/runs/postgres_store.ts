/**
 * The Postgres run store (npm `postgres`), for runs written from many machines: the same contract as the
 * SQLite store (store.ts), over a small connection pool.
 *
 * Seq order is commit order, as in SQLite: a transaction that appends metric points (or events) first
 * takes its table's EXCLUSIVE lock, which lets readers through but no other writer, and keeps it until it
 * has committed; so a reader that has seen seq n never later finds a new point below n. Heartbeats and
 * staleness use the database server's clock, not each machine's.
 *
 * @module
 */
import postgres, { type Fragment, type Sql, type TransactionSql } from "postgres";
import {
  migrate,
  POSTGRES_SCHEMA_VERSION,
  POSTGRES_TABLES,
  schemaVersion,
  SQL_NOW_ISO,
} from "./postgres_schema.ts";
import {
  describePostgresError,
  isPostgresFailure,
  parsePostgresUrl,
  type PostgresUrl,
} from "./postgres_url.ts";
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
import { RunBusyError, StoreMissingError } from "./store_errors.ts";
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
import type { HasSweepQueue, SweepQueue } from "./sweep_queue.ts";
import { PostgresSweepQueue } from "./postgres_queue.ts";

/** A Postgres run store, with its sweep queue; `close()` resolves once its connections are closed. */
export interface PostgresRunStore extends RunStore, HasSweepQueue {
  close(): Promise<void>;
}

/**
 * Opens the store at a `postgres://` URL, creating or migrating its tables; with `create: false`, a schema
 * without the store's tables is StoreMissingError (nothing is created). Errors name the URL without its
 * password.
 *
 * @example
 * ```ts ignore
 * const store = await openPostgresStore("postgres://me@127.0.0.1:5432/runs");
 * console.log((await store.listRuns()).length);
 * await store.close();
 * ```
 */
export async function openPostgresStore(
  url: string,
  o: { create?: boolean } = {},
): Promise<PostgresRunStore> {
  const u = parsePostgresUrl(url);
  const timeoutInUrl = new URL(u.connect).searchParams.has("connect_timeout");
  const sql = postgres(u.connect, {
    max: 4, // a trainer and its live dashboard (the client's default is 10)
    ...(timeoutInUrl ? {} : { connect_timeout: 10 }), // seconds (the client's default is 30)
    connection: { search_path: u.schema, application_name: "dsmoe" },
    onnotice: () => {}, // "already exists, skipping" is expected, and stdout belongs to the CLI
  });
  let missing = false;
  try {
    if (o.create === false && await schemaVersion(sql) === 0) missing = true;
    else await migrate(sql, u.schema);
  } catch (e) {
    await sql.end({ timeout: 0 }).catch(() => {});
    throw new Error(`Cannot open the run store ${u.display}: ${describePostgresError(e, u)}`);
  }
  if (missing) {
    await sql.end({ timeout: 0 }).catch(() => {});
    throw new StoreMissingError(
      `No run store at ${u.display}: its schema ${u.schema} has no dsmoe tables (train a run into it with ` +
        "`deno task run … --store`, or check the URL)",
    );
  }
  return new _PostgresStore(sql, u);
}

const _COLS = "seq, key, step, tokens, time, value";

class _PostgresStore implements PostgresRunStore {
  readonly url: string;
  readonly access: StoreAccess = { mode: "read-write" };
  readonly sweepQueue: SweepQueue;
  readonly #sql: Sql;
  readonly #u: PostgresUrl;
  readonly #host = thisHost();
  #closed: Promise<void> | null = null;

  constructor(sql: Sql, u: PostgresUrl) {
    this.#sql = sql;
    this.#u = u;
    this.url = u.display;
    this.sweepQueue = new PostgresSweepQueue(sql, u);
  }

  createSweep(s: SweepRecord): Promise<void> {
    return this.#run(async (sql) => {
      await sql`INSERT INTO sweeps (id, name, config_yaml, created_at)
                VALUES (${s.id}, ${s.name}, ${s.config_yaml}, ${s.created_at}) ON CONFLICT (id) DO NOTHING`;
    });
  }

  getSweep(id: string): Promise<SweepRecord | null> {
    return this.#run(async (sql) => {
      const [r] = await sql`SELECT * FROM sweeps WHERE id = ${id}`;
      return r ? sweepFromRow(r) : null;
    });
  }

  listSweeps(): Promise<SweepRecord[]> {
    return this.#run(async (sql) =>
      (await sql`SELECT * FROM sweeps ORDER BY created_at DESC`).map(sweepFromRow)
    );
  }

  createRun(meta: RunMeta, configYaml: string): Promise<void> {
    return this.#run(async (sql) => {
      if (!await this.#insertRun(sql, meta, configYaml, null)) {
        throw new Error(`Run "${meta.id}" already exists in ${this.url}`);
      }
    });
  }

  /** Inserts run `meta` written by this process, held by `leaseId` where given; false if the id exists. */
  async #insertRun(sql: Sql | TransactionSql, meta: RunMeta, yaml: string, leaseId: string | null) {
    const now = sql.unsafe(SQL_NOW_ISO);
    const rows = await sql`
      INSERT INTO runs (id, ${sql.unsafe(RUN_FIELDS.join(", "))}, config_yaml, host, pid, heartbeat_at,
                        lease_id, leased_at)
      VALUES (${meta.id}, ${this.#values(meta)}, ${yaml}, ${this.#host}, ${Deno.pid}, ${now}, ${leaseId},
              ${leaseId === null ? null : now})
      ON CONFLICT (id) DO NOTHING RETURNING id`;
    return rows.length > 0;
  }

  createPointRun(
    meta: RunMeta,
    configYaml: string,
    o: { staleSeconds?: number } = {},
  ): Promise<PointRunStart> {
    if (meta.sweep_id === null) return Promise.reject(new TypeError(`Run "${meta.id}" has no sweep point`));
    const stale = o.staleSeconds ?? RUN_STALE_SECONDS;
    return this.#run((sql) =>
      sql.begin(async (tx): Promise<PointRunStart> => {
        // Two processes starting the point at once: the second waits here, then finds the first's run.
        await tx`SELECT pg_advisory_xact_lock(hashtext(${`dsmoe.point.${meta.sweep_id}\n${meta.name}`}))`;
        const rows = await tx`
          SELECT *, EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS now_ms FROM runs
          WHERE sweep_id = ${meta.sweep_id} AND name = ${meta.name} ORDER BY started_at DESC, id DESC`;
        const nowMs = Number(rows[0]?.now_ms ?? 0); // the server's clock, as heartbeats are written
        const taken = pointTaken(rows, { host: this.#host, nowMs, staleSeconds: stale });
        if (taken) return taken;
        const lease: RunLease = { run_id: meta.id, lease_id: crypto.randomUUID(), took_over: null };
        if (!await this.#insertRun(tx, meta, configYaml, lease.lease_id)) {
          throw new Error(`Run "${meta.id}" already exists in ${this.url}`);
        }
        return { kind: "created", lease };
      })
    );
  }

  importRun(meta: RunMeta, configYaml: string): Promise<boolean> {
    return this.#run(async (sql) => {
      const rows = await sql`
        INSERT INTO runs (id, ${sql.unsafe(RUN_FIELDS.join(", "))}, config_yaml)
        VALUES (${meta.id}, ${this.#values(meta)}, ${configYaml}) ON CONFLICT (id) DO NOTHING RETURNING id`;
      return rows.length > 0;
    });
  }

  /** The values of the run fields of `meta`, comma-separated, in `RUN_FIELDS` order. */
  #values(meta: RunMeta): Fragment {
    const vals = RUN_FIELDS.map((f) => this.#sql`${runValue(f, meta[f])}`);
    return vals.reduce((a, b) => this.#sql`${a}, ${b}`);
  }

  updateRun(id: string, patch: RunPatch, o: { lease?: RunLease } = {}): Promise<void> {
    const fields = RUN_FIELDS.filter((f) => f in patch);
    const ends = patch.status !== undefined && patch.status !== "running";
    return this.#run(async (sql) => {
      const sets = fields.map((f) => sql`${sql(f)} = ${runValue(f, patch[f])}`);
      if (patch.config_yaml !== undefined) sets.push(sql`config_yaml = ${patch.config_yaml}`);
      // Without a lease, the writer is recorded only where no process holds the run.
      const mine = (col: string, v: string | number | null) =>
        o.lease
          ? sql`${sql(col)} = ${v}`
          : sql`${sql(col)} = CASE WHEN lease_id IS NULL THEN ${v} ELSE ${sql(col)} END`;
      sets.push(mine("host", this.#host), mine("pid", Deno.pid));
      sets.push(
        o.lease
          ? sql`heartbeat_at = ${sql.unsafe(SQL_NOW_ISO)}`
          : sql`heartbeat_at = CASE WHEN lease_id IS NULL THEN ${
            sql.unsafe(SQL_NOW_ISO)
          } ELSE heartbeat_at END`,
      );
      if (ends) sets.push(sql`lease_id = NULL`, sql`leased_at = NULL`);
      const where = o.lease ? sql`id = ${id} AND lease_id = ${o.lease.lease_id}` : sql`id = ${id}`;
      const r = await sql`UPDATE runs SET ${sets.reduce((a, b) => sql`${a}, ${b}`)} WHERE ${where}`;
      if (r.count > 0) return;
      const [now] = await sql`SELECT host, pid, heartbeat_at, lease_id, leased_at,
                                EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS now_ms FROM runs WHERE id = ${id}`;
      if (!now) throw new Error(`No run "${id}" in ${this.url}`);
      throw new RunBusyError(runLostMessage(id, now, Number(now.now_ms)));
    });
  }

  acquireRun(id: string, o: { staleSeconds?: number } = {}): Promise<RunLease> {
    const stale = o.staleSeconds ?? RUN_STALE_SECONDS;
    return this.#run((sql) =>
      sql.begin(async (tx) => {
        const [r] = await tx`SELECT host, pid, heartbeat_at, lease_id, leased_at,
                               EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS now_ms
                             FROM runs WHERE id = ${id} FOR UPDATE`;
        if (!r) throw new Deno.errors.NotFound(`No run "${id}" in ${this.url}`);
        const now = Number(r.now_ms);
        let tookOver: string | null = null;
        if (r.lease_id !== null) {
          const why = interruptReason(r, { host: this.#host, nowMs: now, staleSeconds: stale });
          if (why === null) throw new RunBusyError(runBusyMessage(id, r, now, stale));
          tookOver = `${describeHolder(r, now)}: ${why}`;
        }
        const lease: RunLease = { run_id: id, lease_id: crypto.randomUUID(), took_over: tookOver };
        await tx`UPDATE runs SET host = ${this.#host}, pid = ${Deno.pid}, heartbeat_at = ${
          tx.unsafe(SQL_NOW_ISO)
        },
                   lease_id = ${lease.lease_id}, leased_at = ${tx.unsafe(SQL_NOW_ISO)} WHERE id = ${id}`;
        return lease;
      })
    );
  }

  renewRun(lease: RunLease): Promise<boolean> {
    return this.#run(async (sql) => {
      const r = await sql`UPDATE runs SET heartbeat_at = ${sql.unsafe(SQL_NOW_ISO)}
                          WHERE id = ${lease.run_id} AND lease_id = ${lease.lease_id}`;
      return r.count > 0;
    });
  }

  releaseRun(lease: RunLease): Promise<void> {
    return this.#run(async (sql) => {
      await sql`UPDATE runs SET lease_id = NULL, leased_at = NULL
                WHERE id = ${lease.run_id} AND lease_id = ${lease.lease_id}`;
    });
  }

  heartbeat(id: string): Promise<void> {
    return this.#run(async (sql) => {
      await sql`UPDATE runs SET heartbeat_at = ${sql.unsafe(SQL_NOW_ISO)} WHERE id = ${id}`;
    });
  }

  getRun(id: string): Promise<RunRecord | null> {
    return this.#run(async (sql) => {
      const [r] = await sql`SELECT * FROM runs WHERE id = ${id}`;
      return r ? runFromRow(r) : null;
    });
  }

  deleteRun(lease: RunLease): Promise<boolean> {
    return this.#run((sql) =>
      sql.begin(async (tx) => {
        const id = lease.run_id;
        const r = await tx`DELETE FROM runs WHERE id = ${id} AND lease_id = ${lease.lease_id}`;
        if (r.count === 0) return false;
        await tx`DELETE FROM metrics WHERE run_id = ${id}`;
        await tx`DELETE FROM events WHERE run_id = ${id}`;
        await tx`DELETE FROM checkpoints WHERE run_id = ${id}`;
        return true;
      })
    );
  }

  listRuns(q: RunQuery = {}): Promise<RunRecord[]> {
    return this.#run(async (sql) => {
      const where = [sql`TRUE`];
      if (q.sweepId !== undefined) where.push(sql`sweep_id = ${q.sweepId}`);
      if (q.status !== undefined) where.push(sql`status = ${q.status}`);
      const rows = await sql`SELECT * FROM runs WHERE ${_and(sql, where)} ORDER BY started_at DESC, id DESC`;
      return rows.map(runFromRow);
    });
  }

  logMetrics(runId: string, points: readonly MetricPoint[]): Promise<void> {
    const bad = metricPointsError(points, { integers: true }); // step and tokens are BIGINT
    if (bad) return Promise.reject(bad);
    if (points.length === 0) return Promise.resolve();
    return this.#run((sql) =>
      sql.begin(async (tx) => {
        await tx`LOCK TABLE metrics IN EXCLUSIVE MODE`; // seq order = commit order (see the module doc)
        // One statement for the whole batch: five arrays, however many points.
        const col = <K extends keyof MetricPoint>(k: K) => points.map((p) => p[k]);
        await tx`INSERT INTO metrics (run_id, key, step, tokens, time, value)
                 SELECT ${runId}, * FROM unnest(${col("key")}::text[], ${col("step")}::int8[],
                   ${col("tokens")}::int8[], ${col("time")}::float8[], ${col("value")}::float8[])`;
      })
    );
  }

  metrics(runId: string, q: MetricQuery = {}): Promise<MetricRow[]> {
    if (q.keys && q.keys.length === 0) return Promise.resolve([]);
    return this.#run(async (sql) => {
      const where = [sql`run_id = ${runId}`];
      if (q.keys) where.push(sql`key = ANY(${[...q.keys]}::text[])`);
      // A range, not LIKE: keys hold "_" and "%" literally, and the (run, key) index serves a range.
      if (q.prefix !== undefined) where.push(sql`key >= ${q.prefix} AND key < ${q.prefix + "\uffff"}`);
      if (q.afterSeq !== undefined) where.push(sql`seq > ${Math.floor(q.afterSeq)}`);
      const limit = q.limit !== undefined ? sql`LIMIT ${Math.max(0, Math.floor(q.limit))}` : sql``;
      const rows = await sql`SELECT ${sql.unsafe(_COLS)} FROM metrics WHERE ${_and(sql, where)}
                             ORDER BY seq ${limit}`;
      return rows.map(metricFromRow);
    });
  }

  metricKeys(runId: string): Promise<string[]> {
    return this.#run(async (sql) =>
      (await sql`${_keys(sql, runId)} SELECT key FROM k WHERE key IS NOT NULL`).map((r) => r.key)
    );
  }

  lastMetrics(runId: string, keys?: readonly string[]): Promise<Map<string, MetricRow>> {
    return this.#perKey(runId, keys, "x.step DESC, x.seq DESC");
  }

  bestMetrics(runId: string, keys: readonly string[]): Promise<Map<string, MetricRow>> {
    return this.#perKey(runId, keys, "x.value ASC, x.step ASC, x.seq ASC");
  }

  /** The first point of each key in `order`: one index probe per key, in one query. */
  #perKey(
    runId: string,
    keys: readonly string[] | undefined,
    order: string,
  ): Promise<Map<string, MetricRow>> {
    return this.#run(async (sql) => {
      // In the order of `keys`, else of the keys themselves, as the SQLite store gives them.
      const from = keys ? sql`unnest(${[...keys]}::text[]) WITH ORDINALITY AS k (key, ord)` : sql`k`;
      const rows = await sql`${keys ? sql`` : _keys(sql, runId)}
        SELECT m.* FROM ${from} CROSS JOIN LATERAL (
          SELECT ${sql.unsafe(_COLS.split(", ").map((c) => `x.${c}`).join(", "))} FROM metrics x
          WHERE x.run_id = ${runId} AND x.key = k.key ORDER BY ${sql.unsafe(order)} LIMIT 1) m
        ORDER BY ${keys ? sql`k.ord` : sql`k.key`}`;
      return new Map(rows.map((r) => [String(r.key), metricFromRow(r)]));
    });
  }

  lastSeq(): Promise<number> {
    return this.#run(async (sql) => {
      const [r] = await sql`SELECT MAX(seq) AS s FROM metrics`;
      return Number(r?.s ?? 0);
    });
  }

  logEvent(
    runId: string,
    e: { kind: EventKind; message: string; step?: number | null; data?: Record<string, unknown> },
  ): Promise<void> {
    return this.#run((sql) =>
      sql.begin(async (tx) => {
        await tx`LOCK TABLE events IN EXCLUSIVE MODE`;
        await tx`INSERT INTO events (run_id, time, step, kind, message, data)
                 VALUES (${runId}, ${new Date().toISOString()}, ${e.step ?? null}, ${e.kind}, ${e.message},
                         ${e.data ? JSON.stringify(e.data) : null})`;
      })
    );
  }

  events(runId: string, afterSeq = 0): Promise<RunEvent[]> {
    return this.#run(async (sql) => {
      const rows = await sql`SELECT * FROM events WHERE run_id = ${runId} AND seq > ${Math.floor(afterSeq)}
                             ORDER BY seq`;
      return rows.map(eventFromRow);
    });
  }

  recordCheckpoint(c: CheckpointRecord): Promise<void> {
    return this.#run(async (sql) => {
      await sql`INSERT INTO checkpoints (run_id, step, path, bytes, sha256, time)
                VALUES (${c.run_id}, ${c.step}, ${c.path}, ${c.bytes}, ${c.sha256}, ${c.time})
                ON CONFLICT (run_id, step) DO UPDATE SET path = EXCLUDED.path, bytes = EXCLUDED.bytes,
                  sha256 = EXCLUDED.sha256, time = EXCLUDED.time`;
    });
  }

  removeCheckpoint(runId: string, step: number): Promise<void> {
    return this.#run(async (sql) => {
      await sql`DELETE FROM checkpoints WHERE run_id = ${runId} AND step = ${step}`;
    });
  }

  checkpoints(runId: string): Promise<CheckpointRecord[]> {
    return this.#run(async (sql) => {
      const rows = await sql`SELECT * FROM checkpoints WHERE run_id = ${runId} ORDER BY step`;
      return rows.map(checkpointFromRow);
    });
  }

  markInterrupted(staleSeconds = RUN_STALE_SECONDS): Promise<string[]> {
    return this.#run((sql) =>
      sql.begin(async (tx) => {
        // Another process marking at the same time waits on these rows, then finds them no longer running.
        const running = await tx`
          SELECT id, host, pid, heartbeat_at, EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS now_ms
          FROM runs WHERE status = 'running' ORDER BY id FOR UPDATE`;
        const ids: string[] = [];
        for (const r of running) {
          const why = interruptReason(r, { host: this.#host, nowMs: Number(r.now_ms), staleSeconds });
          if (why === null) continue;
          await tx`UPDATE runs SET status = 'interrupted', ended_at = ${new Date().toISOString()},
                     error = ${`Interrupted: ${why}`}, lease_id = NULL, leased_at = NULL WHERE id = ${r.id}`;
          if (ids.length === 0) await tx`LOCK TABLE events IN EXCLUSIVE MODE`;
          await tx`INSERT INTO events (run_id, time, step, kind, message, data)
                   VALUES (${r.id}, ${new Date().toISOString()}, NULL, 'interrupted',
                           ${`Marked interrupted: ${why}`}, NULL)`;
          ids.push(String(r.id));
        }
        return ids;
      })
    );
  }

  saveReport(r: ReportRecord): Promise<void> {
    return this.#run(async (sql) => {
      await sql`INSERT INTO reports (id, kind, sweep_id, created_at, markdown, data)
                VALUES (${r.id}, ${r.kind}, ${r.sweep_id}, ${r.created_at}, ${r.markdown}, ${
        JSON.stringify(r.data)
      })
                ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, sweep_id = EXCLUDED.sweep_id,
                  created_at = EXCLUDED.created_at, markdown = EXCLUDED.markdown, data = EXCLUDED.data`;
    });
  }

  getReport(id: string): Promise<ReportRecord | null> {
    return this.#run(async (sql) => {
      const [r] = await sql`SELECT * FROM reports WHERE id = ${id}`;
      return r ? reportFromRow(r) : null;
    });
  }

  listReports(sweepId?: string): Promise<ReportRecord[]> {
    return this.#run(async (sql) => {
      const where = sweepId === undefined ? sql`TRUE` : sql`sweep_id = ${sweepId}`;
      return (await sql`SELECT * FROM reports WHERE ${where} ORDER BY created_at DESC`).map(reportFromRow);
    });
  }

  /** The schema version, every table, and no invalid index (a failed concurrent build): "ok" or problems. */
  integrityCheck(): Promise<string> {
    return this.#run(async (sql) => {
      const problems: string[] = [];
      const v = await schemaVersion(sql);
      if (v !== POSTGRES_SCHEMA_VERSION) {
        problems.push(`schema version ${v}, expected ${POSTGRES_SCHEMA_VERSION}`);
      }
      for (const t of POSTGRES_TABLES) {
        const [r] = await sql`SELECT to_regclass(${t}) IS NOT NULL AS present`;
        if (!r?.present) problems.push(`table ${t} is missing`);
      }
      const bad = await sql`
        SELECT i.indexrelid::regclass::text AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
        WHERE c.relnamespace = ${this.#u.schema}::regnamespace AND NOT (i.indisvalid AND i.indisready)`;
      for (const r of bad) problems.push(`index ${r.name} is invalid`);
      return problems.length === 0 ? "ok" : problems.join("; ");
    });
  }

  close(): Promise<void> {
    this.#closed ??= this.#sql.end({ timeout: 5 }).catch(() => {});
    return this.#closed;
  }

  /** Runs `fn`; a failure reads as one line naming the store, without the password. */
  async #run<T>(fn: (sql: Sql) => Promise<T>): Promise<T> {
    try {
      return await fn(this.#sql);
    } catch (e) {
      // The store's own errors (RangeError, "already exists") pass as they are.
      if (!isPostgresFailure(e)) throw e;
      throw new Error(`Run store ${this.url}: ${describePostgresError(e, this.#u)}`);
    }
  }
}

/** `k (key)`: the distinct keys of a run, by skipping from one to the next in the (run, key) index. */
function _keys(sql: Sql, runId: string): Fragment {
  return sql`WITH RECURSIVE k (key) AS (
      (SELECT key FROM metrics WHERE run_id = ${runId} ORDER BY key LIMIT 1)
      UNION ALL
      SELECT (SELECT m.key FROM metrics m WHERE m.run_id = ${runId} AND m.key > k.key ORDER BY m.key LIMIT 1)
      FROM k WHERE k.key IS NOT NULL)`;
}

function _and(sql: Sql, parts: Fragment[]): Fragment {
  return parts.reduce((a, b) => sql`${a} AND ${b}`);
}

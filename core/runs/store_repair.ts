/**
 * Checking a run store against its runs directory, and rebuilding a SQLite store from the run directories
 * and what can still be read of the old one (`deno task store check`, `deno task store rebuild`,
 * core/cli/store_cmd.ts).
 *
 * `check` reads only. It reports the store's integrity (`PRAGMA quick_check`, or `integrity_check` with
 * `full`; a Postgres store's schema version, tables and indexes), then compares the runs in the store with
 * the run directories on disk: a record without its directory, a directory without a record, checkpoint
 * records against each run's `ckpt/manifest.json`, and each listed checkpoint file (its size; with `full`,
 * its SHA-256). Each problem is one line naming the run or file.
 *
 * `rebuild` deletes nothing. It reads what it can of the old store (whole tables, else row by row past the
 * pages that fail), moves it aside with its `-wal` and `-shm` (`runs.db.damaged-<UTC time>`), creates a new
 * store and fills it: every run directory becomes a run again (its salvaged record, else one made from its
 * `config.yaml` and checkpoints: status `finished` where the newest checkpoint reaches `train.steps`, else
 * `interrupted`), with its checkpoints from its manifest and its metric points from the old store and from
 * its `metrics.jsonl` journal; runs, events, sweeps and reports of the old store are kept too.
 *
 * @module
 */
import { sha256File } from "../util/fs.ts";
import { DatabaseSync, type SQLInputValue } from "node:sqlite";
import { parse as parseYaml } from "yaml";
import { parseExperimentText } from "../config/mod.ts";
import { type CheckpointEntry, ckptDir, listCheckpoints } from "./checkpoints.ts";
import { openPostgresStore } from "./postgres_store.ts";
import { METRICS_JOURNAL, readMetricJournal } from "./journal.ts";
import type { MetricPoint, RunMeta } from "./run_types.ts";
import { describeHolder, interruptReason, RUN_STALE_SECONDS, thisHost } from "./run_liveness.ts";
import {
  inspectStoreFile,
  openSqliteReadOnly,
  openSqliteStore,
  runDirectoryNames,
  SCHEMA_VERSION,
  sqliteTables,
  walProblem,
} from "./sqlite_store.ts";
import type { RunRecord, RunStore } from "./store.ts";
import { RunBusyError, StoreMissingError } from "./store_errors.ts";
import { RUN_FIELDS, runFromRow, runValue } from "./store_rows.ts";

/** What `check` found: problems (one line each, naming the run or file) and what it looked at. */
export interface StoreCheckReport {
  store: string;
  integrity: string; // "ok" or the problems
  runs: number; // records in the store (where readable)
  directories: number; // run directories on disk
  problems: string[];
}

/** Where the store is: a SQLite file or a Postgres URL (as open_store.ts's StoreLocation, resolved). */
export type RepairLocation = { kind: "sqlite"; path: string } | { kind: "postgres"; url: string };

/**
 * Checks the store at `loc` against the run directories of `runsDir` (see the module doc). Reads only. A
 * store that does not exist is StoreMissingError.
 */
export async function checkStore(
  runsDir: string,
  loc: RepairLocation,
  o: { full?: boolean } = {},
): Promise<StoreCheckReport> {
  const dirs = runDirectoryNames(runsDir);
  const name = loc.kind === "sqlite" ? loc.path : loc.url;
  const report: StoreCheckReport = {
    store: name,
    integrity: "",
    runs: 0,
    directories: dirs.length,
    problems: [],
  };
  let store: RunStore;
  try {
    store = loc.kind === "sqlite"
      ? openSqliteStore(loc.path, { mode: "read", create: false, runsDir, check: false })
      : await openPostgresStore(loc.url, { create: false });
  } catch (e) {
    if (e instanceof StoreMissingError) throw e;
    report.integrity = (e as Error).message;
    report.problems.push((e as Error).message);
    if (dirs.length > 0) {
      report.problems.push(
        `${dirs.length} run director${dirs.length === 1 ? "y" : "ies"} in ${runsDir} ` +
          `${dirs.length === 1 ? "has" : "have"} no readable record`,
      );
    }
    return report;
  }
  try {
    report.store = store.url;
    report.integrity = await store.integrityCheck({ quick: !o.full });
    if (report.integrity !== "ok") {
      for (const p of report.integrity.split("; ").slice(0, 20)) {
        report.problems.push(`${name}: integrity: ${p}`);
      }
    }
    let runs: RunRecord[];
    try {
      runs = await store.listRuns();
    } catch (e) {
      report.problems.push(`${name}: cannot list its runs: ${(e as Error).message}`);
      return report;
    }
    report.runs = runs.length;
    const onDisk = new Set(dirs);
    for (const r of runs) {
      if (!onDisk.has(r.id)) {
        // Runs logged through the dashboard's API have no directory.
        if (r.adapter !== "remote") {
          report.problems.push(`run ${r.id}: in the store, but ${runsDir}/${r.id}/config.yaml is missing`);
        }
        continue;
      }
      report.problems.push(...await _checkRunFiles(store, runsDir, r.id, o.full ?? false));
    }
    const inStore = new Set(runs.map((r) => r.id));
    for (const d of dirs) {
      if (!inStore.has(d)) {
        report.problems.push(`${runsDir}/${d}: a run directory with no record in the store`);
      }
    }
  } finally {
    await store.close();
  }
  return report;
}

/** The checkpoint records of run `id` against its manifest and files: one line per problem. */
async function _checkRunFiles(
  store: RunStore,
  runsDir: string,
  id: string,
  full: boolean,
): Promise<string[]> {
  const dir = `${runsDir}/${id}`, problems: string[] = [];
  let listed: CheckpointEntry[];
  try {
    listed = await listCheckpoints(dir);
  } catch (e) {
    return [`run ${id}: ${(e as Error).message}`];
  }
  let records;
  try {
    records = await store.checkpoints(id);
  } catch (e) {
    return [`run ${id}: cannot read its checkpoint records: ${(e as Error).message}`];
  }
  const byStep = new Map(listed.map((e) => [e.step, e]));
  for (const c of records) {
    const e = byStep.get(c.step);
    if (!e) {
      problems.push(
        `run ${id}: checkpoint step ${c.step} is in the store but not in ${dir}/ckpt/manifest.json`,
      );
    } else if (e.sha256 !== c.sha256 || e.bytes !== c.bytes) {
      problems.push(
        `run ${id}: checkpoint step ${c.step}: the store and ${dir}/ckpt/manifest.json disagree on it`,
      );
    }
  }
  const recorded = new Set(records.map((c) => c.step));
  for (const e of listed) {
    const file = `${ckptDir(dir)}/${e.file}`;
    if (!recorded.has(e.step)) problems.push(`run ${id}: ${file} is in the manifest but not in the store`);
    let info: Deno.FileInfo;
    try {
      info = await Deno.lstat(file);
    } catch {
      problems.push(`run ${id}: ${file}, listed in the manifest, is missing`);
      continue;
    }
    if (!info.isFile) {
      problems.push(`run ${id}: ${file}, listed in the manifest, is not a regular file (never read)`);
    } else if (info.size !== e.bytes) {
      problems.push(`run ${id}: ${file} has ${info.size} bytes, the manifest says ${e.bytes}`);
    } else if (full && await sha256File(file) !== e.sha256) {
      problems.push(`run ${id}: ${file} does not match the SHA-256 in the manifest`);
    }
  }
  return problems;
}

/** What `rebuild` did: the lines it reports, where the old store went, and the counts. */
export interface RebuildReport {
  lines: string[];
  movedTo: string | null; // the old store's new name (null: there was none)
  runs: number;
  points: number;
  lost: string[]; // what could not be read of the old store
}

type _Row = Record<string, SQLInputValue>;

/** What was read of the old store, table by table, and what could not be. */
interface _Salvage {
  tables: Map<string, _Row[]>;
  lost: string[];
  note: string | null; // why nothing at all could be read
}

const _TABLES = sqliteTables(SCHEMA_VERSION);

/**
 * Rebuilds the SQLite store at `path` of runs directory `runsDir` (see the module doc). Refuses
 * (RunBusyError) while the old store shows a run held by a live process; StoreMissingError where the runs
 * directory does not exist. `now` names the moved-aside files.
 */
export async function rebuildSqliteStore(
  runsDir: string,
  path: string,
  o: { now?: Date } = {},
): Promise<RebuildReport> {
  const info = await Deno.stat(runsDir).catch(() => null);
  if (!info?.isDirectory) {
    throw new StoreMissingError(`Runs directory ${runsDir} does not exist: nothing to rebuild from`);
  }
  const salvage = _salvage(path);
  _refuseLive(salvage, path);
  const lines: string[] = [];
  const movedTo = await _moveAside(path, o.now ?? new Date());
  if (movedTo) {
    lines.push(`Moved the old store aside: ${path} → ${movedTo} (with its -wal and -shm, where present)`);
  } else lines.push(`No store at ${path}: building one from the run directories`);
  const counts = _TABLES.map((t) =>
    `${salvage.tables.get(t)?.length ?? 0} ${t === "metrics" ? "metric points" : t}`
  );
  if (movedTo) {
    lines.push(salvage.note ? `Nothing read from it: ${salvage.note}` : `Read from it: ${counts.join(", ")}`);
    for (const l of salvage.lost) lines.push(`Lost in it: ${l}`);
  }
  openSqliteStore(path, { create: true, runsDir }).close(); // a new, empty store of the current schema
  const db = new DatabaseSync(path);
  let runs = 0, points = 0;
  try {
    db.exec("PRAGMA busy_timeout = 15000");
    db.exec("BEGIN IMMEDIATE");
    const built = await _fill(db, runsDir, salvage, movedTo ?? path);
    db.exec("COMMIT");
    runs = built.runs;
    points = built.points;
    lines.push(...built.lines);
  } catch (e) {
    if (db.isTransaction) db.exec("ROLLBACK");
    throw e;
  } finally {
    db.close();
  }
  return { lines, movedTo, runs, points, lost: salvage.lost };
}

/** Reads every table of the store at `path` that can be read (nothing is written there). */
function _salvage(path: string): _Salvage {
  const out: _Salvage = { tables: new Map(), lost: [], note: null };
  const state = inspectStoreFile(path);
  if (state.kind === "missing") return out;
  if (state.kind !== "sqlite") {
    out.note = state.kind === "empty"
      ? "it is empty (0 bytes)"
      : state.kind === "not-a-file"
      ? `it is a ${state.what}`
      : "it is not a SQLite database";
    return out;
  }
  const wal = walProblem(path);
  if (wal) out.lost.push(wal);
  let db: DatabaseSync;
  try {
    db = _openForReading(path, wal !== null);
  } catch (e) {
    out.note = (e as Error).message;
    return out;
  }
  try {
    for (const t of _TABLES) {
      const r = _salvageTable(db, t);
      if (r.rows.length > 0) out.tables.set(t, r.rows);
      if (r.lost) out.lost.push(r.lost);
    }
  } finally {
    db.close();
  }
  return out;
}

/** A connection that reads `path` and writes nothing there (`immutable` unless a log must be read). */
function _openForReading(path: string, walBroken: boolean): DatabaseSync {
  const { db } = openSqliteReadOnly(path, { ignoreWal: walBroken });
  db.prepare("PRAGMA user_version").get();
  return db;
}

/**
 * Every row of `table` that can be read, in rowid order: in batches, then, past a batch that fails, one
 * row at a time (a seek to the next rowid), counting the rowids that fail.
 */
function _salvageTable(db: DatabaseSync, table: string): { rows: _Row[]; lost: string | null } {
  const rows: _Row[] = [];
  let batch;
  try {
    batch = db.prepare(`SELECT rowid AS _rid, * FROM "${table}" WHERE rowid > ? ORDER BY rowid LIMIT 5000`);
  } catch (e) {
    return { rows, lost: `table ${table}: ${(e as Error).message}` };
  }
  let last = -Infinity, why = "";
  for (;;) {
    try {
      const got = batch.all(Number.isFinite(last) ? last : -(2 ** 53)) as _Row[];
      if (got.length === 0) return { rows, lost: null };
      rows.push(...got);
      last = Number(got.at(-1)!._rid);
    } catch (e) {
      why = (e as Error).message;
      break;
    }
  }
  const bound = _maxRowid(db, table) ?? (Number.isFinite(last) ? last : 0) + 100_000;
  const seek = db.prepare(`SELECT rowid AS _rid, * FROM "${table}" WHERE rowid >= ? ORDER BY rowid LIMIT 1`);
  let next = Number.isFinite(last) ? last + 1 : 1, bad = 0, first = NaN, lastBad = NaN;
  while (next <= bound) {
    try {
      const r = seek.get(next) as _Row | undefined;
      if (!r) break;
      rows.push(r);
      next = Number(r._rid) + 1;
    } catch {
      bad++;
      if (Number.isNaN(first)) first = next;
      lastBad = next;
      next++;
    }
  }
  const range = bad === 0 ? "" : `: rowids ${first}–${lastBad} unreadable (up to ${bad} rows)`;
  return { rows, lost: `table ${table}: a scan failed (${why})${range}` };
}

/** The table's largest rowid, from itself or from sqlite_sequence; null where neither can be read. */
function _maxRowid(db: DatabaseSync, table: string): number | null {
  for (
    const sql of [
      `SELECT max(rowid) AS m FROM "${table}"`,
      `SELECT seq AS m FROM sqlite_sequence WHERE name = ?`,
    ]
  ) {
    try {
      const r = (sql.includes("sqlite_sequence") ? db.prepare(sql).get(table) : db.prepare(sql).get()) as
        | _Row
        | undefined;
      if (r && r.m !== null) return Number(r.m);
    } catch {
      // try the next
    }
  }
  return null;
}

/** Refuses to rebuild under a process that is training into the old store (its run is held and alive). */
function _refuseLive(s: _Salvage, path: string): void {
  const host = thisHost(), now = Date.now();
  for (const r of s.tables.get("runs") ?? []) {
    if (r.status !== "running" || r.pid === null) continue;
    if (interruptReason(r, { host, nowMs: now, staleSeconds: RUN_STALE_SECONDS }) !== null) continue;
    throw new RunBusyError(
      `Run ${r.id} of ${path} is being trained by ${
        describeHolder(r, now)
      }: stop it (or wait until it ends) ` +
        "before rebuilding the store; nothing was moved or written",
    );
  }
}

/** Renames the store and its -wal and -shm aside; the new name of the store, or null where there was none. */
async function _moveAside(path: string, now: Date): Promise<string | null> {
  const exists = (p: string) => Deno.lstat(p).then(() => true, () => false);
  if (!await exists(path)) return null;
  const stamp = now.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
  let to = `${path}.damaged-${stamp}`;
  for (let i = 2; await exists(to); i++) to = `${path}.damaged-${stamp}-${i}`;
  await Deno.rename(path, to);
  for (const side of ["-wal", "-shm"]) {
    if (await exists(path + side)) await Deno.rename(path + side, to + side);
  }
  return to;
}

/** Fills the new store (connection `db`, in a transaction): runs, points, events, checkpoints, sweeps, reports. */
async function _fill(
  db: DatabaseSync,
  runsDir: string,
  s: _Salvage,
  oldName: string,
): Promise<{ runs: number; points: number; lines: string[] }> {
  const lines: string[] = [];
  const rows = (t: string) => s.tables.get(t) ?? [];
  for (const w of rows("sweeps")) {
    db.prepare("INSERT OR IGNORE INTO sweeps (id, name, config_yaml, created_at) VALUES (?, ?, ?, ?)")
      .run(..._cols(w, "id", "name", "config_yaml", "created_at"));
  }
  for (const r of rows("reports")) {
    db.prepare(
      "INSERT OR IGNORE INTO reports (id, kind, sweep_id, created_at, markdown, data) VALUES (?, ?, ?, ?, ?, ?)",
    ).run(..._cols(r, "id", "kind", "sweep_id", "created_at", "markdown", "data"));
  }
  const salvaged = new Map<string, RunRecord>();
  for (const r of rows("runs")) {
    try {
      salvaged.set(String(r.id), runFromRow({ ...r, sweep_params: _json(r.sweep_params) ?? "{}" }));
    } catch {
      // a row too damaged to be a run: counted among the runs not recovered
    }
  }
  const byRun = <T>(list: _Row[]) => {
    const m = new Map<string, _Row[]>();
    for (const r of list) {
      const k = String(r.run_id), rows = m.get(k);
      if (rows) rows.push(r);
      else m.set(k, [r]);
    }
    return m as Map<string, T[]>;
  };
  const insRun = db.prepare(
    `INSERT INTO runs (id, ${RUN_FIELDS.join(", ")}, config_yaml, host, pid, heartbeat_at)
     VALUES (?, ${RUN_FIELDS.map(() => "?").join(", ")}, ?, ?, ?, ?)`,
  );
  const insMetric = db.prepare(
    "INSERT INTO metrics (run_id, key, step, tokens, time, value) VALUES (?, ?, ?, ?, ?, ?)",
  );
  const insEvent = db.prepare(
    "INSERT INTO events (run_id, time, step, kind, message, data) VALUES (?, ?, ?, ?, ?, ?)",
  );
  const insCheckpoint = db.prepare(
    "INSERT OR REPLACE INTO checkpoints (run_id, step, path, bytes, sha256, time) VALUES (?, ?, ?, ?, ?, ?)",
  );
  const metrics = byRun<_Row>(rows("metrics")), events = byRun<_Row>(rows("events"));
  const ckpts = byRun<_Row>(rows("checkpoints"));
  const dirs = new Set(runDirectoryNames(runsDir));
  const ids = [...new Set([...salvaged.keys(), ...dirs])].sort();
  let points = 0, fromJournals = 0, fromDirsOnly = 0;
  for (const id of ids) {
    const dir = `${runsDir}/${id}`;
    const onDisk = dirs.has(id);
    const made = onDisk ? await _recordFromDir(dir, id, salvaged.get(id) ?? null) : null;
    const rec = made?.meta ?? _resumable(salvaged.get(id)!);
    const yaml = made?.yaml ?? salvaged.get(id)!.config_yaml;
    const old = salvaged.get(id);
    insRun.run(
      id,
      ...RUN_FIELDS.map((f) => runValue(f, rec[f])),
      yaml,
      old?.host ?? null,
      old?.pid ?? null,
      old?.heartbeat_at ?? null,
    );
    const journal = onDisk ? await readMetricJournal(`${dir}/${METRICS_JOURNAL}`) : [];
    const merged = _mergePoints(metrics.get(id) ?? [], journal);
    for (const p of merged.points) insMetric.run(id, p.key, p.step, p.tokens, p.time, p.value);
    points += merged.points.length;
    fromJournals += merged.fromJournal;
    for (const e of events.get(id) ?? []) {
      insEvent.run(id, ..._cols(e, "time", "step", "kind", "message", "data"));
    }
    const cks = made
      ? made.checkpoints.map((c) => ({ ...c, path: `${id}/ckpt/${c.file}` }))
      : (ckpts.get(id) ?? []).map((
        c,
      ) => ({ ...c, step: Number(c.step) } as unknown as CheckpointEntry & { path: string }));
    for (const c of cks) insCheckpoint.run(id, c.step, c.path, c.bytes, c.sha256, c.time);
    const from = old
      ? "its record read from the old store"
      : "its config.yaml and checkpoints (no record was readable)";
    if (!old) fromDirsOnly++;
    const note = `store rebuilt (old store: ${oldName}) from ${from}; ${merged.points.length} metric points` +
      (merged.fromJournal > 0 ? `, ${merged.fromJournal} of them from ${METRICS_JOURNAL}` : "");
    insEvent.run(id, new Date().toISOString(), null, "info", note, null);
    lines.push(
      `run ${id}: ${rec.status} at step ${rec.step}, ${cks.length} checkpoint${
        cks.length === 1 ? "" : "s"
      }, ` +
        `${merged.points.length} metric points (${merged.fromJournal} from ${METRICS_JOURNAL}); record ${
          old ? "read from the old store" : `made from ${dir}/config.yaml`
        }${made?.note ? `; ${made.note}` : ""}`,
    );
  }
  lines.push(
    `Rebuilt the store: ${ids.length} runs (${fromDirsOnly} made from their ` +
      `directories alone), ${points} metric points (${fromJournals} from ${METRICS_JOURNAL} journals), ` +
      `${rows("events").length} events, ${rows("sweeps").length} sweeps, ${rows("reports").length} reports`,
  );
  return { runs: ids.length, points, lines };
}

/** The values of `cols` of a row read from the old store (absent as NULL). */
function _cols(r: _Row, ...cols: string[]): SQLInputValue[] {
  return cols.map((c) => r[c] ?? null);
}

const _json = (v: unknown): string | null => {
  if (typeof v !== "string") return null;
  try {
    JSON.parse(v);
    return v;
  } catch {
    return null;
  }
};

/** A salvaged record as the new store keeps it: a run that was running did not finish. */
function _resumable(r: RunRecord): RunMeta {
  const { config_yaml: _c, host: _h, pid: _p, heartbeat_at: _b, ...meta } = r;
  if (meta.status !== "running") return meta;
  return {
    ...meta,
    status: "interrupted",
    error: "Interrupted: the store was rebuilt",
    ended_at: meta.ended_at,
  };
}

/**
 * The record of run directory `dir`: the salvaged one where there is one (a running run made interrupted,
 * its step raised to its newest checkpoint), else one made from `config.yaml` and the manifest.
 */
async function _recordFromDir(
  dir: string,
  id: string,
  salvaged: RunRecord | null,
): Promise<{ meta: RunMeta; yaml: string; checkpoints: CheckpointEntry[]; note: string | null }> {
  const yaml = await Deno.readTextFile(`${dir}/config.yaml`).catch(() => salvaged?.config_yaml ?? "");
  let checkpoints: CheckpointEntry[] = [], note: string | null = null;
  try {
    checkpoints = await listCheckpoints(dir);
  } catch (e) {
    note = `no checkpoints recorded: ${(e as Error).message}`;
  }
  const newest = checkpoints.at(-1);
  if (salvaged) {
    const meta = _resumable(salvaged);
    return { meta: { ...meta, step: Math.max(meta.step, newest?.step ?? 0) }, yaml, checkpoints, note };
  }
  const c = _configFacts(yaml, `${dir}/config.yaml`);
  const done = newest !== undefined && c.steps !== null && newest.step >= c.steps;
  const meta: RunMeta = {
    id,
    name: c.name ?? id,
    status: done ? "finished" : "interrupted",
    seed: c.seed ?? 0,
    git_commit: null,
    adapter: null,
    started_at: _startedAt(id) ??
      (await Deno.stat(`${dir}/config.yaml`).catch(() => null))?.mtime?.toISOString() ??
      new Date(0).toISOString(),
    ended_at: newest?.time ?? null,
    sweep_id: null,
    sweep_params: {},
    error: done ? null : "Interrupted: its record was lost; rebuilt from its directory",
    step: newest?.step ?? 0,
  };
  if (c.problem) note = [note, c.problem].filter(Boolean).join("; ");
  return { meta, yaml, checkpoints, note };
}

/** The name, seed and train.steps of a run's config.yaml (parsed as a config, else as plain YAML). */
function _configFacts(
  yaml: string,
  label: string,
): { name: string | null; seed: number | null; steps: number | null; problem: string | null } {
  try {
    const c = parseExperimentText(yaml, label).points[0]!.config;
    return { name: c.name, seed: c.seed, steps: c.train.steps, problem: null };
  } catch (e) {
    let raw: Record<string, unknown> = {};
    try {
      const v = parseYaml(yaml);
      if (v && typeof v === "object") raw = v as Record<string, unknown>;
    } catch {
      // nothing readable
    }
    const train = (raw.train ?? {}) as Record<string, unknown>;
    const num = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : null);
    return {
      name: typeof raw.name === "string" ? raw.name : null,
      seed: num(raw.seed),
      steps: num(train.steps),
      problem: `${label} is not a valid config (${(e as Error).message.split("\n")[0]})`,
    };
  }
}

/** The start time a run id holds (`20261122-163501-…`), or null. */
function _startedAt(id: string): string | null {
  const m = /^(\d{4})(\d\d)(\d\d)-(\d\d)(\d\d)(\d\d)-/.exec(id);
  if (!m) return null;
  const t = Date.parse(`${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}Z`);
  return Number.isFinite(t) ? new Date(t).toISOString() : null;
}

/**
 * The points of a run: those read from the old store, and those of its journal the store did not have
 * (each point counted as often as the more of the two holds it), in time order.
 */
function _mergePoints(
  stored: _Row[],
  journal: MetricPoint[],
): { points: MetricPoint[]; fromJournal: number } {
  const key = (p: MetricPoint) => `${p.key}\0${p.step}\0${p.tokens}\0${p.time}\0${p.value}`;
  const have = new Map<string, number>();
  const points: MetricPoint[] = stored.map((r) => ({
    key: String(r.key),
    step: Number(r.step),
    tokens: Number(r.tokens),
    time: Number(r.time),
    value: Number(r.value),
  })).filter((p) => [p.step, p.tokens, p.time, p.value].every(Number.isFinite));
  for (const p of points) have.set(key(p), (have.get(key(p)) ?? 0) + 1);
  let fromJournal = 0;
  for (const p of journal) {
    const k = key(p), n = have.get(k) ?? 0;
    if (n > 0) have.set(k, n - 1);
    else {
      points.push(p);
      fromJournal++;
    }
  }
  if (fromJournal > 0) points.sort((a, b) => a.time - b.time); // stable: commit order within a time
  return { points, fromJournal };
}

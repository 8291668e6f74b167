import { runMeta } from "../../tests/helpers/run_meta.ts";
import {
  assertKilledWriterKept,
  assertWritersKept,
  killWriterAfter,
  runStoreWriters,
} from "../../tests/helpers/store_writers.ts";
import { deepStrictEqual as assertEquals, ok as assert, rejects, throws } from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { closeRunStores, importRunFolders, openRunStore } from "./open_store.ts";
import { openSqliteStore, SCHEMA_VERSION, storePath, walProblem } from "./sqlite_store.ts";
import { StoreDamagedError, StoreMissingError, StoreReadOnlyError } from "./store_errors.ts";

const pt = (key: string, step: number, value: number) => ({
  key,
  step,
  tokens: step * 8,
  time: step / 2,
  value,
});

// The behaviour every store shares is in tests/helpers/store_suite.ts (run on SQLite by
// store_suite_sqlite_test.ts); these tests are about the SQLite file: migrations, WAL, and the store of a runs
// directory.

Deno.test("a store of schema version 1 is migrated forward on open, keeping its runs", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/runs.db`;
    openSqliteStore(path).close();
    // Back to version 1: as a store written before reports existed.
    const db = new DatabaseSync(path);
    db.exec(
      "DROP TABLE reports; ALTER TABLE runs DROP COLUMN lease_id; ALTER TABLE runs DROP COLUMN leased_at; " +
        "PRAGMA user_version = 1",
    );
    db.prepare(
      `INSERT INTO runs (id, name, status, seed, started_at, sweep_params, step, config_yaml)
       VALUES ('old', 'old', 'finished', 1, 't', '{}', 5, 'name: old')`,
    ).run();
    db.close();
    const s = openSqliteStore(path);
    try {
      assertEquals((await s.getRun("old"))!.step, 5);
      await s.saveReport({ id: "r", kind: "repro", sweep_id: null, created_at: "t", markdown: "", data: {} });
      assertEquals((await s.listReports()).length, 1);
    } finally {
      s.close();
    }
    const check = new DatabaseSync(path);
    assertEquals(
      Number((check.prepare("PRAGMA user_version").get() as { user_version: number }).user_version),
      SCHEMA_VERSION,
    );
    check.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a new store is migrated to the current schema; a store from a newer dsmoe is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/runs.db`;
    openSqliteStore(path).close();
    const db = new DatabaseSync(path);
    assertEquals(
      Number((db.prepare("PRAGMA user_version").get() as { user_version: number }).user_version),
      SCHEMA_VERSION,
    );
    assertEquals(
      String((db.prepare("PRAGMA journal_mode").get() as { journal_mode: string }).journal_mode),
      "wal",
    );
    const idx = db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'metrics'")
      .all();
    assert(idx.some((r) => (r as { name: string }).name === "metrics_run_key_step"));
    db.exec(`PRAGMA user_version = ${SCHEMA_VERSION + 1}`);
    db.close();
    throws(() => openSqliteStore(path), /newer than this dsmoe's/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("four processes writing one store at once lose no point and are never refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const ids = ["w0", "w1", "w2", "w3"];
    await runStoreWriters(dir, { ids, batches: 400, per: 5 });
    await assertWritersKept(await openRunStore(dir), { ids, points: 2000 });
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a writer killed with SIGKILL leaves an intact store with every acknowledged point, marked interrupted", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const acked = await killWriterAfter(dir, { id: "victim", atLeast: 2000 });
    const s = await openRunStore(dir); // first open in this process: marks dead writers' runs
    await assertKilledWriterKept(s, { id: "victim", acked });
    assertEquals((await s.events("victim")).map((e) => e.kind), ["interrupted"]);
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("run folders from before the store are imported once, a torn metrics line skipped", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const old = `${dir}/20260101-000000-old-abcd`;
    await Deno.mkdir(`${old}/ckpt`, { recursive: true });
    await Deno.writeTextFile(`${old}/run.json`, JSON.stringify(runMeta("20260101-000000-old-abcd")));
    await Deno.writeTextFile(`${old}/config.yaml`, "name: old\n");
    await Deno.writeTextFile(
      `${old}/metrics.jsonl`,
      [pt("train/loss", 1, 5), pt("train/loss", 2, 4)].map((p) => JSON.stringify(p)).join("\n") +
        '\n{"key":"tr',
    );
    const entry = { step: 2, file: "step-2.safetensors", bytes: 3, sha256: "5".repeat(64), time: "t" };
    await Deno.writeTextFile(`${old}/ckpt/manifest.json`, JSON.stringify({ checkpoints: [entry] }));
    const s = await openRunStore(dir);
    const r = (await s.getRun("20260101-000000-old-abcd"))!;
    assertEquals([r.status, r.config_yaml], ["interrupted", "name: old\n"]);
    assertEquals((await s.metrics(r.id)).map((m) => m.value), [5, 4]);
    assertEquals((await s.checkpoints(r.id)).map((c) => c.path), [`${r.id}/ckpt/step-2.safetensors`]);
    assertEquals(await importRunFolders(s, dir), []);
    assertEquals((await s.metrics(r.id)).length, 2);
    assert((await Deno.stat(storePath(dir))).isFile);
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a store opened for reading sees a pending write-ahead log and writes nothing, not even its checkpoint", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const live = openSqliteStore(`${dir}/live.db`);
    await live.createRun(runMeta("a"), "name: a\n");
    await live.logMetrics("a", [pt("train/loss", 1, 5), pt("train/loss", 2, 4)]);
    // A copy while the writer is open: its points are in the -wal only (as after a SIGKILL).
    for (const f of ["live.db", "live.db-wal", "live.db-shm"]) {
      await Deno.copyFile(`${dir}/${f}`, `${dir}/c${f}`);
    }
    live.close();
    const hash = async () => {
      const out: string[] = [];
      for (const f of ["clive.db", "clive.db-wal"]) { // -shm, SQLite's shared index, every reader updates
        const d = await crypto.subtle.digest("SHA-256", await Deno.readFile(`${dir}/${f}`));
        out.push(`${f} ${new Uint8Array(d).join(",")}`);
      }
      return out;
    };
    const before = await hash();
    const s = openSqliteStore(`${dir}/clive.db`, { mode: "read", create: false });
    assertEquals(s.access.mode, "read-only");
    assertEquals((await s.metrics("a")).map((m) => m.value), [5, 4]);
    await rejects(s.logEvent("a", { kind: "info", message: "x" }), StoreReadOnlyError);
    s.close();
    assertEquals(await hash(), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an empty runs.db: refused beside run directories, a new store where there are none; never created by readers", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/runs.db`, new Uint8Array());
    throws(() => openSqliteStore(`${dir}/runs.db`, { create: false, runsDir: dir }), StoreMissingError);
    const s = openSqliteStore(`${dir}/runs.db`, { runsDir: dir });
    await s.createRun(runMeta("r"), "name: r\n");
    s.close();
    await Deno.mkdir(`${dir}/r`);
    await Deno.writeTextFile(`${dir}/r/config.yaml`, "name: r\n");
    await Deno.writeFile(`${dir}/runs.db`, new Uint8Array());
    throws(() => openSqliteStore(`${dir}/runs.db`, { runsDir: dir }), (e: Error) => {
      assert(e instanceof StoreDamagedError, e.name);
      assert(
        e.message.includes(`Run store ${dir}/runs.db is empty (0 bytes) while 1 run directory is beside it`),
      );
      assert(e.message.includes(`deno task store rebuild --runs-dir ${dir}`), e.message);
      return true;
    });
    assertEquals((await Deno.stat(`${dir}/runs.db`)).size, 0, "left as it was");
    await Deno.remove(`${dir}/runs.db`);
    throws(() => openSqliteStore(`${dir}/runs.db`, { create: false }), /No run store at/);
    assertEquals(await Deno.stat(`${dir}/runs.db`).then(() => true, () => false), false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a write-ahead log that another process checkpoints and removes while it is checked is no problem", async () => {
  // Another process's last connection, on close, checkpoints the log and deletes it: a check that stats the
  // log and then opens or reads it may find it gone or emptied. That is a settled store, not a damaged one.
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/s.db`;
    const db = new DatabaseSync(path);
    db.exec("PRAGMA journal_mode = WAL; CREATE TABLE t (x)");
    db.close();
    const writer = new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        `import { DatabaseSync } from "node:sqlite";
        const t0 = Date.now(); let n = 0;
        while (Date.now() - t0 < 2000) {
          const db = new DatabaseSync(${JSON.stringify(path)});
          db.exec("INSERT INTO t VALUES (randomblob(5000))");
          db.close();
          n++;
        }
        console.log(n);`,
      ],
      stdout: "piped",
    }).spawn();
    const problems: string[] = [];
    let logSeen = 0;
    const t0 = Date.now();
    while (Date.now() - t0 < 2500) {
      const why = walProblem(path);
      if (why) problems.push(why);
      try {
        if (Deno.statSync(`${path}-wal`).size >= 32) logSeen++;
      } catch {
        // removed: the writer closed
      }
    }
    const cycles = Number(new TextDecoder().decode((await writer.output()).stdout).trim());
    assert(cycles >= 20 && logSeen >= 20, `writer cycles ${cycles}, a log seen ${logSeen} times`);
    assertEquals(problems.slice(0, 3), []);
    // A log with a bad header stays a problem.
    Deno.writeFileSync(`${path}-wal`, new Uint8Array(4096).fill(7));
    assert(/is not a SQLite write-ahead log/.test(walProblem(path) ?? ""));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * Hostile cases of the run store and of runs' leases (issue 18, parts 5, 6 and 9): a damaged store (flipped
 * bytes in the header, a b-tree page, the freelist; truncated; a directory, a FIFO or a text file named
 * runs.db; a newer schema; a missing table; a write-ahead log of garbage; an empty store beside run
 * directories), a write-protected store, two processes on one run, the same sweep twice at once, runs
 * directories that are files or missing, bad data, and the way back (`deno task store check|rebuild`).
 *
 * Each case runs the CLI as a separate process and asserts its exit code, that its message names the store,
 * run or file, and that nothing changed outside what it may write (tree snapshots). SQLite's lock files
 * (`-shm`, and a `-wal` with nothing in it) that opening a store leaves are not changes.
 */
import { deepStrictEqual as assertEquals, ok as assert, rejects } from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { createApp } from "../core/dashboard/app.ts";
import { closeRunStores, openRunStore } from "../core/runs/open_store.ts";
import { SCHEMA_VERSION } from "../core/runs/sqlite_store.ts";
import { StoreDamagedError, StoreReadOnlyError } from "../core/runs/store_errors.ts";
import { cli } from "./helpers/cli.ts";
import {
  assertNoStack,
  type ProcResult,
  runCliProcess,
  snapshotTree,
  treeChanges,
  type TreeEntry,
} from "./helpers/hostile.ts";

const MICRO = new URL("./fixtures/micro.yaml", import.meta.url).pathname;
const SWEEP = new URL("./fixtures/micro_sweep.yaml", import.meta.url).pathname;
const CPU = ["--set", "hardware.backend=cpu", "--no-dashboard"];

/** A runs directory holding one run, its store settled (no write-ahead log): made once, copied per case. */
interface Base {
  dir: string;
  id: string;
  points: number; // metric points of the run in its store
}

const _bases = new Map<string, Promise<Base>>();
const _BASE_ROOT = Deno.makeTempDirSync({ prefix: "hostile-store-bases-" }); // removed when the tests end
globalThis.addEventListener("unload", () => Deno.removeSync(_BASE_ROOT, { recursive: true }));
const _MOD = new URL("../mod.ts", import.meta.url).pathname;

/**
 * A finished micro run of 10 steps (checkpoints at 5 and 10), or with `open`, one of 100,000 steps stopped
 * after 5 (interrupted, a checkpoint at 5: a run to resume that would train for long).
 */
function _base(kind: "finished" | "open"): Promise<Base> {
  let b = _bases.get(kind);
  if (!b) {
    b = (async () => {
      const dir = `${_BASE_ROOT}/${kind}`;
      const steps = kind === "finished" ? ["--set", "train.steps=10"] : ["--set", "train.steps=100000"];
      const r = await cli(
        "run",
        MICRO,
        ...CPU,
        ...steps,
        ...(kind === "open" ? ["--stop-after", "5"] : []),
        "--set",
        "train.checkpoint_every=5",
        "--set",
        "train.eval_every=10",
        "--set",
        "train.log_every=1",
        "--runs-dir",
        dir,
        "--json",
      );
      assertEquals(r.code, 0, r.err.join("\n"));
      const id: string = r.json().run_id;
      const store = await openRunStore(dir);
      const points = (await store.metrics(id)).length;
      await closeRunStores();
      _settle(`${dir}/runs.db`);
      return { dir, id, points };
    })();
    _bases.set(kind, b);
  }
  return b;
}

/** Checkpoints the store's write-ahead log into it and removes the log (the last connection closes). */
function _settle(path: string): void {
  const db = new DatabaseSync(path);
  db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
  db.close();
}

/** A copy of the base runs directory `kind`, in a new temporary directory (`<tmp>/runs`). */
async function _copy(
  kind: "finished" | "open",
): Promise<{ root: string; runs: string; id: string; points: number }> {
  const base = await _base(kind);
  const root = await Deno.makeTempDir({ prefix: "hostile-store-case-" });
  const out = await new Deno.Command("cp", { args: ["-a", base.dir, `${root}/runs`] }).output();
  assert(out.success, new TextDecoder().decode(out.stderr));
  return { root, runs: `${root}/runs`, id: base.id, points: base.points };
}

/** The changes between two snapshots, leaving out SQLite's lock files (-shm, an empty -wal) and `allowed`. */
function _changes(
  before: ReadonlyMap<string, TreeEntry>,
  after: ReadonlyMap<string, TreeEntry>,
  allowed: readonly string[] = [],
): string[] {
  return treeChanges(before, after, allowed).filter((c) => {
    const path = c.slice(c.indexOf(" ") + 1);
    if (path.endsWith(".db-shm")) return false;
    return !(path.endsWith(".db-wal") && (after.get(path)?.size ?? 0) === 0 && !before.has(path));
  });
}

/** Asserts a refusal: exit code, every pattern in stderr, no stack trace, nothing changed under `root`. */
function _assertRefused(
  what: string,
  r: ProcResult,
  code: number,
  patterns: readonly (string | RegExp)[],
  changes: string[],
): void {
  const shown = `${what}: exit ${r.code}\n${r.stderr}${r.stdout.slice(-2000)}`;
  assertEquals(r.code, code, shown);
  for (const p of patterns) {
    assert(
      typeof p === "string" ? r.stderr.includes(p) : p.test(r.stderr),
      `${what}: ${p} not in:\n${shown}`,
    );
  }
  assertNoStack(r.stderr);
  assertEquals(changes, [], `${what}: changed`);
}

/** Runs `fn` on each of `items`, `n` at a time; every failure is reported, together, at the end. */
async function _each<T>(items: readonly T[], n: number, fn: (t: T) => Promise<void>): Promise<void> {
  const failures: string[] = [];
  let next = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < items.length) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (e) {
        failures.push((e as Error).message);
      }
    }
  }));
  assert(failures.length === 0, failures.join("\n\n"));
}

/** The byte offset of the root page of `table` in the settled store at `path`. */
function _rootPageOffset(path: string, table: string): number {
  const db = new DatabaseSync(path);
  try {
    const page = Number((db.prepare("PRAGMA page_size").get() as { page_size: number }).page_size);
    const root = Number(
      (db.prepare("SELECT rootpage FROM sqlite_master WHERE name = ?").get(table) as { rootpage: number })
        .rootpage,
    );
    return (root - 1) * page;
  } finally {
    db.close();
  }
}

/** Edits the bytes of the file at `path`. */
async function _patch(path: string, f: (b: Uint8Array) => Uint8Array): Promise<void> {
  await Deno.writeFile(path, f(await Deno.readFile(path)));
}

/** Runs SQL on the settled store at `path`, leaving it settled. */
function _sql(path: string, sql: string): void {
  const db = new DatabaseSync(path);
  db.exec(sql);
  db.close();
}

/** What a damaged store looks like, and what `run` must say about it. */
interface Damage {
  name: string;
  damage: (runs: string) => Promise<void>;
  message: RegExp;
}

const DAMAGES: readonly Damage[] = [
  {
    name: "flipped bytes in the header",
    damage: (runs) =>
      _patch(`${runs}/runs.db`, (b) => {
        b[3]! ^= 0xff;
        return b;
      }),
    message: /is not a SQLite database \(its first bytes are not the SQLite header/,
  },
  {
    name: "flipped bytes in a b-tree page (the metrics table's root)",
    damage: async (runs) => {
      const at = _rootPageOffset(`${runs}/runs.db`, "metrics");
      await _patch(`${runs}/runs.db`, (b) => {
        for (let i = 8; i < 24; i++) b[at + i]! ^= 0x5a; // its cell pointers
        return b;
      });
    },
    message: /is damaged \(.*\): it takes no writes/,
  },
  {
    name: "a freelist pointing at pages in use",
    damage: (runs) =>
      _patch(`${runs}/runs.db`, (b) => {
        const v = new DataView(b.buffer, b.byteOffset);
        v.setUint32(32, 2); // first freelist trunk page: the sweeps table's root
        v.setUint32(36, 3); // free pages
        return b;
      }),
    message: /is damaged \(.*Freelist/,
  },
  {
    name: "a store truncated to half its size",
    damage: (runs) => _patch(`${runs}/runs.db`, (b) => b.slice(0, Math.floor(b.length / 2))),
    message: /(database disk image is malformed|is damaged)/,
  },
  {
    name: "runs.db a directory",
    damage: async (runs) => {
      await Deno.remove(`${runs}/runs.db`);
      await Deno.mkdir(`${runs}/runs.db`);
    },
    message: /Cannot open run store .*runs\.db: it is a directory, not a database file/,
  },
  {
    name: "runs.db a FIFO",
    damage: async (runs) => {
      await Deno.remove(`${runs}/runs.db`);
      const out = await new Deno.Command("mkfifo", { args: [`${runs}/runs.db`] }).output();
      assert(out.success, "mkfifo");
    },
    message: /Cannot open run store .*runs\.db: it is a FIFO \(named pipe\), not a database file/,
  },
  {
    name: "a text file named runs.db",
    damage: (runs) =>
      Deno.writeTextFile(`${runs}/runs.db`, "these are not the runs you are looking for\n".repeat(40)),
    message: /is not a SQLite database/,
  },
  {
    name: "a zero-length runs.db beside a run directory",
    damage: (runs) => Deno.truncate(`${runs}/runs.db`, 0),
    message:
      /is empty \(0 bytes\) while 1 run directory is beside it .*: their records are lost\. .*deno task store rebuild/,
  },
  {
    name: "a store from a newer schema version",
    damage: (runs) => Promise.resolve(_sql(`${runs}/runs.db`, `PRAGMA user_version = ${SCHEMA_VERSION + 1}`)),
    message: new RegExp(
      `has schema version ${SCHEMA_VERSION + 1}, newer than this dsmoe's ${SCHEMA_VERSION}`,
    ),
  },
  {
    name: "a store missing a table",
    damage: (runs) => Promise.resolve(_sql(`${runs}/runs.db`, "DROP TABLE events")),
    message: /has no table events \(its schema version \d+ has it\): it is damaged/,
  },
  {
    name: "a write-ahead log of garbage",
    damage: async (runs) => {
      const junk = new Uint8Array(8192);
      for (let i = 0; i < junk.length; i++) junk[i] = (i * 2654435761) >>> 24;
      await Deno.writeFile(`${runs}/runs.db-wal`, junk);
    },
    message: /runs\.db-wal \(8192 bytes\) is not a SQLite write-ahead log/,
  },
];

Deno.test("a damaged store is refused by run before anything is written, the message naming the store (11 kinds)", async () => {
  await _each(DAMAGES, 3, async (d) => {
    const c = await _copy("finished");
    try {
      await d.damage(c.runs);
      const before = await snapshotTree(c.root);
      const r = await runCliProcess(["run", MICRO, ...CPU, "--runs-dir", c.runs], { timeoutMs: 60_000 });
      _assertRefused(
        d.name,
        r,
        1,
        [`${c.runs}/runs.db`, d.message],
        _changes(before, await snapshotTree(c.root)),
      );
    } finally {
      await Deno.remove(c.root, { recursive: true });
    }
  });
});

Deno.test("a damaged store is served to readers: the dashboard's read API lists its runs, every write is refused", async () => {
  const c = await _copy("finished");
  try {
    // The reports table's page claims 65535 cells: the runs list (runs, metrics) does not read it.
    const at = _rootPageOffset(`${c.runs}/runs.db`, "reports");
    await _patch(`${c.runs}/runs.db`, (b) => {
      b[at + 3] = 0xff;
      b[at + 4] = 0xff;
      return b;
    });
    const before = await snapshotTree(c.root);
    const store = await openRunStore(c.runs, { create: false });
    assert(
      store.access.mode === "damaged" && store.access.reason.includes(`${c.runs}/runs.db is damaged`),
      JSON.stringify(store.access),
    );
    const res = await createApp({ store }).request("http://127.0.0.1/api/runs");
    assertEquals(res.status, 200, await res.clone().text());
    assert((await res.text()).includes(c.id), "the run is listed");
    await rejects(store.listReports(), (e: Error) => {
      assert(e instanceof StoreDamagedError && e.message.includes(`${c.runs}/runs.db is damaged`), e.message);
      return true;
    }, "a read that meets the damage names the store");
    await rejects(store.logEvent(c.id, { kind: "info", message: "x" }), StoreDamagedError);
    await rejects(openRunStore(c.runs), StoreDamagedError, "a writer is refused");
    await closeRunStores();
    assertEquals(_changes(before, await snapshotTree(c.root)), []);
  } finally {
    await closeRunStores();
    await Deno.remove(c.root, { recursive: true });
  }
});

/**
 * `dir` made read-only for this process: bound read-only at `<dir>-ro` (as root, where chmod would not stop
 * it), else chmod a-w. Null, with the reason printed, where neither can be done.
 */
async function _writeProtect(dir: string): Promise<{ path: string; undo: () => Promise<void> } | null> {
  const run = (cmd: string, ...args: string[]) => new Deno.Command(cmd, { args, stderr: "piped" }).output();
  if (Deno.uid() !== 0) {
    await run("chmod", "-R", "a-w", dir);
    return { path: dir, undo: async () => void await run("chmod", "-R", "u+w", dir) };
  }
  const mnt = `${dir}-ro`;
  await Deno.mkdir(mnt);
  const m = await run("mount", "--bind", "-o", "ro", dir, mnt);
  if (!m.success) {
    await Deno.remove(mnt);
    console.log(`skipped: cannot bind-mount read-only here: ${new TextDecoder().decode(m.stderr).trim()}`);
    return null;
  }
  const writable = await Deno.writeTextFile(`${mnt}/.probe`, "").then(() => true, () => false);
  if (writable) { // an older mount(8) ignores ro on the first bind
    await Deno.remove(`${mnt}/.probe`);
    await run("mount", "-o", "remount,ro,bind", mnt);
  }
  return {
    path: mnt,
    undo: async () => {
      await run("umount", mnt);
      await Deno.remove(mnt);
    },
  };
}

Deno.test("a write-protected store (read-only mount): run is refused naming it, the dashboard's read API browses it", async () => {
  const c = await _copy("finished");
  const ro = await _writeProtect(c.runs);
  try {
    if (!ro) return;
    const before = await snapshotTree(c.runs);
    const run = await runCliProcess(["run", MICRO, ...CPU, "--runs-dir", ro.path], { timeoutMs: 60_000 });
    _assertRefused(
      "run",
      run,
      1,
      [`${ro.path}/runs.db is read-only`],
      _changes(before, await snapshotTree(c.runs)),
    );

    const store = await openRunStore(ro.path, { create: false });
    assertEquals(store.access.mode, "read-only");
    const res = await createApp({ store }).request(`http://127.0.0.1/api/runs/${c.id}`);
    assertEquals(res.status, 200);
    assert((await res.text()).includes(c.id));
    await rejects(
      store.logMetrics(c.id, [{ key: "x", step: 1, tokens: 1, time: 1, value: 1 }]),
      StoreReadOnlyError,
    );
    await closeRunStores();

    assertEquals(_changes(before, await snapshotTree(c.runs)), []);
  } finally {
    await closeRunStores();
    await ro?.undo();
    await Deno.remove(c.root, { recursive: true });
  }
});

Deno.test("eval on a write-protected store prints its results and a warning naming the store, exit 0, nothing written", async () => {
  const c = await _copy("finished");
  const ro = await _writeProtect(c.runs);
  try {
    if (!ro) return;
    const before = await snapshotTree(c.runs);
    const ev = await runCliProcess(["eval", c.id, "--runs-dir", ro.path, "--batches", "2"], {
      timeoutMs: 120_000,
    });
    assert(/dense/.test(ev.stdout), `the results table is printed:\n${ev.stdout}\n${ev.stderr}`);
    assert(ev.stderr.includes(`${ro.path}/runs.db is read-only`), ev.stderr);
    assertNoStack(ev.stderr);
    assertEquals(_changes(before, await snapshotTree(c.runs)), []);
    assertEquals(
      ev.code,
      0,
      `eval_cmd.ts must warn, not fail, when the store refuses its metrics:\n${ev.stderr}`,
    );
  } finally {
    await ro?.undo();
    await Deno.remove(c.root, { recursive: true });
  }
});

/** A CLI process whose stderr is read as it comes. */
class _Proc {
  readonly child: Deno.ChildProcess;
  err = "";
  readonly #drained: Promise<unknown>;

  constructor(args: string[]) {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", _MOD, ...args],
      env: { NO_COLOR: "1" },
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.child = child;
    this.#drained = (async () => {
      for await (const t of child.stderr.pipeThrough(new TextDecoderStream())) this.err += t;
    })();
  }

  /** Waits until stderr matches `re` (or the process ends: an error then). */
  async waitFor(re: RegExp): Promise<void> {
    let ended = false;
    this.child.status.then(() => ended = true);
    while (!re.test(this.err)) {
      if (ended) throw new Error(`process ended without ${re}:\n${this.err}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async done(): Promise<Deno.CommandStatus> {
    const s = await this.child.status;
    await this.#drained;
    return s;
  }

  kill(signal: Deno.Signal = "SIGKILL"): void {
    try {
      this.child.kill(signal);
    } catch {
      // already gone
    }
  }
}

Deno.test("two run --resume of one run: the second exits 2 naming the first's pid and writes nothing", async () => {
  const c = await _copy("open");
  const first = new _Proc(["run", "--resume", c.id, "--runs-dir", c.runs, "--no-dashboard"]);
  try {
    await first.waitFor(/^step \d+\/100000/m); // training: it holds the run
    const second = await runCliProcess(["run", "--resume", c.id, "--runs-dir", c.runs, "--no-dashboard"], {
      timeoutMs: 60_000,
    });
    assertEquals(second.code, 2, second.stderr);
    assert(
      new RegExp(
        `Run ${c.id} is held by pid ${first.child.pid} on host \\S+ since \\S+ \\(heartbeat \\d+ s ago\\)`,
      )
        .test(second.stderr),
      second.stderr,
    );
    assert(!second.stderr.includes("Resuming"), second.stderr);
    assertNoStack(second.stderr);
    first.kill("SIGTERM"); // stops after a checkpoint
    assertEquals((await first.done()).code, 0, first.err);
    const store = await openRunStore(c.runs, { create: false });
    const kinds = (await store.events(c.id)).map((e) => e.kind);
    assertEquals(kinds.filter((k) => k === "resume").length, 1, "one resume: the first's");
    assertEquals(kinds.filter((k) => k === "error").length, 0, "no failure recorded by the second");
    assertEquals((await store.getRun(c.id))!.status, "interrupted");
  } finally {
    first.kill();
    await first.done();
    await closeRunStores();
    await Deno.remove(c.root, { recursive: true });
  }
});

/** Gives run `id` of the settled store in `runs` a holder: status interrupted, a lease, a heartbeat now. */
function _holdRun(runs: string, id: string, host: string, pid: number): void {
  const now = new Date().toISOString();
  const db = new DatabaseSync(`${runs}/runs.db`);
  db.prepare(
    `UPDATE runs SET status = 'interrupted', host = ?, pid = ?, lease_id = 'test-lease', leased_at = ?,
       heartbeat_at = ? WHERE id = ?`,
  ).run(host, pid, now, now, id);
  db.close();
}

Deno.test("a run held on another host with a fresh heartbeat is refused (exit 2, nothing changed); one held by a dead process is taken over", async () => {
  const c = await _copy("open");
  try {
    _holdRun(c.runs, c.id, "elsewhere.example", 4242);
    const before = await snapshotTree(c.root);
    const busy = await runCliProcess(["run", "--resume", c.id, "--runs-dir", c.runs, "--no-dashboard"], {
      timeoutMs: 60_000,
    });
    _assertRefused("held elsewhere", busy, 2, [
      new RegExp(
        `Run ${c.id} is held by pid 4242 on host elsewhere\\.example since \\S+ \\(heartbeat \\d+ s ago\\)`,
      ),
    ], _changes(before, await snapshotTree(c.root)));

    // Held on this host by a process that has exited: taken over at once.
    const gone = new Deno.Command("true").spawn();
    await gone.status;
    _settle(`${c.runs}/runs.db`);
    _holdRun(c.runs, c.id, Deno.hostname(), gone.pid);
    const taken = await runCliProcess(
      ["run", "--resume", c.id, "--runs-dir", c.runs, "--no-dashboard", "--stop-after", "2"],
      { timeoutMs: 120_000 },
    );
    assertEquals(taken.code, 0, taken.stderr);
    assert(taken.stderr.includes(`Resuming ${c.id} from step 5`), taken.stderr);
    const store = await openRunStore(c.runs, { create: false });
    const run = (await store.getRun(c.id))!;
    assertEquals([run.status, run.step, run.pid !== gone.pid], ["interrupted", 7, true]);
  } finally {
    await closeRunStores();
    await Deno.remove(c.root, { recursive: true });
  }
});

Deno.test("the same sweep started twice at once ends with one run per point: points the other process trains are skipped, naming it", async () => {
  const root = await Deno.makeTempDir({ prefix: "hostile-store-sweep-" });
  try {
    const args = [
      "run",
      SWEEP,
      "--no-dashboard",
      "--set",
      "train.steps=6",
      "--set",
      "train.eval_every=6",
      "--runs-dir",
      `${root}/runs`,
      "--json",
    ];
    const [a, b] = await Promise.all([
      runCliProcess(args, { timeoutMs: 300_000 }),
      runCliProcess(args, { timeoutMs: 300_000 }),
    ]);
    assertEquals([a.code, b.code], [0, 0], `${a.stderr}\n----\n${b.stderr}`);
    const store = await openRunStore(`${root}/runs`, { create: false });
    const runs = await store.listRuns();
    assertEquals(runs.length, 9, runs.map((r) => `${r.name} ${r.status}`).join("\n"));
    assertEquals(new Set(runs.map((r) => r.name)).size, 9, "one run per point");
    assert(runs.every((r) => r.status === "finished"), runs.map((r) => r.status).join(" "));
    const skipped = /: trained by pid \d+ on host \S+ since \S+ \(heartbeat \d+ s ago\) in run \S+, skipped/;
    assert(
      skipped.test(a.stderr) || skipped.test(b.stderr),
      `no point skipped as busy:\n${a.stderr}\n${b.stderr}`,
    );
    const table = [
      ...JSON.parse(a.stdout.trim().split("\n").at(-1)!).points,
      ...JSON.parse(b.stdout.trim().split("\n").at(-1)!).points,
    ];
    assert(table.some((p: { status: string }) => p.status === "busy"), "a busy point is in a summary");
    const trained = table.filter((p: { status: string }) => p.status === "finished");
    assertEquals(trained.length, 9, "each point trained by exactly one of the two");
  } finally {
    await closeRunStores();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("runs directories: one that is a file, or missing for eval, generate and dashboard, is exit 2 naming it, nothing created", async () => {
  const root = await Deno.makeTempDir({ prefix: "hostile-store-dirs-" });
  try {
    // Each case in a folder of its own (they run side by side, and a snapshot sees only its own case).
    const fixtures = async (r: string) => {
      await Deno.mkdir(`${r}/empty`, { recursive: true });
      await Deno.writeTextFile(`${r}/file`, "not a directory\n");
    };
    const cases: [string, (r: string) => string[], RegExp][] = [
      [
        "run into a runs dir that is a file",
        (r) => ["run", MICRO, ...CPU, "--runs-dir", `${r}/file`],
        /Runs directory .*\/file is a regular file, not a directory/,
      ],
      ["eval with no runs dir", (r) => ["eval", "some-run", "--runs-dir", `${r}/missing`], /missing/],
      ["generate with no runs dir", (r) => [
        "generate",
        "some-run",
        "--prompt",
        "x",
        "--runs-dir",
        `${r}/missing`,
      ], /missing/],
      [
        "dashboard with no runs dir",
        (r) => ["dashboard", "--port", "0", "--runs-dir", `${r}/missing`],
        /No runs directory .*\/missing/,
      ],
      [
        "eval with no store in the runs dir",
        (r) => ["eval", "some-run", "--runs-dir", `${r}/empty`],
        /No run store at .*\/empty\/runs\.db/,
      ],
      ["run into a store in a missing directory", (r) => [
        "run",
        MICRO,
        ...CPU,
        "--runs-dir",
        `${r}/new`,
        "--store",
        `sqlite:${r}/nope/x.db`,
      ], /Cannot create run store .*\/nope\/x\.db: .*\/nope is not an existing directory/],
    ];
    await _each(
      cases.map((c, i) => [...c, `${root}/case${i}`] as const),
      3,
      async ([what, args, message, dir]) => {
        await fixtures(dir);
        const before = await snapshotTree(dir);
        const r = await runCliProcess(args(dir), { timeoutMs: 60_000 });
        _assertRefused(what, r, 2, [message], _changes(before, await snapshotTree(dir)));
      },
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("bad data (empty, too short, binary, one bad point of a sweep) exits 2 before any store, run record or run directory exists", async () => {
  const root = await Deno.makeTempDir({ prefix: "hostile-store-data-" });
  try {
    // Each case in a folder of its own, with every data file (they run side by side, and a refused run
    // makes and removes its data cache under its runs directory: a shared snapshot could see it).
    const data: Record<string, string> = {
      empty: "data: { source: ./empty.txt }",
      short: "data: { source: ./short.txt }",
      binary: "data: { source: ./binary.txt }",
      sweep: 'sweep: { grid: { data.source: ["synthetic:multidomain", "./short.txt"] } }',
    };
    for (const [name, line] of Object.entries(data)) {
      const dir = `${root}/${name}`;
      await Deno.mkdir(dir);
      await Deno.writeTextFile(`${dir}/empty.txt`, "");
      await Deno.writeTextFile(`${dir}/short.txt`, "hello\n");
      await Deno.writeFile(`${dir}/binary.txt`, Uint8Array.from({ length: 6000 }, (_, i) => (i * 7) % 256));
      await Deno.writeTextFile(
        `${dir}/${name}.yaml`,
        `extends: ${MICRO}\nname: ${name}\nhardware: { backend: cpu }\n${line}\n`,
      );
    }
    const cases: [string, RegExp][] = [
      ["empty", /empty\.txt.*empty/],
      ["short", /short\.txt.* is too short/],
      ["binary", /binary\.txt.*(NUL|UTF-8|binary)/],
      ["sweep", /Sweep point .*short\.txt.* is too short/],
    ];
    await _each(cases, 2, async ([name, message]) => {
      const dir = `${root}/${name}`;
      const before = await snapshotTree(dir);
      const r = await runCliProcess([
        "run",
        `${dir}/${name}.yaml`,
        "--no-dashboard",
        "--runs-dir",
        `${dir}/runs`,
      ], {
        timeoutMs: 60_000,
      });
      _assertRefused(`bad data: ${name}`, r, 2, [message], _changes(before, await snapshotTree(dir)));
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

/** The metric points of run `id` in the store of `runs`, as comparable text, sorted. */
async function _points(runs: string, id: string): Promise<string[]> {
  const store = await openRunStore(runs, { create: false });
  const out = (await store.metrics(id)).map((m) => `${m.key} ${m.step} ${m.tokens} ${m.time} ${m.value}`)
    .sort();
  await closeRunStores();
  return out;
}

Deno.test("store rebuild: a zero-length store beside its run directory gets every run, checkpoint and metric point back; check then passes", async () => {
  const c = await _copy("finished");
  try {
    const want = await _points(c.runs, c.id);
    assertEquals(want.length, c.points);
    _settle(`${c.runs}/runs.db`);
    await Deno.truncate(`${c.runs}/runs.db`, 0);
    const before = await snapshotTree(c.runs);
    const r = await runCliProcess(["store", "rebuild", "--runs-dir", c.runs, "--json"]);
    assertEquals(r.code, 0, r.stderr + r.stdout);
    assert(
      r.stdout.includes(`Moved the old store aside: ${c.runs}/runs.db → ${c.runs}/runs.db.damaged-`),
      r.stdout,
    );
    assert(r.stdout.includes("Nothing read from it: it is empty (0 bytes)"), r.stdout);
    const j = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    assertEquals([j.runs, j.points], [1, c.points]);
    // Only the store changed: the old one moved aside (kept, 0 bytes), a new one beside it.
    const changes = _changes(before, await snapshotTree(c.runs));
    assert(changes.some((l) => /^added runs\.db\.damaged-\d{8}T\d{6}Z$/.test(l)), changes.join("\n"));
    assertEquals(
      changes.filter((l) => !/^(added runs\.db\.damaged-|changed runs\.db$|added runs\.db-wal$)/.test(l)),
      [],
    );
    const store = await openRunStore(c.runs, { create: false });
    const run = (await store.getRun(c.id))!;
    assertEquals([run.status, run.step, run.name], ["finished", 10, "micro"]);
    assertEquals((await store.checkpoints(c.id)).map((k) => k.step), [5, 10]);
    await closeRunStores();
    assertEquals(await _points(c.runs, c.id), want, "every point, from metrics.jsonl");
    const check = await runCliProcess(["store", "check", "--runs-dir", c.runs]);
    assertEquals(check.code, 0, check.stdout);
  } finally {
    await closeRunStores();
    await Deno.remove(c.root, { recursive: true });
  }
});

Deno.test("store rebuild salvages a store with a damaged b-tree page row by row, the rest from the journal; check lists what is wrong, one line each", async () => {
  const c = await _copy("finished");
  try {
    const want = await _points(c.runs, c.id);
    _settle(`${c.runs}/runs.db`);
    await DAMAGES[1]!.damage(c.runs);
    // check: exit 1, a line for the store's integrity; then an orphan directory and a missing checkpoint file.
    await Deno.mkdir(`${c.runs}/orphan`);
    await Deno.writeTextFile(`${c.runs}/orphan/config.yaml`, "name: orphan\n");
    const ck = `${c.runs}/${c.id}/ckpt/step-5.safetensors`;
    await Deno.rename(ck, `${c.root}/moved.safetensors`);
    const before = await snapshotTree(c.root);
    const check = await runCliProcess(["store", "check", "--runs-dir", c.runs]);
    assertEquals(check.code, 1, check.stdout + check.stderr);
    for (
      const line of [
        `${c.runs}/runs.db: integrity: `,
        `${c.runs}/orphan: a run directory with no record in the store`,
        `run ${c.id}: ${ck}, listed in the manifest, is missing`,
      ]
    ) assert(check.stdout.includes(line), `${line} not in:\n${check.stdout}`);
    assertEquals(_changes(before, await snapshotTree(c.root)), [], "check writes nothing");
    await Deno.rename(`${c.root}/moved.safetensors`, ck);

    const r = await runCliProcess(["store", "rebuild", "--runs-dir", c.runs]);
    assertEquals(r.code, 0, r.stderr + r.stdout);
    assert(/Read from it: .*1 runs/.test(r.stdout), r.stdout);
    assert(r.stdout.includes("Lost in it: table metrics"), r.stdout);
    assert(r.stdout.includes(`run ${c.id}: finished at step 10, 2 checkpoints`), r.stdout);
    assert(r.stdout.includes("run orphan: interrupted at step 0"), r.stdout);
    assertEquals(await _points(c.runs, c.id), want, "every point: salvaged, the rest from metrics.jsonl");
    const store = await openRunStore(c.runs, { create: false });
    assert((await store.events(c.id)).some((e) => e.kind === "start"), "its events were salvaged");
    await closeRunStores();
    const again = await runCliProcess(["store", "check", "--runs-dir", c.runs]);
    assertEquals(again.code, 0, again.stdout);
  } finally {
    await closeRunStores();
    await Deno.remove(c.root, { recursive: true });
  }
});

Deno.test("store: a missing subcommand or store is exit 2; store check on a missing store creates nothing", async () => {
  const root = await Deno.makeTempDir({ prefix: "hostile-store-cmd-" });
  try {
    const before = await snapshotTree(root);
    const none = await runCliProcess(["store", "--runs-dir", `${root}/runs`]);
    _assertRefused(
      "store",
      none,
      2,
      ["store needs check or rebuild"],
      _changes(before, await snapshotTree(root)),
    );
    const missing = await runCliProcess(["store", "check", "--runs-dir", root]);
    _assertRefused(
      "store check",
      missing,
      2,
      [`No run store at ${root}/runs.db`],
      _changes(before, await snapshotTree(root)),
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

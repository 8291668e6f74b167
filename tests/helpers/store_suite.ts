/**
 * The run store conformance suite: the behaviour of {@linkcode RunStore} that every implementation must
 * show, registered as Deno tests for one implementation at a time (`core/runs/store_suite_sqlite_test.ts`,
 * `core/runs/postgres_store_test.ts`), like hono's shared router suite.
 *
 * @module
 */
import { deepStrictEqual as assertEquals, ok as assert, rejects } from "node:assert/strict";
import { runMeta } from "./run_meta.ts";
import {
  assertKilledWriterKept,
  assertWritersKept,
  killWriterAfter,
  runStoreWriters,
} from "./store_writers.ts";
import type { MetricPoint, RunStore } from "../../core/runs/store.ts";
import { RunBusyError } from "../../core/runs/store_errors.ts";

/** A fresh, empty store for one test. */
export interface StoreUnderTest {
  store: RunStore;
  /** Where it is, as `openStoreAt()` (and `--store`) take it: other processes open it with this. */
  location: string;
  /** Closes the store and removes what the test wrote. */
  cleanup: () => Promise<void>;
}

const pt = (key: string, step: number, value: number): MetricPoint => ({
  key,
  step,
  tokens: step * 8,
  time: step / 2,
  value,
});

/**
 * Registers the suite's tests, each named `<name>: <behaviour>`, each on a store from `open`.
 *
 * @example
 * ```ts ignore
 * runStoreSuite("SQLite store", async () => {
 *   const dir = await Deno.makeTempDir();
 *   const store = openSqliteStore(`${dir}/runs.db`);
 *   return { store, location: `sqlite:${dir}/runs.db`, cleanup: async () => {
 *     store.close();
 *     await Deno.remove(dir, { recursive: true });
 *   } };
 * });
 * ```
 */
export function runStoreSuite(
  name: string,
  open: () => Promise<StoreUnderTest>,
  o: { ignore?: boolean } = {},
): void {
  for (const [behaviour, fn] of _CASES) {
    Deno.test({ name: `${name}: ${behaviour}`, ignore: o.ignore ?? false }, async () => {
      const t = await open();
      try {
        await fn(t.store, t.location);
      } finally {
        await t.cleanup();
      }
    });
  }
}

type _Case = readonly [string, (s: RunStore, location: string) => Promise<void>];

/** Asserts that `p` rejects with RunBusyError whose message matches `re`. */
async function _busy(p: Promise<unknown>, re: RegExp): Promise<void> {
  await rejects(p, (e: Error) => {
    assert(e instanceof RunBusyError, `${e.name}: ${e.message}`);
    assert(re.test(e.message), e.message);
    return true;
  });
}

const _HELD = /is held by pid \d+ on host \S+ since \d{4}-\d\d-\d\dT[\d:.]+Z \(heartbeat \d+ s ago\)/;

const _CASES: readonly _Case[] = [
  ["keeps runs and sweeps, newest first, and refuses a second run of one id", async (s) => {
    assertEquals(s.access, { mode: "read-write" });
    await s.createSweep({ id: "sw", name: "lr sweep", config_yaml: "sweep: {}\n", created_at: "2026-01-01" });
    await s.createSweep({ id: "sw", name: "renamed", config_yaml: "", created_at: "2026-01-03" });
    await s.createSweep({ id: "sw2", name: "later", config_yaml: "x: 1\n", created_at: "2026-01-02" });
    assertEquals((await s.getSweep("sw"))!.name, "lr sweep", "an existing sweep is kept as it was");
    assertEquals((await s.listSweeps()).map((w) => w.id), ["sw2", "sw"]);
    assertEquals(await s.getSweep("nope"), null);
    await s.createRun(runMeta("a", { sweep_id: "sw", sweep_params: { "train.lr": 0.01 } }), "name: a\n");
    await s.createRun(runMeta("b", { started_at: "2020-01-01T00:00:00Z" }), "name: b\n");
    await s.createRun(runMeta("c", { started_at: "2020-01-01T00:00:00Z", seed: 2 ** 40 }), "name: c\n");
    await rejects(s.createRun(runMeta("a"), ""), /Run "a" already exists/);
    assertEquals((await s.listRuns()).map((r) => r.id), ["a", "c", "b"], "newest first, then by id");
    assertEquals((await s.listRuns({ sweepId: "sw" })).map((r) => r.id), ["a"]);
    assertEquals((await s.getRun("c"))!.seed, 2 ** 40);
    const a = (await s.getRun("a"))!;
    assertEquals([a.config_yaml, a.sweep_params, a.pid, a.status], [
      "name: a\n",
      { "train.lr": 0.01 },
      Deno.pid,
      "running",
    ]);
    assert(a.host !== null && a.heartbeat_at !== null, "the writer's host and heartbeat are recorded");
    assert(Math.abs(Date.parse(a.heartbeat_at) - Date.now()) < 60_000, a.heartbeat_at);
    assertEquals(await s.getRun("zz"), null);
  }],

  ["deletes a run with its points, events and checkpoints only while a lease holds it", async (s) => {
    await s.createRun(runMeta("gone", { status: "finished" }), "name: gone\n");
    await s.createRun(runMeta("kept"), "name: kept\n");
    for (const id of ["gone", "kept"]) {
      await s.logMetrics(id, [pt("train/loss", 1, 2)]);
      await s.logEvent(id, { kind: "info", message: "hi" });
      await s.recordCheckpoint({
        run_id: id,
        step: 1,
        path: `${id}/ckpt/x`,
        bytes: 1,
        sha256: "0",
        time: "t",
      });
    }
    const lease = await s.acquireRun("gone");
    const stale = { ...lease, lease_id: "not-the-lease" };
    assertEquals(await s.deleteRun(stale), false, "a lease that does not hold the run deletes nothing");
    assert((await s.getRun("gone")) !== null);
    assertEquals(await s.deleteRun(lease), true);
    assertEquals(await s.getRun("gone"), null);
    assertEquals(await s.metrics("gone"), []);
    assertEquals(await s.events("gone"), []);
    assertEquals(await s.checkpoints("gone"), []);
    assertEquals(await s.deleteRun(lease), false, "deleted once");
    assertEquals((await s.metrics("kept")).length, 1, "other runs keep theirs");
    assertEquals((await s.events("kept")).length, 1);
    assertEquals((await s.checkpoints("kept")).length, 1);
  }],

  ["updates runs (claiming them) and imports runs recorded elsewhere only once", async (s) => {
    assertEquals(await s.importRun(runMeta("old", { status: "finished", step: 7 }), "name: old\n"), true);
    assertEquals(await s.importRun(runMeta("old", { status: "failed" }), ""), false);
    const old = (await s.getRun("old"))!;
    assertEquals([old.status, old.step, old.host, old.pid, old.heartbeat_at], [
      "finished",
      7,
      null,
      null,
      null,
    ]);
    await s.updateRun("old", {
      status: "interrupted",
      error: "boom",
      ended_at: "2026-01-02",
      sweep_params: { k: [1] },
    });
    const u = (await s.getRun("old"))!;
    assertEquals([u.status, u.error, u.ended_at, u.sweep_params, u.step], [
      "interrupted",
      "boom",
      "2026-01-02",
      {
        k: [1],
      },
      7,
    ]);
    assertEquals(u.pid, Deno.pid, "an update claims the run for this process");
    await s.updateRun("old", { error: null, adapter: "llvmpipe" });
    assertEquals([(await s.getRun("old"))!.error, (await s.getRun("old"))!.adapter], [null, "llvmpipe"]);
    assertEquals((await s.listRuns({ status: "interrupted" })).map((r) => r.id), ["old"]);
    assertEquals(await s.listRuns({ status: "running" }), []);
    await rejects(s.updateRun("zz", { step: 1 }), /No run "zz"/);
    await s.heartbeat("old");
    assert((await s.getRun("old"))!.heartbeat_at !== null);
  }],

  ["keeps metric points and queries them by key, prefix, seq and limit", async (s) => {
    await s.createRun(runMeta("a"), "");
    await s.createRun(runMeta("b"), "");
    await s.logMetrics("a", [pt("train/loss", 1, 5), pt("train/loss", 2, 4), pt("val/loss", 2, 4.5)]);
    await s.logMetrics("a", [pt("train/loss", 3, 3.5), pt("router/0/mlp/load/0", 3, 0.25)]);
    await s.logMetrics("b", [pt("train/loss", 1, 9)]);
    await s.logMetrics("b", []);
    const all = await s.metrics("a");
    assertEquals(all.map((m) => m.value), [5, 4, 4.5, 3.5, 0.25]);
    assertEquals(all[0], { seq: all[0]!.seq, key: "train/loss", step: 1, tokens: 8, time: 0.5, value: 5 });
    assert(all.every((m, i) => i === 0 || m.seq > all[i - 1]!.seq), "seq grows in commit order");
    assertEquals((await s.metrics("a", { keys: ["train/loss"] })).map((m) => m.step), [1, 2, 3]);
    assertEquals((await s.metrics("a", { keys: ["val/loss", "router/0/mlp/load/0"] })).map((m) => m.value), [
      4.5,
      0.25,
    ]);
    assertEquals(await s.metrics("a", { keys: [] }), []);
    assertEquals((await s.metrics("a", { prefix: "router/" })).map((m) => m.key), ["router/0/mlp/load/0"]);
    assertEquals((await s.metrics("a", { afterSeq: all[2]!.seq })).map((m) => m.value), [3.5, 0.25]);
    assertEquals((await s.metrics("a", { limit: 2 })).map((m) => m.value), [5, 4]);
    assertEquals(await s.metrics("a", { limit: 0 }), []);
    assertEquals(
      (await s.metrics("a", { prefix: "train/", afterSeq: all[0]!.seq, limit: 1 })).map((m) => m.step),
      [2],
    );
    assertEquals(await s.metrics("a", { afterSeq: all.at(-1)!.seq + 1000 }), []);
    assertEquals(await s.metrics("zz"), []);
    assertEquals(await s.lastSeq(), (await s.metrics("b"))[0]!.seq);
  }],

  ["sorts metric keys by bytes and takes prefixes literally", async (s) => {
    await s.createRun(runMeta("a"), "");
    const keys = [
      "train_loss",
      "train/loss",
      "Train/x",
      "a%b",
      "a_b",
      "axb",
      "router/10/x",
      "router/2/x",
      "é/x",
    ];
    await s.logMetrics("a", keys.map((k, i) => pt(k, 1, i)));
    const sorted = [...keys].sort(); // UTF-16 order = byte order for these
    assertEquals(await s.metricKeys("a"), sorted);
    assertEquals(await s.metricKeys("zz"), []);
    assertEquals([...(await s.lastMetrics("a")).keys()], sorted);
    assertEquals((await s.metrics("a", { prefix: "a_" })).map((m) => m.key), ["a_b"], "_ is no wildcard");
    assertEquals((await s.metrics("a", { prefix: "a%" })).map((m) => m.key), ["a%b"], "% is no wildcard");
    assertEquals((await s.metrics("a", { prefix: "train" })).map((m) => m.key), ["train_loss", "train/loss"]);
    assertEquals((await s.metrics("a", { prefix: "router/1" })).map((m) => m.key), ["router/10/x"]);
    assertEquals((await s.metrics("a", { prefix: "é" })).map((m) => m.value), [8]);
  }],

  ["gives each key's newest and lowest point", async (s) => {
    await s.createRun(runMeta("a"), "");
    await s.logMetrics("a", [pt("val/loss", 10, 3), pt("val/loss", 20, 2), pt("val/loss", 30, 2.5)]);
    await s.logMetrics("a", [pt("train/loss", 5, 1), pt("train/loss", 4, 0.5)]); // out of step order
    await s.logMetrics("a", [pt("val/loss", 30, 2.25), pt("val/loss", 40, 2)]); // step 30 again, later
    const last = await s.lastMetrics("a");
    assertEquals([...last.keys()], ["train/loss", "val/loss"]);
    assertEquals([last.get("train/loss")!.step, last.get("train/loss")!.value], [5, 1], "highest step");
    assertEquals(last.get("val/loss")!.step, 40);
    await s.logMetrics("a", [pt("val/loss", 40, 7)]);
    assertEquals((await s.lastMetrics("a", ["val/loss"])).get("val/loss")!.value, 7, "same step: later seq");
    const some = await s.lastMetrics("a", ["val/loss", "nope", "train/loss"]);
    assertEquals([...some.keys()], ["val/loss", "train/loss"], "in the order asked, missing keys left out");
    const best = await s.bestMetrics("a", ["val/loss", "train/loss", "nope"]);
    assertEquals([best.get("val/loss")!.step, best.get("val/loss")!.value], [20, 2], "lowest, earliest step");
    assertEquals(best.get("train/loss")!.value, 0.5);
    assertEquals(best.has("nope"), false);
    assertEquals((await s.bestMetrics("a", [])).size, 0);
  }],

  ["refuses a batch with a non-finite value whole, and keeps numbers exactly", async (s) => {
    await s.createRun(runMeta("a"), "");
    assertEquals(await s.lastSeq(), 0);
    await rejects(s.logMetrics("a", [pt("train/loss", 4, 1), pt("train/loss", 5, NaN)]), (e: Error) => {
      assert(e instanceof RangeError && /non-finite value/.test(e.message), e.message);
      return true;
    });
    await rejects(s.logMetrics("a", [{ ...pt("x", 1, 1), time: Infinity }]), RangeError);
    assertEquals(await s.metrics("a"), []);
    assertEquals(await s.lastSeq(), 0, "nothing was written");
    const odd = [0.1 + 0.2, 1e-300, -2.5e300, 5e-324, 1 / 3, 0, -1];
    await s.logMetrics(
      "a",
      odd.map((v, i) => ({ key: "x", step: i, tokens: 2 ** 45 + i, time: v, value: v })),
    );
    const got = await s.metrics("a");
    assertEquals(got.map((m) => m.value), odd);
    assertEquals(got.map((m) => m.time), odd);
    assertEquals(got.at(-1)!.tokens, 2 ** 45 + 6);
  }],

  ["writes a large batch in one go", async (s) => {
    await s.createRun(runMeta("a"), "");
    const n = 30_000; // more than a statement's 65,535 parameters would hold row by row
    const points = Array.from({ length: n }, (_, i) => pt(`k/${i % 3}`, i, i * 0.5));
    await s.logMetrics("a", points);
    const got = await s.metrics("a", { keys: ["k/1"] });
    assertEquals(got.length, n / 3);
    assertEquals([got[0]!.step, got.at(-1)!.step, got.at(-1)!.value], [1, n - 2, (n - 2) * 0.5]);
    assertEquals((await s.metrics("a", { limit: n + 1 })).length, n);
  }],

  ["keeps events and checkpoint records", async (s) => {
    await s.createRun(runMeta("a"), "");
    await s.logEvent("a", { kind: "skipped_step", message: "nan", step: 2, data: { n: 1, why: ["x"] } });
    await s.logEvent("a", { kind: "finish", message: "done" });
    await s.logEvent("b", { kind: "info", message: "other run" });
    const ev = await s.events("a");
    assertEquals(ev.map((e) => [e.run_id, e.kind, e.message, e.step, e.data]), [
      ["a", "skipped_step", "nan", 2, { n: 1, why: ["x"] }],
      ["a", "finish", "done", null, null],
    ]);
    assert(ev[1]!.seq > ev[0]!.seq && !Number.isNaN(Date.parse(ev[0]!.time)));
    assertEquals((await s.events("a", ev[0]!.seq)).map((e) => e.kind), ["finish"]);
    assertEquals(await s.events("a", ev[1]!.seq), []);

    const ck = { run_id: "a", path: "a/ckpt/step-2.safetensors", bytes: 10, sha256: "x", time: "t" };
    await s.recordCheckpoint({ ...ck, step: 20 });
    await s.recordCheckpoint({ ...ck, step: 3, path: "a/ckpt/step-3.safetensors" });
    await s.recordCheckpoint({
      ...ck,
      step: 3,
      path: "a/ckpt/step-3.safetensors",
      bytes: 2 ** 40,
      sha256: "y",
    });
    assertEquals((await s.checkpoints("a")).map((c) => [c.step, c.bytes, c.sha256]), [[3, 2 ** 40, "y"], [
      20,
      10,
      "x",
    ]]);
    await s.removeCheckpoint("a", 20);
    await s.removeCheckpoint("a", 99);
    assertEquals(await s.checkpoints("a"), [{
      ...ck,
      step: 3,
      path: "a/ckpt/step-3.safetensors",
      bytes: 2 ** 40,
      sha256: "y",
    }]);
    assertEquals(await s.checkpoints("zz"), []);
  }],

  ["keeps reports, replacing one of the same id", async (s) => {
    const report = {
      id: "r1",
      kind: "repro",
      sweep_id: "sw",
      created_at: "2026-01-01",
      markdown: "# R",
      data: { x: [1] },
    };
    await s.saveReport(report);
    await s.saveReport({ ...report, id: "r2", sweep_id: null, created_at: "2026-01-03" });
    await s.saveReport({ ...report, id: "r3", created_at: "2026-01-02", data: { y: { z: null } } });
    assertEquals(await s.getReport("r1"), report);
    assertEquals((await s.listReports()).map((r) => r.id), ["r2", "r3", "r1"]);
    assertEquals((await s.listReports("sw")).map((r) => r.id), ["r3", "r1"]);
    assertEquals(await s.listReports("other"), []);
    await s.saveReport({ ...report, markdown: "# R again", data: {} });
    assertEquals(await s.getReport("r1"), { ...report, markdown: "# R again", data: {} });
    assertEquals((await s.listReports()).length, 3);
    assertEquals(await s.getReport("nope"), null);
    assertEquals(await s.integrityCheck(), "ok");
  }],

  ["marks running runs without a live writer as interrupted, once", async (s) => {
    await s.createRun(runMeta("live"), ""); // this process, heartbeat now
    assertEquals(await s.importRun(runMeta("orphan"), ""), true); // running, no writer, no heartbeat
    assertEquals(await s.importRun(runMeta("done", { status: "finished" }), ""), true);
    assertEquals(await s.markInterrupted(), ["orphan"]);
    const o = (await s.getRun("orphan"))!;
    assertEquals(o.status, "interrupted");
    assert(o.error?.startsWith("Interrupted: no heartbeat for"), o.error ?? "");
    assert(o.ended_at !== null);
    assertEquals((await s.events("orphan")).map((e) => [e.kind, e.step]), [["interrupted", null]]);
    assertEquals((await s.getRun("live"))!.status, "running");
    assertEquals((await s.getRun("done"))!.status, "finished");
    assertEquals(await s.markInterrupted(), [], "a second pass finds nothing");
    assertEquals(await s.markInterrupted(0), ["live"], "stale at once with staleSeconds 0");
    assertEquals((await s.events("orphan")).length, 1);
  }],

  ["never shows a live reader a point below one it has seen, with writers at once", async (s) => {
    await s.createRun(runMeta("a"), "");
    const writers = 3, batches = 25, per = 20;
    const seen: number[] = [];
    let cursor = 0, done = false;
    const read = async () => {
      for (const m of await s.metrics("a", { afterSeq: cursor })) {
        seen.push(m.value);
        cursor = m.seq;
      }
    };
    const reader = (async () => {
      while (!done) {
        await read();
        await new Promise((r) => setTimeout(r, 1));
      }
    })();
    await Promise.all(Array.from({ length: writers }, async (_, w) => {
      for (let b = 0; b < batches; b++) {
        await s.logMetrics(
          "a",
          Array.from({ length: per }, (_, i) => pt("x", b, (w * batches + b) * per + i)),
        );
      }
    }));
    done = true;
    await reader;
    await read();
    assertEquals(seen.length, writers * batches * per, "every point seen once");
    assertEquals(new Set(seen).size, seen.length);
    assertEquals(await s.lastSeq(), cursor);
  }],

  ["refuses a second createRun of one id made at the same time", async (s) => {
    const results = await Promise.allSettled(
      [1, 2, 3, 4].map((i) => s.createRun(runMeta("same", { seed: i }), "")),
    );
    assertEquals(results.filter((r) => r.status === "fulfilled").length, 1);
    assertEquals((await s.listRuns()).length, 1);
  }],

  ["takes four writer processes at once, losing no point", async (s, location) => {
    const ids = ["w0", "w1", "w2", "w3"];
    await runStoreWriters(location, { ids, batches: 100, per: 5 });
    await assertWritersKept(s, { ids, points: 500 });
  }],

  [
    "keeps every acknowledged batch of a writer killed with SIGKILL, and marks its run interrupted",
    async (s, location) => {
      const acked = await killWriterAfter(location, { id: "victim", atLeast: 1000 });
      assertEquals(await s.markInterrupted(), ["victim"]);
      await assertKilledWriterKept(s, { id: "victim", acked });
    },
  ],

  ["lets one process hold a run at a time, names the holder, and takes a silent one over", async (s) => {
    await s.createRun(runMeta("a"), "");
    const first = await s.acquireRun("a");
    assertEquals([first.run_id, first.took_over], ["a", null]);
    await _busy(s.acquireRun("a"), new RegExp(`^Run a ${_HELD.source}: another process is training it`));
    assertEquals(await s.renewRun(first), true);
    const run = (await s.getRun("a"))!;
    assertEquals(run.pid, Deno.pid);
    // Silent for longer than the stale limit (0 s here): taken over, and the old lease is fenced off.
    const second = await s.acquireRun("a", { staleSeconds: 0 });
    assert(second.lease_id !== first.lease_id);
    assert(
      /^pid \d+ on host \S+ since .*: no heartbeat for \d+ s$/.test(second.took_over ?? ""),
      second.took_over!,
    );
    assertEquals(await s.renewRun(first), false);
    await _busy(s.updateRun("a", { step: 3 }, { lease: first }), /^Run a was taken over by pid \d+ on host /);
    assertEquals((await s.getRun("a"))!.step, 0, "the old holder's update wrote nothing");
    await s.updateRun("a", { step: 4 }, { lease: second });
    assertEquals((await s.getRun("a"))!.step, 4);
    await s.releaseRun(first); // no longer its lease: changes nothing
    await _busy(s.acquireRun("a"), _HELD);
    await s.releaseRun(second);
    const third = await s.acquireRun("a");
    assertEquals(third.took_over, null, "a released run is free");
    // A status other than running ends the lease.
    await s.updateRun("a", { status: "interrupted" }, { lease: third });
    assertEquals((await s.acquireRun("a")).took_over, null);
    await rejects(s.acquireRun("zz"), Deno.errors.NotFound);
  }],

  ["ends the lease of a run it marks interrupted", async (s) => {
    await s.createRun(runMeta("a"), "");
    await s.acquireRun("a");
    assertEquals(await s.markInterrupted(0), ["a"]);
    const again = await s.acquireRun("a");
    assertEquals(again.took_over, null);
  }],

  ["starts a sweep point once: a point that is held or finished gets no second run", async (s) => {
    const point = (id: string) => runMeta(id, { name: "lr=0.1", sweep_id: "sw", sweep_params: { lr: 0.1 } });
    const first = await s.createPointRun(point("p1"), "name: p\n");
    assert(first.kind === "created" && first.lease.run_id === "p1");
    const second = await s.createPointRun(point("p2"), "");
    assert(second.kind === "busy", JSON.stringify(second));
    assertEquals(second.run.id, "p1");
    assert(/^pid \d+ on host \S+ since .* \(heartbeat \d+ s ago\)$/.test(second.holder), second.holder);
    assertEquals(await s.getRun("p2"), null);
    // Many at once on a new point: one run.
    const other = (i: number) => runMeta(`q${i}`, { name: "lr=0.2", sweep_id: "sw" });
    const all = await Promise.all([1, 2, 3, 4].map((i) => s.createPointRun(other(i), "")));
    assertEquals(all.filter((r) => r.kind === "created").length, 1, JSON.stringify(all));
    assertEquals(all.filter((r) => r.kind === "busy").length, 3);
    assertEquals((await s.listRuns({ sweepId: "sw" })).filter((r) => r.name === "lr=0.2").length, 1);
    // A run whose lease ended (failed, interrupted) leaves the point to a new run; a finished one keeps it.
    await s.updateRun("p1", { status: "failed" }, { lease: first.lease });
    const retry = await s.createPointRun(point("p3"), "");
    assert(retry.kind === "created", JSON.stringify(retry));
    await s.updateRun("p3", { status: "finished" }, { lease: retry.lease });
    const done = await s.createPointRun(point("p4"), "");
    assert(done.kind === "finished" && done.run.id === "p3", JSON.stringify(done));
    await rejects(s.createPointRun(runMeta("x"), ""), TypeError);
  }],
];

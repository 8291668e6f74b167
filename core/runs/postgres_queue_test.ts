/**
 * The sweep queue of the Postgres store, on the server that `DSMOE_TEST_POSTGRES` names (fails without it,
 * never skips): enqueue is idempotent, concurrent claims never share a point, a stale point is taken over
 * (and its old claim is fenced off), attempts run out, a clean hand-back costs no attempt.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  freshPostgresSchema,
  type FreshSchema,
  postgresTest,
  withPostgresAdmin,
} from "../../tests/helpers/postgres.ts";
import { runMeta } from "../../tests/helpers/run_meta.ts";
import { openPostgresStore, type PostgresRunStore } from "./postgres_store.ts";
import { POSTGRES_SCHEMA_VERSION } from "./postgres_schema.ts";
import type { Claim, ClaimOptions, ClaimResult, PointToEnqueue } from "./sweep_queue.ts";

/** Runs `fn` on stores opened on a fresh schema (`n` of them: separate pools, as separate workers have). */
async function _withStores(n: number, fn: (s: PostgresRunStore[], fresh: FreshSchema) => Promise<void>) {
  const fresh = freshPostgresSchema();
  const stores: PostgresRunStore[] = [];
  try {
    for (let i = 0; i < n; i++) stores.push(await openPostgresStore(fresh.url));
    await fn(stores, fresh);
  } finally {
    await Promise.all(stores.map((s) => s.close()));
    await fresh.drop();
  }
}

const SWEEP = { id: "sw1", name: "sw", config_yaml: "name: sw\n", created_at: "2026-01-01T00:00:00.000Z" };

function _points(n: number): PointToEnqueue[] {
  return Array.from({ length: n }, (_, i) => ({
    index: i,
    name: `sw.x=${i}`,
    params: { x: i },
    config_yaml: `name: sw.x=${i}\n`,
    base_dir: i === 0 ? null : "/data",
  }));
}

function _opts(workerId: string, more: Partial<ClaimOptions> = {}): ClaimOptions {
  return { workerId, staleSeconds: 60, maxAttempts: 3, newRunId: (name) => `run-${name}`, ...more };
}

function _claimed(r: ClaimResult): Claim {
  if (r.kind !== "claimed") throw new Error(`expected a claim, got ${JSON.stringify(r)}`);
  return r.claim;
}

postgresTest(
  "enqueue records the sweep and each point once; again, it leaves points alone and requeues failed ones",
  async () => {
    await _withStores(1, async ([s]) => {
      const q = s!.sweepQueue;
      const points = _points(3);
      points[2]!.finished_run_id = "earlier-run";
      const first = await q.enqueue(SWEEP, points);
      assertEquals(first.map((p) => p.state), ["enqueued", "enqueued", "finished_earlier"]);
      assertEquals(first[2]!.run_id, "earlier-run");
      assertEquals((await s!.getSweep("sw1"))?.name, "sw");
      const c = _claimed(await q.claim(_opts("w1")));
      assertEquals(c.point.point_index, 0);
      assertEquals(c.point.base_dir, null);
      assert(await q.fail(c, "boom"));
      const again = await q.enqueue(SWEEP, points);
      assertEquals(again.map((p) => p.state), ["requeued", "queued", "finished"]);
      const rows = await q.points("sw1");
      assertEquals(rows.length, 3);
      assertEquals(rows[0]!.status, "queued");
      assertEquals([rows[0]!.attempts, rows[0]!.error, rows[0]!.run_id], [0, null, "run-sw.x=0"]);
      assertEquals(rows[1]!.params, { x: 1 });
      assertEquals(rows[1]!.base_dir, "/data");
    });
  },
);

postgresTest("concurrent claims from separate connections never get the same point", async () => {
  await _withStores(6, async (stores) => {
    await stores[0]!.sweepQueue.enqueue(SWEEP, _points(4));
    const results = await Promise.all(stores.map((s, i) => s.sweepQueue.claim(_opts(`w${i}`))));
    const claimed = results.filter((r) => r.kind === "claimed").map((r) => _claimed(r).point.point_index);
    assertEquals(claimed.sort(), [0, 1, 2, 3]);
    for (const r of results.filter((r) => r.kind === "none")) assertEquals(r, { kind: "none", pending: 4 });
    assertEquals(results.filter((r) => r.kind === "none").length, 2);
  });
});

postgresTest(
  "a point without heartbeat for the stale limit is taken over with its run id; the old claim is fenced off",
  async () => {
    await _withStores(2, async ([a, b]) => {
      await a!.sweepQueue.enqueue(SWEEP, _points(1));
      const first = _claimed(await a!.sweepQueue.claim(_opts("A", { staleSeconds: 0.5 })));
      assertEquals([first.point.attempts, first.takenFrom, first.sweepPoints], [1, null, 1]);
      await a!.importRun(runMeta(first.point.run_id!, { sweep_id: "sw1" }), "");
      assert(await a!.sweepQueue.heartbeat(first));
      const beat = (await a!.getRun(first.point.run_id!))!.heartbeat_at;
      assert(beat !== null, "the heartbeat refreshes the run's too");
      assertEquals(await b!.sweepQueue.claim(_opts("B", { staleSeconds: 0.5 })), {
        kind: "none",
        pending: 1,
      });
      await new Promise((r) => setTimeout(r, 800));
      const second = _claimed(await b!.sweepQueue.claim(_opts("B", { staleSeconds: 0.5 })));
      assertEquals(second.point.run_id, first.point.run_id);
      assertEquals([second.point.attempts, second.point.worker_id, second.takenFrom?.worker_id], [
        2,
        "B",
        "A",
      ]);
      assert(second.takenFrom!.silent_s >= 0.5, String(second.takenFrom!.silent_s));
      assertEquals(await a!.sweepQueue.heartbeat(first), false);
      assertEquals(await a!.sweepQueue.finish(first), false);
      assertEquals(await a!.sweepQueue.release(first), false);
      assert(await b!.sweepQueue.finish(second));
      const [row] = await a!.sweepQueue.points();
      assertEquals([row!.status, row!.worker_id, row!.claim_id], ["finished", "B", null]);
      assert(row!.finished_at !== null);
      assertEquals(await a!.sweepQueue.claim(_opts("A")), { kind: "none", pending: 0 });
    });
  },
);

postgresTest("a point is given up after max attempts; a clean hand-back does not use one up", async () => {
  await _withStores(1, async ([s]) => {
    const q = s!.sweepQueue, stale = { staleSeconds: 0.2, maxAttempts: 2 };
    await q.enqueue(SWEEP, _points(1));
    const c1 = _claimed(await q.claim(_opts("A", stale)));
    assert(await q.release(c1));
    const c2 = _claimed(await q.claim(_opts("B", stale)));
    assertEquals([c2.point.attempts, c2.takenFrom], [1, null]);
    await new Promise((r) => setTimeout(r, 300));
    const c3 = _claimed(await q.claim(_opts("C", stale)));
    assertEquals(c3.point.attempts, 2);
    await new Promise((r) => setTimeout(r, 300));
    const r = await q.claim(_opts("D", stale));
    assert(r.kind === "gave_up", JSON.stringify(r));
    assertEquals(r.point.status, "failed");
    assert(/^Gave up after 2 attempts: the last, by worker C, stopped heartbeating/.test(r.point.error!));
    assertEquals(await q.claim(_opts("D", stale)), { kind: "none", pending: 0 });
  });
});

/** A new run in `s`; its id. */
async function _newRun(s: PostgresRunStore): Promise<string> {
  await s.createRun(runMeta("fresh"), "");
  return "fresh";
}

postgresTest(
  "a store of schema version 1 gets the sweep queue and the lease columns when opened",
  async () => {
    await _withStores(1, async ([s], { schema, url }) => {
      await withPostgresAdmin(async (sql) => {
        await sql`DROP TABLE ${sql(schema)}.sweep_queue`;
        await sql`ALTER TABLE ${sql(schema)}.runs DROP COLUMN lease_id, DROP COLUMN leased_at`;
        await sql`UPDATE ${sql(schema)}.store_meta SET value = '1' WHERE key = 'schema_version'`;
      });
      const again = await openPostgresStore(url);
      try {
        assertEquals(await again.integrityCheck(), "ok");
        assertEquals((await again.sweepQueue.enqueue(SWEEP, _points(1)))[0]!.state, "enqueued");
        assertEquals(POSTGRES_SCHEMA_VERSION, 3);
        assertEquals((await again.acquireRun(await _newRun(again))).took_over, null, "and the lease columns");
      } finally {
        await again.close();
      }
      assertEquals((await s!.sweepQueue.points()).length, 1);
    });
  },
);

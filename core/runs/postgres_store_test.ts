/**
 * The run store suite and Postgres-only behaviour on the server that `DSMOE_TEST_POSTGRES` names
 * (`export DSMOE_TEST_POSTGRES=$(.ci/postgres.sh)`). Each test uses a fresh schema, dropped at its end.
 * Without that variable, or without the server, these tests fail: they never skip.
 */
import { deepStrictEqual as assertEquals, ok as assert, rejects } from "node:assert/strict";
import postgres from "postgres";
import { POSTGRES_SCHEMA_VERSION } from "./postgres_schema.ts";
import { openPostgresStore } from "./postgres_store.ts";
import { runStoreSuite } from "./store_suite.ts";

const ENV = "DSMOE_TEST_POSTGRES";

/** The test server's URL, or an error that says how to get one. */
function _base(): string {
  const url = Deno.env.get(ENV);
  if (!url) {
    throw new Error(
      `${ENV} is not set: the Postgres run store tests need a server. Start one and export its URL with ` +
        `\`export ${ENV}=$(.ci/postgres.sh)\` (installs and starts Debian's postgresql on 127.0.0.1)`,
    );
  }
  return url;
}

/** A new schema name and the store URL that uses it. */
function _fresh(): { schema: string; url: string } {
  const schema = `t_${crypto.randomUUID().replaceAll("-", "").slice(0, 16)}`;
  const u = new URL(_base());
  u.searchParams.set("schema", schema);
  return { schema, url: u.href };
}

/** Runs `fn` on a connection of its own to the test database (no schema set). */
async function _admin<T>(fn: (sql: postgres.Sql) => Promise<T>): Promise<T> {
  const sql = postgres(_base(), { max: 1, onnotice: () => {}, connect_timeout: 5 });
  try {
    return await fn(sql);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

async function _drop(schema: string): Promise<void> {
  await _admin((sql) => sql`DROP SCHEMA IF EXISTS ${sql(schema)} CASCADE`);
}

Deno.test(`Postgres tests: the server in $${ENV} answers`, async () => {
  const [r] = await _admin((sql) => sql`SELECT current_setting('server_version_num')::int AS v`).catch(
    (e) => {
      throw new Error(`Cannot reach the Postgres of $${ENV}: ${(e as Error).message}; run .ci/postgres.sh`);
    },
  );
  assert(Number(r!.v) >= 120000, `server version ${r!.v}: dsmoe needs Postgres 12 or newer`);
});

runStoreSuite("Postgres store", async () => {
  const { schema, url } = _fresh();
  const store = await openPostgresStore(url);
  return {
    store,
    location: url,
    cleanup: async () => {
      await store.close();
      await _drop(schema);
    },
  };
});

Deno.test("a new Postgres store gets its tables and schema version; opening it again keeps its runs", async () => {
  const { schema, url } = _fresh();
  try {
    const s = await openPostgresStore(url);
    assert(!s.url.includes(":dsmoe_test@") && s.url.endsWith(`?schema=${schema}`), s.url);
    await s.importRun(_meta("kept"), "name: kept\n");
    await s.close();
    const tables = await _admin((sql) =>
      sql`SELECT table_name AS t FROM information_schema.tables WHERE table_schema = ${schema} ORDER BY 1`
    );
    assertEquals(tables.map((r) => r.t), [
      "checkpoints",
      "events",
      "metrics",
      "reports",
      "runs",
      "store_meta",
      "sweep_queue",
      "sweeps",
    ]);
    const [v] = await _admin((sql) =>
      sql`SELECT value FROM ${sql(schema)}.store_meta WHERE key = 'schema_version'`
    );
    assertEquals(Number(v!.value), POSTGRES_SCHEMA_VERSION);
    const [c] = await _admin((sql) =>
      sql`SELECT collation_name AS c FROM information_schema.columns
          WHERE table_schema = ${schema} AND table_name = 'metrics' AND column_name = 'key'`
    );
    assertEquals(c!.c, "C", "metric keys sort by bytes whatever the database's locale");
    const again = await openPostgresStore(url);
    assertEquals((await again.getRun("kept"))!.config_yaml, "name: kept\n");
    await again.close();
  } finally {
    await _drop(schema);
  }
});

Deno.test("processes opening a new Postgres store at once all get it, migrated once", async () => {
  const { schema, url } = _fresh();
  try {
    const stores = await Promise.all([1, 2, 3, 4, 5].map(() => openPostgresStore(url)));
    await Promise.all(stores.map((s, i) => s.importRun(_meta(`r${i}`), "")));
    assertEquals((await stores[0]!.listRuns()).length, 5);
    assertEquals(await stores[4]!.integrityCheck(), "ok");
    await Promise.all(stores.map((s) => s.close()));
    const [n] = await _admin((sql) => sql`SELECT count(*)::int AS n FROM ${sql(schema)}.store_meta`);
    assertEquals(n!.n, 1);
  } finally {
    await _drop(schema);
  }
});

Deno.test("a Postgres store written by a newer dsmoe is refused; integrityCheck names what is missing", async () => {
  const { schema, url } = _fresh();
  try {
    const s = await openPostgresStore(url);
    await _admin((sql) => sql`DROP TABLE ${sql(schema)}.reports`);
    assertEquals(await s.integrityCheck(), "table reports is missing");
    await s.close();
    await _admin((sql) => sql`UPDATE ${sql(schema)}.store_meta SET value = '99'`);
    await rejects(openPostgresStore(url), (e: Error) => {
      assert(
        e.message.includes(`schema version 99, newer than this dsmoe's ${POSTGRES_SCHEMA_VERSION}`),
        e.message,
      );
      assert(!e.message.includes(":dsmoe_test@"), "no password");
      return true;
    });
  } finally {
    await _drop(schema);
  }
});

Deno.test("a wrong password or a closed port is one line that names the store but not the password", async () => {
  const wrong = new URL(_base());
  wrong.password = "not-the-password-42";
  await rejects(openPostgresStore(wrong.href), (e: Error) => {
    assert(e.message.startsWith(`Cannot open the run store postgres://${wrong.username}@`), e.message);
    assert(e.message.includes("password authentication failed"), e.message);
    assert(!e.message.includes("not-the-password-42"), e.message);
    return true;
  });
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  const t0 = performance.now();
  await rejects(openPostgresStore(`postgres://u:hunter2@127.0.0.1:${port}/db`), (e: Error) => {
    assertEquals(
      e.message,
      `Cannot open the run store postgres://u@127.0.0.1:${port}/db: connection refused by 127.0.0.1:${port} ` +
        "(is the server running, and on this port?)",
    );
    return true;
  });
  assert(performance.now() - t0 < 5000, "refused at once, not after the connect timeout");
});

function _meta(id: string) {
  return {
    id,
    name: id,
    status: "finished" as const,
    seed: 1,
    git_commit: null,
    adapter: null,
    started_at: "2026-01-01T00:00:00.000Z",
    ended_at: null,
    sweep_id: null,
    sweep_params: {},
    error: null,
    step: 0,
  };
}

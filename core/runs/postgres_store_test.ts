/**
 * The run store suite and Postgres-only behaviour on the server that `DSMOE_TEST_POSTGRES` names
 * (`export DSMOE_TEST_POSTGRES=$(.ci/postgres.sh)`). Each test uses a fresh schema, dropped at its end.
 * Without that variable, or without the server, these tests fail: they never skip.
 */
import { deepStrictEqual as assertEquals, ok as assert, rejects } from "node:assert/strict";
import type postgres from "postgres";
import {
  freshPostgresSchema,
  POSTGRES_TEST_ENV,
  POSTGRES_TESTS,
  postgresTest,
  testPostgresUrl,
  withPostgresAdmin,
} from "../../tests/helpers/postgres.ts";
import { runMeta } from "../../tests/helpers/run_meta.ts";
import { POSTGRES_SCHEMA_VERSION } from "./postgres_schema.ts";
import { openPostgresStore } from "./postgres_store.ts";
import { runStoreSuite } from "../../tests/helpers/store_suite.ts";

postgresTest(`Postgres tests: the server in $${POSTGRES_TEST_ENV} answers`, async () => {
  const version = (sql: postgres.Sql) => sql`SELECT current_setting('server_version_num')::int AS v`;
  const [r] = await withPostgresAdmin(version).catch((e) => {
    throw new Error(
      `Cannot reach the Postgres of $${POSTGRES_TEST_ENV}: ${(e as Error).message}; run .ci/postgres.sh`,
    );
  });
  assert(Number(r!.v) >= 120000, `server version ${r!.v}: dsmoe needs Postgres 12 or newer`);
});

runStoreSuite("Postgres store", async () => {
  const { url, drop } = freshPostgresSchema();
  const store = await openPostgresStore(url);
  return {
    store,
    location: url,
    cleanup: async () => {
      await store.close();
      await drop();
    },
  };
}, { ignore: POSTGRES_TESTS.url === null });

postgresTest(
  "a new Postgres store gets its tables and schema version; opening it again keeps its runs",
  async () => {
    const { schema, url, drop } = freshPostgresSchema();
    try {
      const s = await openPostgresStore(url);
      assert(!s.url.includes(":dsmoe_test@") && s.url.endsWith(`?schema=${schema}`), s.url);
      await s.importRun(runMeta("kept", { status: "finished" }), "name: kept\n");
      await s.close();
      const tables = await withPostgresAdmin((sql) =>
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
      const [v] = await withPostgresAdmin((sql) =>
        sql`SELECT value FROM ${sql(schema)}.store_meta WHERE key = 'schema_version'`
      );
      assertEquals(Number(v!.value), POSTGRES_SCHEMA_VERSION);
      const [c] = await withPostgresAdmin((sql) =>
        sql`SELECT collation_name AS c FROM information_schema.columns
          WHERE table_schema = ${schema} AND table_name = 'metrics' AND column_name = 'key'`
      );
      assertEquals(c!.c, "C", "metric keys sort by bytes whatever the database's locale");
      const again = await openPostgresStore(url);
      assertEquals((await again.getRun("kept"))!.config_yaml, "name: kept\n");
      await again.close();
    } finally {
      await drop();
    }
  },
);

postgresTest("processes opening a new Postgres store at once all get it, migrated once", async () => {
  const { schema, url, drop } = freshPostgresSchema();
  try {
    const stores = await Promise.all([1, 2, 3, 4, 5].map(() => openPostgresStore(url)));
    await Promise.all(stores.map((s, i) => s.importRun(runMeta(`r${i}`, { status: "finished" }), "")));
    assertEquals((await stores[0]!.listRuns()).length, 5);
    assertEquals(await stores[4]!.integrityCheck(), "ok");
    await Promise.all(stores.map((s) => s.close()));
    const [n] = await withPostgresAdmin((sql) =>
      sql`SELECT count(*)::int AS n FROM ${sql(schema)}.store_meta`
    );
    assertEquals(n!.n, 1);
  } finally {
    await drop();
  }
});

postgresTest(
  "a Postgres store written by a newer dsmoe is refused; integrityCheck names what is missing",
  async () => {
    const { schema, url, drop } = freshPostgresSchema();
    try {
      const s = await openPostgresStore(url);
      await withPostgresAdmin((sql) => sql`DROP TABLE ${sql(schema)}.reports`);
      assertEquals(await s.integrityCheck(), "table reports is missing");
      await s.close();
      await withPostgresAdmin((sql) => sql`UPDATE ${sql(schema)}.store_meta SET value = '99'`);
      await rejects(openPostgresStore(url), (e: Error) => {
        assert(
          e.message.includes(`schema version 99, newer than this dsmoe's ${POSTGRES_SCHEMA_VERSION}`),
          e.message,
        );
        assert(!e.message.includes(":dsmoe_test@"), "no password");
        return true;
      });
    } finally {
      await drop();
    }
  },
);

postgresTest(
  "a wrong password or a closed port is one line that names the store but not the password",
  async () => {
    const wrong = new URL(testPostgresUrl());
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
  },
);

/**
 * The Postgres server of the tests, named by `DSMOE_TEST_POSTGRES` (`export DSMOE_TEST_POSTGRES=$(.ci/postgres.sh)`):
 * its URL (an error that says how to get one where it is not set: these tests fail, never skip), a fresh
 * schema for each test (with a runs directory, for tests of commands), and a connection of its own for
 * checks on the server.
 *
 * @module
 */
import postgres from "postgres";
import { closeRunStores } from "../../core/runs/open_store.ts";

/** The variable that names the test server. */
export const POSTGRES_TEST_ENV = "DSMOE_TEST_POSTGRES";

/** The test server's URL, or an error that says how to get one. */
export function testPostgresUrl(): string {
  const url = Deno.env.get(POSTGRES_TEST_ENV);
  if (!url) {
    throw new Error(
      `${POSTGRES_TEST_ENV} is not set: these tests need a Postgres server. Start one and export its URL ` +
        `with \`export ${POSTGRES_TEST_ENV}=$(.ci/postgres.sh)\` (installs and starts Debian's postgresql on ` +
        `127.0.0.1)`,
    );
  }
  return url;
}

/** A new schema of the test database: its name, the store URL that uses it, and its removal. */
export interface FreshSchema {
  schema: string;
  url: string;
  drop: () => Promise<void>;
}

/**
 * A schema name no other test uses, and the store URL (`?schema=`) of a store in it; the store creates it
 * on open, `drop()` removes it with everything in it.
 */
export function freshPostgresSchema(): FreshSchema {
  const schema = `t_${crypto.randomUUID().replaceAll("-", "").slice(0, 16)}`;
  const u = new URL(testPostgresUrl());
  u.searchParams.set("schema", schema);
  return {
    schema,
    url: u.href,
    drop: async () => {
      await withPostgresAdmin((sql) => sql`DROP SCHEMA IF EXISTS ${sql(schema)} CASCADE`);
    },
  };
}

/** Runs `fn` on a connection of its own to the test database (no schema set), closed after. */
export async function withPostgresAdmin<T>(fn: (sql: postgres.Sql) => Promise<T>): Promise<T> {
  const sql = postgres(testPostgresUrl(), { max: 1, onnotice: () => {}, connect_timeout: 5 });
  try {
    return await fn(sql);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/**
 * Runs `fn` with the store URL of a fresh schema and an empty temporary runs directory; after it, closes the
 * run stores this process opened, drops the schema and removes the directory.
 */
export async function withPostgresRunsDir<T>(fn: (url: string, dir: string) => Promise<T>): Promise<T> {
  const { url, drop } = freshPostgresSchema();
  const dir = await Deno.makeTempDir();
  try {
    return await fn(url, dir);
  } finally {
    await closeRunStores();
    await drop();
    await Deno.remove(dir, { recursive: true });
  }
}

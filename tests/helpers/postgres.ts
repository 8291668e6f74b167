/**
 * The Postgres server of the tests: the one `DSMOE_TEST_POSTGRES` names (`.ci/run` exports it); where it is
 * unset and Debian's postgresql is installed, the one `.ci/postgres.sh` starts on 127.0.0.1 (idempotent: it
 * reuses a running cluster); where there is none, the Postgres tests are skipped (`ignore`), with the reason
 * printed once. Each test gets a fresh schema (with a runs directory, for tests of commands) and a
 * connection of its own for checks on the server.
 *
 * @module
 */
import postgres from "postgres";
import { closeRunStores } from "../../core/runs/open_store.ts";

/** The variable that names the test server. */
export const POSTGRES_TEST_ENV = "DSMOE_TEST_POSTGRES";

/** The test server's URL, or null with the reason the Postgres tests are skipped. */
export const POSTGRES_TESTS: { url: string | null; reason: string } = await _findServer();

if (POSTGRES_TESTS.url === null) console.warn(`Postgres tests skipped: ${POSTGRES_TESTS.reason}`);

/** A test that needs the Postgres server: skipped (ignored, the reason printed) where there is none. */
export function postgresTest(name: string, fn: () => Promise<unknown> | void): void {
  Deno.test({ name, ignore: POSTGRES_TESTS.url === null, fn: async () => void await fn() });
}

/** The test server's URL (only called by tests that run, so there is one). */
export function testPostgresUrl(): string {
  if (POSTGRES_TESTS.url === null) throw new Error(`no Postgres test server: ${POSTGRES_TESTS.reason}`);
  return POSTGRES_TESTS.url;
}

async function _findServer(): Promise<{ url: string | null; reason: string }> {
  const set = Deno.env.get(POSTGRES_TEST_ENV);
  if (set) return { url: set, reason: `$${POSTGRES_TEST_ENV}` };
  const how = `export ${POSTGRES_TEST_ENV}=$(.ci/postgres.sh) to run them`;
  const installed = await Array.fromAsync(Deno.readDir("/usr/lib/postgresql")).then(
    (vs) => vs.some((v) => _exists(`/usr/lib/postgresql/${v.name}/bin/postgres`)),
    () => false,
  );
  if (!installed) {
    return { url: null, reason: `$${POSTGRES_TEST_ENV} is unset and postgresql is not installed (${how})` };
  }
  const script = new URL("../../.ci/postgres.sh", import.meta.url).pathname;
  const out = await new Deno.Command("bash", { args: [script], stdout: "piped", stderr: "piped" }).output()
    .catch((e) => ({
      success: false,
      stdout: new Uint8Array(),
      stderr: new TextEncoder().encode(String(e)),
    }));
  const text = (b: Uint8Array) => new TextDecoder().decode(b).trim();
  const url = text(out.stdout).split("\n").at(-1) ?? "";
  if (!out.success || !/^postgres(ql)?:\/\//.test(url)) {
    const why = text(out.stderr).split("\n").at(-1) ?? "";
    return {
      url: null,
      reason: `$${POSTGRES_TEST_ENV} is unset and .ci/postgres.sh could not start one (${why})`,
    };
  }
  Deno.env.set(POSTGRES_TEST_ENV, url); // the next test module finds it
  return { url, reason: "started by .ci/postgres.sh" };
}

function _exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
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

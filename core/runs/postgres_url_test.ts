import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import { parseStoreLocation } from "./open_store.ts";
import { describePostgresError, isPostgresFailure, parsePostgresUrl, scrubPassword } from "./postgres_url.ts";

Deno.test("a Postgres store URL is shown without its password and names its schema", () => {
  const u = parsePostgresUrl("postgres://me:p%40ss@db.lab:5433/runs?schema=team_a&sslmode=require");
  assertEquals(u, {
    connect: "postgres://me:p%40ss@db.lab:5433/runs?sslmode=require",
    schema: "team_a",
    display: "postgres://me@db.lab:5433/runs?schema=team_a&sslmode=require",
    password: "p@ss",
  });
  assertEquals(parsePostgresUrl("postgresql://me@h/db").schema, "dsmoe");
  assertEquals(scrubPassword("failed for p@ss and p%40ss", "p@ss"), "failed for *** and ***");
});

Deno.test("a malformed Postgres URL is refused without repeating its password", () => {
  for (
    const [text, why] of [
      ["postgres://me:hunter2@h:99999/db", /Invalid Postgres URL: expected postgres:\/\/user:password@host/],
      ["postgres://me:hunter2@h/db?schema=Bad-Name", /schema "Bad-Name" must be/],
      ["postgres://me:hunter2@h/db?search_path=x", /name the schema with \?schema=NAME/],
      ["postgres://me:hunter2@h/db/extra", /the path must be one database name/],
    ] as const
  ) {
    throws(() => parsePostgresUrl(text), (e: Error) => {
      assert(e instanceof TypeError && why.test(e.message), e.message);
      assert(!e.message.includes("hunter2"), e.message);
      return true;
    });
  }
});

Deno.test("a store location is Postgres for postgres:// URLs, else a SQLite file, else the default", () => {
  assertEquals(parseStoreLocation("postgresql://me@h/db"), { kind: "postgres", url: "postgresql://me@h/db" });
  assertEquals(parseStoreLocation("sqlite:/tmp/a.db"), { kind: "sqlite", path: "/tmp/a.db" });
  assertEquals(parseStoreLocation("runs/other.db"), { kind: "sqlite", path: "runs/other.db" });
  assertEquals(parseStoreLocation(""), { kind: "sqlite", path: null });
  throws(() => parseStoreLocation("mysql://u:pw@h/db"), /Unsupported run store "mysql:\/\/…"/);
  throws(() => parseStoreLocation("sqlite:"), /name the file/);
});

Deno.test("a failed connection or query reads as one line, with the SQLSTATE and without the password", () => {
  const u = { password: "s3cret" };
  assertEquals(
    describePostgresError({ code: "28P01", message: 'password authentication failed for user "me"' }, u),
    'password authentication failed for user "me" (SQLSTATE 28P01)',
  );
  assertEquals(
    describePostgresError({ code: "ECONNREFUSED", address: "10.0.0.1", port: 5432 }, u),
    "connection refused by 10.0.0.1:5432 (is the server running, and on this port?)",
  );
  assertEquals(describePostgresError(new Error("bad s3cret here"), u), "bad *** here");
  assert(isPostgresFailure({ code: "ECONNRESET" }) && !isPostgresFailure(new RangeError("x")));
});

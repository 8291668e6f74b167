import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { cli } from "../../tests/helpers/cli.ts";
import { parseExperimentText } from "../config/mod.ts";
import { closeRunStores, openRunStore } from "../runs/open_store.ts";
import { STORE_ENV, useStore } from "./store_flag.ts";
import { UsageError } from "./errors.ts";

/** Runs `fn` with $DSMOE_STORE set to `value` (or unset), then restores it. */
async function _withEnv<T>(value: string | undefined, fn: () => T | Promise<T>): Promise<T> {
  const old = Deno.env.get(STORE_ENV);
  if (value === undefined) Deno.env.delete(STORE_ENV);
  else Deno.env.set(STORE_ENV, value);
  try {
    return await fn();
  } finally {
    if (old === undefined) Deno.env.delete(STORE_ENV);
    else Deno.env.set(STORE_ENV, old);
  }
}

Deno.test("--store comes before $DSMOE_STORE, which comes before the config's store:, then DIR/runs.db", async () => {
  const dir = await Deno.makeTempDir();
  const config = { value: `${dir}/config.db`, file: "x.yaml" };
  const url = async (flags: { store?: string }, c?: typeof config) => {
    const runsDir = useStore({ "runs-dir": `${dir}/runs`, ...flags }, c);
    const u = (await openRunStore(runsDir)).url;
    await closeRunStores();
    return u;
  };
  try {
    await _withEnv(`sqlite:${dir}/env.db`, async () => {
      assertEquals(await url({ store: `sqlite:${dir}/flag.db` }, config), `sqlite:${dir}/flag.db`);
      assertEquals(await url({}, config), `sqlite:${dir}/env.db`);
    });
    await _withEnv(undefined, async () => {
      assertEquals(await url({}, config), `sqlite:${dir}/config.db`);
      assertEquals(await url({}), `sqlite:${dir}/runs/runs.db`);
      assertEquals(
        await url({ store: "" }, config),
        `sqlite:${dir}/runs/runs.db`,
        "--store '' is the default",
      );
    });
    await _withEnv("", async () => assertEquals(await url({}), `sqlite:${dir}/runs/runs.db`));
  } finally {
    useStore({ "runs-dir": `${dir}/runs` });
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a bad store location is a usage error naming where it came from, without the password", async () => {
  await _withEnv("mysql://u:hunter2@h/db", () => {
    try {
      useStore({});
      assert(false, "not refused");
    } catch (e) {
      assert(e instanceof UsageError, String(e));
      assertEquals(
        e.message,
        '$DSMOE_STORE: Unsupported run store "mysql://…": expected postgres://… (or postgresql://…), or a SQLite file path',
      );
    }
  });
  for (const bad of ["postgres://u:hunter2@h:99999/db", "mysql://u:hunter2@h/db"]) {
    const { code, err } = await cli("eval", "some-run", "--store", bad);
    assertEquals(code, 2);
    assert(err[0]!.startsWith("Usage error: --store: "), err[0]);
    assert(!err.join("\n").includes("hunter2"), err.join("\n"));
  }
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/x.yaml`, "name: x\nstore: postgres://u:hunter2@h/db\n");
    const { code, err } = await cli("run", `${dir}/x.yaml`, "--dry-run");
    assertEquals(code, 2);
    assert(err.join("\n").includes("x.yaml:2:8: store: a store URL in a config must not hold a password"));
    await Deno.writeTextFile(`${dir}/s.yaml`, "name: s\nsweep: { grid: { store: [a.db, b.db] } }\n");
    const swept = await cli("run", `${dir}/s.yaml`, "--dry-run");
    assertEquals(swept.code, 2);
    assert(swept.err[0]!.includes("gives its sweep points different stores"), swept.err[0]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an unreachable Postgres store fails the command (exit 1) in one line, without the password", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  const dir = await Deno.makeTempDir();
  try {
    const store = `postgres://u:hunter2@127.0.0.1:${port}/db`;
    const { code, err } = await cli("eval", "some-run", "--runs-dir", dir, "--store", store);
    assertEquals(code, 1);
    assertEquals(err, [
      `Error: Cannot open the run store postgres://u@127.0.0.1:${port}/db: connection refused by ` +
      `127.0.0.1:${port} (is the server running, and on this port?)`,
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a sweep's id does not depend on where it is stored", () => {
  const text = "name: s\nsweep: { grid: { seed: [1, 2] } }\n";
  const plain = parseExperimentText(text, "s.yaml");
  const stored = parseExperimentText(text + "store: postgres://me@db.lab/runs\n", "s.yaml");
  assertEquals(stored.config.store, "postgres://me@db.lab/runs");
  assertEquals(stored.points.map((p) => p.config.store), [
    "postgres://me@db.lab/runs",
    "postgres://me@db.lab/runs",
  ]);
  assert(plain.sweepId !== null);
  assertEquals(stored.sweepId, plain.sweepId);
});

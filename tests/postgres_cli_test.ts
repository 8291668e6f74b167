/**
 * The commands on a Postgres run store (`--store postgres://…`, `$DSMOE_STORE`, a config's `store:`): a run
 * trains into it, resumes from it, and the dashboard serves it. Needs `DSMOE_TEST_POSTGRES`
 * (`export DSMOE_TEST_POSTGRES=$(.ci/postgres.sh)`); fails without it, never skips.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { dashboardCommand } from "../core/cli/dashboard_cmd.ts";
import type { CliIo } from "../core/cli/io.ts";
import { openPostgresStore } from "../core/runs/postgres_store.ts";
import type { RunStore } from "../core/runs/store.ts";
import { postgresTest, testPostgresUrl, withPostgresAdmin, withPostgresRunsDir } from "./helpers/postgres.ts";

const MICRO = new URL("./fixtures/micro.yaml", import.meta.url).pathname;

/** `deno run -A mod.ts …args` in a process of its own: exit code and output. */
async function _dsmoe(args: string[], env: Record<string, string> = {}) {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "mod.ts", ...args],
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: o.code, out: text(o.stdout), err: text(o.stderr) };
}

/** A short CPU training of the micro config, into `runsDir`, with extra flags. */
function _train(runsDir: string, extra: string[], env: Record<string, string> = {}) {
  return _dsmoe([
    "run",
    ...extra,
    "--set",
    "hardware.backend=cpu",
    "--set",
    "train.log_every=1",
    "--stop-after",
    "2",
    "--no-dashboard",
    "--json",
    "--runs-dir",
    runsDir,
  ], env);
}

async function _withStore<T>(url: string, fn: (s: RunStore) => Promise<T>): Promise<T> {
  const s = await openPostgresStore(url);
  try {
    return await fn(s);
  } finally {
    await s.close();
  }
}

postgresTest(
  "run --store postgres://… trains into Postgres, resumes from it, and the dashboard serves it",
  () =>
    withPostgresRunsDir(async (url, dir) => {
      const first = await _train(dir, [MICRO, "--store", url]);
      assertEquals(first.code, 0, first.err);
      const id: string = JSON.parse(first.out.trim().split("\n").at(-1)!).run_id;
      const shown = new URL(url);
      shown.password = "";
      assert(first.out.includes(`Runs are in ${shown.href} (records and metrics)`), first.out);
      assert(
        !(first.out + first.err).includes(`:${new URL(testPostgresUrl()).password}@`),
        "the password is never printed",
      );
      await assertRejectsNotFound(`${dir}/runs.db`);

      const resumed = await _dsmoe([
        "run",
        "--resume",
        id,
        "--store",
        url,
        "--stop-after",
        "2",
        "--no-dashboard",
        "--runs-dir",
        dir,
      ]);
      assertEquals(resumed.code, 0, resumed.err);
      assert(resumed.err.includes(`Resuming ${id} from step 2`), resumed.err);

      const losses = await _withStore(url, async (s) => {
        const run = (await s.getRun(id))!;
        assertEquals(run.step, 4);
        assert(run.config_yaml.includes("backend: cpu"), "the resolved config is stored");
        assertEquals((await s.events(id)).filter((e) => e.kind === "resume").length, 1);
        const ck = await s.checkpoints(id);
        assertEquals(ck.map((c) => c.step), [2, 4]);
        for (const c of ck) assertEquals((await Deno.stat(`${dir}/${c.path}`)).size, c.bytes);
        const m = await s.metrics(id, { keys: ["train/loss"] });
        assertEquals(m.map((p) => p.step), [1, 2, 3, 4]);
        return m.map((p) => p.value);
      });
      assert(losses.every((v) => v > 0 && v < 10), String(losses));

      const out: string[] = [];
      const io: CliIo = { out: (l) => out.push(l), err: () => {}, write: () => {} };
      const stop = new AbortController();
      const serving = dashboardCommand(
        ["--store", url, "--runs-dir", dir, "--port", "0", "--json", "--token", "test-token-123"],
        io,
        { signal: stop.signal },
      );
      try {
        for (let i = 0; i < 200 && out.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
        const base = JSON.parse(out.at(-1)!).url as string;
        assert(out[0]!.includes(`(store ${shown.href})`), out[0]);
        const runs = (await (await fetch(`${base}api/runs`)).json()).runs as { id: string; step: number }[];
        assertEquals(runs.map((r) => [r.id, r.step]), [[id, 4]]);
        const res = await fetch(`${base}api/runs/${id}/metrics?keys=train/loss&x=step`);
        assertEquals(res.status, 200);
        const series = (await res.json()).series["train/loss"];
        assertEquals(series.step, [1, 2, 3, 4]);
        assertEquals(series.value, losses);
      } finally {
        stop.abort();
      }
      assertEquals(await serving, 0);
    }),
);

postgresTest(
  "a config's store: selects Postgres (password from PGPASSWORD); $DSMOE_STORE and --store come first",
  () =>
    withPostgresRunsDir(async (url, dir) => {
      const noPassword = new URL(url);
      const password = decodeURIComponent(noPassword.password);
      noPassword.password = "";
      await Deno.writeTextFile(
        `${dir}/exp.yaml`,
        `extends: ${MICRO}\nname: from-config\nstore: ${noPassword.href}\n`,
      );
      const r = await _train(`${dir}/runs`, [`${dir}/exp.yaml`], { PGPASSWORD: password });
      assertEquals(r.code, 0, r.err);
      const id: string = JSON.parse(r.out.trim().split("\n").at(-1)!).run_id;
      await _withStore(url, async (s) => assertEquals((await s.getRun(id))!.name, "from-config"));
      await assertRejectsNotFound(`${dir}/runs/runs.db`);

      // The environment names the store of commands that have no config; --store overrides it.
      const byEnv = await _dsmoe(["eval", "no-such-run", "--runs-dir", `${dir}/runs`], { DSMOE_STORE: url });
      assertEquals(byEnv.code, 2, byEnv.err);
      assert(byEnv.err.includes(`No run "no-such-run" in ${noPassword.href}`), byEnv.err);
      const byFlag = await _dsmoe(
        ["eval", "no-such-run", "--runs-dir", `${dir}/runs`, "--store", `sqlite:${dir}/x.db`],
        { DSMOE_STORE: url },
      );
      assertEquals(byFlag.code, 2, byFlag.err);
      assert(byFlag.err.includes(`No run store at ${dir}/x.db`), byFlag.err);
      await assertRejectsNotFound(`${dir}/x.db`); // eval creates no store
    }),
);

postgresTest(
  "store check on Postgres checks the schema and the runs against their directories; store rebuild is SQLite only; eval creates no schema",
  () =>
    withPostgresRunsDir(async (url, dir) => {
      const trained = await _train(`${dir}/runs`, [MICRO, "--store", url]);
      assertEquals(trained.code, 0, trained.err);
      const id: string = JSON.parse(trained.out.trim().split("\n").at(-1)!).run_id;
      const ok = await _dsmoe(["store", "check", "--store", url, "--runs-dir", `${dir}/runs`, "--json"]);
      assertEquals(ok.code, 0, ok.out + ok.err);
      const j = JSON.parse(ok.out.trim().split("\n").at(-1)!);
      assertEquals([j.integrity, j.runs, j.directories, j.problems], ["ok", 1, 1, []]);
      await Deno.remove(`${dir}/runs/${id}`, { recursive: true });
      const orphan = await _dsmoe(["store", "check", "--store", url, "--runs-dir", `${dir}/runs`]);
      assertEquals(orphan.code, 1, orphan.out);
      assert(
        orphan.out.includes(`run ${id}: in the store, but ${dir}/runs/${id}/config.yaml is missing`),
        orphan.out,
      );
      const rebuild = await _dsmoe(["store", "rebuild", "--store", url, "--runs-dir", `${dir}/runs`]);
      assertEquals(rebuild.code, 2, rebuild.err);
      assert(rebuild.err.includes("store rebuild applies to SQLite stores only"), rebuild.err);

      const fresh = new URL(url);
      fresh.searchParams.set("schema", `${fresh.searchParams.get("schema")}_none`);
      const none = await _dsmoe(["eval", "some-run", "--store", fresh.href, "--runs-dir", `${dir}/runs`]);
      assertEquals(none.code, 2, none.err);
      assert(none.err.includes("No run store at postgres://"), none.err);
      const [n] = await withPostgresAdmin((sql) =>
        sql`SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = ${fresh.searchParams.get("schema")!}`
      );
      assertEquals(n!.n, 0, "no schema created");
    }),
);

async function assertRejectsNotFound(path: string): Promise<void> {
  const found = await Deno.stat(path).then(() => true, () => false);
  assert(!found, `${path} exists: the run went to SQLite`);
}

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { closeRunStores, openRunStore } from "../core/runs/open_store.ts";
import { RunDir } from "../core/runs/run_dir.ts";
import { cli } from "./helpers/cli.ts";
import { runMeta } from "./helpers/run_meta.ts";

/** A valid resolved config (no extends), so that eval and generate get as far as the checkpoint. */
const _CONFIG = await Deno.readTextFile(new URL("./fixtures/micro.yaml", import.meta.url));

const A = "20260101-000000-alpha-aaaa"; // alpha, finished, oldest; in a sweep; a checkpoint record
const B = "20260102-000000-alpha-bbbb"; // alpha, finished, newest finished: what the name means
const C = "20260103-000000-alpha-cccc"; // alpha, running (held by this process): what --resume alpha means
const D = "20260102-120000-beta-dddd"; // beta, failed

/** A runs directory with the four runs above, made through the store (no training). */
async function _runs(dir: string): Promise<void> {
  const make = async (id: string, name: string, day: string, status: "finished" | "failed" | null) => {
    const run = await RunDir.create(
      dir,
      runMeta(id, { name, started_at: `${day}Z`, sweep_id: id === A ? "sweep-1234abcd" : null }),
      _CONFIG,
    );
    if (id === B) {
      for (const [key, value] of [["val/loss", 1.5], ["val/ppl", 4.4817], ["val/bpb", 2.1642]] as const) {
        run.log({ key, step: 60, tokens: 60 * 256, time: 1, value });
      }
      run.log({ key: "router/0/mlp/entropy", step: 60, tokens: 60 * 256, time: 1, value: 1.2 });
      await run.flush();
    }
    if (status) await run.update({ status, step: 60, ended_at: new Date().toISOString() });
  };
  await make(A, "alpha", "2026-01-01T00:00:00", "finished");
  await make(B, "alpha", "2026-01-02T00:00:00", "finished");
  await make(C, "alpha", "2026-01-03T00:00:00", null);
  await make(D, "beta", "2026-01-02T12:00:00", "failed");
  const store = await openRunStore(dir);
  await store.recordCheckpoint({
    run_id: A,
    step: 60,
    path: `${A}/ckpt/step-60.safetensors`,
    bytes: 1234,
    sha256: "0".repeat(64),
    time: "2026-01-01T00:10:00Z",
  });
}

async function _withRuns(fn: (dir: string, root: string) => Promise<void>): Promise<void> {
  const root = await Deno.makeTempDir();
  const dir = `${root}/runs`;
  try {
    await _runs(dir);
    await fn(dir, root);
  } finally {
    await closeRunStores();
    await Deno.remove(root, { recursive: true });
  }
}

Deno.test("runs lists runs newest first with their final validation numbers, filtered by name, status, sweep and limit", async () => {
  await _withRuns(async (dir) => {
    const all = await cli("runs", "--runs-dir", dir, "--json");
    assertEquals(all.code, 0, all.err.join("\n"));
    const j = all.json();
    assertEquals(j.runs.map((r: { id: string }) => r.id), [C, D, B, A]);
    assertEquals(j.total, 4);
    const b = j.runs.find((r: { id: string }) => r.id === B);
    assertEquals([b.name, b.status, b.step, b.val_loss, b.val_ppl, b.val_bpb], [
      "alpha",
      "finished",
      60,
      1.5,
      4.4817,
      2.1642,
    ]);
    const text = all.out.join("\n");
    assert(/val loss\s+val ppl\s+val bpb/.test(text), text);
    const line = all.out.find((l) => l.startsWith(B))!;
    assert(/alpha\s+finished\s+60\s+2026-01-02 00:00\s+1\.5000\s+4\.48\s+2\.1642$/.test(line), line);
    assert(all.out.find((l) => l.startsWith(D))!.includes("failed"));
    assertEquals(
      (await cli("runs", "list", "--runs-dir", dir, "--json")).json().total,
      4,
      "list is the default",
    );

    const ids = async (...flags: string[]) =>
      (await cli("runs", "--runs-dir", dir, "--json", ...flags)).json().runs.map((r: { id: string }) => r.id);
    assertEquals(await ids("--name", "al*"), [C, B, A]);
    assertEquals(await ids("--name", "b?ta"), [D]);
    assertEquals(await ids("--name", "alp"), [], "a glob matches the whole name");
    assertEquals(await ids("--status", "finished"), [B, A]);
    assertEquals(await ids("--sweep", "sweep-12"), [A]);
    const limited = await cli("runs", "--runs-dir", dir, "--limit", "1");
    assert(limited.out.some((l) => l.startsWith(C)) && !limited.out.some((l) => l.startsWith(D)));
    assert(limited.out.at(-1)!.includes("and 3 older"), limited.out.at(-1));

    for (
      const [args, msg] of [
        [["--status", "done"], /--status expects running, finished, failed, interrupted/],
        [["--limit", "0"], /--limit expects a positive integer/],
        [["show", A, "--name", "x"], /--name goes with runs list/],
        [["list", "--yes"], /--yes goes with runs rm/],
        [["frobnicate"], /unknown subcommand "frobnicate"/],
      ] as const
    ) {
      const r = await cli("runs", ...args, "--runs-dir", dir);
      assertEquals(r.code, 2, `${args}: ${r.err.join("\n")}`);
      assert(msg.test(r.err.join("\n")), r.err.join("\n"));
    }
  });
});

Deno.test("runs show prints a run's record, config path, checkpoints and last metrics; a name means its newest run", async () => {
  await _withRuns(async (dir) => {
    const byName = await cli("runs", "show", "alpha", "--runs-dir", dir);
    assertEquals(byName.code, 0, byName.err.join("\n"));
    assert(
      byName.err.some((l) => l.startsWith(`Using run ${C} (the newest run named "alpha" of 3)`)),
      byName.err.join("\n"),
    );
    assert(
      byName.out[0] === `Run ${C}` && byName.out.join("\n").includes("running, step 0"),
      byName.out.join("\n"),
    );

    const r = await cli("runs", "show", B, "--runs-dir", dir, "--json");
    assertEquals(r.code, 0, r.err.join("\n"));
    assertEquals(r.err, [], "an id is used as it is");
    const text = r.out.join("\n");
    assert(text.startsWith(`Run ${B}\n`), text);
    assert(text.includes(`config     ${dir}/${B}/config.yaml`), text);
    assert(text.includes("Checkpoints: none"), text);
    assert(/val\/ppl\s+60\s+4\.48\n/.test(text), text); // a perplexity, 2 decimals as everywhere
    assert(text.includes("(and 1 router/… metrics)"), text);
    const j = r.json();
    assertEquals([j.run.id, j.run.status, j.config_path], [B, "finished", `${dir}/${B}/config.yaml`]);
    assertEquals(j.metrics["router/0/mlp/entropy"].value, 1.2);

    const a = await cli("runs", "show", "20260101", "--runs-dir", dir);
    assertEquals(a.code, 0, a.err.join("\n"));
    assert(a.err.some((l) => l.startsWith(`Using run ${A}`)), a.err.join("\n"));
    const at = a.out.join("\n");
    assert(at.includes("Checkpoints (1):") && at.includes(`${dir}/${A}/ckpt/step-60.safetensors`), at);
    assert(at.includes(`sweep      sweep-1234abcd`), at);
  });
});

Deno.test("eval, generate and run --resume take a run name or a unique id prefix; an ambiguous prefix and a missing run exit 2 alike", async () => {
  await _withRuns(async (dir) => {
    // A name: its newest finished run (B), which has no checkpoint, so eval stops there (exit 2).
    const byName = await cli("eval", "alpha", "--runs-dir", dir);
    assertEquals(byName.code, 2, byName.err.join("\n"));
    assert(
      byName.err.some((l) => l.startsWith(`Using run ${B} (the newest finished run named "alpha" of 3)`)),
    );
    assert(byName.err.join("\n").includes(`Run ${B} has no checkpoint to evaluate`), byName.err.join("\n"));
    // A unique prefix.
    const byPrefix = await cli("generate", "20260102-12", "--prompt", "x", "--runs-dir", dir);
    assertEquals(byPrefix.code, 2, byPrefix.err.join("\n"));
    assert(byPrefix.err.some((l) => l.startsWith(`Using run ${D}`)), byPrefix.err.join("\n"));
    assert(byPrefix.err.join("\n").includes(`Run ${D} has no checkpoint to generate from`));
    // To resume, a name means its newest run of any status: C, which this process holds (so: busy, exit 2).
    const resume = await cli("run", "--resume", "alpha", "--runs-dir", dir, "--no-dashboard");
    assertEquals(resume.code, 2, resume.err.join("\n"));
    assert(
      resume.err.some((l) => l.startsWith(`Using run ${C} (the newest run named "alpha"`)),
      resume.err.join("\n"),
    );

    // A prefix of several runs: exit 2, listing them, in every command.
    for (
      const args of [
        ["eval", "2026010"],
        ["generate", "2026010", "--prompt", "x"],
        ["run", "--resume", "2026010", "--no-dashboard"],
        ["runs", "show", "2026010"],
        ["runs", "rm", "2026010", "--yes"],
      ]
    ) {
      const r = await cli(...args, "--runs-dir", dir);
      assertEquals(r.code, 2, `${args}: ${r.err.join("\n")}`);
      const err = r.err.join("\n");
      assert(err.includes(`"2026010" is the start of 4 run ids in sqlite:`), err);
      for (const id of [A, B, C, D]) assert(err.includes(id), `${args} lists ${id}: ${err}`);
    }
    // No such run: exit 2 and the same message in every command.
    const lines = [];
    for (
      const args of [
        ["eval", "nope"],
        ["generate", "nope", "--prompt", "x"],
        ["run", "--resume", "nope", "--no-dashboard"],
        ["runs", "show", "nope"],
        ["runs", "rm", "nope", "--yes"],
      ]
    ) {
      const r = await cli(...args, "--runs-dir", dir);
      assertEquals(r.code, 2, `${args}: ${r.err.join("\n")}`);
      lines.push(r.err.find((l) => l.includes('No run "nope"')));
    }
    assert(lines[0]?.startsWith(`Error: No run "nope" in sqlite:`), lines[0]);
    assertEquals(new Set(lines).size, 1, lines.join("\n"));
    assertEquals((await openRunStore(dir)).access.mode, "read-write");
    assertEquals((await (await openRunStore(dir)).listRuns()).length, 4, "nothing was removed");
  });
});

Deno.test("runs rm removes store rows and run directories, never a running run, nothing outside the runs directory", async () => {
  await _withRuns(async (dir, root) => {
    const store = await openRunStore(dir);
    // A's directory is a link to a directory outside the runs directory: the link goes, not what it points to.
    await Deno.mkdir(`${root}/outside`);
    await Deno.writeTextFile(`${root}/outside/keep.txt`, "keep");
    await Deno.writeTextFile(`${root}/outside/config.yaml`, "name: not-a-run\n");
    await Deno.remove(`${dir}/${A}`, { recursive: true });
    await Deno.symlink(`${root}/outside`, `${dir}/${A}`);

    // A running run (held by this process) is refused, and then nothing is removed: all or none.
    const busy = await cli("runs", "rm", A, C, "--yes", "--runs-dir", dir);
    assertEquals(busy.code, 2, busy.err.join("\n"));
    assert(busy.err.join("\n").includes(`Run ${C} is held by pid ${Deno.pid}`), busy.err.join("\n"));
    assert((await store.getRun(A)) !== null && (await store.getRun(C)) !== null);

    const r = await cli("runs", "rm", A, "beta", "--yes", "--runs-dir", dir, "--json");
    assertEquals(r.code, 0, r.err.join("\n"));
    assertEquals(r.json().removed.map((x: { id: string }) => x.id), [A, D]);
    assertEquals(await store.getRun(A), null);
    assertEquals(await store.getRun(D), null);
    assertEquals(await store.checkpoints(A), [], "its checkpoint records went too");
    assertEquals(await Deno.lstat(`${dir}/${A}`).catch((e) => e.name), "NotFound");
    assertEquals(await Deno.lstat(`${dir}/${D}`).catch((e) => e.name), "NotFound");
    assertEquals(await Deno.readTextFile(`${root}/outside/keep.txt`), "keep", "nothing outside was removed");
    assert((await Deno.stat(`${dir}/${B}/config.yaml`)).isFile, "other runs keep their directories");
    assertEquals((await store.listRuns()).map((x) => x.id).sort(), [B, C]);
    assert((await Deno.stat(`${dir}/runs.db`)).isFile, "the store stays");
  });
});

Deno.test("deno task runs rm refuses without --yes when stdin is not a terminal (exit 2), removing nothing", async () => {
  await _withRuns(async (dir) => {
    await closeRunStores();
    const o = await new Deno.Command(Deno.execPath(), {
      args: ["task", "-q", "runs", "rm", B, "--runs-dir", dir],
      cwd: new URL("..", import.meta.url),
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(o.stderr);
    assertEquals(o.code, 2, err);
    assert(err.includes("stdin is not a terminal") && err.includes("--yes"), err);
    assert(err.includes(B), "it says which runs it would remove");
    assert((await Deno.stat(`${dir}/${B}/config.yaml`)).isFile);
    assert((await (await openRunStore(dir)).getRun(B)) !== null);
  });
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { closeRunStores, openRunStore } from "../core/runs/open_store.ts";
import { latestCheckpoint } from "../core/runs/checkpoints.ts";
import { cli } from "./helpers/cli.ts";

Deno.test("deno task run serves its live page; killed with SIGKILL mid-run it leaves an intact store: points, checkpoint, status interrupted", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const p = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "mod.ts",
        "run",
        "tests/fixtures/micro.yaml",
        "--runs-dir",
        dir,
        "--set",
        "train.steps=400",
        "--set",
        "train.log_every=5",
        "--set",
        "train.checkpoint_every=10",
        "--dashboard-port",
        "0",
      ],
      stdout: "null",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    // Progress lines go to stderr; the line of step n is printed before that step's points are flushed, and
    // the flush ends the step, so once "step n" shows, every point of steps ≤ n − log_every is committed.
    const reader = p.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let text = "", seen = 0;
    while (seen < 40) {
      const { value, done } = await reader.read();
      if (done) break;
      text += value;
      for (const m of text.matchAll(/^step (\d+)\/400/gm)) seen = Math.max(seen, Number(m[1]));
    }
    // `run` printed the live dashboard page of the run; it answers while the run trains.
    const runId = /^run (\S+) →/m.exec(text)![1]!;
    const live = /^live: (http:\/\/127\.0\.0\.1:\d+\/)runs\/(\S+)$/m.exec(text);
    assert(live && live[2] === runId, text);
    const page = await fetch(`${live[1]}runs/${runId}`);
    assertEquals(page.status, 200);
    assert((await page.text()).includes(runId));
    const api = await (await fetch(`${live[1]}api/runs/${runId}`)).json();
    assertEquals(api.run.status, "running");
    p.kill("SIGKILL");
    await p.status;
    await reader.cancel();
    assert(seen >= 40, `the run got to step ${seen}:\n${text}`);

    const store = await openRunStore(dir);
    assertEquals(await store.integrityCheck(), "ok");
    const run = (await store.getRun(runId))!;
    assertEquals(run.status, "interrupted");
    const steps = new Set((await store.metrics(runId, { keys: ["train/loss"] })).map((m) => m.step));
    for (let s = 5; s <= seen - 5; s += 5) assert(steps.has(s), `train/loss of step ${s} is stored`);
    // The newest complete checkpoint is intact, listed in the store, and the run resumes from it.
    const ck = await latestCheckpoint(`${dir}/${runId}`);
    assert(ck && ck.entry.step >= 30, `checkpoint step ${ck?.entry.step}`);
    assert((await store.checkpoints(runId)).some((c) => c.step === ck.entry.step));
    closeRunStores();
    const r = await cli("run", "--resume", runId, "--runs-dir", dir, "--stop-after", "5", "--json");
    assertEquals(r.code, 0, r.err.join("\n"));
    assert(r.err.some((l) => l.includes(`Resuming ${runId} from step ${ck.entry.step}`)), r.err.join("\n"));
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

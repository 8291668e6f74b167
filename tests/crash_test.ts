import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { closeRunStores, openRunStore } from "../core/runs/open_store.ts";
import { latestCheckpoint } from "../core/runs/checkpoints.ts";
import { cli } from "./helpers/cli.ts";

/** Pids of the live children of process `pid` (Linux /proc; empty elsewhere). */
function _children(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const e of Deno.readDirSync("/proc")) {
      if (!/^\d+$/.test(e.name)) continue;
      try {
        const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
        const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        if (Number(ppid) === pid && state !== "Z") out.push(Number(e.name));
      } catch {
        // Gone meanwhile.
      }
    }
  } catch {
    // No /proc.
  }
  return out;
}

/** Waits (liveness bound 15 s) until nothing listens at `url` any more. */
async function _gone(url: string): Promise<boolean> {
  for (let i = 0; i < 150; i++) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
      await res.body?.cancel();
    } catch {
      return true;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

/** Reads `stream` into `sink.text` until `until` holds on it or the stream ends. */
async function _readUntil(
  reader: ReadableStreamDefaultReader<string>,
  sink: { text: string },
  until: (text: string) => boolean,
): Promise<void> {
  while (!until(sink.text)) {
    const { value, done } = await reader.read();
    if (done) return;
    sink.text += value;
  }
}

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
    const write = await fetch(`${live[1]}api/runs`, { method: "POST", body: "{}" });
    assertEquals([write.status, (await write.json()).error.startsWith("Writes are disabled")], [403, true]);
    // The live dashboard is a child process; it goes when its parent is SIGKILLed.
    const children = _children(p.pid);
    assertEquals(children.length, 1, `children of ${p.pid}: ${children}`);
    p.kill("SIGKILL");
    await p.status;
    await reader.cancel();
    assert(await _gone(`${live[1]}api/runs`), "the dashboard still answers after its parent was killed");
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

Deno.test("a training run whose live dashboard is SIGKILLed goes on: exit 0, finished, every step's points", async () => {
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
        "train.steps=300",
        "--set",
        "train.log_every=5",
        "--set",
        "train.eval_every=100",
        "--dashboard-port",
        "0",
        "--json",
      ],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    const stdout = new Response(p.stdout).text();
    const reader = p.stderr.pipeThrough(new TextDecoderStream()).getReader();
    const err = { text: "" };
    await _readUntil(reader, err, (t) => /^step (\d+)\/300/m.test(t));
    const live = /^live: (http:\/\/127\.0\.0\.1:\d+\/)runs\/(\S+)$/m.exec(err.text);
    assert(live, err.text);
    const [child] = _children(p.pid);
    assert(child, `no dashboard child of ${p.pid}:\n${err.text}`);
    Deno.kill(child, "SIGKILL");
    assert(await _gone(`${live[1]}api/runs`), "the dashboard was killed");
    await _readUntil(reader, err, () => false);
    const { code } = await p.status;
    const stepAtKill = /^step (\d+)\/300/m.exec(err.text)![1];
    assertEquals(code, 0, err.text);
    const warnings = err.text.split("\n").filter((l) => l.startsWith("Warning: the live dashboard"));
    assertEquals(warnings, [
      "Warning: the live dashboard stopped (killed by SIGKILL); training goes on (browse later: deno task dashboard)",
    ]);
    const runId = live[2]!;
    assertEquals(JSON.parse((await stdout).trim().split("\n").at(-1)!).run_id, runId);
    const store = await openRunStore(dir);
    const run = (await store.getRun(runId))!;
    assertEquals([run.status, run.step], ["finished", 300]);
    const steps = (await store.metrics(runId, { keys: ["train/loss"] })).map((m) => m.step);
    assertEquals(steps, Array.from({ length: 60 }, (_, i) => 5 * (i + 1)), `killed at step ${stepAtKill}`);
    assertEquals((await store.metrics(runId, { keys: ["val/loss"] })).map((m) => m.step), [100, 200, 300]);
    console.log(`dashboard killed at step ${stepAtKill} of 300; the run finished`);
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * The README's own command stops cleanly (issue 21, item 2): `deno task run <config>` started in a process
 * group of its own, and SIGTERM or SIGHUP sent to the task runner's pid only (as `kill <pid>`, `timeout` or
 * a closed terminal's session leader would): within a bounded time no process of the group is left (trainer
 * and live dashboard included), the run is `interrupted` with a checkpoint at the step it stopped at (not one
 * of its `checkpoint_every` steps: it was written on the way out), and `deno task run --resume <id>`
 * continues from there. Linux only (/proc).
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { closeRunStores, openRunStore } from "../core/runs/open_store.ts";
import { latestCheckpoint } from "../core/runs/checkpoints.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
/** Long enough to be training when the signal comes; no checkpoint of its own before step 1000. */
const CONFIG = `extends: ${ROOT}tests/fixtures/micro.yaml
name: signals
data: { synthetic_bytes: 8192 }
train: { steps: 2000, log_every: 1, eval_every: 2000, checkpoint_every: 1000 }
`;
/** Longest wait for the group to be gone after the signal (a step, a checkpoint, the store's close). */
const GONE_WITHIN_MS = 60_000;

/** The live processes of process group `pgid` (Linux /proc), as "pid cmdline". */
function groupProcesses(pgid: number): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      const [state, , pg] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(pg) !== pgid || state === "Z") continue;
      const cmd = Deno.readTextFileSync(`/proc/${e.name}/cmdline`).replaceAll("\0", " ").trim();
      out.push(`${e.name} ${cmd}`);
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

/**
 * `deno task <args>` in the repository, in a new process group (its pid is the group's id). `wrapped`: under
 * `sh -c`, which forwards no signal, with `INIT_CWD` set as `npm exec` sets it for the `sh` it starts, so the
 * chain is that of `npx -y deno@2.9.6 task run`: (npm exec →) sh → deno task → trainer.
 */
function task(args: string[], wrapped = false): Deno.ChildProcess {
  return new Deno.Command(wrapped ? "sh" : Deno.execPath(), {
    args: wrapped ? ["-c", `"${Deno.execPath()}" task "$@"; exit $?`, "sh", ...args] : ["task", ...args],
    cwd: ROOT,
    detached: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...(wrapped ? { INIT_CWD: ROOT } : {}) },
  }).spawn();
}

/** Collects a stream's text into `sink.text` until it ends. */
async function collect(stream: ReadableStream<Uint8Array>, sink: { text: string }): Promise<void> {
  for await (const t of stream.pipeThrough(new TextDecoderStream())) sink.text += t;
}

async function until(what: string, ms: number, ok: () => boolean): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** SIGKILLs whatever is left of group `pgid`. */
function killGroup(pgid: number): void {
  try {
    Deno.kill(-pgid, "SIGKILL");
  } catch {
    // Nothing left.
  }
}

/**
 * Starts `deno task run` on `cfg` with the live dashboard, waits for its third step, sends `signal` to the
 * task runner's pid only, and waits for the group to go. Returns the run id, the stderr text and the step
 * the progress lines had reached.
 */
async function runAndSignal(dir: string, cfg: string, signal: Deno.Signal, wrapped = false) {
  const p = task(["run", cfg, "--runs-dir", dir, "--dashboard-port", "0"], wrapped);
  const err = { text: "" }, out = { text: "" };
  const reading = Promise.all([collect(p.stderr, err), collect(p.stdout, out)]);
  try {
    await until("step 3", 120_000, () => /^step 3\//m.test(err.text) || /^Error/m.test(err.text));
    assert(/^dashboard: http/m.test(err.text), err.text);
    const before = groupProcesses(p.pid);
    // The task runner, the trainer and the dashboard (each `deno`, maybe with a shell between).
    assert(before.length >= 3, `processes of the group:\n${before.join("\n")}`);
    const sent = Date.now();
    Deno.kill(p.pid, signal); // the task runner only, not the group
    await until(`the group of ${p.pid} to exit`, GONE_WITHIN_MS, () => groupProcesses(p.pid).length === 0);
    const took = Date.now() - sent;
    await reading;
    await p.status;
    const id = /^run (\S+) →/m.exec(err.text)![1]!;
    let reached = 0;
    for (const m of err.text.matchAll(/^step (\d+)\//gm)) reached = Math.max(reached, Number(m[1]));
    const who = wrapped ? "sh above deno task" : "deno task";
    console.log(`  ${signal} to ${who} (pid ${p.pid}): every process gone within ${took} ms`);
    return { id, stderr: err.text, reached };
  } finally {
    killGroup(p.pid);
  }
}

/** The run's record and newest checkpoint: interrupted, checkpointed at the step it stopped at. */
async function assertStoppedCleanly(dir: string, id: string, reached: number, stderr: string) {
  const run = (await (await openRunStore(dir)).getRun(id))!;
  assertEquals(run.status, "interrupted", stderr);
  assert(run.ended_at !== null, "the trainer recorded its end itself");
  const ck = await latestCheckpoint(`${dir}/${id}`);
  assert(ck !== null, `a checkpoint was written on the way out:\n${stderr}`);
  assert(ck.entry.step >= reached && ck.entry.step < 1000, `checkpoint at step ${ck.entry.step}`);
  assertEquals(run.step, ck.entry.step);
  assert(/^Interrupted by SIG\w+|^The task runner that started this process/m.test(stderr), stderr);
  return ck.entry.step;
}

Deno.test("deno task run, SIGTERM, SIGHUP or SIGKILL to the task runner only (or SIGKILL to a wrapper above it, as npx's): trainer and dashboard gone, run interrupted with a checkpoint, deno task run --resume continues", async (t) => {
  const dir = await Deno.makeTempDir();
  try {
    const cfg = `${dir}/signals.yaml`;
    await Deno.writeTextFile(cfg, CONFIG);
    const cases = [["SIGTERM", false], ["SIGHUP", false], ["SIGKILL", false], ["SIGKILL", true]] as const;
    for (const [signal, wrapped] of cases) {
      await t.step(`${signal}${wrapped ? " to sh above deno task" : ""}`, async () => {
        const r = await runAndSignal(dir, cfg, signal, wrapped);
        const step = await assertStoppedCleanly(dir, r.id, r.reached, r.stderr);
        closeRunStores();
        if (signal !== "SIGTERM") return; // one resume is enough
        // The README's resume, through the task runner too: it continues from the checkpoint.
        const resumed = await task([
          "run",
          "--resume",
          r.id,
          "--runs-dir",
          dir,
          "--no-dashboard",
          "--stop-after",
          "2",
        ])
          .output();
        const text = new TextDecoder().decode(resumed.stderr);
        assertEquals(resumed.code, 0, text);
        assert(text.includes(`Resuming ${r.id} from step ${step}`), text);
        const ck = await latestCheckpoint(`${dir}/${r.id}`);
        assertEquals(ck?.entry.step, step + 2);
      });
    }
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * Sweep workers on one Postgres store (`run --enqueue`, `deno task worker`): three worker processes work
 * through a sweep of 9 micro points while one is killed with SIGKILL mid-point; a worker stopped with
 * SIGTERM hands its point back; a worker whose point was taken over stops training it. Needs `DSMOE_TEST_POSTGRES` (`export DSMOE_TEST_POSTGRES=$(.ci/postgres.sh)`);
 * fails without it, never skips.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { createApp } from "../core/dashboard/app.ts";
import { closeRunStores, openRunStore } from "../core/runs/open_store.ts";
import { openPostgresStore, type PostgresRunStore } from "../core/runs/postgres_store.ts";
import { sweepQueueOf } from "../core/runs/sweep_queue.ts";
import { createBackend } from "../core/train/backends.ts";
import { runSweepWorker } from "../core/train/sweep_worker.ts";
import { cli } from "./helpers/cli.ts";
import { postgresTest, withPostgresRunsDir } from "./helpers/postgres.ts";
import { runMeta } from "./helpers/run_meta.ts";

const SWEEP = new URL("./fixtures/micro_sweep.yaml", import.meta.url).pathname;
const MICRO = new URL("./fixtures/micro.yaml", import.meta.url).pathname;
const STEPS = 30; // train.steps of micro_sweep.yaml
// --stale-seconds of the workers: a killed worker's point is taken over after this. (At 4 s, a worker whose event
// loop a loaded 2-core machine held up for a few seconds lost its point to another: a takeover, not a failure.)
const STALE = 10;

/** A worker process (`deno run -A mod.ts worker …`) whose output is collected as it comes. */
class _Worker {
  readonly child: Deno.ChildProcess;
  out = "";
  err = "";
  readonly #drained: Promise<unknown>;

  constructor(args: string[]) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "mod.ts", "worker", ...args],
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const drain = async (s: ReadableStream<Uint8Array>, add: (t: string) => void) => {
      for await (const t of s.pipeThrough(new TextDecoderStream())) add(t);
    };
    this.#drained = Promise.all([
      drain(this.child.stdout, (t) => this.out += t),
      drain(this.child.stderr, (t) => this.err += t),
    ]);
  }

  /** Its exit status once it exits, or SIGKILL and an error after `ms`. */
  async done(ms: number): Promise<Deno.CommandStatus> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.child.kill("SIGKILL");
        reject(new Error(`worker ${this.child.pid} still running after ${ms} ms:\n${this.err.slice(-3000)}`));
      }, ms);
    });
    try {
      return await Promise.race([this.child.status, late]);
    } finally {
      clearTimeout(timer);
      await this.#drained;
    }
  }

  /** SIGKILLs it if it still runs (a test's cleanup). */
  kill(): void {
    try {
      this.child.kill("SIGKILL");
    } catch {
      // already exited
    }
  }
}

/**
 * Writes `<dir>/<name>.yaml`: the micro config on the CPU as a sweep of one point (seed `seed`), with the
 * `train:` block `train` where given. Returns its path.
 */
async function _onePointSweep(
  dir: string,
  o: { name: string; seed: number; train?: string },
): Promise<string> {
  const path = `${dir}/${o.name}.yaml`;
  await Deno.writeTextFile(
    path,
    `extends: ${MICRO}\nname: ${o.name}\nhardware: { backend: cpu }\n` +
      (o.train ? `train: ${o.train}\n` : "") + `sweep: { grid: { seed: [${o.seed}] } }\n`,
  );
  return path;
}

/** `run <config> --store <url> --enqueue --runs-dir <runsDir> --json`, which must succeed; its JSON line. */
async function _enqueue(config: string, o: { url: string; runsDir: string }): Promise<{ sweep_id: string }> {
  const r = await cli("run", config, "--store", o.url, "--enqueue", "--runs-dir", o.runsDir, "--json");
  assertEquals(r.code, 0, r.err.join("\n"));
  return r.json();
}

async function _until<T>(what: string, ms: number, f: () => Promise<T | null>): Promise<T> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    const v = await f();
    if (v !== null) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`Timed out after ${ms} ms waiting for ${what}`);
}

/** Every run's train/loss covers steps 1..steps; a step done twice (redone after a kill) has one value. */
async function _assertMetricsComplete(s: PostgresRunStore, runId: string, steps: number): Promise<void> {
  const byStep = new Map<number, Set<number>>();
  for (const m of await s.metrics(runId, { keys: ["train/loss"] })) {
    byStep.set(m.step, (byStep.get(m.step) ?? new Set()).add(m.value));
  }
  assertEquals([...byStep.keys()].sort((a, b) => a - b), Array.from({ length: steps }, (_, i) => i + 1));
  for (const [step, values] of byStep) {
    assertEquals(values.size, 1, `run ${runId} step ${step} logged different losses: ${[...values]}`);
  }
  const val = await s.metrics(runId, { keys: ["val/loss"] });
  assert(val.some((m) => m.step === steps), `run ${runId} has its final val/loss`);
}

postgresTest(
  "--enqueue queues a sweep's points once and trains nothing; with a SQLite store it and worker are usage errors",
  () =>
    withPostgresRunsDir(async (url, dir) => {
      const first = await cli("run", SWEEP, "--store", url, "--enqueue", "--runs-dir", dir, "--json");
      assertEquals(first.code, 0, first.err.join("\n"));
      const j = first.json();
      assertEquals(j.points.length, 9);
      assert(j.points.every((p: { state: string }) => p.state === "enqueued"), JSON.stringify(j));
      assert(
        first.out.some((l) => l.includes(`deno task worker --store "${j.store}"`)),
        first.out.join("\n"),
      );
      const again = await cli("run", SWEEP, "--store", url, "--enqueue", "--runs-dir", dir, "--json");
      assertEquals(again.code, 0, again.err.join("\n"));
      assertEquals(again.json().points.map((p: { state: string }) => p.state), Array(9).fill("queued"));
      const s = await openPostgresStore(url);
      try {
        assertEquals((await s.sweepQueue.points(j.sweep_id)).length, 9);
        assertEquals(await s.listRuns(), []);
        assertEquals((await s.getSweep(j.sweep_id))?.name, "micro-sweep");
      } finally {
        await s.close();
      }

      const sqlite = await cli("run", SWEEP, "--enqueue", "--runs-dir", `${dir}/local`);
      assertEquals(sqlite.code, 2);
      assert(sqlite.err.join("\n").includes("--enqueue needs a Postgres run store"), sqlite.err.join("\n"));
      const worker = await cli("worker", "--runs-dir", `${dir}/local`);
      assertEquals(worker.code, 2);
      assert(worker.err.join("\n").includes("worker needs a Postgres run store"), worker.err.join("\n"));
      const noSweep = await cli("run", MICRO, "--store", url, "--enqueue", "--runs-dir", dir);
      assertEquals(noSweep.code, 2);
      assert(noSweep.err.join("\n").includes("has no sweep: block"), noSweep.err.join("\n"));
    }),
);

postgresTest(
  "3 workers, one killed with SIGKILL mid-point: all 9 points finish once, the killed point's run resumes, metrics complete",
  () =>
    withPostgresRunsDir(async (url, dir) => {
      const workers: _Worker[] = [];
      try {
        const sweepId = (await _enqueue(SWEEP, { url, runsDir: dir })).sweep_id;
        await closeRunStores();
        const s = await openPostgresStore(url);
        try {
          for (let i = 0; i < 3; i++) {
            workers.push(
              new _Worker([
                "--store",
                url,
                "--runs-dir",
                dir,
                "--sweep",
                sweepId,
                "--stale-seconds",
                String(STALE),
                "--exit-when-empty",
                "--json",
              ]),
            );
          }
          // Kill the worker of a point that has a checkpoint and steps left: mid-point.
          const victim = await _until("a running point with a checkpoint", 90_000, async () => {
            for (const p of await s.sweepQueue.points(sweepId)) {
              if (p.status !== "running" || !p.run_id) continue;
              const ck = await s.checkpoints(p.run_id);
              const run = await s.getRun(p.run_id);
              if (ck.length === 0 || !run || run.step >= STEPS - 5) continue;
              const w = workers.find((w) => p.worker_id?.split(":").at(-2) === String(w.child.pid));
              if (w) return { w, point: p, ckStep: ck.at(-1)!.step };
            }
            return null;
          });
          victim.w.child.kill("SIGKILL");
          const statuses = await Promise.all(workers.map((w) => w.done(150_000)));
          for (const [i, st] of statuses.entries()) {
            if (workers[i] === victim.w) assertEquals(st.signal, "SIGKILL");
            else assertEquals(st.code, 0, workers[i]!.err.slice(-3000));
          }

          const points = await s.sweepQueue.points(sweepId);
          assertEquals(points.length, 9);
          for (const p of points) assertEquals(p.status, "finished", `${p.point_name}: ${p.error}`);
          const runs = await s.listRuns({ sweepId });
          assertEquals(runs.length, 9, "one run per point, no duplicates");
          assertEquals(new Set(runs.map((r) => r.name)), new Set(points.map((p) => p.point_name)));
          assertEquals(new Set(runs.map((r) => r.id)), new Set(points.map((p) => p.run_id)));
          for (const r of runs) {
            assertEquals([r.status, r.step], ["finished", STEPS], r.id);
            await _assertMetricsComplete(s, r.id, STEPS);
          }

          // The killed point was taken over and its run continued from its checkpoint, not restarted.
          const killed = points.find((p) => p.point_index === victim.point.point_index)!;
          assertEquals(killed.run_id, victim.point.run_id);
          assertEquals(killed.attempts, 2);
          assert(killed.worker_id !== victim.point.worker_id, "another worker finished it");
          const resumes = (await s.events(killed.run_id!)).filter((e) => e.kind === "resume");
          assertEquals(resumes.length, 1);
          assert(resumes[0]!.step! >= victim.ckStep, `resumed from step ${resumes[0]!.step}, not restarted`);
          assertEquals(points.filter((p) => p.attempts !== 1).map((p) => p.point_index), [
            killed.point_index,
          ]);
          const survivors = workers.filter((w) => w !== victim.w);
          assert(survivors.some((w) => w.err.includes("taken over from worker")), "a progress line says so");
          assert(survivors.some((w) => w.err.includes(`Resuming ${killed.run_id} from step`)));
          const worked = survivors.flatMap((w) => JSON.parse(w.out.trim().split("\n").at(-1)!).points);
          // The dashboard over the same store shows the sweep's runs and its queue.
          const api = await (await createApp({ store: s }).request(`http://127.0.0.1/api/sweeps/${sweepId}`))
            .json();
          assertEquals(api.runs.length, 9);
          assertEquals(api.queue.map((q: { status: string }) => q.status), Array(9).fill("finished"));
          const byVictim = points.filter((p) => p.worker_id === victim.point.worker_id).length;
          assertEquals(
            worked.filter((p: { status: string }) => p.status === "finished").length,
            9 - byVictim,
          );
        } finally {
          await s.close();
        }
      } finally {
        for (const w of workers) w.kill();
      }
    }),
);

postgresTest(
  "a worker stopped with SIGTERM checkpoints and hands its point back; the next worker resumes that run",
  () =>
    withPostgresRunsDir(async (url, dir) => {
      let first: _Worker | null = null;
      try {
        const train = "{ steps: 40, checkpoint_every: 5, eval_every: 40, log_every: 1 }";
        await _enqueue(await _onePointSweep(dir, { name: "one", seed: 3, train }), { url, runsDir: dir });
        await closeRunStores();
        const s = await openPostgresStore(url);
        try {
          const args = ["--store", url, "--runs-dir", dir, "--exit-when-empty", "--stale-seconds", "30"];
          first = new _Worker(args);
          const runId = await _until("a checkpoint", 60_000, async () => {
            const [p] = await s.sweepQueue.points();
            return p?.run_id && (await s.checkpoints(p.run_id)).length > 0 ? p.run_id : null;
          });
          first.child.kill("SIGTERM");
          const st = await first.done(60_000);
          assertEquals(st.code, 0, first.err);
          assert(first.err.includes("handed back to the queue"), first.err);
          const [back] = await s.sweepQueue.points();
          assertEquals([back!.status, back!.attempts, back!.run_id], ["queued", 0, runId]);
          const stopped = (await s.getRun(runId))!;
          assertEquals(stopped.status, "interrupted");
          assert(
            (await s.checkpoints(runId)).some((c) => c.step === stopped.step),
            "checkpointed where it stopped",
          );

          const second = new _Worker(args);
          assertEquals((await second.done(60_000)).code, 0, second.err);
          assert(second.err.includes(`Resuming ${runId} from step ${stopped.step}`), second.err);
          const [done] = await s.sweepQueue.points();
          assertEquals([done!.status, done!.attempts], ["finished", 1]);
          assertEquals((await s.listRuns()).map((r) => [r.id, r.status]), [[runId, "finished"]]);
          await _assertMetricsComplete(s, runId, 40);
        } finally {
          await s.close();
        }
      } finally {
        first?.kill();
      }
    }),
);

postgresTest(
  "a worker whose point was taken over stops training it at once and leaves the run to the new claim",
  () =>
    withPostgresRunsDir(async (url, dir) => {
      const thief = await openPostgresStore(url);
      try {
        const train = "{ steps: 400, checkpoint_every: 5, eval_every: 400 }";
        await _enqueue(await _onePointSweep(dir, { name: "long", seed: 5, train }), { url, runsDir: dir });
        const store = await openRunStore(dir);
        const lines: string[] = [];
        const working = runSweepWorker({
          runsDir: dir,
          store,
          queue: sweepQueueOf(store)!,
          workerId: "test:1:w",
          maxPoints: 1,
          staleSeconds: 2,
          maxAttempts: 3,
          exitWhenEmpty: true,
          backendFactory: createBackend,
          progress: (l) => lines.push(l),
        });
        const runId = await _until("step 5", 60_000, async () => {
          const [p] = await thief.sweepQueue.points();
          const run = p?.run_id ? await thief.getRun(p.run_id) : null;
          return run && run.step >= 5 ? run.id : null;
        });
        // Another worker claims the point, as it would once this one's heartbeats stopped arriving.
        const t0 = performance.now();
        const stolen = await thief.sweepQueue.claim({
          workerId: "thief",
          staleSeconds: 0.001,
          maxAttempts: 3,
          newRunId: () => "unused",
        });
        assert(stolen.kind === "claimed" && stolen.claim.point.run_id === runId, JSON.stringify(stolen));
        const [w] = await working;
        assertEquals(w?.status, "lost", lines.join("\n"));
        // It stops within a heartbeat or two (0.5 s each), not at the end of its 400 steps; the bound is loose
        // because a loaded 2-core machine can hold its event loop up for seconds.
        assert(performance.now() - t0 < 30_000, `stopped ${performance.now() - t0} ms after the takeover`);
        assert(lines.some((l) => l.includes("lost the point: another worker claimed it")), lines.join("\n"));
        const run = (await thief.getRun(runId))!;
        assertEquals(
          run.status,
          "running",
          "the run is left to the new claim, not marked failed or finished",
        );
        assert(run.step < 400);
        const [row] = await thief.sweepQueue.points();
        assertEquals([row!.status, row!.worker_id, row!.attempts], ["running", "thief", 2]);
      } finally {
        await thief.close();
      }
    }),
);

postgresTest(
  "a worker that lacks the files of a claimed point's run (no shared runs dir) hands it back and exits 2",
  () =>
    withPostgresRunsDir(async (url, dir) => {
      const s = await openPostgresStore(url);
      try {
        await _enqueue(await _onePointSweep(dir, { name: "one", seed: 3 }), {
          url,
          runsDir: `${dir}/shared`,
        });
        // A worker elsewhere claimed the point, created its run in its runs directory, and died.
        const c = await s.sweepQueue.claim({
          workerId: "gone",
          staleSeconds: 60,
          maxAttempts: 3,
          newRunId: () => "r1",
        });
        assert(c.kind === "claimed");
        const { point_name: name, sweep_id, params: sweep_params, config_yaml } = c.claim.point;
        await s.importRun(runMeta("r1", { name, seed: 3, sweep_id, sweep_params }), config_yaml);
        const w = new _Worker([
          "--store",
          url,
          "--runs-dir",
          `${dir}/local`,
          "--stale-seconds",
          "1",
          "--exit-when-empty",
        ]);
        assertEquals((await w.done(60_000)).code, 2, w.err);
        assert(w.err.includes("has r1/config.yaml in the store but not under --runs-dir"), w.err);
        const [p] = await s.sweepQueue.points();
        assertEquals([p!.status, p!.attempts, p!.run_id], ["queued", 1, "r1"]);
      } finally {
        await s.close();
      }
    }),
);

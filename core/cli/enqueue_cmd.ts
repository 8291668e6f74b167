/**
 * `deno task run <sweep.yaml> --store postgres://… --enqueue`: records the sweep and puts each of its points
 * in the store's sweep queue for `deno task worker` processes to train; trains nothing. Enqueuing the same
 * sweep again adds nothing twice: finished and running points are left alone, failed ones are queued again.
 *
 * @module
 */
import { dirname, resolve } from "node:path";
import { experimentToYaml, type LoadedExperiment } from "../config/mod.ts";
import { openRunStore, selectedRunStore } from "../runs/open_store.ts";
import { preferredRun } from "../runs/store.ts";
import { type EnqueueOutcome, sweepQueueOf } from "../runs/sweep_queue.ts";
import { table } from "../util/format.ts";
import { EXIT_OK, UsageError } from "./errors.ts";
import type { CliIo } from "./io.ts";

/** Enqueues every point of `loaded` in the store chosen for `runsDir` (a Postgres store). */
export async function enqueueSweep(
  loaded: LoadedExperiment,
  runsDir: string,
  io: CliIo,
  json = false,
): Promise<number> {
  if (!loaded.sweepId) {
    throw new UsageError(
      `--enqueue queues the points of a sweep, and ${loaded.file} has no sweep: block; ` +
        `train it here with: deno task run ${loaded.file}`,
    );
  }
  if (selectedRunStore(runsDir).kind !== "postgres") {
    throw new UsageError(
      "--enqueue needs a Postgres run store (--store postgres://…, $DSMOE_STORE or the config's store:), " +
        `where workers on every machine find the queue; with a SQLite store, train the sweep here: ` +
        `deno task run ${loaded.file}`,
    );
  }
  const store = await openRunStore(runsDir);
  const queue = sweepQueueOf(store)!;
  const sweepId = loaded.sweepId;
  const runs = await store.listRuns({ sweepId });
  const baseDir = resolve(dirname(loaded.file));
  const outcomes = await queue.enqueue(
    {
      id: sweepId,
      name: loaded.config.name,
      config_yaml: experimentToYaml(loaded.config),
      created_at: new Date().toISOString(),
    },
    loaded.points.map((p) => {
      const done = preferredRun(runs.filter((r) => r.name === p.name));
      return {
        index: p.index,
        name: p.name,
        params: p.params,
        config_yaml: experimentToYaml(p.config),
        base_dir: baseDir,
        finished_run_id: done?.status === "finished" ? done.id : null,
      };
    }),
  );
  io.out(
    table(
      ["#", "point", "state", "run"],
      outcomes.map((o) => [
        String(o.point_index + 1),
        o.point_name,
        o.state.replace("_", " "),
        o.run_id ?? "-",
      ]),
    ),
  );
  io.out(_summary(outcomes, sweepId, store.url));
  io.out(
    `Start workers, any number on any machines, each with the same shared --runs-dir:\n` +
      `  deno task worker --store "${store.url}" --runs-dir ${resolve(runsDir)} --sweep ${sweepId}\n` +
      `Watch: deno task dashboard --store "${store.url}"`,
  );
  if (json) io.out(JSON.stringify({ sweep_id: sweepId, store: store.url, points: outcomes }));
  return EXIT_OK;
}

function _summary(outcomes: readonly EnqueueOutcome[], sweepId: string, url: string): string {
  const count = new Map<string, number>();
  for (const o of outcomes) count.set(o.state, (count.get(o.state) ?? 0) + 1);
  const parts = [...count].map(([state, n]) => `${n} ${state.replace("_", " ")}`);
  return `Sweep ${sweepId}: ${outcomes.length} points in the queue of ${url} (${parts.join(", ")}).`;
}

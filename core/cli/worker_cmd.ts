/**
 * `deno task worker --store postgres://… [--runs-dir DIR] [--sweep ID] …`: one sweep worker
 * (core/train/sweep_worker.ts). Progress goes to stderr; stdout ends with a table of the points it worked on
 * (with --json, then one JSON object). Exit 0 when its points finished (or were handed back on SIGINT or
 * SIGTERM), 1 when one failed, 2 for usage errors.
 *
 * @module
 */
import { fmtLoss, NONE } from "../util/quantities.js";
import { resolve } from "node:path";
import { openRunStore, selectedRunStore } from "../runs/open_store.ts";
import { sweepQueueOf } from "../runs/sweep_queue.ts";
import { createBackend } from "../train/backends.ts";
import {
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_STALE_SECONDS,
  RunsDirNotSharedError,
  runSweepWorker,
  type WorkedPoint,
} from "../train/sweep_worker.ts";
import { table } from "../util/format.ts";
import { parseCommandArgs, positiveInt } from "./args.ts";
import { EXIT_OK, EXIT_RUN_FAILURE, UsageError } from "./errors.ts";
import type { CliIo } from "./io.ts";
import { useStore } from "./store_flag.ts";
import { abortOnSignal } from "./train_cmd.ts";
import { WORKER_USAGE } from "./usage.ts";

/** Runs `deno task worker …`; returns the exit code. */
export async function workerCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseCommandArgs("worker", args, {
    sweep: { type: "string" },
    "max-points": { type: "string" },
    "stale-seconds": { type: "string" },
    "max-attempts": { type: "string" },
    "exit-when-empty": { type: "boolean" },
  });
  if (values.help) {
    io.out(WORKER_USAGE);
    return EXIT_OK;
  }
  if (positionals.length > 0) throw new UsageError(`worker takes no arguments, got "${positionals[0]}"`);
  const maxPoints = positiveInt("max-points", values["max-points"]);
  const staleSeconds = positiveInt("stale-seconds", values["stale-seconds"]) ?? DEFAULT_STALE_SECONDS;
  const maxAttempts = positiveInt("max-attempts", values["max-attempts"]) ?? DEFAULT_MAX_ATTEMPTS;
  const runsDir = useStore(values);
  if (selectedRunStore(runsDir).kind !== "postgres") {
    throw new UsageError(
      "worker needs a Postgres run store, where the sweep queue is: --store postgres://… or $DSMOE_STORE " +
        "(enqueue with: deno task run <sweep.yaml> --store postgres://… --enqueue)",
    );
  }
  const store = await openRunStore(runsDir);
  const queue = sweepQueueOf(store)!;
  if (values.sweep !== undefined && (await queue.points(values.sweep)).length === 0) {
    throw new UsageError(
      `No sweep "${values.sweep}" in the queue of ${store.url}; enqueue it with: ` +
        `deno task run <sweep.yaml> --store ${store.url} --enqueue`,
    );
  }
  const workerId = `${_host()}:${Deno.pid}:${crypto.randomUUID().slice(0, 4)}`;
  io.err(
    `worker ${workerId}: ${values.sweep ? `sweep ${values.sweep}` : "every sweep"} of ${store.url}; ` +
      `runs dir ${resolve(runsDir)}; a point silent for ${staleSeconds} s is taken over`,
  );
  const ac = abortOnSignal(io);
  let worked: WorkedPoint[];
  try {
    worked = await runSweepWorker({
      runsDir,
      store,
      queue,
      workerId,
      sweepId: values.sweep,
      maxPoints,
      staleSeconds,
      maxAttempts,
      exitWhenEmpty: values["exit-when-empty"] ?? false,
      backendFactory: createBackend,
      progress: (l) => io.err(l),
      signal: ac.signal,
    });
  } catch (e) {
    if (e instanceof RunsDirNotSharedError) throw new UsageError(e.message);
    throw e;
  }
  io.out(_table(worked));
  io.out(`worker ${workerId}: ${worked.length} point${worked.length === 1 ? "" : "s"} claimed`);
  if (values.json) {
    io.out(JSON.stringify({ worker_id: workerId, store: store.url, points: worked.map(_json) }));
  }
  return worked.some((w) => w.status === "failed" || w.status === "gave_up") ? EXIT_RUN_FAILURE : EXIT_OK;
}

function _table(worked: readonly WorkedPoint[]): string {
  return table(
    ["sweep", "point", "status", "train loss", "val loss", "run"],
    worked.map((w) => [
      w.point.sweep_id,
      w.point.point_name,
      w.status.replace("_", " "),
      fmtLoss(w.final?.["train/loss"]),
      fmtLoss(w.final?.["val/loss"]),
      w.point.run_id ?? NONE,
    ]),
    ["left", "left", "left", "right", "right", "left"],
  );
}

function _json(w: WorkedPoint) {
  return {
    sweep_id: w.point.sweep_id,
    point_index: w.point.point_index,
    point_name: w.point.point_name,
    run_id: w.point.run_id,
    attempt: w.point.attempts,
    status: w.status,
    error: w.error,
    final: w.final,
  };
}

function _host(): string {
  try {
    return Deno.hostname();
  } catch {
    return "host";
  }
}

/**
 * CLI entry: dispatches `deno task <command>` to its implementation and maps errors to exit codes
 * (0 ok, 1 run failure, 2 usage or config error). No stack traces for expected failures; set
 * `DSMOE_DEBUG=1` to see them for unexpected ones.
 *
 * @module
 */
import { ConfigError, type LoadedExperiment, loadExperiment } from "../config/mod.ts";
import { parseCommandArgs, positiveInt, positiveNumber } from "./args.ts";
import { describePointsData, formatDryRun, summarizePoint } from "./dry_run.ts";
import { trainMemoryEstimate } from "../plan/plan.ts";
import { parseByteSize } from "../config/schema.ts";
import { fmtBytes } from "../util/format.ts";
import { defaultCacheDir } from "../data/prepare.ts";
import { rememberFileTokenizers } from "../data/vocab.ts";
import { dashboardCommand } from "./dashboard_cmd.ts";
import { EXIT_OK, EXIT_RUN_FAILURE, EXIT_USAGE, UsageError } from "./errors.ts";
import { enqueueSweep } from "./enqueue_cmd.ts";
import { evalCommand } from "./eval_cmd.ts";
import { generateCommand } from "./generate_cmd.ts";
import { reproCommand } from "./repro_cmd.ts";
import { useStore } from "./store_flag.ts";
import { DataError } from "../data/sources.ts";
import { GpuLimitError } from "../../gpu/errors.ts";
import { AmbiguousRunError, NoSuchRunError, RunBusyError, StoreMissingError } from "../runs/store_errors.ts";
import { CheckpointError } from "../runs/checkpoints.ts";
import { RUN_USAGE, USAGE } from "./usage.ts";
import { resumeRun, trainRuns } from "./train_cmd.ts";
import { assertTrainableHere } from "../train/backends.ts";
import { workerCommand } from "./worker_cmd.ts";
import type { CliIo } from "./io.ts";

/** Default config of `deno task run` with no argument. */
export const DEFAULT_CONFIG = "configs/quickstart.yaml";

const _encoder = new TextEncoder();

/**
 * A line to a terminal or pipe that may be gone (the terminal closed, the reader killed): dropped rather
 * than thrown, so that a run stopping on SIGHUP still finishes its step, checkpoint and record.
 */
function _lineTo(print: (line: string) => void): (line: string) => void {
  return (line) => {
    try {
      print(line);
    } catch {
      // Nowhere to write; the run store keeps what matters.
    }
  };
}

const _stdio: CliIo = {
  out: _lineTo((line) => console.log(line)),
  err: _lineTo((line) => console.error(line)),
  write: (text) => {
    const bytes = _encoder.encode(text);
    for (let i = 0; i < bytes.length;) i += Deno.stdout.writeSync(bytes.subarray(i));
  },
};

/**
 * Runs one CLI invocation and returns its exit code.
 *
 * @example
 * ```ts ignore
 * const code = await main(["run", "configs/dsmoe-tiny.yaml", "--dry-run"]);
 * ```
 */
export async function main(argv: readonly string[], io: CliIo = _stdio): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case undefined:
      case "help":
      case "--help":
      case "-h":
        io.out(USAGE);
        return command === undefined ? EXIT_USAGE : EXIT_OK;
      case "run":
        return await _run(rest, io);
      case "eval":
        return await evalCommand(rest, io);
      case "generate":
        return await generateCommand(rest, io);
      case "dashboard":
        return await dashboardCommand(rest, io);
      case "repro":
        return await reproCommand(rest, io);
      case "study":
        return await (await import("./study_cmd.ts")).studyCommand(rest, io);
      case "prepare":
        return await (await import("./prepare_cmd.ts")).prepareCommand(rest, io);
      case "worker":
        return await workerCommand(rest, io);
      case "store":
        return await (await import("./store_cmd.ts")).storeCommand(rest, io);
      case "runs":
        return await (await import("./runs_cmd.ts")).runsCommand(rest, io);
      case "bench":
        return await (await import("./bench_cmd.ts")).benchCommand(rest, io); // loads tfjs only here
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (e) {
    return _report(e, io);
  }
}

function _report(e: unknown, io: CliIo): number {
  if (e instanceof ConfigError) {
    io.err(`Config error:\n${e.message}`);
    return EXIT_USAGE;
  }
  if (e instanceof UsageError) {
    io.err(`Usage error: ${e.message}\nRun with --help for usage.`);
    return EXIT_USAGE;
  }
  if (e instanceof GpuLimitError) {
    io.err(`Plan refused: ${e.message}`);
    return EXIT_USAGE; // refused before anything ran or was written
  }
  // Bad data, a store that is not there, a run another process holds, a run that is not there (or a prefix of
  // several) and a checkpoint, manifest or run directory refused before use: nothing was done (exit 2).
  if (
    e instanceof DataError || e instanceof StoreMissingError || e instanceof RunBusyError ||
    e instanceof CheckpointError || e instanceof NoSuchRunError || e instanceof AmbiguousRunError
  ) {
    io.err(`Error: ${e.message}`);
    return EXIT_USAGE;
  }
  const err = e instanceof Error ? e : new Error(String(e));
  io.err(`Error: ${err.name === "Error" ? "" : `${err.name}: `}${err.message}`);
  if (Deno.env.get("DSMOE_DEBUG")) io.err(err.stack ?? "");
  return EXIT_RUN_FAILURE;
}

async function _run(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseCommandArgs("run", args, {
    set: { type: "string", multiple: true },
    sweep: { type: "string", multiple: true },
    "dry-run": { type: "boolean" },
    "stop-after": { type: "string" },
    resume: { type: "string" },
    "dashboard-port": { type: "string" },
    "no-dashboard": { type: "boolean" },
    profile: { type: "boolean" },
    "peak-tflops": { type: "string" },
    enqueue: { type: "boolean" },
  });
  if (values.help) {
    io.out(RUN_USAGE);
    return EXIT_OK;
  }
  if (values.enqueue) {
    const other = (["dry-run", "resume", "stop-after", "profile"] as const).find((f) =>
      values[f] !== undefined
    );
    if (other) throw new UsageError(`--enqueue trains nothing here, so --${other} does not go with it`);
  }
  if (positionals.length > 1) throw new UsageError(`run takes one config file, got ${positionals.length}`);
  positiveInt("stop-after", values["stop-after"]);
  positiveNumber("peak-tflops", values["peak-tflops"]);
  if (values["peak-tflops"] !== undefined && !values.profile) {
    throw new UsageError("--peak-tflops goes with --profile (it sets the fp32 peak its MFU is taken over)");
  }
  if (values.resume !== undefined && positionals.length > 0) {
    throw new UsageError("run --resume takes a run id, not a config file");
  }
  if (values.resume !== undefined) {
    // A resumed run keeps its stored config and trains: flags that would change what it is or train nothing
    // are refused rather than ignored; `--set` may change how long it trains (resumeRun checks the keys).
    const ignored = (["dry-run", "sweep"] as const).find((f) => values[f] !== undefined);
    if (ignored) {
      throw new UsageError(
        `--${ignored} does not go with --resume: a resumed run continues with the config it was started with ` +
          `(runs/<id>/config.yaml); to change it, start a new run from an edited copy`,
      );
    }
    useStore(values);
    return await resumeRun(values.resume, io, values);
  }
  const file = positionals[0] ?? DEFAULT_CONFIG;
  const loaded = await loadExperiment(file, { sets: values.set ?? [], sweeps: values.sweep ?? [] });
  useStore(values, { value: _configStore(loaded), file });
  rememberFileTokenizers(loaded.points, file.includes("/") ? file.slice(0, file.lastIndexOf("/")) : ".");
  if (!values["dry-run"]) {
    // What each point's training plan allocates (core/plan/plan.ts trainMemoryEstimate), before anything is.
    for (const p of loaded.points) {
      const need = trainMemoryEstimate(p.config).bytes,
        budget = parseByteSize(p.config.hardware.memory_budget);
      if (need <= budget) continue;
      throw new UsageError(
        `Plan refused: ${p.name} needs more memory than hardware.memory_budget allows: ${
          fmtBytes(need)
        } to ` +
          `train against a budget of ${
            fmtBytes(budget)
          } (deno task run ${file} --dry-run shows the parts); ` +
          "lower train.micro_batch (gradient accumulation), data.seq_len or the model, or raise the budget",
      );
    }
    if (values.enqueue) return await enqueueSweep(loaded, values["runs-dir"] ?? "runs", io, values.json);
    // A feature the adapter lacks (shader-f16 for hardware.precision f16): refused before any data, store,
    // dashboard or run exists (exit 2).
    await assertTrainableHere(loaded.points.map((p) => p.config));
    return await trainRuns(loaded, io, values);
  }
  const points = loaded.points.map((p) => summarizePoint(p.name, p.params, p.config));
  const data = await describePointsData(loaded, defaultCacheDir(values["runs-dir"]));
  io.out(formatDryRun(loaded, points, data));
  const over = points.filter((p) => !p.fits_budget);
  if (values.json) io.out(JSON.stringify({ points }));
  if (over.length > 0) {
    io.err(
      `Plan refused: ${over.map((p) => p.name).join(", ")} ${
        over.length === 1 ? "needs" : "need"
      } more memory ` +
        `than hardware.memory_budget allows (see "memory" above); raise the budget or shrink the model.`,
    );
    return EXIT_USAGE;
  }
  return EXIT_OK;
}

/** The config's `store:`: one for the whole sweep, which a run's resume and the dashboard must find again. */
function _configStore(loaded: LoadedExperiment): string | undefined {
  const stores = new Set(loaded.points.map((p) => p.config.store));
  if (stores.size > 1) {
    throw new UsageError(`store: ${loaded.file} gives its sweep points different stores; a sweep has one`);
  }
  return loaded.config.store;
}

/**
 * What `eval` and `generate` take: a stored run (its newest complete checkpoint) or one checkpoint file,
 * with unreadable targets as usage errors.
 *
 * @module
 */
import { parseExperimentText } from "../config/mod.ts";
import { readSafeTensors, SafeTensorsError } from "../runs/safetensors.ts";
import { paramValues } from "../train/trainer.ts";
import { UsageError } from "./errors.ts";
import type { Experiment } from "../config/schema.ts";
import type { RunDir } from "../runs/run_dir.ts";
import { openStoredRun, type StoredRun } from "../runs/stored_run.ts";

/** The one run id, run directory or checkpoint file that `command` takes. */
export function targetArg(command: string, positionals: string[]): string {
  if (positionals.length !== 1) {
    throw new UsageError(
      `${command} takes one run id, run directory or checkpoint file, got ${positionals.length}`,
    );
  }
  return positionals[0]!;
}

/** A checkpoint to use: its config, parameters and (for runs) the run to log metrics to. */
export interface Target {
  label: string;
  config: Readonly<Experiment>;
  params: Map<string, Float32Array>;
  step: number;
  run: RunDir | null;
}

/**
 * Opens what `eval` and `generate` take: a run id or directory (its newest complete checkpoint) or one
 * `.safetensors` checkpoint (its config from the metadata). Unreadable targets are usage errors.
 */
export async function loadTarget(
  arg: string,
  runsDir: string,
  what: string,
  warn: (line: string) => void = () => {},
): Promise<Target> {
  if (arg.endsWith(".safetensors")) {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(arg);
    } catch (e) {
      throw new UsageError(`Cannot read checkpoint ${arg}: ${(e as Error).message}`);
    }
    let file;
    try {
      file = readSafeTensors(bytes);
    } catch (e) {
      if (e instanceof SafeTensorsError) throw new UsageError(`Cannot read checkpoint ${arg}: ${e.message}`);
      throw e;
    }
    const yaml = file.metadata.config;
    if (!yaml) throw new UsageError(`Checkpoint ${arg} has no config in its metadata`);
    const config = parseExperimentText(yaml, `${arg} (metadata config)`).points[0]!.config;
    return {
      label: arg,
      config,
      params: paramValues(file.tensors),
      step: Number(file.metadata.step ?? 0),
      run: null,
    };
  }
  let stored: StoredRun;
  try {
    stored = await openStoredRun(
      runsDir,
      arg,
      (e, why) => warn(`skipping checkpoint step ${e.step}: ${why}; using an older one`),
    );
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UsageError((e as Error).message);
    throw e;
  }
  const { run, config, ck } = stored;
  if (!ck) throw new UsageError(`Run ${run.meta.id} has no complete checkpoint to ${what}`);
  return {
    label: `run ${run.meta.id}`,
    config,
    params: paramValues(ck.file.tensors),
    step: ck.entry.step,
    run,
  };
}

/**
 * Opening a stored run to continue or read it (`run --resume`, `eval`, `generate`, `repro`): its directory,
 * resolved config and newest complete checkpoint.
 *
 * @module
 */
import { parseExperimentText } from "../config/mod.ts";
import type { Experiment } from "../config/schema.ts";
import { type CheckpointEntry, latestCheckpoint } from "./checkpoints.ts";
import { RunDir } from "./run_dir.ts";

/** A run as stored: directory, config (as written and parsed) and its newest valid checkpoint, if any. */
export interface StoredRun {
  run: RunDir;
  yaml: string;
  config: Readonly<Experiment>;
  ck: Awaited<ReturnType<typeof latestCheckpoint>>;
}

/** Opens run `id` in `runsDir` (or a run directory path); damaged checkpoints are reported to `onSkip`. */
export async function openStoredRun(
  runsDir: string,
  id: string,
  onSkip?: (entry: CheckpointEntry, why: string) => void,
): Promise<StoredRun> {
  const run = await RunDir.open(runsDir, id);
  const yaml = await Deno.readTextFile(`${run.path}/config.yaml`);
  const config = parseExperimentText(yaml, `${run.path}/config.yaml`).points[0]!.config;
  return { run, yaml, config, ck: await latestCheckpoint(run.path, onSkip) };
}

/**
 * What `eval` and `generate` take: a stored run (its newest complete checkpoint) or one checkpoint file,
 * checked before use: unreadable targets are usage errors, damaged or tampered ones CheckpointErrors (both
 * exit 2, naming the file).
 *
 * @module
 */
import { readSafeTensors, readSafeTensorsMetadata, SafeTensorsError } from "../runs/safetensors.ts";
import { paramValues } from "../train/trainer.ts";
import { UsageError } from "./errors.ts";
import type { Experiment } from "../config/schema.ts";
import type { RunDir } from "../runs/run_dir.ts";
import {
  checkCheckpointContent,
  checkMemoryBudget,
  configTokenizer,
  maxCheckpointBytes,
  modelTokenizer,
  openStoredRun,
  parseStoredConfig,
  type StoredRun,
} from "../runs/stored_run.ts";
import { CheckpointError, manifestPath } from "../runs/checkpoints.ts";
import { resolveRunRef } from "../runs/resolve_run.ts";
import { StoreDamagedError, StoreReadOnlyError } from "../runs/store_errors.ts";
import { type Tokenizer, TOKENIZER_METADATA, tokenizerFromMetadata } from "../data/tokenizers.ts";
import { rememberTokenizerVocab, tokenizerJsonVocabSize } from "../data/vocab.ts";
import type { CliIo } from "./io.ts";

/** The one run (id, name, id prefix or directory) or checkpoint file that `command` takes. */
export function targetArg(command: string, positionals: string[]): string {
  if (positionals.length !== 1) {
    throw new UsageError(
      `${command} takes one run id (or run name, id prefix, run directory) or checkpoint file, got ${positionals.length}`,
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
  /** The tokenizer the model was trained with (recorded with the run or checkpoint). */
  tokenizer: Tokenizer;
}

/**
 * Opens what `eval` and `generate` take: a run id or directory (its newest intact checkpoint) or one
 * `.safetensors` checkpoint (its config from the metadata). Before anything is allocated, the config must fit
 * its memory budget and the checkpoint must hold exactly the model's parameters, finite, with their planned
 * shapes (core/runs/stored_run.ts); refusals are usage errors or CheckpointErrors (exit 2) naming the file.
 */
export async function loadTarget(
  arg: string,
  runsDir: string,
  what: string,
  warn: (line: string) => void = () => {},
): Promise<Target> {
  if (arg.endsWith(".safetensors")) return await _loadFile(arg);
  // A name or an id prefix means a run too (core/runs/resolve_run.ts); "Using run <id>" goes to `warn`.
  const id = await resolveRunRef(runsDir, arg, { purpose: "read", notice: warn });
  let stored: StoredRun;
  try {
    stored = await openStoredRun(runsDir, id, {
      purpose: "infer",
      onSkip: (e, why) => warn(`skipping checkpoint step ${e.step}: ${why}; using an older one`),
    });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UsageError((e as Error).message);
    throw e;
  }
  const { run, config, ck } = stored;
  if (!ck) {
    throw new UsageError(
      `Run ${run.meta.id} has no checkpoint to ${what} (${manifestPath(run.path)} lists none)`,
    );
  }
  return {
    label: `run ${run.meta.id}`,
    config,
    params: paramValues(ck.file.tensors),
    step: ck.entry.step,
    run,
    tokenizer: await modelTokenizer(stored),
  };
}

/** One checkpoint file, checked as a run's are: its config first (from the header), then its size and tensors. */
async function _loadFile(arg: string): Promise<Target> {
  let metadata: Record<string, string>;
  try {
    if (!(await Deno.stat(arg)).isFile) throw new Error("not a file");
    metadata = await readSafeTensorsMetadata(arg);
  } catch (e) {
    throw new UsageError(`Cannot read checkpoint ${arg}: ${(e as Error).message}`);
  }
  const yaml = metadata.config;
  if (!yaml) throw new UsageError(`Checkpoint ${arg} has no config in its metadata`);
  const step = metadata.step ?? "";
  if (!/^(0|[1-9][0-9]{0,15})$/.test(step)) {
    throw new CheckpointError(`${arg}: metadata step ${JSON.stringify(metadata.step)} is not a step count`);
  }
  const config = parseStoredConfig(yaml, `${arg} (metadata config)`);
  // A `file:` tokenizer is sized by the one the checkpoint recorded (its path was relative to a config file).
  const recorded = metadata[TOKENIZER_METADATA.json];
  if (config.data.tokenizer.startsWith("file:") && recorded !== undefined) {
    rememberTokenizerVocab(config.data.tokenizer, tokenizerJsonVocabSize(recorded, `${arg} (tokenizer)`));
  }
  checkMemoryBudget(config, `${arg} (metadata config)`);
  const size = (await Deno.stat(arg)).size, max = maxCheckpointBytes(config);
  if (size > max) {
    throw new CheckpointError(
      `${arg}: ${size} bytes, more than a checkpoint of its config's model can be (${max})`,
    );
  }
  let file;
  try {
    file = readSafeTensors(await Deno.readFile(arg));
  } catch (e) {
    if (e instanceof SafeTensorsError) throw new UsageError(`Cannot read checkpoint ${arg}: ${e.message}`);
    throw e;
  }
  try {
    checkCheckpointContent(file, config, { step: Number(step), purpose: "infer" });
  } catch (e) {
    if (e instanceof CheckpointError) throw new CheckpointError(`${arg}: ${e.message}`);
    throw e;
  }
  const tokenizer = tokenizerFromMetadata(file.metadata, arg) ?? await configTokenizer(config, arg);
  return { label: arg, config, params: paramValues(file.tensors), step: Number(step), run: null, tokenizer };
}

/**
 * Records results of `eval`/`generate` (`prefix`: their metric keys) in the run's store, or, where the store
 * takes no writes (read-only or damaged), prints a warning instead: the results were printed already.
 */
export async function recordOrWarn(record: () => Promise<void>, io: CliIo, prefix: string): Promise<void> {
  try {
    await record();
  } catch (e) {
    if (!(e instanceof StoreReadOnlyError || e instanceof StoreDamagedError)) throw e;
    io.err(`Warning: ${e.message}; the ${prefix}… metrics were not recorded`);
  }
}

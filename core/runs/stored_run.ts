/**
 * Opening a stored run to continue or read it (`run --resume`, `eval`, `generate`, `repro`, a sweep worker
 * taking a point over): its directory, resolved config and newest complete checkpoint — each checked before
 * anything is allocated, written or trained:
 *
 * - the run id (or `<runs-dir>/<id>` path) names a directory inside the runs directory, not a link;
 * - the config fits its `hardware.memory_budget` (the check `run` applies to new runs);
 * - the checkpoint's tensors are those of the config's model ({@linkcode checkCheckpointContent}): every
 *   parameter with exactly its shape, F32, finite, and the aux-free balancing biases (router state read at
 *   inference), nothing else; to resume, also both Adam moments, the rest of the router state (docs/design.md
 *   §16; finite, λ ≥ 0) and an optimizer step equal to the checkpoint's step;
 * - when the manifest lists checkpoints but none is intact, the run is refused ({@linkcode CheckpointError},
 *   naming each damaged file and why) rather than started over: starting over is a new run.
 *
 * @module
 */
import {
  loadTokenizer,
  type Tokenizer,
  tokenizerFromJson,
  tokenizerFromMetadata,
} from "../data/tokenizers.ts";
import { parseExperimentText } from "../config/mod.ts";
import { parseByteSize, precisionOf } from "../config/schema.ts";
import { isPlainMap, MAX_FILE_BYTES, parseYaml } from "../config/yaml_source.ts";
import type { Experiment } from "../config/schema.ts";
import { trainMemoryEstimate } from "../plan/plan.ts";
import { buildModel, type RouterStateUpdate } from "../plan/model.ts";
import { fmtBytes } from "../util/format.ts";
import {
  type CheckpointEntry,
  CheckpointError,
  ckptDir,
  latestCheckpoint,
  manifestPath,
} from "./checkpoints.ts";
import { RunDir, runIdOf } from "./run_dir.ts";
import { rememberTokenizerVocab, tokenizerJsonVocabSize } from "../data/vocab.ts";

export { runIdOf };
import { type SafeTensor, type SafeTensorsFile, tensorToF32 } from "./safetensors.ts";

/** A run as stored: directory, config (as written and parsed) and its newest valid checkpoint, if any. */
export interface StoredRun {
  run: RunDir;
  yaml: string;
  config: Readonly<Experiment>;
  ck: Awaited<ReturnType<typeof latestCheckpoint>>;
}

/** What a checkpoint is opened for: continuing training needs the optimizer state as well. */
export type CheckpointPurpose = "resume" | "infer";

/** Options of {@linkcode openStoredRun}. */
export interface OpenStoredRunOptions {
  /** Default "resume". */
  purpose?: CheckpointPurpose;
  /** Told about each damaged checkpoint passed over for an older intact one. */
  onSkip?: (entry: CheckpointEntry, why: string) => void;
}

/**
 * Opens run `id` in `runsDir` (or the run directory path `<runsDir>/<id>`) and its newest intact checkpoint.
 * Throws CheckpointError (nothing read past, nothing written) for a run directory outside the runs
 * directory, a config over its memory budget, a malformed manifest, or checkpoints that are all damaged;
 * Deno.errors.NotFound where the store has no such run. A run whose manifest lists no checkpoint opens with
 * `ck` null (a run that never reached its first checkpoint starts over from step 0).
 */
export async function openStoredRun(
  runsDir: string,
  id: string,
  options: OpenStoredRunOptions | ((entry: CheckpointEntry, why: string) => void) = {},
): Promise<StoredRun> {
  const o = typeof options === "function" ? { onSkip: options } : options;
  const purpose = o.purpose ?? "resume";
  const runId = await runIdOf(runsDir, id);
  const run = await RunDir.open(runsDir, runId);
  await _checkRunDir(runsDir, runId);
  const configPath = `${run.path}/config.yaml`;
  const yaml = await _readConfig(configPath);
  const config = parseStoredConfig(yaml, configPath);
  await _rememberRunVocab(config, run.path);
  checkMemoryBudget(config, configPath);
  const skipped: { entry: CheckpointEntry; why: string }[] = [];
  const ck = await latestCheckpoint(
    run.path,
    (entry, why) => skipped.push({ entry, why }),
    (file, entry) => checkCheckpointContent(file, config, { step: entry.step, purpose }),
    maxCheckpointBytes(config),
  );
  if (!ck && skipped.length > 0) throw _allDamaged(run, runsDir, skipped, purpose);
  if (!ck) await _checkNoneRecorded(run, runsDir, purpose);
  for (const s of skipped) o.onSkip?.(s.entry, s.why);
  return { run, yaml, config, ck };
}

/**
 * A resolved config as a run stores it (`config.yaml`, a checkpoint's `config` metadata), parsed: at most
 * 1 MiB, and without `extends:` (a resolved config never has one; following it would read other files).
 * Config errors are ConfigErrors naming `label`, line and column.
 */
export function parseStoredConfig(text: string, label: string): Readonly<Experiment> {
  if (text.length > MAX_FILE_BYTES) {
    throw new CheckpointError(
      `${label}: ${text.length} characters, more than a config can be (${MAX_FILE_BYTES})`,
    );
  }
  const tree = parseYaml(text, label).value;
  if (isPlainMap(tree) && Object.hasOwn(tree, "extends")) {
    throw new CheckpointError(
      `${label}: has extends:, which a run's resolved config never has (not followed)`,
    );
  }
  return parseExperimentText(text, label).points[0]!.config;
}

/**
 * The largest a checkpoint of config `c`'s model can be: every parameter and both Adam moments in F32, the
 * optimizer step, and a header of at most 16 MiB (the config and the tensor index).
 */
export function maxCheckpointBytes(c: Readonly<Experiment>): number {
  let values = 0;
  for (const shape of expectedParams(c).values()) values += shape.reduce((a, b) => a * b, 1);
  return 8 + 16 * 2 ** 20 + 4 * (3 * values + 1);
}

/**
 * Refuses (CheckpointError naming `label` and the numbers) a config whose training memory estimate exceeds
 * its `hardware.memory_budget`: the check `run` applies (`summarizePoint(…).fits_budget`,
 * core/cli/dry_run.ts), made before anything is allocated.
 */
export function checkMemoryBudget(c: Readonly<Experiment>, label: string): void {
  const need = trainMemoryEstimate(c).bytes, budget = parseByteSize(c.hardware.memory_budget);
  if (need > budget) {
    throw new CheckpointError(
      `${label}: the config needs an estimated ${fmtBytes(need)} (${need} bytes) of memory, more than its ` +
        `hardware.memory_budget of ${fmtBytes(budget)} (${budget} bytes); refused before allocating anything`,
    );
  }
}

/**
 * Checks that a checkpoint holds the training state of config `c` at `step`, throwing CheckpointError for
 * the first problem, naming the tensor (and the first bad index): every parameter of the model as
 * `param/<name>`, F32, exactly the planned shape, finite; the aux-free balancing biases as
 * `router_state/<name>`, F32, their shape, finite; no tensor that is not the model's. To resume, also
 * `adam_m/<name>` (finite) and `adam_v/<name>` (finite, ≥ 0) of the same shapes, the rest of the router state
 * (ReLU routing's λ as `router_state/l1_lambda`, finite, ≥ 0), `optimizer_step` equal to `step`, a
 * `skipped_steps` count within it, `step` within `train.steps`, and with `hardware.precision: f16` the loss
 * scale `loss_scale` ([scale > 0, good steps], checked wherever present).
 */
export function checkCheckpointContent(
  file: SafeTensorsFile,
  c: Readonly<Experiment>,
  o: { step: number; purpose: CheckpointPurpose },
): void {
  const known = new Set(["optimizer_step"]);
  for (const [name, shape] of expectedParams(c)) {
    _checkTensor(file, `param/${name}`, shape, false);
    if (o.purpose === "resume") {
      _checkTensor(file, `adam_m/${name}`, shape, false);
      _checkTensor(file, `adam_v/${name}`, shape, true);
    }
    for (const prefix of ["param/", "adam_m/", "adam_v/"]) known.add(`${prefix}${name}`);
  }
  // Optimizer-free router state (docs/design.md §16): the aux-free biases are read at inference too (top-k
  // selection), so always needed; ReLU's λ only to resume.
  for (const [name, spec] of expectedRouterState(c)) {
    if (spec.inference || o.purpose === "resume") {
      _checkTensor(file, `router_state/${name}`, spec.shape, spec.nonNegative);
    }
    known.add(`router_state/${name}`);
  }
  // Dynamic loss scaling's [scale, good steps] (core/train/loss_scale.ts): needed to resume f16 training;
  // checked wherever it is.
  known.add("loss_scale");
  if (file.tensors.has("loss_scale") || (o.purpose === "resume" && precisionOf(c) === "f16")) {
    _checkTensor(file, "loss_scale", [2], true);
    const [scale, good] = tensorToF32(file.tensors.get("loss_scale")!);
    if (!(scale! > 0) || !Number.isInteger(good)) {
      throw new CheckpointError(`tensor "loss_scale" holds scale ${scale}, good steps ${good}`);
    }
  }
  for (const name of file.tensors.keys()) {
    if (!known.has(name)) {
      throw new CheckpointError(`tensor ${JSON.stringify(name)} is not a tensor of the config's model`);
    }
  }
  if (o.purpose === "resume") _checkOptimizerState(file, c, o.step);
}

const _expected = new WeakMap<object, Map<string, readonly number[]>>();

/** The parameters of config `c`'s model, by name, with their shapes (as core/plan builds them). */
export function expectedParams(c: Readonly<Experiment>): Map<string, readonly number[]> {
  let m = _expected.get(c);
  if (!m) {
    m = new Map(buildModel(c, 1).params.map((p) => [p.value.name, p.value.shape]));
    _expected.set(c, m);
  }
  return m;
}

/** A router state tensor a checkpoint holds (`router_state/<name>`, docs/design.md §16). */
export interface RouterStateSpec {
  shape: readonly number[];
  nonNegative: boolean; // ReLU routing's λ (≥ 0); an aux-free bias may be negative
  inference: boolean; // read at inference too (an aux-free bias), not only to resume
}

const _expectedState = new WeakMap<object, Map<string, RouterStateSpec>>();

/** The optimizer-free router state of config `c`'s model (`ModelGraph.routerState`, core/plan/model.ts). */
export function expectedRouterState(c: Readonly<Experiment>): Map<string, RouterStateSpec> {
  let m = _expectedState.get(c);
  if (!m) {
    const spec = (u: RouterStateUpdate, shape: readonly number[]): RouterStateSpec => ({
      shape,
      nonNegative: u.kind === "l1_lambda",
      inference: u.kind === "balance_bias",
    });
    m = new Map(buildModel(c, 1).routerState.map((s) => [s.name, spec(s.update, s.value.shape)]));
    _expectedState.set(c, m);
  }
  return m;
}

function _checkTensor(file: SafeTensorsFile, name: string, shape: readonly number[], nonNegative: boolean) {
  const t: SafeTensor | undefined = file.tensors.get(name);
  if (!t) throw new CheckpointError(`tensor ${JSON.stringify(name)} is missing`);
  if (t.dtype !== "F32") {
    throw new CheckpointError(`tensor ${JSON.stringify(name)} is ${t.dtype}, expected F32`);
  }
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new CheckpointError(
      `tensor ${JSON.stringify(name)} has shape [${t.shape.join(", ")}], expected [${shape.join(", ")}]`,
    );
  }
  const v = tensorToF32(t);
  const bad = v.findIndex((x) => !Number.isFinite(x) || (nonNegative && x < 0));
  if (bad >= 0) {
    throw new CheckpointError(
      `tensor ${JSON.stringify(name)} holds ${v[bad]} at index ${bad}${
        nonNegative ? " (must be finite and ≥ 0)" : " (must be finite)"
      }`,
    );
  }
}

function _checkOptimizerState(file: SafeTensorsFile, c: Readonly<Experiment>, step: number): void {
  const t = file.tensors.get("optimizer_step");
  if (!t) {
    throw new CheckpointError(
      'tensor "optimizer_step" is missing: the optimizer and learning-rate schedule could not continue',
    );
  }
  if (t.dtype !== "F32" || t.shape.length !== 1 || t.shape[0] !== 1) {
    throw new CheckpointError(`tensor "optimizer_step" is ${t.dtype} [${t.shape}], expected F32 [1]`);
  }
  const v = tensorToF32(t)[0]!;
  if (v !== Math.fround(step)) {
    throw new CheckpointError(`tensor "optimizer_step" holds ${v}, not the checkpoint's step ${step}`);
  }
  if (step > c.train.steps) {
    throw new CheckpointError(`step ${step} is past train.steps (${c.train.steps}) of the run's config`);
  }
  const skipped = file.metadata.skipped_steps;
  if (skipped !== undefined && (!/^(0|[1-9][0-9]{0,15})$/.test(skipped) || Number(skipped) > step)) {
    throw new CheckpointError(
      `metadata skipped_steps ${JSON.stringify(skipped)} is not a count of steps up to ${step}`,
    );
  }
}

async function _checkRunDir(runsDir: string, id: string): Promise<void> {
  const path = `${runsDir}/${id}`;
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    throw new CheckpointError(
      `Run ${id}: its directory ${path} is missing (the run store lists the run; is --runs-dir right?)`,
    );
  }
  if (info.isSymlink) {
    throw new CheckpointError(
      `${path}: is a symbolic link; a run directory must be a directory in ${runsDir}`,
    );
  }
  if (!info.isDirectory) throw new CheckpointError(`${path}: is not a directory`);
}

async function _readConfig(path: string): Promise<string> {
  const text = await readRunFile(path, MAX_FILE_BYTES, "a config");
  if (text === null) {
    throw new CheckpointError(`${path}: missing; a run's resolved config is needed to use its checkpoints`);
  }
  return text;
}

/** Most bytes of a run directory's `tokenizer.json` read (a 50,257-token GPT-2 file is ~2 MB). */
export const MAX_RUN_TOKENIZER_BYTES = 64 << 20;

/**
 * A text file of a run directory (its config, its tokenizer), or null when there is none: it must be a
 * regular file — not a link, a FIFO or a directory, which are refused without being opened — of at most
 * `maxBytes` (`what` names it in the message). Refusals are CheckpointErrors naming the path.
 */
export async function readRunFile(path: string, maxBytes: number, what: string): Promise<string | null> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new CheckpointError(`${path}: cannot be read: ${(e as Error).message}`);
  }
  if (!info.isFile) throw new CheckpointError(`${path}: is not a file (a link, a directory or a device)`);
  if (info.size > maxBytes) {
    throw new CheckpointError(`${path}: ${info.size} bytes, more than ${what} can be (${maxBytes})`);
  }
  return await Deno.readTextFile(path);
}

function _restartHint(run: RunDir, runsDir: string): string {
  return `To start over from step 0 as a new run: deno task run ${run.path}/config.yaml --runs-dir ${runsDir}`;
}

function _allDamaged(
  run: RunDir,
  runsDir: string,
  skipped: readonly { entry: CheckpointEntry; why: string }[],
  purpose: CheckpointPurpose,
): CheckpointError {
  const n = skipped.length;
  const lines = skipped.map((s) => `  ${ckptDir(run.path)}/${s.entry.file}: ${s.why}`);
  return new CheckpointError(
    [
      `Run ${run.meta.id} has no intact checkpoint to ${purpose === "resume" ? "resume from" : "use"}: ` +
      `${n === 1 ? "the one" : `all ${n}`} that ${manifestPath(run.path)} lists ${n === 1 ? "is" : "are"} ` +
      `damaged:`,
      ...lines,
      `Nothing was changed.${purpose === "resume" ? ` ${_restartHint(run, runsDir)}` : ""}`,
    ].join("\n"),
  );
}

/** A manifest listing nothing while the store lists checkpoints: the manifest was removed or emptied. */
async function _checkNoneRecorded(run: RunDir, runsDir: string, purpose: CheckpointPurpose): Promise<void> {
  const steps = (await run.store.checkpoints(run.meta.id)).map((r) => r.step);
  if (steps.length === 0) return;
  throw new CheckpointError(
    `Run ${run.meta.id}: the run store lists checkpoints of step${steps.length === 1 ? "" : "s"} ` +
      `${steps.join(", ")}, but ${manifestPath(run.path)} lists none (removed or emptied).\n` +
      `Nothing was changed.${purpose === "resume" ? ` ${_restartHint(run, runsDir)}` : ""}`,
  );
}

/**
 * A `file:` tokenizer's path is relative to the config file the run was started from, which the stored
 * config no longer knows: the model's vocabulary comes from the tokenizer the run recorded
 * (`<run>/tokenizer.json`), so planning never reads a path from the working directory.
 */
async function _rememberRunVocab(c: Readonly<Experiment>, runPath: string): Promise<void> {
  const spec = c.data.tokenizer;
  if (!spec.startsWith("file:")) return;
  const path = `${runPath}/tokenizer.json`;
  const text = await readRunFile(path, MAX_RUN_TOKENIZER_BYTES, "a tokenizer");
  // Without one the model is sized from data.tokenizer's path, as written.
  if (text !== null) rememberTokenizerVocab(spec, tokenizerJsonVocabSize(text, path));
}

/**
 * The tokenizer a stored run trained with: its checkpoint's (recorded in the metadata), else the run
 * directory's `tokenizer.json`; null for runs that recorded none (they read bytes, or resolve
 * `data.tokenizer` again: a bpe tokenizer is deterministic and cached).
 */
export async function runTokenizer(stored: Pick<StoredRun, "run" | "ck">): Promise<Tokenizer | null> {
  if (stored.ck) {
    const tok = tokenizerFromMetadata(
      stored.ck.file.metadata,
      `${stored.run.path}/ckpt/${stored.ck.entry.file}`,
    );
    if (tok) return tok;
  }
  const path = `${stored.run.path}/tokenizer.json`;
  const text = await readRunFile(path, MAX_RUN_TOKENIZER_BYTES, "a tokenizer");
  return text === null ? null : tokenizerFromJson(text, { source: path });
}

/**
 * The tokenizer of a checkpoint that recorded none (written before tokenizers were recorded): the config's,
 * where it needs no data to build (`byte`, `gpt2`); a trained (`bpe`) or `file:` tokenizer must have been
 * recorded, else a CheckpointError naming `label`.
 */
export async function configTokenizer(c: Readonly<Experiment>, label: string): Promise<Tokenizer> {
  const spec = c.data.tokenizer;
  if (spec === "byte" || spec === "gpt2") return await loadTokenizer(spec);
  throw new CheckpointError(
    `${label} recorded no tokenizer, and its data.tokenizer "${spec}" cannot be rebuilt without its data`,
  );
}

/** The tokenizer of a stored run's model: the one it recorded, else its config's (see configTokenizer). */
export async function modelTokenizer(stored: Pick<StoredRun, "run" | "ck" | "config">): Promise<Tokenizer> {
  return (await runTokenizer(stored)) ?? await configTokenizer(stored.config, `run ${stored.run.meta.id}`);
}

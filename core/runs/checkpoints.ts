/**
 * Checkpoints of a run: `<run>/ckpt/step-N.safetensors`, each written atomically, then listed in
 * `<run>/ckpt/manifest.json` (also written atomically) with its size and SHA-256. Only listed, intact files
 * count: resume takes the newest one whose bytes still match, falling back to older ones.
 *
 * Everything a manifest or a store record names is confined to the run's own `ckpt/` directory: an entry's
 * `file` must be exactly `step-<its step>.safetensors`, the directory and the files must not be symbolic
 * links, and a manifest that is not one this code writes (not JSON, wrong shape or types, duplicate or
 * unsafe steps) is refused whole with a {@linkcode CheckpointError} naming it — it is never read past,
 * rewritten or acted on. Rotation deletes only such confined, listed, regular files.
 *
 * @module
 */
import { atomicWrite, atomicWriteText, cleanTempFiles, faultKillPoint } from "../util/atomic_write.ts";
import type { CheckpointRecord, RunStore } from "./store.ts";
import {
  readSafeTensors,
  type SafeTensor,
  SafeTensorsError,
  type SafeTensorsFile,
  writeSafeTensors,
} from "./safetensors.ts";

/** One complete checkpoint as the manifest records it. */
export interface CheckpointEntry {
  step: number;
  file: string; // relative to the ckpt directory: always `step-<step>.safetensors`
  bytes: number;
  sha256: string;
  time: string; // ISO 8601
}

/**
 * A run directory, checkpoint or manifest that cannot be used as it is (damaged, tampered, pointing out of
 * its run directory). Whatever refused it read, wrote and deleted nothing on its account; the message names
 * the file (or run) and what is wrong. The CLI exits 2 on it.
 */
export class CheckpointError extends Error {
  override name = "CheckpointError";
}

/** Largest manifest read (a manifest of 3 checkpoints is under 1 KiB). */
export const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;

/** The checkpoint directory of a run directory. */
export function ckptDir(runDir: string): string {
  return `${runDir}/ckpt`;
}

/** The manifest of a run directory. */
export function manifestPath(runDir: string): string {
  return `${ckptDir(runDir)}/manifest.json`;
}

/** The only file name a checkpoint of `step` may have. */
export function checkpointFileName(step: number): string {
  return `step-${step}.safetensors`;
}

/** Whether `id` can name a run directory: one plain path segment (no separator, NUL, `.` or `..`). */
export function isRunId(id: string): boolean {
  return id.length > 0 && id.length <= 255 && id !== "." && id !== ".." && !/[/\\\0]/.test(id);
}

/**
 * Writes the checkpoint of `step`: refuses non-finite values, writes atomically, then lists it in the
 * manifest. Keeps the newest `keep` checkpoints (0 = all); entries newer than `step` (a history the run
 * left when it resumed from an older checkpoint) are dropped. Refuses (CheckpointError) to write beside a
 * manifest it cannot read, rather than overwrite it. A failed write removes what it wrote.
 */
export async function writeCheckpoint(
  runDir: string,
  step: number,
  tensors: ReadonlyMap<string, SafeTensor>,
  metadata: Record<string, string>,
  options: { keep?: number } = {},
): Promise<CheckpointEntry> {
  if (!Number.isSafeInteger(step) || step < 0) throw new RangeError(`Invalid checkpoint step ${step}`);
  const dir = ckptDir(runDir);
  await Deno.mkdir(dir, { recursive: true });
  await _checkCkptDir(dir);
  const previous = await listCheckpoints(runDir);
  const bytes = writeSafeTensors(tensors, { ...metadata, step: String(step) }, { requireFinite: true });
  const file = checkpointFileName(step);
  await atomicWrite(`${dir}/${file}`, bytes);
  const entry: CheckpointEntry = {
    step,
    file,
    bytes: bytes.byteLength,
    sha256: await sha256Hex(bytes),
    time: new Date().toISOString(),
  };
  const all = [...previous.filter((e) => e.step < step), entry];
  const keep = options.keep ?? 0;
  const n = keep > 0 ? Math.max(0, all.length - keep) : 0;
  const dropped = [...all.slice(0, n), ...previous.filter((e) => e.step > step)];
  try {
    await atomicWriteText(
      manifestPath(runDir),
      JSON.stringify({ checkpoints: all.slice(n) }, null, 2) + "\n",
    );
  } catch (e) {
    // Unlisted, the new file is garbage; one the old manifest lists under this step stays its business.
    if (!previous.some((p) => p.step === step)) await removeOwnCheckpoint(dir, file);
    throw e;
  }
  faultKillPoint("checkpoint:listed");
  for (const d of dropped) await removeOwnCheckpoint(dir, d.file);
  return entry;
}

/**
 * The manifest's entries, oldest first (empty when there is none). Throws {@linkcode CheckpointError}
 * naming the manifest for anything but a manifest this code writes.
 */
export async function listCheckpoints(runDir: string): Promise<CheckpointEntry[]> {
  const path = manifestPath(runDir);
  if (!await _checkCkptDir(ckptDir(runDir))) return [];
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  if (info.isSymlink) throw new CheckpointError(`${path}: is a symbolic link; a manifest must be a file`);
  if (!info.isFile) throw new CheckpointError(`${path}: is not a file`);
  if (info.size > MAX_MANIFEST_BYTES) {
    throw new CheckpointError(
      `${path}: ${info.size} bytes, more than a manifest can be (${MAX_MANIFEST_BYTES})`,
    );
  }
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(await Deno.readFile(path)));
  } catch (e) {
    throw new CheckpointError(`${path}: not a JSON manifest (${(e as Error).message})`);
  }
  return parseManifest(value, path);
}

/**
 * Validates a parsed manifest (`{"checkpoints": [{step, file, bytes, sha256, time}, …]}`) and returns its
 * entries by step; `path` names it in errors.
 */
export function parseManifest(value: unknown, path: string): CheckpointEntry[] {
  const list = _isObject(value) ? value.checkpoints : undefined;
  if (!Array.isArray(list)) {
    throw new CheckpointError(`${path}: expected an object {"checkpoints": [...]}, got ${_preview(value)}`);
  }
  const entries = list.map((e, i) => _entry(e, `${path}: checkpoints[${i}]`));
  entries.sort((a, b) => a.step - b.step);
  for (let i = 1; i < entries.length; i++) {
    if (entries[i]!.step === entries[i - 1]!.step) {
      throw new CheckpointError(`${path}: step ${entries[i]!.step} is listed twice`);
    }
  }
  return entries;
}

/**
 * The newest checkpoint whose file exists and matches its recorded size and hash, parses, holds the step the
 * manifest gives it and passes `check` (which throws CheckpointError to refuse it); null when none.
 * Skipped (damaged or missing) entries are reported through `onSkip`; one listed as larger than `maxBytes`
 * (what a checkpoint of the run's model can be) is skipped unread.
 */
export async function latestCheckpoint(
  runDir: string,
  onSkip: (entry: CheckpointEntry, why: string) => void = () => {},
  check: (file: SafeTensorsFile, entry: CheckpointEntry) => void = () => {},
  maxBytes = Infinity,
): Promise<{ entry: CheckpointEntry; file: SafeTensorsFile } | null> {
  const entries = await listCheckpoints(runDir);
  for (const entry of entries.toReversed()) {
    if (entry.bytes > maxBytes) {
      onSkip(
        entry,
        `listed as ${entry.bytes} bytes, more than a checkpoint of this model can be (${maxBytes})`,
      );
      continue;
    }
    const r = await _load(ckptDir(runDir), entry, check);
    if ("file" in r) return { entry, file: r.file };
    onSkip(entry, r.why);
  }
  return null;
}

/** Removes temp files of interrupted checkpoint writes; call when a run (re)starts. */
export async function cleanCheckpointTemps(runDir: string): Promise<number> {
  return await _checkCkptDir(ckptDir(runDir)) ? await cleanTempFiles(ckptDir(runDir)) : 0;
}

/**
 * Removes what interrupted writes left in a run directory being continued: temp files (in it and in
 * `ckpt/`) and checkpoint files the manifest does not list (a write killed before its manifest, rotation
 * killed before its deletions). Returns how many files it removed.
 */
export async function cleanRunLeftovers(runDir: string): Promise<number> {
  let n = (await Deno.lstat(runDir)).isSymlink ? 0 : await cleanTempFiles(runDir);
  n += await cleanCheckpointTemps(runDir);
  if (!await _checkCkptDir(ckptDir(runDir))) return n;
  const listed = new Set((await listCheckpoints(runDir)).map((e) => e.file));
  for await (const e of Deno.readDir(ckptDir(runDir))) {
    if (e.isFile && _FILE_RE.test(e.name) && !listed.has(e.name)) {
      if (await removeOwnCheckpoint(ckptDir(runDir), e.name)) n++;
    }
  }
  return n;
}

/**
 * Deletes checkpoint `file` of ckpt directory `dir` if it provably is one of ours: a confined name
 * (`step-N.safetensors`) and a regular file, not a link. Returns whether it deleted it.
 */
export async function removeOwnCheckpoint(dir: string, file: string): Promise<boolean> {
  if (!_FILE_RE.test(file)) return false;
  try {
    if (!(await Deno.lstat(`${dir}/${file}`)).isFile) return false;
    await Deno.remove(`${dir}/${file}`);
    return true;
  } catch {
    return false; // gone already, or not ours to remove
  }
}

/** Lowercase hex SHA-256 of `bytes` (what the checkpoint manifest stores per file). */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The file a store's checkpoint record names, under `runsDir`: its path must be exactly
 * `<run id>/ckpt/step-<step>.safetensors` of its own run, else CheckpointError naming the record.
 */
export function checkpointRecordPath(
  runsDir: string,
  rec: Pick<CheckpointRecord, "run_id" | "step" | "path">,
): string {
  const want = isRunId(rec.run_id) && Number.isSafeInteger(rec.step) && rec.step >= 0
    ? `${rec.run_id}/ckpt/${checkpointFileName(rec.step)}`
    : null;
  if (want === null || rec.path !== want) {
    throw new CheckpointError(
      `The run store's checkpoint record of run ${JSON.stringify(rec.run_id)}, step ${rec.step}, names ` +
        `${JSON.stringify(rec.path)}: a record may only name its own run's ckpt/step-<step>.safetensors`,
    );
  }
  return `${runsDir}/${want}`;
}

/** Makes the store's checkpoint records of run `id` match the manifest in `runPath`. */
export async function syncCheckpoints(store: RunStore, id: string, runPath: string): Promise<void> {
  if (!isRunId(id)) throw new CheckpointError(`Run id ${JSON.stringify(id)} cannot name a run directory`);
  const listed = await listCheckpoints(runPath);
  const steps = new Set(listed.map((e) => e.step));
  for (const old of await store.checkpoints(id)) {
    if (!steps.has(old.step)) await store.removeCheckpoint(id, old.step);
  }
  for (const e of listed) {
    await store.recordCheckpoint({
      run_id: id,
      step: e.step,
      path: `${id}/ckpt/${e.file}`,
      bytes: e.bytes,
      sha256: e.sha256,
      time: e.time,
    });
  }
}

const _FILE_RE = /^step-(0|[1-9][0-9]{0,15})\.safetensors$/;
const _SHA_RE = /^[0-9a-f]{64}$/;

/**
 * Whether the ckpt directory exists (false: missing); throws CheckpointError where it is a link or not a
 * directory, so that nothing is read, written or deleted through it.
 */
async function _checkCkptDir(dir: string): Promise<boolean> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
  if (info.isSymlink) {
    throw new CheckpointError(`${dir}: is a symbolic link; checkpoints stay inside their run directory`);
  }
  if (!info.isDirectory) throw new CheckpointError(`${dir}: is not a directory`);
  return true;
}

function _entry(e: unknown, where: string): CheckpointEntry {
  if (!_isObject(e)) throw new CheckpointError(`${where}: expected an object, got ${_preview(e)}`);
  const count = (key: string): number => {
    const v = e[key];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
      throw new CheckpointError(`${where}: ${key} must be a non-negative integer, got ${_preview(v)}`);
    }
    return v;
  };
  const step = count("step"), bytes = count("bytes");
  const file = e.file, sha256 = e.sha256, time = e.time;
  if (file !== checkpointFileName(step)) {
    throw new CheckpointError(
      `${where}: file ${_preview(file)} is not ${checkpointFileName(step)}: a manifest may only name the ` +
        `checkpoint files of its own ckpt/ directory`,
    );
  }
  if (typeof sha256 !== "string" || !_SHA_RE.test(sha256)) {
    throw new CheckpointError(`${where}: sha256 must be 64 lowercase hex digits, got ${_preview(sha256)}`);
  }
  if (typeof time !== "string" || time.length > 64) {
    throw new CheckpointError(`${where}: time must be an ISO 8601 string, got ${_preview(time)}`);
  }
  return { step, file: checkpointFileName(step), bytes, sha256, time };
}

async function _load(
  dir: string,
  entry: CheckpointEntry,
  check: (file: SafeTensorsFile, entry: CheckpointEntry) => void,
): Promise<{ file: SafeTensorsFile } | { why: string }> {
  const path = `${dir}/${entry.file}`;
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(path);
  } catch (e) {
    return { why: e instanceof Deno.errors.NotFound ? "missing" : (e as Error).message };
  }
  if (info.isSymlink) return { why: "is a symbolic link, not a checkpoint file" };
  if (!info.isFile) return { why: "is not a file" };
  if (info.size !== entry.bytes) {
    return { why: `size or SHA-256 does not match the manifest (${info.size} bytes, listed ${entry.bytes})` };
  }
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    return { why: (e as Error).message };
  }
  if (bytes.byteLength !== entry.bytes || (await sha256Hex(bytes)) !== entry.sha256) {
    return { why: "size or SHA-256 does not match the manifest" };
  }
  try {
    const file = readSafeTensors(bytes);
    if (file.metadata.step !== String(entry.step)) {
      return { why: `its metadata step ${_preview(file.metadata.step)} is not the manifest's ${entry.step}` };
    }
    check(file, entry);
    return { file };
  } catch (e) {
    if (e instanceof CheckpointError || e instanceof SafeTensorsError) {
      return { why: (e as Error).message };
    }
    throw e;
  }
}

function _isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A short JSON rendering of a value for messages (control characters escaped, long values cut). */
function _preview(v: unknown): string {
  const s = v === undefined ? "nothing" : JSON.stringify(v) ?? String(v);
  return s.length > 80 ? `${s.slice(0, 77)}…` : s;
}

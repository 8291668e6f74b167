/**
 * Checkpoints of a run: `<run>/ckpt/step-N.safetensors`, each written atomically, then listed in
 * `<run>/ckpt/manifest.json` (also written atomically) with its size and SHA-256. Only listed, intact files
 * count: resume takes the newest one whose bytes still match, falling back to older ones.
 *
 * @module
 */
import { atomicWrite, atomicWriteText, cleanTempFiles } from "./atomic_write.ts";
import type { RunStore } from "./store.ts";
import { readSafeTensors, type SafeTensor, type SafeTensorsFile, writeSafeTensors } from "./safetensors.ts";

/** One complete checkpoint as the manifest records it. */
export interface CheckpointEntry {
  step: number;
  file: string; // relative to the ckpt directory
  bytes: number;
  sha256: string;
  time: string; // ISO 8601
}

/** The checkpoint directory of a run directory. */
export function ckptDir(runDir: string): string {
  return `${runDir}/ckpt`;
}

/**
 * Writes the checkpoint of `step`: refuses non-finite values, writes atomically, then appends it to the
 * manifest. Keeps the newest `keep` checkpoints (0 = all).
 */
export async function writeCheckpoint(
  runDir: string,
  step: number,
  tensors: ReadonlyMap<string, SafeTensor>,
  metadata: Record<string, string>,
  options: { keep?: number } = {},
): Promise<CheckpointEntry> {
  const dir = ckptDir(runDir);
  await Deno.mkdir(dir, { recursive: true });
  const bytes = writeSafeTensors(tensors, { ...metadata, step: String(step) }, { requireFinite: true });
  const file = `step-${step}.safetensors`;
  await atomicWrite(`${dir}/${file}`, bytes);
  const entry: CheckpointEntry = {
    step,
    file,
    bytes: bytes.byteLength,
    sha256: await sha256Hex(bytes),
    time: new Date().toISOString(),
  };
  let entries = (await listCheckpoints(runDir)).filter((e) => e.step !== step);
  entries.push(entry);
  entries.sort((a, b) => a.step - b.step);
  const keep = options.keep ?? 0;
  const dropped = keep > 0 ? entries.slice(0, Math.max(0, entries.length - keep)) : [];
  entries = entries.slice(dropped.length);
  await atomicWriteText(`${dir}/manifest.json`, JSON.stringify({ checkpoints: entries }, null, 2) + "\n");
  for (const d of dropped) await Deno.remove(`${dir}/${d.file}`).catch(() => {});
  return entry;
}

/** The manifest's entries, oldest first (empty when there is none). */
export async function listCheckpoints(runDir: string): Promise<CheckpointEntry[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(`${ckptDir(runDir)}/manifest.json`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  const parsed = JSON.parse(text) as { checkpoints?: CheckpointEntry[] };
  return parsed.checkpoints ?? [];
}

/**
 * The newest checkpoint whose file exists and matches its recorded size and hash, parsed; null when none.
 * Skipped (damaged or missing) entries are reported through `onSkip`.
 */
export async function latestCheckpoint(
  runDir: string,
  onSkip: (entry: CheckpointEntry, why: string) => void = () => {},
): Promise<{ entry: CheckpointEntry; file: SafeTensorsFile } | null> {
  const entries = await listCheckpoints(runDir);
  for (const entry of entries.toReversed()) {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(`${ckptDir(runDir)}/${entry.file}`);
    } catch (e) {
      onSkip(entry, (e as Error).message);
      continue;
    }
    if (bytes.byteLength !== entry.bytes || (await sha256Hex(bytes)) !== entry.sha256) {
      onSkip(entry, "size or SHA-256 does not match the manifest");
      continue;
    }
    try {
      return { entry, file: readSafeTensors(bytes) };
    } catch (e) {
      onSkip(entry, (e as Error).message);
    }
  }
  return null;
}

/** Removes temp files of interrupted checkpoint writes; call when a run (re)starts. */
export function cleanCheckpointTemps(runDir: string): Promise<number> {
  return cleanTempFiles(ckptDir(runDir));
}

/** Lowercase hex SHA-256 of `bytes` (what the checkpoint manifest stores per file). */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Makes the store's checkpoint records of run `id` match the manifest in `runPath`. */
export async function syncCheckpoints(store: RunStore, id: string, runPath: string): Promise<void> {
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

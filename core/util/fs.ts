/**
 * File-system helpers: what an entry is (for messages) and the SHA-256 of a file read in pieces.
 *
 * @module
 */
import { createHash } from "node:crypto";

/**
 * What a file-system entry is, for messages: "a regular file", "a directory", "a FIFO (named pipe)", "a
 * character device" … (`lstat` info tells a symlink apart).
 *
 * @example
 * ```ts
 * import { describeFileKind } from "./fs.ts";
 * console.log(describeFileKind(Deno.statSync("/dev/null"))); // "a character device"
 * ```
 */
export function describeFileKind(info: Deno.FileInfo): string {
  if (info.isFile) return "a regular file";
  if (info.isDirectory) return "a directory";
  if (info.isSymlink) return "a symlink";
  if (info.isFifo) return "a FIFO (named pipe)";
  if (info.isSocket) return "a socket";
  if (info.isCharDevice) return "a character device";
  if (info.isBlockDevice) return "a block device";
  return "not a regular file";
}

/**
 * Lowercase hex SHA-256 of the file at `path`, read 8 MiB at a time (never whole in memory); `progress` hears
 * the bytes hashed so far.
 *
 * @example
 * ```ts
 * import { sha256File } from "./fs.ts";
 * const path = await Deno.makeTempFile();
 * await Deno.writeTextFile(path, "abc");
 * console.log((await sha256File(path)).slice(0, 8)); // "ba7816bf"
 * await Deno.remove(path);
 * ```
 */
export async function sha256File(path: string, progress: (done: number) => void = () => {}): Promise<string> {
  const h = createHash("sha256"), buf = new Uint8Array(8 << 20);
  using f = await Deno.open(path, { read: true });
  let done = 0;
  for (;;) {
    const n = await f.read(buf);
    if (n === null) break;
    h.update(buf.subarray(0, n));
    done += n;
    progress(done);
  }
  return h.digest("hex");
}

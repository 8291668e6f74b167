/**
 * File-system facts for messages.
 *
 * @module
 */

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

/**
 * Shared machinery of the hostile-input suites (tests/hostile_*_test.ts): the CLI run as a separate
 * process (as a user runs it: exit code, stdout, stderr), and snapshots of directory trees to assert that a
 * refused command changed nothing outside the run directory it was allowed to touch.
 *
 * @module
 */
import { ok as assert } from "node:assert/strict";

/** What one CLI process printed and how it exited. */
export interface ProcResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options of {@linkcode runCliProcess}. */
export interface ProcOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** Kill the process (SIGKILL) after this many ms; the result then has code 137. Default 120 s. */
  timeoutMs?: number;
  stdin?: string;
}

const _MOD = new URL("../../mod.ts", import.meta.url).pathname;

/** `deno run -A mod.ts <args>` in its own process, with NO_COLOR set and output captured. */
export async function runCliProcess(args: readonly string[], o: ProcOptions = {}): Promise<ProcResult> {
  const p = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", _MOD, ...args],
    cwd: o.cwd,
    env: { NO_COLOR: "1", ...o.env },
    stdin: o.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (o.stdin !== undefined) {
    const w = p.stdin.getWriter();
    await w.write(new TextEncoder().encode(o.stdin));
    await w.close();
  }
  const timer = setTimeout(() => {
    try {
      p.kill("SIGKILL");
    } catch {
      // already gone
    }
  }, o.timeoutMs ?? 120_000);
  try {
    const out = await p.output();
    const dec = new TextDecoder();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } finally {
    clearTimeout(timer);
  }
}

/** One entry of a tree snapshot: kind, size, modification time and (for files) the SHA-256 of the bytes. */
export interface TreeEntry {
  kind: "file" | "dir" | "symlink" | "other";
  size: number;
  mtime: number | null;
  sha256: string | null;
}

/** Every path under `root` (relative, `/`-separated) with what it holds; missing root: empty. */
export async function snapshotTree(root: string): Promise<Map<string, TreeEntry>> {
  const out = new Map<string, TreeEntry>();
  const walk = async (dir: string, rel: string) => {
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(dir));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      throw e;
    }
    for (const e of entries) {
      const path = `${dir}/${e.name}`, key = rel ? `${rel}/${e.name}` : e.name;
      try {
        const info = await Deno.lstat(path);
        const kind = info.isFile ? "file" : info.isDirectory ? "dir" : info.isSymlink ? "symlink" : "other";
        let sha256: string | null = null;
        if (kind === "file") {
          const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
          sha256 = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
        }
        out.set(key, { kind, size: info.size, mtime: info.mtime?.getTime() ?? null, sha256 });
        if (kind === "dir") await walk(path, key);
      } catch (err) {
        // Gone between the listing and the look: another process's short-lived file (cases run side by
        // side, and a refused command removes what it made). What is gone is not in the tree.
        if (!(err instanceof Deno.errors.NotFound)) throw err;
        out.delete(key);
      }
    }
  };
  await walk(root, "");
  return out;
}

/**
 * The paths that differ between two snapshots (added, removed or changed in kind, size or content),
 * leaving out those under any of `allowed` (relative prefixes, e.g. the run directory `"<id>"`).
 * Directory mtimes are not compared (a directory's entries are).
 */
export function treeChanges(
  before: ReadonlyMap<string, TreeEntry>,
  after: ReadonlyMap<string, TreeEntry>,
  allowed: readonly string[] = [],
): string[] {
  const inAllowed = (p: string) => allowed.some((a) => p === a || p.startsWith(`${a}/`));
  const changed: string[] = [];
  for (const [p, a] of after) {
    if (inAllowed(p)) continue;
    const b = before.get(p);
    if (!b) changed.push(`added ${p}`);
    else if (b.kind !== a.kind || b.size !== a.size || b.sha256 !== a.sha256) changed.push(`changed ${p}`);
  }
  for (const p of before.keys()) if (!inAllowed(p) && !after.has(p)) changed.push(`removed ${p}`);
  return changed.sort();
}

/** Asserts that nothing under the snapshot's root changed outside `allowed`. */
export function assertTreeUnchanged(
  before: ReadonlyMap<string, TreeEntry>,
  after: ReadonlyMap<string, TreeEntry>,
  allowed: readonly string[] = [],
  what = "the tree",
): void {
  const changes = treeChanges(before, after, allowed);
  assert(changes.length === 0, `${what} changed outside ${JSON.stringify(allowed)}:\n${changes.join("\n")}`);
}

/** Asserts that `text` has no JavaScript stack trace (a line "    at …(file:…)"). */
export function assertNoStack(text: string): void {
  assert(!/^\s+at .*(file:|ext:|node:)/m.test(text), `stack trace printed:\n${text}`);
}

/** Copies the tree at `src` to `dst` (created): files with their bytes, directories, links as links. */
export async function copyTree(src: string, dst: string): Promise<void> {
  await Deno.mkdir(dst, { recursive: true });
  for await (const e of Deno.readDir(src)) {
    const from = `${src}/${e.name}`, to = `${dst}/${e.name}`;
    if (e.isDirectory) await copyTree(from, to);
    else if (e.isSymlink) await Deno.symlink(await Deno.readLink(from), to);
    else await Deno.copyFile(from, to);
  }
}

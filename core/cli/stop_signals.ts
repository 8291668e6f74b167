/**
 * How the long commands (`run`, `run --resume`, `repro`, `worker`) stop cleanly, however they were started
 * (`deno run -A mod.ts run`, `deno task run`, `npx -y deno@2.9.6 task run`): the first SIGINT (Ctrl-C),
 * SIGTERM (`kill`, `timeout`, a service manager) or SIGHUP (the terminal closed) aborts the returned
 * controller, so the trainer finishes its step, writes a checkpoint and marks the run `interrupted`; a second
 * SIGINT or SIGTERM, a second or more after the first, exits at once (code 130).
 *
 * `deno task` (2.9.6) forwards SIGINT, SIGTERM and SIGHUP to the command it started, but a runner that dies
 * without forwarding (SIGKILL, the OOM killer, a runner that does not forward) leaves the trainer, its child,
 * training on as an orphan nobody can see. So a command started by a task runner (`deno task` and npm set
 * `INIT_CWD`) also watches the process that started it, once a second, and stops the same way when it is
 * gone (docs/reliability.md#stopping has the measurements).
 *
 * `nohup` does not keep a run going through a closed terminal: `deno task` forwards SIGHUP, and Deno itself
 * installs handlers for SIGHUP, SIGINT and SIGTERM before any code of ours runs, so the SIGHUP that `nohup`
 * ignored is caught again. Such a run stops as above, with its checkpoint. A run meant to outlive its terminal
 * is started in a session of its own (`setsid deno task run … &`, tmux, screen, a service manager).
 *
 * @module
 */
import type { CliIo } from "./io.ts";

/** How often the parent process is looked at. */
export const PARENT_POLL_MS = 1000;

/** A signal this soon after the first is the same stop delivered twice, not a request to quit at once. */
export const REPEAT_WINDOW_MS = 1000;

/** The signals that stop a command cleanly. */
const _SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;

const _MOD = new URL("../../mod.ts", import.meta.url).href;

/**
 * A controller aborted by the first stop signal (or the task runner going away; see the module docs). Where
 * the OS has no such signal it is simply not listened for.
 */
export function abortOnStop(io: CliIo): AbortController {
  const ac = new AbortController();
  const stop = (why: string, again: string) => {
    if (ac.signal.aborted) return;
    _say(io, `${why}: finishing the current step and writing a checkpoint${again}…`);
    ac.abort(new Error(why));
  };
  let first = 0;
  for (const sig of _SIGNALS) {
    const what = sig === "SIGINT" ? "Interrupted" : `Interrupted by ${sig}`;
    const listener = () => {
      if (ac.signal.aborted) {
        // One stop often arrives twice: Ctrl-C reaches the whole process group and the task runner forwards
        // it too; a closed terminal's shell and kernel both send SIGHUP. Only a later SIGINT or SIGTERM is
        // a second request.
        if (sig !== "SIGHUP" && performance.now() - first > REPEAT_WINDOW_MS) Deno.exit(130);
        return;
      }
      first = performance.now();
      stop(
        what,
        sig === "SIGINT"
          ? " (Ctrl-C again to quit now)"
          : sig === "SIGTERM"
          ? " (SIGTERM again to quit now)"
          : "",
      );
    };
    _listen(sig, listener);
  }
  if (watchesParent()) {
    const chain = runnerChain();
    const timer = setInterval(() => {
      if (ac.signal.aborted) return clearInterval(timer);
      const gone = chain.find((l) => parentOf(l.pid) !== l.ppid);
      if (!gone) return;
      clearInterval(timer);
      stop(`The task runner that started this process (pid ${gone.ppid}) has exited`, "");
    }, PARENT_POLL_MS);
    Deno.unrefTimer(timer);
  }
  return ac;
}

/**
 * Whether this process watches its parent: it is the CLI process itself (mod.ts is the main module, not a
 * test that calls `main()`), started by a task runner (`INIT_CWD` set by `deno task` and npm).
 */
export function watchesParent(): boolean {
  try {
    return Deno.mainModule === _MOD && Deno.env.get("INIT_CWD") !== undefined;
  } catch {
    return false; // no env permission
  }
}

/** A process and the parent it had when watching began. */
export interface ChainLink {
  pid: number;
  ppid: number;
}

/** Longest chain of task-runner processes watched. */
const _MAX_CHAIN = 8;

/**
 * This process and its ancestors up to the task runner that started it: this process's link, then each
 * ancestor's while that ancestor was itself started by the runner (its environment holds `INIT_CWD`). For
 * `npx deno task run`: npm exec → sh → deno task → this process, so a dead `npm exec` shows as `sh` moved
 * to another parent. Without /proc, only this process's own link.
 */
export function runnerChain(): ChainLink[] {
  const links: ChainLink[] = [];
  let pid = Deno.pid;
  for (let i = 0; i < _MAX_CHAIN; i++) {
    const ppid = parentOf(pid);
    if (ppid === null || ppid <= 1) break;
    links.push({ pid, ppid });
    if (!_startedByRunner(ppid)) break;
    pid = ppid;
  }
  return links;
}

/** The parent pid of `pid` now (Linux /proc; `Deno.ppid` for this process elsewhere); null if it is gone. */
export function parentOf(pid: number): number | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return state === "Z" || state === "X" ? null : Number(ppid);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound && _hasProc()) return null;
    return pid === Deno.pid ? Deno.ppid : null;
  }
}

function _hasProc(): boolean {
  try {
    return Deno.statSync("/proc/self/stat").isFile;
  } catch {
    return false;
  }
}

/** Whether process `pid` was started by a task runner: `INIT_CWD` in its environment (Linux). */
function _startedByRunner(pid: number): boolean {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/environ`).split("\0").some((v) => v.startsWith("INIT_CWD="));
  } catch {
    return false;
  }
}

function _listen(sig: Deno.Signal, listener: () => void): void {
  try {
    Deno.addSignalListener(sig, listener);
  } catch {
    // Not a signal of this OS (Windows has SIGINT only): the command cannot be stopped by it gracefully.
  }
}

/** A line on stderr that may have nowhere to go (the terminal closed): never throws. */
function _say(io: CliIo, line: string): void {
  try {
    io.err(line);
  } catch {
    // The terminal is gone; the run's record says what happened.
  }
}

/**
 * The dashboard that `run`, `run --resume` and `repro` serve while they train: `deno task dashboard` started
 * as a child process on the same store, so that its requests never wait for the trainer's loop, and so that
 * whatever happens to it (a crash, a kill, descriptors running out) never stops training. The child is told
 * `--child` (core/cli/dashboard_cmd.ts): writes off (no token), a free port if the one asked for is taken,
 * and it exits when its stdin, a pipe from this process, closes: when this process stops, even by SIGKILL.
 *
 * If the child fails to start, or exits while training goes on, one warning line says so and training goes
 * on without it.
 *
 * @module
 */
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { openRunStore, selectedRunStore } from "../runs/open_store.ts";
import { storePath } from "../runs/sqlite_store.ts";
import { UsageError } from "./errors.ts";
import type { CliIo } from "./io.ts";
import { STORE_ENV } from "./store_flag.ts";

/** The flags of `run` and `repro` about the live dashboard. */
export interface LiveDashboardFlags {
  "dashboard-port"?: string;
  "no-dashboard"?: boolean;
}

/** The dashboard served while training, so that the URL printed at the start shows the run live. */
export interface LiveDashboard {
  url: string; // http://127.0.0.1:8000/
  pid: number; // of the child process
  /** Stops the child (closing its stdin; SIGKILL if it has not exited within 5 s) and waits for it. */
  stop: () => Promise<void>;
}

/** Longest wait for the child to print its URL. */
export const START_TIMEOUT_MS = 30_000;
/** Longest wait for the child to exit once asked to, before SIGKILL. */
const _STOP_TIMEOUT_MS = 5000;

const _MOD = new URL("../../mod.ts", import.meta.url);

/**
 * Starts the live dashboard of `runsDir`'s store unless `--no-dashboard`; null if it is off or could not
 * start (a warning line is printed then). A bad `--dashboard-port` is a {@linkcode UsageError}.
 */
export async function liveDashboard(
  runsDir: string,
  flags: LiveDashboardFlags,
  io: CliIo,
): Promise<LiveDashboard | null> {
  if (flags["no-dashboard"]) return null;
  const text = flags["dashboard-port"];
  const port = text === undefined ? 8000 : Number(text);
  if (!/^\d+$/.test(text ?? "0") || port > 65535) {
    throw new UsageError(`--dashboard-port must be a port number (0 to 65535), got "${text}"`);
  }
  // The child never creates a store: this process, which writes the runs, does.
  await openRunStore(runsDir);
  const warn = (why: string) =>
    io.err(`Warning: the live dashboard ${why}; training goes on (browse later: deno task dashboard)`);
  if (_MOD.protocol !== "file:") {
    warn(`cannot start from ${_MOD.protocol} modules`);
    return null;
  }
  let child: _Child;
  try {
    child = new _Child(_command(runsDir, port).spawn());
  } catch (e) {
    warn(`could not start (${(e as Error).message})`);
    return null;
  }
  const started = await child.started(START_TIMEOUT_MS);
  if ("error" in started) {
    await child.stop();
    warn(`could not start: ${started.error}`);
    return null;
  }
  if (port !== 0 && started.port !== port) {
    io.err(`Port ${port} is in use: the dashboard of this run is on port ${started.port}`);
  }
  io.err(`dashboard: ${started.url} (live while this command runs; later: deno task dashboard)`);
  child.onUnexpectedExit((why) => warn(`stopped (${why})`));
  return { url: started.url, pid: child.pid, stop: () => child.stop() };
}

/**
 * `deno run -A mod.ts dashboard --child …` on the store selected for `runsDir`. The store's location goes in
 * the child's environment, not its arguments, so that a Postgres password never shows in a process list.
 */
function _command(runsDir: string, port: number): Deno.Command {
  const loc = selectedRunStore(runsDir);
  const store = loc.kind === "postgres" ? loc.url : `sqlite:${resolve(loc.path ?? storePath(runsDir))}`;
  const args = ["run", "-A", fileURLToPath(_MOD), "dashboard", "--child", "--json"];
  args.push("--runs-dir", resolve(runsDir), "--port", String(port));
  return new Deno.Command(Deno.execPath(), {
    args,
    env: { [STORE_ENV]: store },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  });
}

/** The child process: its output read to the end (the last lines of stderr kept), its exit watched. */
class _Child {
  readonly pid: number;
  readonly #p: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #drained: Promise<unknown>;
  #stdout = "";
  #stderr = "";
  #onLine: (() => void) | null = null;
  #stopping = false;
  #exit: string | null = null; // how it exited, once it has

  constructor(p: Deno.ChildProcess) {
    this.#p = p;
    this.pid = p.pid;
    this.#stdin = p.stdin.getWriter();
    this.#drained = Promise.all([
      this.#read(p.stdout, (t) => this.#stdout = (this.#stdout + t).slice(-4096)),
      this.#read(p.stderr, (t) => this.#stderr = (this.#stderr + t).slice(-4096)),
    ]);
    p.status.then((s) => {
      this.#exit = s.signal ? `killed by ${s.signal}` : `exit code ${s.code}`;
      this.#onLine?.();
    });
  }

  async #read(s: ReadableStream<Uint8Array>, add: (text: string) => void): Promise<void> {
    try {
      for await (const text of s.pipeThrough(new TextDecoderStream())) {
        add(text);
        this.#onLine?.();
      }
    } catch {
      // The pipe broke: the child is gone.
    }
  }

  /** Its `{"url","port"}` line, or why there is none (it exited, or said nothing in time). */
  async started(timeoutMs: number): Promise<{ url: string; port: number } | { error: string }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = /^\{"url":"([^"]+)","port":(\d+)\}$/m.exec(this.#stdout);
      if (m) return { url: m[1]!, port: Number(m[2]) };
      const last = this.#stderr.trim().split("\n").at(-1)?.slice(0, 300);
      if (this.#exit) return { error: `${this.#exit}${last ? `: ${last}` : ""}` };
      const left = deadline - Date.now();
      if (left <= 0) return { error: `no URL within ${timeoutMs / 1000} s` };
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#onLine = resolve;
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
      this.#onLine = null;
    }
  }

  /** Calls `fn` once if the child exits before {@linkcode stop}. */
  onUnexpectedExit(fn: (why: string) => void): void {
    this.#p.status.then(() => {
      if (!this.#stopping) fn(this.#exit ?? "exited");
    });
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    await this.#stdin.close().catch(() => {}); // EOF on its stdin: it stops
    const timer = setTimeout(() => {
      try {
        this.#p.kill("SIGKILL");
      } catch {
        // Already exited.
      }
    }, _STOP_TIMEOUT_MS);
    await this.#p.status;
    clearTimeout(timer);
    await this.#drained;
  }
}

/**
 * Whether a running run's writer is still alive, for `markInterrupted()` of every store: a writer on this
 * machine whose process is gone is dead at once; any other is dead once its heartbeat is older than the
 * stale limit.
 *
 * @module
 */
import type { StoreRow } from "./store_rows.ts";

/** This machine's hostname, as stores record it with a run's writer (null where it cannot be read). */
export function thisHost(): string | null {
  try {
    return Deno.hostname();
  } catch {
    return null;
  }
}

/** Whether process `pid` exists on this machine, or null where that cannot be told (no /proc). */
export function processAlive(pid: number): boolean | null {
  try {
    Deno.statSync("/proc/self");
  } catch {
    return null;
  }
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Why the writer of a running run is taken for dead (the end of "Interrupted: …"), or null while it lives.
 * `w` is the run's row (its `host`, `pid` and `heartbeat_at` are read); `nowMs` is the clock that heartbeats
 * are compared with; `host` is this machine's ({@linkcode thisHost}).
 *
 * @example
 * ```ts
 * import { interruptReason } from "./run_liveness.ts";
 * const w = { host: "elsewhere", pid: 1, heartbeat_at: "2026-01-01T00:00:00.000Z" };
 * const now = Date.parse("2026-01-01T00:20:00.000Z");
 * console.log(interruptReason(w, { host: "here", nowMs: now, staleSeconds: 600 })); // "no heartbeat for 1200 s"
 * ```
 */
export function interruptReason(
  w: StoreRow,
  o: { host: string | null; nowMs: number; staleSeconds: number },
): string | null {
  const beat = w.heartbeat_at === null ? 0 : Date.parse(String(w.heartbeat_at));
  const sameHost = w.host !== null && w.host === o.host && w.pid !== null;
  const gone = sameHost ? processAlive(Number(w.pid)) === false : false;
  if (!gone && o.nowMs - beat < o.staleSeconds * 1000) return null;
  return gone
    ? `its process ${w.pid} on ${w.host} is gone`
    : `no heartbeat for ${Math.round((o.nowMs - beat) / 1000)} s`;
}

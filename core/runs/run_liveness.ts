/**
 * Whether a running run's writer is still alive, for `markInterrupted()` of every store and for the lease of
 * a run (`acquireRun()`): a writer on this machine whose process is gone is dead at once; any other is dead
 * once its heartbeat is older than the stale limit. And the messages that name a run's holder.
 *
 * @module
 */
import type { PointRunStart } from "./store.ts";
import { runFromRow, type StoreRow } from "./store_rows.ts";

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

/**
 * The stale limit of a run's lease (seconds): a holder that sent no heartbeat for this long is taken for dead
 * (as `markInterrupted()` takes it by default), wherever it runs. A sweep worker uses its own, shorter
 * `--stale-seconds` (the queue's claim has already fenced the worker it takes a point from).
 */
export const RUN_STALE_SECONDS = 600;

/**
 * Who holds a run, for messages: "pid 1234 on host h since <time> (heartbeat 3 s ago)". `w` is the run's row
 * (`host`, `pid`, `leased_at`, `heartbeat_at`); `nowMs` the clock that heartbeats are compared with.
 *
 * @example
 * ```ts
 * import { describeHolder } from "./run_liveness.ts";
 * const w = { host: "h", pid: 7, leased_at: "2026-01-01T00:00:00.000Z", heartbeat_at: "2026-01-01T00:00:05.000Z" };
 * console.log(describeHolder(w, Date.parse("2026-01-01T00:00:08.000Z")));
 * // "pid 7 on host h since 2026-01-01T00:00:00.000Z (heartbeat 3 s ago)"
 * ```
 */
export function describeHolder(w: StoreRow, nowMs: number): string {
  const beat = w.heartbeat_at === null || w.heartbeat_at === undefined
    ? NaN
    : Date.parse(String(w.heartbeat_at));
  const ago = Number.isFinite(beat)
    ? `heartbeat ${Math.max(0, Math.round((nowMs - beat) / 1000))} s ago`
    : "no heartbeat";
  const since = w.leased_at ? ` since ${w.leased_at}` : "";
  return `pid ${w.pid ?? "?"} on host ${w.host ?? "?"}${since} (${ago})`;
}

/** The message of RunBusyError for run `id` held by the writer of row `r`. */
export function runBusyMessage(
  id: string,
  r: StoreRow,
  nowMs: number,
  stale: number,
): string {
  return `Run ${id} is held by ${describeHolder(r, nowMs)}: another process is training it; wait for it to ` +
    `end or stop it (a holder whose process is gone, or silent for ${stale} s, is taken over)`;
}

/** The message of RunBusyError for a lease of run `id` that another process took over (row `r` now). */
export function runLostMessage(id: string, r: StoreRow, nowMs: number): string {
  return r.lease_id === null || r.lease_id === undefined
    ? `Run ${id} is no longer held by this process (its lease ended): it writes no more to it`
    : `Run ${id} was taken over by ${describeHolder(r, nowMs)}: this process writes no more to it`;
}

/**
 * Whether a sweep point is taken already, from its runs' rows (newest first): a finished run, else one whose
 * lease holder still lives; null when a new run may start it. `nowMs` is the clock heartbeats are compared
 * with, `host` this machine's.
 */
export function pointTaken(
  rows: readonly StoreRow[],
  o: { host: string | null; nowMs: number; staleSeconds: number },
): Exclude<PointRunStart, { kind: "created" }> | null {
  const finished = rows.find((r) => r.status === "finished");
  if (finished) return { kind: "finished", run: runFromRow(finished) };
  for (const r of rows) {
    if (r.lease_id === null || interruptReason(r, o) !== null) continue;
    return { kind: "busy", run: runFromRow(r), holder: describeHolder(r, o.nowMs) };
  }
  return null;
}

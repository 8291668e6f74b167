/**
 * Live updates of a run as Server-Sent Events: the store is polled every `pollMs` for metric points
 * committed after the last seq sent, new events and changes of the run's status. Each message's id is
 * `<metric seq>:<event seq>`, so a reconnecting EventSource (which sends it back as Last-Event-ID) resumes
 * where it stopped. A comment line is sent when nothing else was for `heartbeatMs`, so proxies keep the
 * connection open. The stream is pull-driven: nothing is polled while the client is not reading, and
 * polling stops when it disconnects.
 *
 * @module
 */
import type { RunStore } from "../runs/store.ts";

/** Where a stream starts and how often it polls. */
export interface RunStreamOptions {
  afterSeq: number; // send metric points with seq > afterSeq
  afterEventSeq: number; // send events with seq > afterEventSeq
  pollMs: number;
  heartbeatMs: number;
  signal?: AbortSignal; // the request's: aborted when the client goes away
}

/** Most metric points per message. */
const _BATCH = 5000;

/**
 * Parses a Last-Event-ID of {@linkcode runStream} (`"12:3"`, or a bare metric seq `"12"`); null if malformed.
 *
 * @example
 * ```ts
 * import { parseEventId } from "./stream.ts";
 * console.log(parseEventId("12:3")); // { afterSeq: 12, afterEventSeq: 3 }
 * ```
 */
export function parseEventId(id: string): { afterSeq: number; afterEventSeq?: number } | null {
  const m = /^(\d{1,15})(?::(\d{1,15}))?$/.exec(id.trim());
  if (!m) return null;
  return m[2] === undefined
    ? { afterSeq: Number(m[1]) }
    : { afterSeq: Number(m[1]), afterEventSeq: Number(m[2]) };
}

/** The SSE body of run `runId`'s live updates. */
export function runStream(store: RunStore, runId: string, o: RunStreamOptions): ReadableStream<Uint8Array> {
  const enc = new TextEncoder();
  let seq = o.afterSeq, eventSeq = o.afterEventSeq;
  let lastSent = performance.now();
  let status: string | null = null, step: number | null = null;
  let closed = false;
  let wake: (() => void) | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const stop = () => {
    closed = true;
    clearTimeout(timer);
    wake?.();
  };
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      wake = resolve;
      timer = setTimeout(resolve, ms);
    });
  o.signal?.addEventListener("abort", stop, { once: true });

  /** Everything new since the last poll, as SSE text ("" when nothing is). */
  async function poll(): Promise<string> {
    // Every point with seq ≤ top is committed before the query below reads (seq is commit order).
    const top = await store.lastSeq();
    const [rows, events, run] = await Promise.all([
      store.metrics(runId, { afterSeq: seq, limit: _BATCH }),
      store.events(runId, eventSeq),
      store.getRun(runId),
    ]);
    let text = "";
    const id = () => `id: ${seq}:${eventSeq}\n`;
    if (rows.length > 0) {
      seq = rows.at(-1)!.seq;
      text += `${id()}event: metrics\ndata: ${JSON.stringify(rows)}\n\n`;
    }
    // A short page holds every point of the run up to top: the next poll starts there, not rescanning the
    // other runs' points in between.
    if (rows.length < _BATCH) seq = Math.max(seq, top);
    if (events.length > 0) {
      eventSeq = events.at(-1)!.seq;
      text += `${id()}event: events\ndata: ${JSON.stringify(events)}\n\n`;
    }
    if (run && (run.status !== status || run.step !== step)) {
      status = run.status, step = run.step;
      const data = { status, step, error: run.error, ended_at: run.ended_at };
      text += `event: run\ndata: ${JSON.stringify(data)}\n\n`;
    }
    return text;
  }

  return new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(enc.encode(`retry: 2000\n: run ${runId}\n\n`));
    },
    async pull(controller) {
      while (!closed) {
        let text: string;
        try {
          text = await poll();
        } catch (e) {
          if (closed) return;
          controller.enqueue(enc.encode(`event: error\ndata: ${JSON.stringify({ error: String(e) })}\n\n`));
          text = "";
        }
        if (closed) break;
        if (text === "" && performance.now() - lastSent >= o.heartbeatMs) text = ": heartbeat\n\n";
        if (text !== "") {
          lastSent = performance.now();
          controller.enqueue(enc.encode(text));
          return;
        }
        await sleep(o.pollMs);
      }
      try {
        controller.close();
      } catch {
        // Already closed by a cancel.
      }
    },
    cancel() {
      stop();
    },
  });
}

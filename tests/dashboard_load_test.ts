/**
 * The dashboard under load (issue 9): `deno task dashboard` in its own process, as a user serves it, on a
 * loopback port; one remote writer logs 50,000 points/s in batches for 60 s while 8 readers poll what a run
 * page reads (run info, downsampled series) and one live stream follows every point. No request may fail, no
 * point may be lost: the store holds exactly what was acknowledged, readers never see a count go back, and
 * the stream delivers every point once, in order. Bounded: a hard deadline fails the test, saying how far
 * the writer got. Rates and latencies are printed for information, never asserted.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { openSqliteStore, storePath } from "../core/runs/sqlite_store.ts";

const RATE = 50_000; // points per second the writer is scheduled at
const BATCH = 5_000; // points per request: one every BATCH / RATE s
const SECONDS = 60; // of writing, on schedule
const BATCHES = (RATE * SECONDS) / BATCH; // 600
const KEYS = ["train/loss", "train/lr", "train/grad_norm", "train/aux_loss", "train/tokens_per_s"];
const STEPS_PER_BATCH = BATCH / KEYS.length; // every key at every step
const READERS = 8;
const DEADLINE_MS = 150_000; // from the first write: past it the test fails
const TOKEN = "load-test-token-7f3a9c";

/** The value written for key `k` at `step`: a decaying curve, distinct per key. */
function _value(k: number, step: number): number {
  return (k + 1) * 4 / Math.sqrt(1 + step / 1000) + 1e-3 * Math.sin(step);
}

/** What went wrong, collected rather than thrown, so that every problem is reported at the end. */
type _Problems = string[];

/** A non-2xx response as a problem: method, path, status and the start of the body. */
async function _check(res: Response, what: string, problems: _Problems): Promise<boolean> {
  if (res.ok) return true;
  const body = (await res.text().catch((e) => `(unreadable: ${e})`)).slice(0, 300);
  problems.push(`${what} → ${res.status}: ${body}`);
  return false;
}

/** The dashboard subprocess and what it printed. */
interface _Dashboard {
  url: string;
  process: Deno.ChildProcess;
  output: () => string;
}

/**
 * Starts `deno task dashboard`'s command on a free loopback port; resolves once it prints its URL. Aborting
 * `signal` kills it.
 */
async function _startDashboard(runsDir: string, signal: AbortSignal): Promise<_Dashboard> {
  const process = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "mod.ts",
      "dashboard",
      "--runs-dir",
      runsDir,
      "--port",
      "0",
      "--token",
      TOKEN,
      "--json",
    ],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  signal.addEventListener("abort", () => _kill(process, "SIGKILL"), { once: true });
  let text = "";
  const drain = async (s: ReadableStream<Uint8Array>) => {
    for await (const chunk of s.pipeThrough(new TextDecoderStream())) text = (text + chunk).slice(-20_000);
  };
  drain(process.stderr).catch(() => {});
  const out = process.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let url: string | null = null;
  while (url === null) {
    const { value, done } = await out.read();
    if (done) throw new Error(`The dashboard exited before listening:\n${text}`);
    text += value;
    url = /^\{"url":"([^"]+)"/m.exec(text)?.[1] ?? null;
  }
  (async () => {
    for (;;) {
      const { value, done } = await out.read();
      if (done) return;
      text += value;
    }
  })().catch(() => {});
  return { url, process, output: () => text };
}

/** Stops the dashboard as Ctrl-C would; SIGKILL if it has not exited within 10 s. Its exit code. */
async function _stopDashboard(d: _Dashboard): Promise<number> {
  _kill(d.process, "SIGTERM");
  const timer = setTimeout(() => _kill(d.process, "SIGKILL"), 10_000);
  try {
    return (await d.process.status).code;
  } finally {
    clearTimeout(timer);
  }
}

/** Sends `signal` to `p` unless it has exited. */
function _kill(p: Deno.ChildProcess, signal: Deno.Signal): void {
  try {
    p.kill(signal);
  } catch {
    // Already exited.
  }
}

/** What the writer did: points acknowledged per key, request latencies, and when it started and stopped. */
interface _WriterReport {
  acked: number;
  batches: number;
  lastStep: number;
  latenciesMs: number[];
  startedAt: number;
  endedAt: number;
}

/** One batch: every key at steps `first … first + STEPS_PER_BATCH − 1`. */
function _batch(first: number): string {
  const points = [];
  for (let step = first; step < first + STEPS_PER_BATCH; step++) {
    for (let k = 0; k < KEYS.length; k++) {
      points.push({ key: KEYS[k], step, tokens: step * 1024, value: _value(k, step) });
    }
  }
  return JSON.stringify({ points });
}

/** Logs BATCHES batches on schedule (late batches go at once), one request at a time, until the deadline. */
async function _write(base: string, problems: _Problems, deadline: number): Promise<_WriterReport> {
  const r: _WriterReport = {
    acked: 0,
    batches: 0,
    lastStep: 0,
    latenciesMs: [],
    startedAt: performance.now(),
    endedAt: 0,
  };
  const headers = { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" };
  for (let b = 0; b < BATCHES; b++) {
    const due = r.startedAt + (b * BATCH * 1000) / RATE;
    if (due > performance.now()) await new Promise((ok) => setTimeout(ok, due - performance.now()));
    const left = deadline - performance.now();
    if (left <= 0) break;
    const body = _batch(b * STEPS_PER_BATCH + 1);
    const t = performance.now();
    try {
      const res = await fetch(`${base}/metrics`, {
        method: "POST",
        headers,
        body,
        signal: AbortSignal.timeout(left),
      });
      if (!await _check(res, `POST metrics (batch ${b})`, problems)) continue;
      const ack = await res.json() as { logged: number; step: number };
      r.latenciesMs.push(performance.now() - t);
      r.acked += ack.logged;
      r.batches++;
      r.lastStep = (b + 1) * STEPS_PER_BATCH;
      if (ack.logged !== BATCH) {
        problems.push(`POST metrics (batch ${b}) logged ${ack.logged} of ${BATCH} points`);
      }
    } catch (e) {
      problems.push(`POST metrics (batch ${b}) failed: ${(e as Error).message}`);
    }
  }
  r.endedAt = performance.now();
  return r;
}

/** What one reader saw; `counts[k]` is the stored count of KEYS[k] in its last poll. */
interface _ReaderReport {
  polls: number;
  counts: number[];
}

/**
 * Polls what a run page reads, back to back, until the writer is done: the runs list, the run's info and its
 * downsampled series of every key. A count or step that goes back, or a series that is not what was
 * written (its first and last points are always kept), is a problem.
 */
async function _read(url: string, id: string, problems: _Problems, stop: _Stop): Promise<_ReaderReport> {
  const r: _ReaderReport = { polls: 0, counts: KEYS.map(() => 0) };
  const base = `${url}api/runs/${id}`;
  const query = `keys=${encodeURIComponent(KEYS.join(","))}&x=step&max=2000`;
  let step = 0;
  const get = async (path: string) => {
    const res = await fetch(path, { signal: stop.signal });
    return await _check(res, `GET ${path.slice(url.length - 1)}`, problems) ? await res.json() : null;
  };
  // One more poll once the writer is done: it must see every point.
  for (let last = false; !last;) {
    last = stop.done;
    try {
      const list = await get(`${url}api/runs`);
      const info = await get(base);
      const m = await get(`${base}/metrics?${query}`);
      if (!list || !info || !m) {
        await new Promise((ok) => setTimeout(ok, 100)); // a failing server is not hammered
        continue;
      }
      if (info.run.step < step) problems.push(`run step went back from ${step} to ${info.run.step}`);
      step = info.run.step;
      KEYS.forEach((key, k) => _checkSeries(key, k, m.series[key], r.counts, problems));
      r.polls++;
    } catch (e) {
      problems.push(`a reader's poll failed: ${(e as Error).message}`);
      if (stop.signal.aborted) break;
    }
  }
  return r;
}

/** A polled series of KEYS[k]: its count never below the last one seen, its ends what was written. */
function _checkSeries(
  key: string,
  k: number,
  s: _Series | undefined,
  counts: number[],
  problems: _Problems,
): void {
  const count = s?.count ?? 0;
  if (count < counts[k]!) problems.push(`${key}: the stored count went back from ${counts[k]} to ${count}`);
  counts[k] = count;
  if (!s || count === 0) return;
  const n = s.step.length;
  if (n > 2000) problems.push(`${key}: ${n} points sent for max=2000`);
  // Steps 1 … count were written, one point each, in order.
  if (
    s.step[0] !== 1 || s.value[0] !== _value(k, 1) || s.step[n - 1] !== count ||
    s.value[n - 1] !== _value(k, count)
  ) {
    problems.push(
      `${key}: series of ${count} points ends at (${s.step[0]}, ${s.step[n - 1]}), not (1, ${count})`,
    );
  }
}

/** A series of GET /api/runs/:id/metrics. */
interface _Series {
  step: number[];
  value: number[];
  count: number;
}

/** When the readers stop: `done` once the writer is; `target` the points the stream must deliver by then. */
interface _Stop {
  done: boolean;
  target: number | null;
  signal: AbortSignal; // the hard deadline
}

/**
 * Follows the run's live stream from the start, as an open run page does, until it has delivered `target`
 * points: each must come once, in seq order, with the next step of its key and the value written there.
 * Returns the points delivered.
 */
async function _follow(base: string, problems: _Problems, stop: _Stop): Promise<number> {
  const res = await fetch(`${base}/stream?after=0`, { signal: stop.signal });
  if (!await _check(res, "GET stream", problems)) return 0;
  const steps = KEYS.map(() => 0);
  let seq = 0, got = 0, text = "";
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  try {
    while (stop.target === null || got < stop.target) {
      const { value, done } = await reader.read();
      if (done) {
        problems.push(`the stream ended after ${got} points`);
        break;
      }
      const messages = (text += value).split("\n\n");
      text = messages.pop()!;
      for (const m of messages) {
        if (!m.includes("event: metrics\n")) continue;
        const rows = JSON.parse(m.slice(m.indexOf("data: ") + 6)) as {
          seq: number;
          key: string;
          step: number;
          value: number;
        }[];
        for (const row of rows) {
          const k = KEYS.indexOf(row.key);
          if (row.seq <= seq || k < 0 || row.step !== steps[k]! + 1 || row.value !== _value(k, row.step)) {
            problems.push(
              `the stream sent ${JSON.stringify(row)} after seq ${seq}, step ${steps[k]} of its key`,
            );
            return got;
          }
          seq = row.seq, steps[k] = row.step, got++;
        }
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
  return got;
}

/** What a key holds: its points, distinct steps, step range and sum, and the values at both ends. */
interface _Tally {
  key: string;
  points: number;
  steps: number;
  range: [number | null, number | null];
  sum: number | null;
  values: [number | null, number | null];
}

/** The tally of every key of run `runId` in the store file of `runsDir`, read by this process. */
function _stored(runsDir: string, runId: string): _Tally[] {
  const db = new DatabaseSync(storePath(runsDir), { readOnly: true });
  try {
    const agg = db.prepare(
      `SELECT COUNT(*) AS n, COUNT(DISTINCT step) AS steps, MIN(step) AS lo, MAX(step) AS hi, SUM(step) AS sum
       FROM metrics WHERE run_id = ? AND key = ?`,
    );
    const at = db.prepare("SELECT value FROM metrics WHERE run_id = ? AND key = ? AND step = ?");
    const value = (key: string, step: unknown) =>
      (at.get(runId, key, Number(step))?.value ?? null) as number | null;
    return KEYS.map((key) => {
      const a = agg.get(runId, key)!;
      return {
        key,
        points: Number(a.n),
        steps: Number(a.steps),
        range: [a.lo as number | null, a.hi as number | null],
        sum: a.sum as number | null,
        values: [value(key, a.lo), value(key, a.hi)],
      };
    });
  } finally {
    db.close();
  }
}

/** The tally of every key after the writer's steps 1 … `steps`. */
function _written(steps: number): _Tally[] {
  return KEYS.map((key, k) => ({
    key,
    points: steps,
    steps,
    range: steps ? [1, steps] : [null, null],
    sum: steps ? (steps * (steps + 1)) / 2 : null,
    values: steps ? [_value(k, 1), _value(k, steps)] : [null, null],
  }));
}

function _percentile(xs: readonly number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
}

Deno.test("dashboard: one writer at 50,000 points/s for 60 s, 8 polling readers and a live stream: no errors, no lost points", async () => {
  const dir = await Deno.makeTempDir();
  openSqliteStore(storePath(dir)).close(); // the dashboard only reads: it never creates a store
  const hard = new AbortController();
  const timer = setTimeout(() => hard.abort(new Error("the hard deadline passed")), DEADLINE_MS + 15_000);
  let dash: _Dashboard | null = null;
  try {
    dash = await _startDashboard(dir, hard.signal);
    const auth = { Authorization: `Bearer ${TOKEN}` };
    const created = await fetch(`${dash.url}api/runs`, {
      method: "POST",
      headers: auth,
      signal: hard.signal,
      body: JSON.stringify({ id: "load", name: "load", config_yaml: "model: { kind: dsmoe }\n" }),
    });
    assertEquals(created.status, 201, await created.text());
    const base = `${dash.url}api/runs/load`;
    const problems: _Problems = [];
    const stop: _Stop = { done: false, target: null, signal: hard.signal };
    const follower = _follow(base, problems, stop).catch((
      e,
    ) => (problems.push(`the stream failed: ${e}`), -1));
    const readers = Array.from({ length: READERS }, () => _read(dash!.url, "load", problems, stop));
    const w = await _write(base, problems, performance.now() + DEADLINE_MS);
    stop.target = w.acked;
    stop.done = true;
    const finished = await fetch(`${base}/finish`, {
      method: "POST",
      headers: auth,
      signal: hard.signal,
      body: '{"status":"finished"}',
    });
    await _check(finished, "POST finish", problems);
    await finished.body?.cancel();
    const polls = await Promise.all(readers);
    const streamed = await follower;
    const seconds = (w.endedAt - w.startedAt) / 1000;
    const polled = polls.reduce((n, r) => n + r.polls, 0);
    console.log([
      `wrote ${w.acked} points in ${seconds.toFixed(1)} s: ${Math.round(w.acked / seconds)} points/s`,
      `write latency p50 ${_percentile(w.latenciesMs, 50).toFixed(1)} ms, p99 ${
        _percentile(w.latenciesMs, 99).toFixed(1)
      } ms`,
      `${READERS} readers: ${(polled / seconds).toFixed(1)} polls/s in all (${polls.map((r) => r.polls)})`,
      `the stream delivered ${streamed} points`,
    ].join("; "));
    assertEquals(await _stopDashboard(dash), 0, dash.output());
    dash = null;

    const total = BATCHES * BATCH, limit = DEADLINE_MS / 1000;
    assert(
      w.batches === BATCHES,
      `The writer got to ${w.acked} of ${total} points (${w.batches} of ${BATCHES} batches) in ${limit} s`,
    );
    assertEquals(
      [...new Set(problems)].slice(0, 20),
      [],
      `${problems.length} problems, the first distinct ones`,
    );
    assertEquals(_stored(dir, "load"), _written(w.lastStep));
    assertEquals(streamed, w.acked, "the live stream delivered every point");
    for (const r of polls) {
      assert(r.polls > 0, `every reader completed a poll: ${polls.map((r) => r.polls)}`);
      assertEquals(r.counts, KEYS.map(() => w.lastStep), "the last poll saw every point");
    }
  } finally {
    clearTimeout(timer);
    hard.abort();
    if (dash) await _stopDashboard(dash);
    await Deno.remove(dir, { recursive: true });
  }
});

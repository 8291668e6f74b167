/**
 * The dashboard under a connection flood (issue 18): `deno task dashboard` in its own process under
 * `ulimit -n 1024`, while an attacker process (under a higher limit) holds 2,000 idle connections and 300
 * half-sent request heads, opening a new one whenever the server closes one. GET /api/runs must keep
 * answering 200, the process must stay alive with its descriptors under the limit, and once the attacker
 * stops, the server must close every connection it still holds (head timeout). Latencies are printed, not
 * asserted; each request has a generous liveness bound.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { openSqliteStore } from "../core/runs/sqlite_store.ts";

const IDLE = 2000; // connections that never send a byte
const HALF = 300; // connections that send part of a head, then nothing
const ATTACK_MS = 20_000;
const FD_LIMIT = 1024;

/** The attacker, run with `deno eval` (no file of its own): its parameters come in the environment. */
const ATTACKER = `
const port = Number(Deno.env.get("PORT")), idle = Number(Deno.env.get("IDLE")), half = Number(Deno.env.get("HALF"));
const attackMs = Number(Deno.env.get("ATTACK_MS"));
const head = new TextEncoder().encode("GET /api/runs HTTP/1.1\\r\\nHost: 127.0.0.1:" + port + "\\r\\nX-Slow: ");
let opened = 0, closedByServer = 0, connectErrors = 0, stop = false;
const live = new Set();
async function slot(sendHalf) {
  while (!stop) {
    let c;
    try { c = await Deno.connect({ hostname: "127.0.0.1", port }); } catch { connectErrors++; await new Promise((r) => setTimeout(r, 200)); continue; }
    opened++; live.add(c);
    if (sendHalf) await c.write(head).catch(() => {});
    const buf = new Uint8Array(4096);
    try { while ((await c.read(buf)) !== null); } catch {}
    closedByServer++; live.delete(c);
    try { c.close(); } catch {}
    await new Promise((r) => setTimeout(r, 1000)); // then open another, as a slowloris tool refills its pool
  }
}
for (let i = 0; i < idle; i++) slot(false);
for (let i = 0; i < half; i++) slot(true);
const report = (phase) => console.log(JSON.stringify({ phase, opened, closedByServer, connectErrors, open: live.size }));
const timer = setInterval(() => report("attack"), 2000);
await new Promise((r) => setTimeout(r, attackMs));
clearInterval(timer);
stop = true;
report("stopped");
const t0 = Date.now();
while (live.size > 0 && Date.now() - t0 < 30000) await new Promise((r) => setTimeout(r, 100));
// Still open after three head timeouts: handshakes the server's kernel has not finished (their last ACK
// dropped while the accept queue overflowed: it retries for a minute, then gives up without a word to this
// side). A byte on one finishes it or draws a reset; one the server holds, its head timeout closes anyway.
const probed = live.size;
// The test counts the server's descriptors now, before any byte is sent, and says "go" on stdin.
console.log(JSON.stringify({ phase: "probe", open: live.size, probed }));
await Deno.stdin.read(new Uint8Array(16));
for (const c of live) c.write(new Uint8Array([32])).catch(() => {});
while (live.size > 0 && Date.now() - t0 < 60000) await new Promise((r) => setTimeout(r, 100));
console.log(JSON.stringify({ phase: "end", open: live.size, probed, closeMs: Date.now() - t0 }));
Deno.exit(0);
`;

/** `cmd` under `ulimit -n <limit>` (raised to the hard limit if that is lower), piped. */
function _ulimited(
  limit: number,
  args: string[],
  env: Record<string, string> = {},
  stdin: "piped" | "null" = "null",
): Deno.ChildProcess {
  const script = `ulimit -n ${limit} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"`;
  return new Deno.Command("bash", {
    args: ["-c", script, "bash", Deno.execPath(), ...args],
    stdin,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).spawn();
}

/** The lines of a stream, collected as they come (read to its end in the background). */
function _collect(s: ReadableStream<Uint8Array>): { lines: string[]; done: Promise<void> } {
  const lines: string[] = [];
  const done = (async () => {
    let rest = "";
    for await (const text of s.pipeThrough(new TextDecoderStream())) {
      const parts = (rest + text).split("\n");
      rest = parts.pop()!;
      lines.push(...parts);
    }
    if (rest) lines.push(rest);
  })();
  return { lines, done };
}

/** Waits (polling; liveness bound `ms`) until `lines` has a line matching `re`; its match, or null. */
async function _line(lines: string[], re: RegExp, ms: number): Promise<RegExpExecArray | null> {
  const deadline = Date.now() + ms;
  for (;;) {
    for (const l of lines) {
      const m = re.exec(l);
      if (m) return m;
    }
    if (Date.now() > deadline) return null;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Open descriptors of process `pid` (Linux), or null where /proc cannot tell. */
function _fds(pid: number): number | null {
  try {
    return [...Deno.readDirSync(`/proc/${pid}/fd`)].length;
  } catch {
    return null;
  }
}

/**
 * One GET (5 s liveness bound): its status and time in ms, on fetch's kept-alive connection or on a fresh
 * one. A fresh connection accepted in the flood may be closed before its request arrives (its packets were
 * dropped while the accept queue overflowed, and it was the oldest incomplete connection by then); a
 * kept-alive connection idle between probes may be closed by the guard's eviction at capacity (a server may
 * close an idle keep-alive connection at any time). Like a browser with an idempotent request, the request
 * is then sent again, once, and `retried` says so.
 */
async function _get(url: string, fresh: boolean): Promise<{ status: number; ms: number; retried: boolean }> {
  const t0 = performance.now();
  for (let attempt = 0;; attempt++) {
    const client = fresh ? Deno.createHttpClient({ poolMaxIdlePerHost: 0 }) : undefined;
    try {
      const res = await fetch(url, { client, signal: AbortSignal.timeout(5000) });
      await res.arrayBuffer();
      return { status: res.status, ms: performance.now() - t0, retried: attempt > 0 };
    } catch (e) {
      if (attempt > 0 || (e as Error).name === "TimeoutError") throw e;
    } finally {
      client?.close();
    }
  }
}

function _quantiles(ms: number[]): string {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))]!.toFixed(1);
  return `n=${s.length} p50=${q(0.5)} p95=${q(0.95)} max=${q(1)} ms`;
}

Deno.test({
  name: "under ulimit -n 1024 the dashboard keeps answering through 2,000 idle and 300 half-sent connections",
  async fn() {
    if (Deno.build.os !== "linux") return; // ulimit and /proc
    const dir = await Deno.makeTempDir();
    const store = openSqliteStore(`${dir}/runs.db`);
    for (let i = 0; i < 3; i++) {
      await store.importRun({
        id: `run-${i}`,
        name: `run ${i}`,
        status: "finished",
        seed: i,
        git_commit: null,
        adapter: "test",
        started_at: `2026-12-0${i + 1}T00:00:00Z`,
        ended_at: null,
        sweep_id: null,
        sweep_params: {},
        error: null,
        step: 10,
      }, "model: { kind: dsmoe }\n");
      await store.logMetrics(`run-${i}`, [{ key: "train/loss", step: 10, tokens: 640, time: 1, value: 2 }]);
    }
    store.close();
    const dash = _ulimited(FD_LIMIT, [
      "run",
      "-A",
      "mod.ts",
      "dashboard",
      "--runs-dir",
      dir,
      "--port",
      "0",
      "--token",
      "guard-test-token",
      "--json",
    ]);
    let attacker: Deno.ChildProcess | null = null;
    const out = _collect(dash.stdout), err = _collect(dash.stderr);
    try {
      const url = (await _line(out.lines, /^\{"url":"([^"]+)"/, 60_000))?.[1];
      assert(url, `no URL:\n${err.lines.join("\n")}`);
      const limits = Deno.readTextFileSync(`/proc/${dash.pid}/limits`);
      assert(/^Max open files\s+1024\s/m.test(limits), limits);
      const api = `${url}api/runs`;
      const before = [];
      for (let i = 0; i < 20; i++) before.push(await _get(api, true));
      assert(before.every((r) => r.status === 200));
      const baseFds = _fds(dash.pid)!;

      attacker = _ulimited(8192, ["eval", ATTACKER], {
        PORT: new URL(url).port,
        IDLE: String(IDLE),
        HALF: String(HALF),
        ATTACK_MS: String(ATTACK_MS),
      }, "piped");
      const reports = _collect(attacker.stdout);
      const report = () =>
        reports.lines.filter((l) => l.startsWith("{")).map((l) =>
          JSON.parse(l) as { phase: string; open: number; opened?: number; probed?: number; closeMs?: number }
        );
      // Probe while the attack runs: a fresh connection each time, and fetch's kept-alive one.
      const fresh: number[] = [], pooled: number[] = [], statuses = new Set<number>();
      let retried = 0, pooledRetried = 0;
      let maxFds = 0;
      const t0 = Date.now();
      while (Date.now() - t0 < ATTACK_MS - 1000) {
        const a = await _get(api, true), b = await _get(api, false);
        fresh.push(a.ms), pooled.push(b.ms);
        if (a.retried) retried++;
        if (b.retried) pooledRetried++;
        statuses.add(a.status).add(b.status);
        maxFds = Math.max(maxFds, _fds(dash.pid) ?? 0);
        await new Promise((r) => setTimeout(r, 100));
      }
      const peak = report().filter((r) => r.phase === "attack").reduce((m, r) => Math.max(m, r.open), 0);
      console.log(`before the attack, fresh connections: ${_quantiles(before.map((r) => r.ms))}`);
      console.log(`during the attack, fresh connections: ${_quantiles(fresh)}, ${retried} sent twice`);
      console.log(
        `during the attack, kept-alive connection: ${_quantiles(pooled)}, ${pooledRetried} sent again ` +
          `(the idle connection evicted)`,
      );
      console.log(`dashboard descriptors: ${baseFds} before, at most ${maxFds} during (limit ${FD_LIMIT})`);
      console.log(
        `attacker: ${JSON.stringify(report().at(-1))}; at most ${peak} of its connections open at once`,
      );
      assertEquals([...statuses], [200]);
      // Most requests are answered on the first try: eviction and dropped handshakes are the exception.
      assert(
        retried + pooledRetried <= (fresh.length + pooled.length) / 4,
        `${retried} + ${pooledRetried} retries`,
      );
      assert(maxFds < FD_LIMIT, `descriptors ${maxFds}`);
      assert((report().at(-1)?.opened ?? 0) >= IDLE + HALF, JSON.stringify(report().at(-1)));

      // The attacker stops opening; the server closes what it still holds. Sockets the attacker still
      // sees open after three head timeouts must be handshakes the server's kernel dropped, never accepted:
      // the server's descriptors are back to their base before the attacker writes a byte on them.
      const probe = await _line(reports.lines, /^\{"phase":"probe".*"probed":(\d+)/, 60_000);
      assert(probe, `no probe line: ${JSON.stringify(report().at(-1))}`);
      const probeFds = _fds(dash.pid)!;
      const go = attacker.stdin.getWriter();
      await go.write(new TextEncoder().encode("go\n"));
      await go.close();
      console.log(`before probing ${probe[1]} attacker sockets: dashboard descriptors ${probeFds}`);
      assert(probeFds <= baseFds + 8, `descriptors before the probe: ${probeFds}, base: ${baseFds}`);
      await reports.done;
      assertEquals((await attacker.status).code, 0);
      const end = report().find((r) => r.phase === "end");
      const afterFds = _fds(dash.pid)!;
      console.log(`after the attack: ${JSON.stringify(end)}; dashboard descriptors ${afterFds}`);
      assertEquals(end?.open, 0, `every attacking connection was closed (descriptors ${afterFds})`);
      assert(afterFds <= baseFds + 8, `descriptors after: ${afterFds}, before: ${baseFds}`);
      assertEquals((await _get(api, true)).status, 200);
      dash.kill("SIGTERM");
      assertEquals((await dash.status).code, 0, err.lines.join("\n"));
      // The guard's lines on server-side faults (accept failing under the flood, an upstream cut off).
      const faults = err.lines.filter((l) => l.startsWith("dashboard: "));
      console.log(`dashboard log: ${faults.length} lines${faults.length ? `:\n${faults.join("\n")}` : ""}`);
      assert(!faults.some((l) => l.includes("before the response")), faults.join("\n"));
    } catch (e) {
      // What the dashboard said (its guard logs server-side faults, e.g. a response cut off upstream).
      if (e instanceof Error) {
        e.message += `\ndashboard stderr (last 40 lines):\n${err.lines.slice(-40).join("\n")}`;
      }
      throw e;
    } finally {
      for (const p of [attacker, dash]) {
        try {
          p?.kill("SIGKILL");
        } catch {
          // exited
        }
      }
      await attacker?.status;
      await dash.status;
      await Promise.all([out.done, err.done]);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

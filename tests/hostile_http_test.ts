/**
 * Hostile HTTP (issue 18): `deno task dashboard` in its own process, as a user serves it, over a runs
 * directory with a small run and one of 60,000 metric keys, sent what a hostile or broken client sends:
 * slowloris heads, idle floods, oversized heads, too many headers, chunked and oversized bodies, bad
 * Content-Length, pipelined requests, a live stream never read, requests on the 60,000-key run, path and id
 * tricks, Host tricks, bytes that are not HTTP/1.1, writes with a wrong token. Each case asserts the status
 * and the error message (or the closed connection), that the server still answers afterwards, and that
 * nothing in the runs directory changed (the store's -wal and -shm files aside).
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { openSqliteStore } from "../core/runs/sqlite_store.ts";
import type { MetricPoint, RunMeta } from "../core/runs/run_types.ts";
import { assertNoStack, assertTreeUnchanged, snapshotTree } from "./helpers/hostile.ts";

const TOKEN = "hostile-http-token-7c1e";
const ALLOWED = ["runs.db-wal", "runs.db-shm"]; // SQLite's log and its index of readers
const enc = new TextEncoder(), dec = new TextDecoder();

function _meta(id: string): RunMeta {
  return {
    id,
    name: id,
    status: "finished",
    seed: 1,
    git_commit: null,
    adapter: "test",
    started_at: "2026-12-01T00:00:00Z",
    ended_at: null,
    sweep_id: null,
    sweep_params: {},
    error: null,
    step: 2,
  };
}

/** A runs directory with run "small" (a few points) and run "big" (60,000 keys, one point each). */
async function _runsDir(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "dsmoe-hostile-http-" });
  const store = openSqliteStore(`${dir}/runs.db`);
  await store.importRun(_meta("small"), "model: { kind: dsmoe }\n");
  await store.importRun(_meta("big"), "model: { kind: dsmoe }\n");
  await store.logMetrics(
    "small",
    [1, 2].map((step) => ({ key: "train/loss", step, tokens: 64, time: 1, value: 3 })),
  );
  const pts: MetricPoint[] = [];
  const p = (key: string) => pts.push({ key, step: 1, tokens: 64, time: 1, value: 0.5 });
  p("train/loss");
  for (let i = 0; i < 30_000; i++) p(`custom/k${i}`);
  for (let i = 0; i < 19_999; i++) p(`router/${Math.floor(i / 100)}/mlp/load/${i % 100}`);
  for (let i = 0; i < 10_000; i++) p(`infer/rule${Math.floor(i / 2)}/${i % 2 ? "ppl" : "active_pct"}`);
  await store.logMetrics("big", pts);
  store.close();
  return dir;
}

/** The lines of a stream, collected in the background as they come. */
function _collect(s: ReadableStream<Uint8Array>): { lines: string[]; done: Promise<void> } {
  const lines: string[] = [];
  const done = (async () => {
    for await (const text of s.pipeThrough(new TextDecoderStream())) lines.push(...text.split("\n"));
  })();
  return { lines, done };
}

/** What one raw exchange got back: the text, its response statuses, the last body as JSON, whether closed. */
interface _Reply {
  text: string;
  statuses: number[];
  json: { error?: string } & Record<string, unknown>;
  closed: boolean;
}

/**
 * Sends `data` on a new connection (write errors ignored: the guard may close before a large request is all
 * sent), then reads until the server closes or `until` holds (liveness bound `ms`).
 */
async function _exchange(
  port: number,
  data: string | Uint8Array,
  o: { until?: (text: string) => boolean; ms?: number } = {},
): Promise<_Reply> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const writing = conn.write(typeof data === "string" ? enc.encode(data) : data).catch(() => 0);
  let text = "", closed = false;
  const buf = new Uint8Array(65536);
  const deadline = Date.now() + (o.ms ?? 20_000);
  try {
    while (!o.until?.(text)) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const late = new Promise<"late">((r) => timer = setTimeout(() => r("late"), deadline - Date.now()));
      const n = await Promise.race([conn.read(buf).catch(() => null), late]);
      clearTimeout(timer);
      if (n === "late") break;
      if (n === null) {
        closed = true;
        break;
      }
      text += dec.decode(buf.subarray(0, n));
    }
  } finally {
    conn.close();
    await writing;
  }
  const statuses = [...text.matchAll(/HTTP\/1\.[01] (\d{3}) /g)].map((m) => Number(m[1]));
  const body = text.slice(text.lastIndexOf("\r\n\r\n") + 4);
  let json = {};
  try {
    json = JSON.parse(body);
  } catch {
    // Not JSON (a page, or nothing).
  }
  return { text, statuses, json, closed };
}

Deno.test("hostile HTTP: every request is answered or closed, the server goes on, the runs directory unchanged", async (t) => {
  const dir = await _runsDir();
  const dash = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "mod.ts", "dashboard", "--runs-dir", dir, "--port", "0", "--token", TOKEN, "--json"],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const out = _collect(dash.stdout), err = _collect(dash.stderr);
  try {
    let port = 0;
    for (let i = 0; i < 600 && port === 0; i++) {
      port = Number(/"port":(\d+)/.exec(out.lines.join("\n"))?.[1] ?? 0);
      if (port === 0) await new Promise((r) => setTimeout(r, 50));
    }
    assert(port > 0, `no port:\n${err.lines.join("\n")}`);
    const host = `127.0.0.1:${port}`;
    const get = (path: string, extra = "") =>
      `GET ${path} HTTP/1.1\r\nHost: ${host}\r\n${extra}Connection: close\r\n\r\n`;
    const post = (path: string, headers: string, body = "") =>
      `POST ${path} HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${TOKEN}\r\n${headers}Connection: close\r\n\r\n${body}`;
    const healthy = async () => {
      const r = await _exchange(port, get("/api/runs"));
      assertEquals(r.statuses, [200], r.text.slice(0, 300));
      assertEquals((r.json.runs as { id: string }[]).map((x) => x.id).sort(), ["big", "small"]);
    };
    await healthy();

    // A slowloris head, one byte a second, for the whole test: the guard answers 408 at its head timeout.
    const slow = await Deno.connect({ hostname: "127.0.0.1", port });
    const slowStart = performance.now();
    let slowText = "";
    const slowDone = (async () => {
      const head = enc.encode(`GET /api/runs HTTP/1.1\r\nHost: ${host}\r\nX-Slow: ${"a".repeat(60)}`);
      const writer = (async () => {
        for (const byte of head) {
          if (await slow.write(Uint8Array.of(byte)).catch(() => null) === null) return;
          await new Promise((r) => setTimeout(r, 1000));
        }
      })();
      const buf = new Uint8Array(4096);
      let answeredAt = 0;
      for (;;) {
        const n = await slow.read(buf).catch(() => null);
        if (n === null) break;
        answeredAt ||= performance.now();
        slowText += dec.decode(buf.subarray(0, n));
      }
      await writer;
      return answeredAt - slowStart;
    })();

    let cases = 0;
    const hostile = (name: string, fn: () => Promise<void>) =>
      t.step(name, async () => {
        const before = await snapshotTree(dir);
        await fn();
        await healthy();
        assertTreeUnchanged(before, await snapshotTree(dir), ALLOWED, "the runs directory");
        cases++;
      });

    await hostile("an idle flood of 400 connections that never send a byte", async () => {
      const conns = await Promise.all(
        Array.from({ length: 400 }, () => Deno.connect({ hostname: "127.0.0.1", port })),
      );
      const t0 = performance.now();
      await healthy();
      console.log(`GET /api/runs beside 400 idle connections: ${(performance.now() - t0).toFixed(1)} ms`);
      for (const c of conns) c.close();
    });

    await hostile("a 64 KiB header: 431, closed", async () => {
      const r = await _exchange(port, get("/api/runs", `X-Big: ${"b".repeat(65536)}\r\n`));
      assertEquals([r.statuses, r.json.error, r.closed], [[431], "Request head exceeds 32768 bytes", true]);
    });

    await hostile("150 header lines: 431, closed", async () => {
      const r = await _exchange(port, get("/api/runs", "X-A: 1\r\n".repeat(150)));
      assertEquals([r.statuses, r.json.error, r.closed], [
        [431],
        "Request has more than 100 header lines",
        true,
      ]);
    });

    await hostile(
      "a chunked body, and Content-Length with Transfer-Encoding (smuggling): 411, nothing written",
      async () => {
        const body = '{"name":"x","config_yaml":""}';
        const chunked = `${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`;
        for (
          const te of [
            "Transfer-Encoding: chunked\r\n",
            `Content-Length: 4\r\nTransfer-Encoding: chunked\r\n`,
          ]
        ) {
          const r = await _exchange(port, post("/api/runs", te, chunked));
          assertEquals(r.statuses, [411]);
          assertEquals(r.json.error, "Length required: send request bodies with Content-Length, not chunked");
        }
      },
    );

    await hostile(
      "a body over 1 MiB, declared or with Expect: 100-continue: 413 before it is read",
      async () => {
        for (const extra of ["", "Expect: 100-continue\r\n"]) {
          const r = await _exchange(
            port,
            post("/api/runs/small/metrics", `${extra}Content-Length: 5000000\r\n`, "{"),
          );
          assertEquals([r.statuses, r.json.error], [
            [413],
            "Request body exceeds the limit of 1048576 bytes",
          ]);
        }
      },
    );

    await hostile("bad Content-Length: not a number, negative, two different values: 400", async () => {
      for (
        const cl of [
          "Content-Length: 12abc\r\n",
          "Content-Length: -5\r\n",
          "Content-Length: 3\r\nContent-Length: 4\r\n",
        ]
      ) {
        const r = await _exchange(port, post("/api/runs", cl, "{}"));
        assertEquals(r.statuses, [400], cl);
        assert(r.json.error?.startsWith("Bad request: invalid Content-Length"), r.text);
      }
    });

    await hostile(
      "pipelined requests: each answered in order, a write without the token refused",
      async () => {
        const noToken =
          `POST /api/runs/small/finish HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 2\r\n\r\n{}`;
        const r = await _exchange(
          port,
          `GET /api/runs/small HTTP/1.1\r\nHost: ${host}\r\n\r\n${noToken}${get("/api/runs")}`,
        );
        assertEquals(r.statuses, [200, 401, 200]);
        assert(r.text.includes("Missing bearer token") && r.closed, r.text.slice(0, 500));
      },
    );

    await hostile("a live stream whose client never reads does not hold the server up", async () => {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      await c.write(enc.encode(`GET /api/runs/big/stream HTTP/1.1\r\nHost: ${host}\r\n\r\n`));
      for (let i = 0; i < 5; i++) await healthy();
      c.close();
    });

    await hostile("the 60,000-key run: bounded answers", async () => {
      const timed = async (path: string) => {
        const t0 = performance.now();
        const r = await _exchange(port, get(path));
        console.log(
          `GET ${path}: ${r.statuses[0]}, ${r.text.length} bytes, ${(performance.now() - t0).toFixed(1)} ms`,
        );
        assertEquals(r.statuses, [200], r.text.slice(0, 300));
        return r.json;
      };
      for (let i = 0; i < 2; i++) {
        const m = await timed("/api/runs/big/metrics");
        assertEquals([Object.keys(m.series as object).length, m.truncated, m.keys_total], [64, true, 60_000]);
      }
      const p = await timed("/api/runs/big/metrics?prefix=custom/");
      assertEquals([Object.keys(p.series as object).length, p.keys_total], [64, 30_000]);
      const run = await timed("/api/runs/big");
      assertEquals([(run.keys as string[]).length, run.keys_total, run.keys_truncated], [1000, 60_000, true]);
      assertEquals((await timed("/api/runs/big/heatmap?kind=mlp")).truncated, true);
      assertEquals(((await timed("/api/runs/big/frontier")).points as unknown[]).length, 256);
    });

    await hostile("path and id tricks: traversal, NUL, overlong ids, bad overlays", async () => {
      const cases: [string, number, string | null][] = [
        ["/static/..%2f..%2fdeno.json", 404, null],
        ["/static/../../deno.json", 404, null],
        ["/api/runs/..%2F..%2Fetc%2Fpasswd", 400, 'Invalid run id "../../etc/passwd"'],
        ["/api/runs/%00", 400, 'Invalid run id "\u0000"'],
        [`/api/runs/${"x".repeat(300)}`, 400, "Invalid run id"],
        ["/api/runs/small/metrics?keys=" + "k,".repeat(300), 400, "Too many keys: at most 200"],
        ["/runs/small?compare=../../x", 400, null],
        ["/api/runs/nope", 404, 'No run "nope"'],
      ];
      for (const [path, status, message] of cases) {
        const r = await _exchange(port, get(path));
        assertEquals(r.statuses, [status], path);
        if (message) assert(r.json.error?.startsWith(message), `${path}: ${r.text.slice(0, 300)}`);
        assert(!r.text.includes('"imports"'), "no file content");
      }
    });

    await hostile(
      "Host tricks: another host, a trailing dot, userinfo, none, two, an absolute target",
      async () => {
        const raw = (head: string) => _exchange(port, `${head}Connection: close\r\n\r\n`);
        const other = await raw(`GET /api/runs HTTP/1.1\r\nHost: evil.example:${port}\r\n`);
        assertEquals([other.statuses, other.json.error], [
          [403],
          `Host "evil.example:${port}" is not allowed`,
        ]);
        assertEquals((await raw(`GET /api/runs HTTP/1.1\r\nHost: localhost.:${port}\r\n`)).statuses, [403]);
        assertEquals((await raw(`GET /api/runs HTTP/1.1\r\nHost: me@${host}\r\n`)).statuses, [403]);
        const none = await raw("GET /api/runs HTTP/1.0\r\n");
        assertEquals([none.statuses, none.json.error], [[400], "Missing Host header"]);
        assertEquals(
          (await raw(`GET /api/runs HTTP/1.1\r\nHost: ${host}\r\nHost: evil.example\r\n`)).statuses,
          [400],
        );
        const absolute = await raw(`GET http://evil.example/api/runs HTTP/1.1\r\nHost: ${host}\r\n`);
        assertEquals(absolute.statuses, [400]);
        assertEquals(absolute.json.error, `Request target names host "evil.example", not the Host header's`);
      },
    );

    await hostile("bytes that are not HTTP/1.1: a TLS hello, an HTTP/2 preface, bare LF lines", async () => {
      const tls = await _exchange(port, Uint8Array.of(0x16, 3, 1, 2, 0, 1, 0, 1, 0xfc, 3, 3, 13, 10, 13, 10));
      assertEquals([tls.statuses, tls.json.error], [[400], "Bad request: malformed request line"]);
      const h2 = await _exchange(port, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
      assertEquals([h2.statuses, h2.json.error], [
        [505],
        "HTTP version not supported: HTTP/2.0 (use HTTP/1.1)",
      ]);
      const lf = await _exchange(port, `GET /api/runs HTTP/1.1\nHost: ${host}\n\n`);
      assertEquals([lf.statuses, lf.json.error], [
        [400],
        "Bad request: a line of the head ends in LF without CR",
      ]);
    });

    await hostile(
      "writes with a wrong token or none, to the 60,000-key run: 403 and 401, nothing written",
      async () => {
        const body = JSON.stringify({ points: [{ key: "train/loss", step: 9, value: 1 }] });
        const wrong = await _exchange(
          port,
          `POST /api/runs/big/metrics HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer not-the-token\r\n` +
            `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
        );
        assertEquals([wrong.statuses, wrong.json.error], [[403], "Wrong bearer token"]);
        const none = await _exchange(
          port,
          `POST /api/runs/big/finish HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`,
        );
        assertEquals(none.statuses, [401]);
      },
    );

    await hostile(
      "a slowloris head: 408 at the head timeout, closed, while every case above was served",
      async () => {
        const ms = await slowDone;
        console.log(
          `slowloris answered 408 after ${(ms / 1000).toFixed(1)} s (head timeout 10 s), then closed`,
        );
        assert(slowText.startsWith("HTTP/1.1 408 Request Timeout\r\n"), slowText.slice(0, 200));
        assert(slowText.endsWith('{"error":"Request head not received within 10 s"}'), slowText);
        slow.close();
      },
    );

    assert(cases >= 12, `${cases} hostile cases`);
    dash.kill("SIGTERM");
    assertEquals((await dash.status).code, 0);
    await Promise.all([out.done, err.done]);
    assertNoStack(err.lines.join("\n"));
  } finally {
    try {
      dash.kill("SIGKILL");
    } catch {
      // exited
    }
    await dash.status;
    await Promise.all([out.done, err.done]);
    await Deno.remove(dir, { recursive: true });
  }
});

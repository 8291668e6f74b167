import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { ConnectionGuard, connectionLimits, type GuardLimits, guardResponse, softFdLimit } from "./guard.ts";

const enc = new TextEncoder(), dec = new TextDecoder();

/** A guard on a free loopback port in front of `handler` (Deno.serve on a Unix socket), and how to stop both. */
async function _guarded(
  handler: (req: Request) => Response | Promise<Response>,
  limits: Partial<GuardLimits> = {},
) {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/s.sock`;
  const server = Deno.serve({ path, transport: "unix", onListen() {} }, handler);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const guard = new ConnectionGuard({
    listener,
    connectUpstream: () => Deno.connect({ transport: "unix", path }),
    limits: { headTimeoutMs: 400, idleTimeoutMs: 800, bodyTimeoutMs: 800, ...limits },
  });
  return {
    guard,
    port: listener.addr.port,
    async stop() {
      guard.close();
      await guard.finished;
      await server.shutdown();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** A client connection with raw writes, and reads until a condition or EOF (bounded by `ms`). */
async function _client(port: number) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  let text = "", eof = false;
  let pending: Promise<Uint8Array | null> | null = null; // a read outlives a timed-out wait: its bytes count
  const next = () =>
    pending ??= (async () => {
      const buf = new Uint8Array(65536);
      const n = await conn.read(buf).catch(() => null);
      return n === null ? null : buf.subarray(0, n);
    })();
  return {
    conn,
    send: (s: string) => conn.write(enc.encode(s)),
    /** Reads until `until` holds (on the text so far) or EOF; gives up after `ms` (liveness bound). */
    async read(
      until: (t: string) => boolean = () => false,
      ms = 5000,
    ): Promise<{ text: string; eof: boolean }> {
      const deadline = Date.now() + ms;
      while (!eof && !until(text) && Date.now() < deadline) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const wait = new Promise<"wait">((r) => timer = setTimeout(() => r("wait"), deadline - Date.now()));
        const got = await Promise.race([next(), wait]);
        clearTimeout(timer);
        if (got === "wait") break;
        pending = null;
        if (got === null) eof = true;
        else text += dec.decode(got);
      }
      return { text, eof };
    },
    close: async () => {
      try {
        conn.close();
      } catch {
        // closed
      }
      await pending;
    },
  };
}

/** Responses (status lines) in `text`. */
function _statuses(text: string): number[] {
  return [...text.matchAll(/HTTP\/1\.1 (\d{3}) [A-Z]/g)].map((m) => Number(m[1]));
}

async function _waitFor(fn: () => boolean, ms = 5000, what = () => ""): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert(fn(), `condition not met in time ${what()}`);
}

Deno.test("connectionLimits() leaves a reserve and splits the rest between clients and upstreams", () => {
  assertEquals(connectionLimits(1024), { maxConnections: 672, maxUpstream: 112 });
  assertEquals(connectionLimits(256), { maxConnections: 96, maxUpstream: 16 });
  assertEquals(connectionLimits(Infinity), { maxConnections: 4096, maxUpstream: 256 });
  for (const soft of [64, 256, 1024, 4096, 65536]) {
    const l = connectionLimits(soft);
    if (soft > 200) {
      assert(l.maxConnections + 2 * l.maxUpstream + 128 <= soft, `${soft}: ${JSON.stringify(l)}`);
    }
  }
  assert(softFdLimit() >= 64);
  const r = dec.decode(guardResponse(408, "slow"));
  assert(r.startsWith("HTTP/1.1 408 Request Timeout\r\n") && r.endsWith('\r\n\r\n{"error":"slow"}'), r);
  assert(r.includes("Content-Security-Policy: default-src 'self'"), r);
});

Deno.test("the guard forwards requests unchanged: keep-alive, pipelining, bodies, HEAD", async () => {
  const g = await _guarded(async (req) =>
    new Response(`${req.method} ${new URL(req.url).pathname} ${await req.text()}`, {
      headers: { "x-host": req.headers.get("host") ?? "" },
    })
  );
  try {
    const res = await fetch(`http://127.0.0.1:${g.port}/a`, { method: "POST", body: "hello" });
    assertEquals([res.status, await res.text()], [200, "POST /a hello"]);
    const c = await _client(g.port);
    await c.send(
      "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc" +
        "HEAD /3 HTTP/1.1\r\nHost: h\r\n\r\nGET /4 HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    const { text } = await c.read((t) => t.includes("GET /4 "));
    assertEquals(_statuses(text), [200, 200, 200, 200]);
    assert(
      text.indexOf("GET /1 ") < text.indexOf("POST /2 abc") &&
        text.indexOf("POST /2 abc") < text.indexOf("GET /4"),
    );
    assert(!text.includes("HEAD /3"), "no body for HEAD");
    await c.close();
    await _waitFor(() => g.guard.stats().open === 0); // fetch's keep-alive connection: at the idle timeout
    assertEquals(g.guard.stats().upstream, 0);
  } finally {
    await g.stop();
  }
});

Deno.test("a head not complete within the head timeout is answered 408 and closed; the server goes on", async () => {
  const g = await _guarded(() => new Response("ok"));
  try {
    const slow = await _client(g.port);
    await slow.send("GET / HTTP/1.1\r\nHost: h\r\n");
    const t0 = performance.now();
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setTimeout(r, 100));
      await slow.send("X-Slow: 1\r\n"); // trickled bytes do not extend the deadline
    }
    const { text, eof } = await slow.read();
    console.log(`slowloris closed after ${(performance.now() - t0).toFixed(0)} ms (head timeout 400 ms)`);
    assertEquals(_statuses(text), [408]);
    assert(text.includes('{"error":"Request head not received within 0.4 s"}') && eof, text);
    // A keep-alive connection's next head gets the same time from its first byte.
    const ka = await _client(g.port);
    await ka.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    await ka.read((t) => t.endsWith("ok"));
    await new Promise((r) => setTimeout(r, 300)); // idle between requests: no head deadline yet
    await ka.send("GET / HTTP/1.1\r\n");
    const again = await ka.read((t) => _statuses(t).length === 2);
    assertEquals(_statuses(again.text), [200, 408]);
    const res = await fetch(`http://127.0.0.1:${g.port}/`);
    assertEquals(await res.text(), "ok");
    assert(g.guard.stats().timedOut >= 2);
    await slow.close(), await ka.close();
  } finally {
    await g.stop();
  }
});

Deno.test("a connection without traffic for the idle timeout is closed, and so is a stream its client does not read", async () => {
  let cancelled = false;
  const g = await _guarded(() => {
    const chunk = new Uint8Array(64 * 1024);
    return new Response(
      new ReadableStream({
        pull: (c) => c.enqueue(chunk), // as fast as the client reads: it never does
        cancel: () => void (cancelled = true),
      }),
    );
  });
  try {
    const idle = await _client(g.port);
    const stream = await _client(g.port);
    await stream.send("GET /stream HTTP/1.1\r\nHost: h\r\n\r\n"); // and never read
    await idle.send("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n");
    await _waitFor(() => g.guard.stats().upstream === 2);
    const t0 = performance.now();
    await _waitFor(() => g.guard.stats().open === 0, 5000);
    console.log(
      `idle and unread connections closed after ${(performance.now() - t0).toFixed(0)} ms (idle 800 ms)`,
    );
    await _waitFor(() => cancelled, 5000);
    assertEquals(g.guard.stats().upstream, 0);
    await idle.close(), await stream.close();
  } finally {
    await g.stop();
  }
});

Deno.test("the guard answers malformed, oversized and chunked requests itself; none reaches the server", async () => {
  let reached = 0;
  const g = await _guarded(() => (reached++, new Response("ok")), { maxBodyBytes: 1000 });
  try {
    const cases: [string, number, string][] = [
      ["GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + "a".repeat(40_000) + "\r\n\r\n", 431, "exceeds 32768 bytes"],
      ["GET / HTTP/1.1\r\n" + "X-A: b\r\n".repeat(101) + "\r\n", 431, "more than 100 header lines"],
      [
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        411,
        "chunked",
      ],
      ["POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n", 413, "limit of 1000 bytes"],
      ["POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "Content-Length"],
      ["GET / HTTP/1.1\nHost: h\n\n\r\n\r\n", 400, "LF without CR"],
      ["PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "HTTP/2.0"],
    ];
    for (const [req, status, message] of cases) {
      const c = await _client(g.port);
      await c.send(req).catch(() => 0); // a large head may be refused before it is all sent
      const { text, eof } = await c.read();
      assertEquals(_statuses(text), [status], text.slice(0, 200));
      assert(text.includes(message) && eof, text.slice(0, 300));
      await c.close();
    }
    assertEquals(reached, 0);
    const res = await fetch(`http://127.0.0.1:${g.port}/`);
    assertEquals([res.status, await res.text(), reached], [200, "ok", 1]);
  } finally {
    await g.stop();
  }
});

Deno.test("at the connection cap the oldest incomplete head goes first, then idle ones; never a request in flight", async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  const g = await _guarded(async (req) => {
    if (new URL(req.url).pathname === "/slow") await gate;
    return new Response("ok");
  }, { maxConnections: 3, headTimeoutMs: 60_000, idleTimeoutMs: 60_000 });
  try {
    const busy = await _client(g.port);
    await busy.send("GET /slow HTTP/1.1\r\nHost: h\r\n\r\n");
    const idle = await _client(g.port);
    await idle.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    await idle.read((t) => t.endsWith("ok"));
    const half = await _client(g.port);
    await half.send("GET / HTTP/1.1\r\n");
    await _waitFor(() => g.guard.stats().open === 3, 5000, () => JSON.stringify(g.guard.stats()));
    // A fourth: the half-sent head is closed, not the idle keep-alive one nor the one in flight.
    const fourth = await _client(g.port);
    assertEquals((await half.read()).eof, true);
    await fourth.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assertEquals(_statuses((await fourth.read((t) => t.endsWith("ok"))).text), [200]);
    // A fifth: now the oldest idle keep-alive one goes (idle, then fourth, both idle: idle is older).
    const fifth = await _client(g.port);
    assertEquals((await idle.read()).eof, true);
    await fifth.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    await fifth.read((t) => t.endsWith("ok"));
    assertEquals(g.guard.stats().evicted, 2);
    release();
    const slow = await busy.read((t) => t.endsWith("ok"));
    assertEquals(_statuses(slow.text), [200], "the request in flight was never evicted");
    for (const c of [busy, idle, half, fourth, fifth]) await c.close();
  } finally {
    release();
    await g.stop();
  }
});

Deno.test("at the upstream cap a request waits for a slot; an idle keep-alive connection gives its slot up", async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  const g = await _guarded(async (req) => {
    if (new URL(req.url).pathname === "/slow") await gate;
    return new Response("ok");
  }, { maxUpstream: 1, headTimeoutMs: 60_000, idleTimeoutMs: 60_000 });
  try {
    const idle = await _client(g.port);
    await idle.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    await idle.read((t) => t.endsWith("ok"));
    const slow = await _client(g.port);
    await slow.send("GET /slow HTTP/1.1\r\nHost: h\r\n\r\n");
    assertEquals((await idle.read()).eof, true, "the idle connection gave its upstream up");
    const waiting = await _client(g.port);
    await waiting.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assertEquals(_statuses((await waiting.read(undefined, 300)).text), [], "no slot yet");
    release();
    assertEquals(_statuses((await slow.read((t) => t.endsWith("ok"))).text), [200]);
    await slow.close();
    assertEquals(_statuses((await waiting.read((t) => t.endsWith("ok"))).text), [200]);
    await waiting.close(), await idle.close();
  } finally {
    release();
    await g.stop();
  }
});

Deno.test("an upstream that cannot be reached fails only its own connection, with 503", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const logged: string[] = [];
  const guard = new ConnectionGuard({
    listener,
    connectUpstream: () => Promise.reject(new Error("down")),
    log: (line) => logged.push(line),
  });
  try {
    const res = await fetch(`http://127.0.0.1:${listener.addr.port}/api/runs`);
    assertEquals([res.status, (await res.json()).error], [
      503,
      "The dashboard server is not answering; retry",
    ]);
    assertEquals(res.headers.get("x-content-type-options"), "nosniff");
    const again = await fetch(`http://127.0.0.1:${listener.addr.port}/`);
    assertEquals(again.status, 503, "the guard still accepts");
    await again.body?.cancel();
    // Logged once: the second refusal within the interval is counted for the next line, not printed.
    assertEquals(logged, [
      "dashboard: the server behind the guard refused a connection (down); answered 503",
    ]);
  } finally {
    guard.close();
    await guard.finished;
  }
});

Deno.test("an upstream that closes mid-response closes its client's connection and is logged; a complete one is not", async () => {
  const dir = await Deno.makeTempDir(), path = `${dir}/s.sock`;
  const upstream = Deno.listen({ transport: "unix", path });
  // A server that answers /cut with 3 of the 100 body bytes it announces, then closes; /whole in full.
  const serving = (async () => {
    for await (const conn of upstream) {
      (async () => {
        const buf = new Uint8Array(4096);
        let head = "";
        while (!head.includes("\r\n\r\n")) {
          const n = await conn.read(buf).catch(() => null);
          if (n === null) break;
          head += dec.decode(buf.subarray(0, n));
        }
        const answer = head.startsWith("GET /cut")
          ? "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"
          : "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
        await conn.write(enc.encode(answer)).catch(() => 0);
        conn.close();
      })();
    }
  })();
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const logged: string[] = [];
  const guard = new ConnectionGuard({
    listener,
    connectUpstream: () => Deno.connect({ transport: "unix", path }),
    log: (line) => logged.push(line),
  });
  try {
    const c = await _client(listener.addr.port);
    await c.send("GET /whole HTTP/1.1\r\nHost: x\r\n\r\n");
    const whole = await c.read((t) => t.endsWith("abc"));
    assertEquals(_statuses(whole.text), [200]);
    assertEquals((await c.read()).eof, true, "closed after the complete response, as the server asked");
    await c.close();
    assertEquals(logged, []);
    const d = await _client(listener.addr.port);
    await d.send("GET /cut HTTP/1.1\r\nHost: x\r\n\r\n");
    const cut = await d.read();
    assert(cut.eof && cut.text.endsWith("abc"), JSON.stringify(cut));
    await d.close();
    assertEquals(logged, [
      "dashboard: the server behind the guard closed connection 2 before the response to request 1 was " +
      "complete; the client's connection was closed",
    ]);
  } finally {
    guard.close();
    await guard.finished;
    upstream.close();
    await serving.catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});

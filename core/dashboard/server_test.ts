import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { dashboardCommand } from "../cli/dashboard_cmd.ts";
import type { CliIo } from "../cli/io.ts";
import { openSqliteStore } from "../runs/sqlite_store.ts";
import { StoreMissingError } from "../runs/store_errors.ts";
import { cli } from "../../tests/helpers/cli.ts";
import { serveDashboard } from "./server.ts";

/** GET over a plain socket with a chosen Host header; the raw response text. */
async function _rawGet(port: number, path: string, host: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const req = `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`;
  await conn.write(new TextEncoder().encode(req));
  return new TextDecoder().decode(await new Response(conn.readable).arrayBuffer()); // closes conn at EOF
}

Deno.test("serveDashboard() binds 127.0.0.1 on a free port and answers only to its own Host names", async () => {
  const store = openSqliteStore(":memory:");
  const stop = new AbortController();
  const server = serveDashboard({ store, port: 0, signal: stop.signal });
  try {
    assertEquals(server.hostname, "127.0.0.1");
    assert(server.port > 0);
    assertEquals(server.url, `http://127.0.0.1:${server.port}/`);
    const ok = await fetch(`${server.url}api/runs`);
    assertEquals([ok.status, await ok.json()], [200, { runs: [] }]);
    // A DNS-rebinding page reaches 127.0.0.1 under its own name (fetch() will not send a foreign Host).
    const own = await _rawGet(server.port, "/api/runs", `localhost:${server.port}`);
    assert(own.startsWith("HTTP/1.1 200"), own);
    const rebound = await _rawGet(server.port, "/api/runs", `attacker.example:${server.port}`);
    assert(rebound.startsWith("HTTP/1.1 403"), rebound);
    assert(rebound.includes('Host \\"attacker.example:'), rebound);
    const write = await fetch(`${server.url}api/runs`, { method: "POST", body: "{}" });
    assertEquals(write.status, 403, "no token configured: writes are off");
    await write.body?.cancel();
  } finally {
    stop.abort();
    await server.finished;
    store.close();
  }
});

Deno.test("dashboard serves the runs directory's store until stopped, printing its URL", async () => {
  const dir = await Deno.makeTempDir();
  openSqliteStore(`${dir}/runs.db`).close();
  const out: string[] = [], err: string[] = [];
  const io: CliIo = { out: (l) => out.push(l), err: (l) => err.push(l), write: () => {} };
  const stop = new AbortController();
  const done = dashboardCommand(["--runs-dir", dir, "--port", "0", "--json"], io, { signal: stop.signal });
  try {
    for (let i = 0; i < 100 && out.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
    const { url } = JSON.parse(out.at(-1)!);
    assert(out[0]!.startsWith(`Dashboard at ${url}`), out[0]);
    assert(err.some((l) => l.startsWith("Write token")), "a random token is printed to stderr");
    const res = await fetch(`${url}api/runs`);
    assertEquals(await res.json(), { runs: [] });
  } finally {
    stop.abort();
  }
  assertEquals(await done, 0);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("dashboard creates nothing: without a store it exits 2 naming where it looked", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const missing = await cli("dashboard", "--runs-dir", `${dir}/runs`, "--port", "0");
    assertEquals(missing.code, 2);
    const said = missing.err.join("\n");
    assert(said.includes(`no run store ${dir}/runs/runs.db`) && !said.includes("Write token"), said);
    const empty = await cli("dashboard", "--runs-dir", dir, "--port", "0");
    assertEquals(empty.code, 2);
    assertEquals([...Deno.readDirSync(dir)], [], "no directory, no store");
    await dashboardCommand(["--runs-dir", dir], { out: () => {}, err: () => {}, write: () => {} }).then(
      () => assert(false, "expected StoreMissingError"),
      (e) => assert(e instanceof StoreMissingError, String(e)),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a read-only store is browsed; remote logging answers 503 naming the store", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/runs.db`;
  const writer = openSqliteStore(path);
  await writer.importRun({
    id: "archived",
    name: "archived",
    status: "finished",
    seed: 1,
    git_commit: null,
    adapter: "test",
    started_at: "2026-12-01T00:00:00Z",
    ended_at: null,
    sweep_id: null,
    sweep_params: {},
    error: null,
    step: 1,
  }, "");
  await writer.logMetrics("archived", [{ key: "train/loss", step: 1, tokens: 1, time: 1, value: 2 }]);
  writer.close();
  const store = openSqliteStore(path, { mode: "read" });
  const stop = new AbortController();
  const server = serveDashboard({ store, port: 0, token: "read-only-token", signal: stop.signal });
  try {
    const runs = await (await fetch(`${server.url}api/runs`)).json();
    assertEquals(runs.runs.map((r: { id: string }) => r.id), ["archived"]);
    const series = await (await fetch(`${server.url}api/runs/archived/metrics?keys=train/loss`)).json();
    assertEquals(series.series["train/loss"].value, [2]);
    const headers = { Authorization: "Bearer read-only-token", "Content-Type": "application/json" };
    for (
      const [path, body] of [["api/runs", { name: "x", config_yaml: "" }], ["api/runs/archived/finish", {
        status: "failed",
      }]]
    ) {
      const res = await fetch(`${server.url}${path}`, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
      });
      const { error } = await res.json();
      assertEquals(res.status, 503);
      assert(error.includes(path === "api/runs" ? dir : "runs.db") && error.includes("read-only"), error);
    }
    const noToken = await fetch(`${server.url}api/runs`, { method: "POST", body: "{}" });
    assertEquals(noToken.status, 401, "the token is checked first");
    await noToken.body?.cancel();
  } finally {
    stop.abort();
    await server.finished;
    store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("dashboard --help prints usage and a bad --port is a usage error", async () => {
  const out: string[] = [];
  const io: CliIo = { out: (l) => out.push(l), err: () => {}, write: () => {} };
  assertEquals(await dashboardCommand(["--help"], io), 0);
  assert(out.join("\n").includes("--token"));
  await dashboardCommand(["--port", "http"], io).then(
    () => assert(false, "expected a UsageError"),
    (e) => assertEquals((e as Error).message, '--port expects an integer from 0 to 65535, got "http"'),
  );
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { closeRunStores } from "../runs/open_store.ts";
import { UsageError } from "./errors.ts";
import { liveDashboard } from "./live_dashboard.ts";
import type { CliIo } from "./io.ts";

function _io(): CliIo & { lines: string[] } {
  const lines: string[] = [];
  return { lines, out: (l) => lines.push(l), err: (l) => lines.push(l), write: () => {} };
}

Deno.test("liveDashboard() serves the store from a child process, on a free port if the one asked for is taken", async () => {
  const dir = await Deno.makeTempDir();
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const io = _io();
  try {
    const live = await liveDashboard(dir, { "dashboard-port": String(taken.addr.port) }, io);
    assert(live, io.lines.join("\n"));
    try {
      assert(live.pid !== Deno.pid);
      const port = Number(new URL(live.url).port);
      assert(port !== taken.addr.port);
      assertEquals(io.lines, [
        `Port ${taken.addr.port} is in use: the dashboard of this run is on port ${port}`,
        `dashboard: ${live.url} (live while this command runs; later: deno task dashboard)`,
      ]);
      const res = await fetch(`${live.url}api/runs`);
      assertEquals([res.status, await res.json()], [200, { runs: [] }]);
    } finally {
      await live.stop();
    }
    await fetch(`${live.url}api/runs`).then(
      () => assert(false, "still answering after stop()"),
      () => {},
    );
    assertEquals(io.lines.length, 2, "no warning for a stop asked for");
  } finally {
    taken.close();
    await closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("liveDashboard(): --no-dashboard starts nothing; a bad --dashboard-port is a usage error", async () => {
  const io = _io();
  assertEquals(await liveDashboard("/nonexistent/runs", { "no-dashboard": true }, io), null);
  for (const port of ["http", "-1", "65536", "1.5"]) {
    await liveDashboard("/nonexistent/runs", { "dashboard-port": port }, io).then(
      () => assert(false, `expected a UsageError for ${port}`),
      (e) => {
        assert(e instanceof UsageError);
        assertEquals(e.message, `--dashboard-port must be a port number (0 to 65535), got "${port}"`);
      },
    );
  }
  assertEquals(io.lines, []);
});

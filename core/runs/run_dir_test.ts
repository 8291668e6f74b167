import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { newRunId, RunDir, type RunMeta } from "./run_dir.ts";

function meta(id: string): RunMeta {
  return {
    id,
    name: "t",
    status: "running",
    seed: 1,
    git_commit: null,
    adapter: null,
    started_at: new Date().toISOString(),
    ended_at: null,
    sweep_id: null,
    sweep_params: {},
    error: null,
    step: 0,
  };
}

Deno.test("RunDir keeps config, status and metrics; a torn last metrics line is skipped", async () => {
  const root = await Deno.makeTempDir();
  try {
    const id = newRunId("tiny run");
    assert(/^\d{8}-\d{6}-tiny_run-[0-9a-f]{4}$/.test(id), id);
    const run = await RunDir.create(root, meta(id), "name: t\n");
    run.log({ key: "train/loss", step: 1, tokens: 10, time: 0.1, value: 5 });
    run.log({ key: "train/loss", step: 2, tokens: 20, time: 0.2, value: NaN });
    await run.flush();
    await Deno.writeTextFile(`${run.path}/metrics.jsonl`, '{"key":"train/lo', { append: true });
    await run.update({ status: "failed", error: "boom" });
    const again = await RunDir.open(root, id);
    assertEquals(again.meta.status, "failed");
    assertEquals(again.meta.error, "boom");
    assertEquals((await again.readMetrics()).map((m) => m.value), [5]);
    assertEquals(await Deno.readTextFile(`${run.path}/config.yaml`), "name: t\n");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

import { runMeta } from "../../tests/helpers/run_meta.ts";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { f32Tensor } from "./safetensors.ts";
import { closeRunStores } from "./open_store.ts";
import { newRunId, RunDir } from "./run_dir.ts";

Deno.test("RunDir keeps config, status, metrics, events and checkpoints in the run store", async () => {
  const root = await Deno.makeTempDir();
  try {
    const id = newRunId("tiny run");
    assert(/^\d{8}-\d{6}-tiny_run-[0-9a-f]{4}$/.test(id), id);
    const run = await RunDir.create(root, runMeta(id), "name: t\n");
    run.log({ key: "train/loss", step: 1, tokens: 10, time: 0.1, value: 5 });
    run.log({ key: "train/loss", step: 2, tokens: 20, time: 0.2, value: NaN });
    await run.flush();
    await run.update({ status: "failed", error: "boom" });
    const w = f32Tensor([2], new Float32Array([1, 2]));
    for (const step of [1, 2, 3]) await run.checkpoint(step, new Map([["w", w]]), {}, 2);
    const again = await RunDir.open(root, id);
    assertEquals(again.meta.status, "failed");
    assertEquals(again.meta.error, "boom");
    assertEquals((await again.readMetrics()).map((m) => m.value), [5]);
    assertEquals(await Deno.readTextFile(`${run.path}/config.yaml`), "name: t\n");
    assertEquals((await run.store.checkpoints(id)).map((c) => c.path), [
      `${id}/ckpt/step-2.safetensors`,
      `${id}/ckpt/step-3.safetensors`,
    ]);
    assertEquals((await run.store.events(id)).map((e) => e.step), [1, 2, 3]);
    assertEquals((await RunDir.open(root, `${root}/${id}`)).meta.id, id, "opened by its directory");
  } finally {
    closeRunStores();
    await Deno.remove(root, { recursive: true });
  }
});

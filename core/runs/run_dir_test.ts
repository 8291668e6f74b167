import { runMeta } from "../../tests/helpers/run_meta.ts";
import { deepStrictEqual as assertEquals, ok as assert, rejects } from "node:assert/strict";
import { f32Tensor } from "./safetensors.ts";
import { closeRunStores } from "./open_store.ts";
import { METRICS_JOURNAL, newRunId, RunDir } from "./run_dir.ts";
import { RunBusyError, StoreMissingError, StoreReadOnlyError } from "./store_errors.ts";

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

Deno.test("RunDir: a new run is held from its creation; another RunDir of it may read but not train it until the lease ends", async () => {
  const root = await Deno.makeTempDir();
  try {
    const id = newRunId("held");
    const run = await RunDir.create(root, runMeta(id), "name: held\n");
    assert(run.holdsLease);
    const other = await RunDir.open(root, id);
    assertEquals(other.holdsLease, false, "opening takes nothing");
    await rejects(other.update({ step: 9 }), (e: Error) => {
      assert(e instanceof RunBusyError, e.name);
      assert(e.message.startsWith(`Run ${id} is held by pid ${Deno.pid} on host `), e.message);
      return true;
    });
    await rejects(other.takeLease(), RunBusyError);
    other.log({ key: "infer/x", step: 1, tokens: 1, time: 1, value: 2 }); // a reader's points go in regardless
    await other.flush();
    await run.update({ status: "interrupted" }); // ends the lease
    assertEquals(run.holdsLease, false);
    assertEquals(await other.takeLease(), null, "free: nobody taken over");
    await other.update({ status: "running", step: 3 });
    await rejects(
      run.update({ step: 4 }),
      RunBusyError,
      "the first may not take it back while the second holds it",
    );
    assertEquals((await RunDir.open(root, id)).meta.step, 3);
  } finally {
    closeRunStores();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("RunDir: flushed points are appended to metrics.jsonl after the store took them, never when it refused them", async () => {
  const root = await Deno.makeTempDir();
  try {
    const id = newRunId("journal");
    const run = await RunDir.create(root, runMeta(id), "name: j\n");
    const points = [
      { key: "train/loss", step: 1, tokens: 8, time: 0.25, value: 5.5 },
      { key: "val/loss", step: 1, tokens: 8, time: 0.5, value: 0.1 + 0.2 },
    ];
    for (const p of points) run.log(p);
    await run.flush();
    await run.flush(); // nothing queued: nothing appended
    const lines = (await Deno.readTextFile(`${run.path}/${METRICS_JOURNAL}`)).trim().split("\n");
    assertEquals(lines.map((l) => JSON.parse(l)), points);
    run.log({ key: "train/loss", step: 2, tokens: 16, time: 1, value: NaN }); // not a point
    await run.flush();
    assertEquals((await Deno.readTextFile(`${run.path}/${METRICS_JOURNAL}`)).trim().split("\n").length, 2);
    // A store that takes no writes: the batch stays queued, the journal unchanged.
    const ro = await RunDir.open(root, id);
    Object.defineProperty(ro.store, "logMetrics", {
      value: () => Promise.reject(new StoreReadOnlyError("read-only")),
      configurable: true,
    });
    ro.log({ key: "infer/y", step: 3, tokens: 1, time: 2, value: 1 });
    await rejects(ro.flush(), StoreReadOnlyError);
    assertEquals((await Deno.readTextFile(`${run.path}/${METRICS_JOURNAL}`)).trim().split("\n").length, 2);
    // A journal replaced by a link out of the run (the store takes writes again): refused, and the link's
    // target is never written.
    Reflect.deleteProperty(ro.store, "logMetrics");
    await Deno.writeTextFile(`${root}/victim.txt`, "untouched\n");
    await Deno.remove(`${run.path}/${METRICS_JOURNAL}`);
    await Deno.symlink(`${root}/victim.txt`, `${run.path}/${METRICS_JOURNAL}`);
    run.log({ key: "train/loss", step: 4, tokens: 32, time: 3, value: 4 });
    await rejects(run.flush(), /metrics\.jsonl: it is not a regular file/);
    assertEquals(await Deno.readTextFile(`${root}/victim.txt`), "untouched\n");
  } finally {
    closeRunStores();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("RunDir.createPoint makes one run per sweep point: a held point is busy, a finished one is returned", async () => {
  const root = await Deno.makeTempDir();
  try {
    const meta = (id: string) => runMeta(id, { name: "p", sweep_id: "sw" });
    const first = await RunDir.createPoint(root, meta("a"), "name: p\n");
    assert(first instanceof RunDir);
    const second = await RunDir.createPoint(root, meta("b"), "name: p\n");
    assert(
      !(second instanceof RunDir) && second.kind === "busy" && second.run.id === "a",
      JSON.stringify(second),
    );
    assert(second.holder.startsWith(`pid ${Deno.pid} on host `), second.holder);
    assertEquals(await Deno.stat(`${root}/b`).then(() => true, () => false), false, "no directory for it");
    await first.update({ status: "finished" });
    const third = await RunDir.createPoint(root, meta("c"), "name: p\n");
    assert(!(third instanceof RunDir) && third.kind === "finished" && third.run.id === "a");
  } finally {
    closeRunStores();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("RunDir.open creates no store and no runs directory", async () => {
  const root = await Deno.makeTempDir();
  try {
    await rejects(RunDir.open(`${root}/runs`, "x"), (e: Error) => {
      assert(
        e instanceof StoreMissingError && e.message.includes(`No runs directory ${root}/runs`),
        e.message,
      );
      return true;
    });
    await Deno.mkdir(`${root}/runs`);
    await rejects(RunDir.open(`${root}/runs`, "x"), StoreMissingError);
    assertEquals([...Deno.readDirSync(root)].map((e) => e.name), ["runs"]);
    assertEquals([...Deno.readDirSync(`${root}/runs`)], []);
  } finally {
    closeRunStores();
    await Deno.remove(root, { recursive: true });
  }
});

import { deepStrictEqual as assertEquals, ok as assert, rejects } from "node:assert/strict";
import { cli, type CliResult } from "./helpers/cli.ts";
import { latestCheckpoint, listCheckpoints } from "../core/runs/checkpoints.ts";
import { readSafeTensors, tensorToF32 } from "../core/runs/safetensors.ts";
import { RunDir } from "../core/runs/run_dir.ts";
import { closeRunStores, openRunStore } from "../core/runs/open_store.ts";
import { loadExperiment } from "../core/config/mod.ts";
import { loadDataset } from "../core/data/dataset.ts";
import { GpuTrainBackend, parseFaultSteps } from "../core/train/gpu_backend.ts";
import { testGpu } from "./helpers/gpu.ts";
import { runMeta } from "./helpers/run_meta.ts";
import { TEMP_MARK } from "../core/util/atomic_write.ts";
import { FailureNotRecordedError, recordRunFailure } from "../core/train/train_run.ts";
import { plan } from "../core/plan/plan.ts";
import { trainStepFlops } from "../core/plan/flops.ts";

/** `cli(...argv)` with the fault-injection variable `name` set to `value` for that call only. */
async function cliWithFault(name: string, value: string, ...argv: string[]): Promise<CliResult> {
  Deno.env.set(name, value);
  try {
    return await cli(...argv);
  } finally {
    Deno.env.delete(name);
  }
}

/**
 * Asserts a run that failed as a user should see it: exit 1, each of `expected` in the output, no stack
 * trace. Returns the run's id.
 */
function assertRunFailed(r: CliResult, ...expected: (RegExp | string)[]): string {
  assertEquals(r.code, 1, r.err.join("\n"));
  const text = [...r.err, ...r.out].join("\n");
  for (const e of expected) assert(typeof e === "string" ? text.includes(e) : e.test(text), text);
  assert(!/\n\s+at /.test(text), `no stack trace: ${text}`);
  return r.json().run_id ?? r.json().points?.[0]?.run_id;
}

Deno.test("deno task run trains the micro DS-MoE on WebGPU: loss falls from ln 256 = 5.55 to below 3.7", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const r = await cli("run", "tests/fixtures/micro.yaml", "--runs-dir", dir, "--json");
    assertEquals(r.code, 0, r.err.join("\n"));
    const j = r.json();
    assertEquals(j.status, "finished");
    // Margin: at least 1.85 nats below the uniform-prediction loss the model starts at.
    assert(j.final["val/loss"] < 3.7, `val loss ${j.final["val/loss"]}`);
    assert(j.final["train/loss"] < 3.7, `train loss ${j.final["train/loss"]}`);
    const run = await RunDir.open(dir, j.run_id);
    const m = await run.readMetrics();
    const losses = m.filter((p) => p.key === "train/loss").map((p) => p.value);
    assert(losses.length >= 5 && losses.at(-1)! < losses[0]!, `train/loss ${losses}`);
    for (
      const key of ["val/ppl", "train/lr", "train/grad_norm", "train/tokens_per_s", "router/0/mlp/entropy"]
    ) {
      assert(m.some((p) => p.key === key), `metric ${key} recorded`);
    }
    assertEquals(run.meta.status, "finished");
    assert(run.meta.adapter?.startsWith("webgpu:"));
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a sweep trains each point as its own run, records a failed point, and skips finished points on rerun", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const yaml = `extends: ${Deno.cwd()}/tests/fixtures/micro.yaml
name: sw
train: { steps: 4, eval_every: 4, checkpoint_every: 4, schedule: { warmup: 1 } }
sweep:
  grid:
    model.position: [learned, rope]
`;
    // A point that fails while it runs (a missing data source is refused before any point starts): rope
    // positions cannot be planned (core/plan/model.ts).
    await Deno.writeTextFile(`${dir}/sweep.yaml`, yaml);
    const first = await cli("run", `${dir}/sweep.yaml`, "--runs-dir", `${dir}/runs`, "--json");
    assertEquals(first.code, 1); // one point failed
    const [ok, bad] = first.json().points;
    assertEquals([ok.status, bad.status], ["finished", "failed"]);
    assert(bad.error.includes("Cannot plan model.position rope"), bad.error);
    const meta = (await RunDir.open(`${dir}/runs`, bad.run_id)).meta;
    assertEquals(meta.status, "failed");
    assertEquals(meta.sweep_params, { "model.position": "rope" });
    assert(first.out.some((l) => l.includes("point") && l.includes("val loss")), "summary table printed");
    const again = await cli("run", `${dir}/sweep.yaml`, "--runs-dir", `${dir}/runs`, "--json");
    assertEquals(again.json().points.map((p: { status: string }) => p.status), ["skipped", "failed"]);
    assertEquals(again.json().points[0].run_id, ok.run_id);
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("run --profile times every kernel of each step on the GPU and reports shares that add up", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const r = await cli(
      "run",
      "tests/fixtures/micro.yaml",
      "--profile",
      "--peak-tflops",
      "0.5",
      "--stop-after",
      "3",
      "--no-dashboard",
      "--runs-dir",
      dir,
      "--json",
    );
    assertEquals(r.code, 0, r.err.join("\n"));
    const p = r.json().profile;
    // MFU: the plan's model FLOPs per step over the GPU time and over the wall time, against the given peak.
    const { config } = (await loadExperiment("tests/fixtures/micro.yaml")).points[0]!;
    const flops = trainStepFlops(plan(config, "train-dense"));
    assertEquals(p.model_flops_per_step, flops);
    assert(flops.matmul > 0 && flops.attention > 0, JSON.stringify(flops));
    const gpuRate = flops.total / (p.gpu_ms_per_step / 1000),
      wallRate = flops.total / (p.wall_ms_per_step / 1000);
    assert(p.wall_ms_per_step > 0, `wall ${p.wall_ms_per_step}`);
    assertEquals([p.mfu.peak_tflops, p.mfu.peak_source], [0.5, "--peak-tflops"]);
    assert(Math.abs(p.mfu.mfu_gpu_pct - (100 * gpuRate) / 0.5e12) < 1e-9 * p.mfu.mfu_gpu_pct, p.mfu);
    assert(Math.abs(p.mfu.mfu_wall_pct - (100 * wallRate) / 0.5e12) < 1e-9 * p.mfu.mfu_wall_pct, p.mfu);
    assert(
      r.out.some((l) => /^MFU [\d.]+% of GPU time, [\d.]+% of wall time, over the fp32 peak 0.5/.test(l)),
      r.out.join("\n"),
    );
    assertEquals(p.steps, 2, "the first step (shader compilation) is left out of the profile");
    assertEquals(p.host_syncs_per_step, 0);
    const labels = p.kernels.map((k: { label: string }) => k.label);
    for (const l of ["matmul_nn", "attention", "adamw", "cross_entropy_rows"]) {
      assert(labels.includes(l), `${l} in ${labels}`);
    }
    const ms = p.kernels.reduce((s: number, k: { ms: number }) => s + k.ms, 0);
    const share = p.kernels.reduce((s: number, k: { share: number }) => s + k.share, 0);
    assert(p.gpu_ms_per_step > 0 && Math.abs(ms - p.gpu_ms_per_step) < 1e-6 * p.gpu_ms_per_step, `${ms}`);
    assert(Math.abs(share - 100) < 1e-6, `shares add to ${share}`);
    assert(Number.isInteger(p.dispatches_per_step) && p.dispatches_per_step > 50, `${p.dispatches_per_step}`);
    assert(r.out.some((l) => l.startsWith("GPU time per step")), r.out.join("\n"));
    const m = await (await RunDir.open(dir, r.json().run_id)).readMetrics();
    assertEquals(m.filter((x) => x.key === "system/gpu_ms_per_step").map((x) => x.step), [1, 2, 3]);
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a NaN injected into a gradient skips that step on the GPU: parameters and Adam moments stay bit-identical", async () => {
  const ctx = await testGpu();
  const { config } = (await loadExperiment("tests/fixtures/micro.yaml")).points[0]!;
  const b = await GpuTrainBackend.create(config, ctx, { nanGradAt: parseFaultSteps("3") });
  try {
    const ds = await loadDataset(config);
    const lr = 1e-2, batch = (t: number) => ds.trainBatch(t, config.train.batch);
    for (const t of [0, 1]) assert((await b.step(batch(t), lr)).finite, `step ${t + 1} is finite`);
    const before = await b.exportState();
    const s3 = await b.step(batch(2), lr);
    assert(!s3.finite, "step 3 saw the NaN");
    const after = await b.exportState();
    for (const [name, p] of before.params) {
      assertEquals(after.params.get(name)!.data, p.data, `parameter ${name}`);
      assertEquals(after.adamM.get(name), before.adamM.get(name), `first moment ${name}`);
      assertEquals(after.adamV.get(name), before.adamV.get(name), `second moment ${name}`);
    }
    assert((await b.step(batch(3), lr)).finite, "step 4 trains again");
    const moved = await b.exportState();
    assert([...moved.params].some(([n, p]) => p.data.some((v, i) => v !== after.params.get(n)!.data[i])));
  } finally {
    b.destroy();
  }
});

Deno.test("deno task run with injected NaN gradients: isolated steps are skipped and counted, a persistent NaN stops with exit 1 and keeps only good checkpoints", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sets = [
      "--set",
      "train.steps=12",
      "--set",
      "train.checkpoint_every=4",
      "--set",
      "train.eval_every=12",
    ];
    const run = ["run", "tests/fixtures/micro.yaml", "--runs-dir", dir, "--json"];
    const ok = await cliWithFault("DSMOE_FAULT_NAN_GRAD", "3,4", ...run, ...sets);
    assertEquals(ok.code, 0, ok.err.join("\n"));
    const m = await (await RunDir.open(dir, ok.json().run_id)).readMetrics();
    assertEquals(m.filter((x) => x.key === "train/skipped_steps").map((x) => [x.step, x.value]), [[3, 1], [
      4,
      2,
    ]]);

    const bad = await cliWithFault(
      "DSMOE_FAULT_NAN_GRAD",
      "7-",
      ...run,
      ...sets.slice(2),
      "--set",
      "train.steps=30",
    );
    const id = assertRunFailed(bad, /Training diverged: 10 non-finite steps in a row/);
    // Skipped steps change nothing, so every checkpoint from step 6 on holds step 6's parameters: the newest
    // one reads back intact, finite, and equal to the one written at step 8.
    const ck = (await latestCheckpoint(`${dir}/${id}`))!;
    assert(ck.entry.step >= 8 && ck.entry.step < 17, `newest checkpoint at ${ck.entry.step}`);
    const at8 = readSafeTensors(await Deno.readFile(`${dir}/${id}/ckpt/step-8.safetensors`));
    const params = [...ck.file.tensors].filter(([name]) => name.startsWith("param/"));
    assert(params.length > 10, `${params.length} parameters checked`);
    for (const [name, t] of params) {
      const v = tensorToF32(t);
      assert(v.every(Number.isFinite), `${name} finite`);
      assertEquals(v, tensorToF32(at8.tensors.get(name)!), `${name} as at step 8`);
    }
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a device lost mid-run stops it with exit 1 and a clear message, writes no checkpoint after the loss, and --resume continues", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sets = [
      "--set",
      "train.steps=20",
      "--set",
      "train.checkpoint_every=4",
      "--set",
      "train.eval_every=20",
    ];
    const lost = await cliWithFault(
      "DSMOE_FAULT_DEVICE_LOSS",
      "10",
      ...["run", "tests/fixtures/micro.yaml", "--runs-dir", dir, "--json", ...sets],
    );
    const id = assertRunFailed(lost, /WebGPU device lost/);
    const steps = (await listCheckpoints(`${dir}/${id}`)).map((c) => c.step);
    assertEquals(steps, [4, 8], "checkpoints only from before the loss at step 10");
    const resumed = await cli("run", "--resume", id, "--runs-dir", dir, "--json", "--no-dashboard");
    assertEquals(resumed.code, 0, resumed.err.join("\n"));
    assertEquals((await latestCheckpoint(`${dir}/${id}`))!.entry.step, 20);
    assertEquals((await RunDir.open(dir, id)).meta.status, "finished");
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a buffer the device refuses (out of memory) fails the run with exit 1, naming the tensor and its size", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // The device reports out-of-memory for this allocation.
    const r = await cliWithFault(
      "DSMOE_FAULT_OOM",
      "adam.v.wte",
      ...["run", "tests/fixtures/micro.yaml", "--runs-dir", dir, "--json", "--no-dashboard"],
    );
    const id = assertRunFailed(
      r,
      "GpuOutOfMemoryError: Out of GPU memory",
      'could not allocate tensor "adam.v.wte" [256, 32] f32 (32.00 KiB)',
    );
    const meta = (await RunDir.open(dir, id)).meta;
    assertEquals(meta.status, "failed");
    assert(meta.error?.includes('"adam.v.wte"'), meta.error ?? "no error recorded");
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a config past this adapter's limits is refused before any run exists: exit 2, the kernel's reason", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // A step of 64 × 1,024 tokens: the MI loss's sums over them loop past llvmpipe's limit; a real GPU has
    // none, so on one the run simply trains (then this test only checks that it starts).
    const r = await cli(
      ...["run", "tests/fixtures/micro.yaml", "--runs-dir", dir, "--no-dashboard", "--stop-after", "1"],
      ...["--set", "data.seq_len=1024", "--set", "train.batch=64", "--set", "hardware.memory_budget=64GiB"],
    );
    const store = await openRunStore(dir);
    const runs = await store.listRuns();
    if ((await testGpu()).adapter.description.includes("llvmpipe")) {
      assertEquals(r.code, 2, r.err.join("\n"));
      assert(r.err.some((l) => l.startsWith("Plan refused:") && l.includes("loop")), r.err.join("\n"));
      assertEquals(runs.length, 0, "no run record for a refused plan");
    } else assertEquals(r.code, 0, r.err.join("\n"));
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a refused plan leaves nothing behind: no runs directory, no runs.db (exit 2)", async () => {
  const tmp = await Deno.makeTempDir(), dir = `${tmp}/runs`;
  try {
    // No kernel takes a head wider than 256, on any adapter: refused while the device and plan are made.
    const r = await cli(
      ...["run", "tests/fixtures/micro.yaml", "--runs-dir", dir, "--no-dashboard", "--stop-after", "1"],
      ...["--set", "model.attention.head_dim=512"],
    );
    assertEquals(r.code, 2, r.err.join("\n"));
    assert(r.err.some((l) => l.startsWith("Plan refused:") && l.includes("head_dim 512")), r.err.join("\n"));
    assertEquals(await Deno.stat(dir).then(() => "exists", () => "absent"), "absent", "the runs directory");
  } finally {
    closeRunStores();
    await Deno.remove(tmp, { recursive: true });
  }
});

/** Temp files of interrupted or failed writes under `dir` (any depth). */
function tempFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    if (e.isDirectory) out.push(...tempFiles(`${dir}/${e.name}`));
    else if (e.name.includes(TEMP_MARK)) out.push(`${dir}/${e.name}`);
  }
  return out;
}

Deno.test("a full disk while writing a checkpoint fails the run with exit 1 and the real error, marks it failed, keeps the last good checkpoint listed, leaves no temp file; --resume finishes it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sets = [
      "--set",
      "train.steps=12",
      "--set",
      "train.checkpoint_every=4",
      "--set",
      "train.eval_every=12",
    ];
    const r = await cliWithFault(
      "DSMOE_FAULT_ENOSPC",
      "step-8.safetensors",
      ...["run", "tests/fixtures/micro.yaml", "--runs-dir", dir, "--json", "--no-dashboard", ...sets],
    );
    const id = r.json().points[0].run_id;
    assertRunFailed(r, "No space left on device", `(writing ${dir}/${id}/ckpt/step-8.safetensors)`);
    const meta = (await RunDir.open(dir, id)).meta;
    assertEquals(meta.status, "failed");
    assert(
      meta.error?.includes("No space left on device") && meta.error.includes("step-8.safetensors"),
      meta.error!,
    );
    assertEquals((await listCheckpoints(`${dir}/${id}`)).map((c) => c.step), [4]);
    assertEquals((await latestCheckpoint(`${dir}/${id}`))!.entry.step, 4);
    assertEquals(tempFiles(dir).filter((p) => p.includes("/ckpt/")), []);
    const resumed = await cli("run", "--resume", id, "--runs-dir", dir, "--json", "--no-dashboard");
    assertEquals(resumed.code, 0, resumed.err.join("\n"));
    assert(resumed.err.includes(`Resuming ${id} from step 4`), resumed.err.join("\n"));
    assertEquals((await RunDir.open(dir, id)).meta.status, "finished");
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("on a real full disk (a 1 MiB tmpfs) the run fails with exit 1 and the operating system's error naming the checkpoint; the last good one stays", async () => {
  const root = await Deno.makeTempDir();
  const mnt = `${root}/small`;
  await Deno.mkdir(mnt);
  const mount = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt],
    stderr: "piped",
  })
    .output().catch((e) => ({ success: false, stderr: new TextEncoder().encode((e as Error).message) }));
  if (!mount.success) {
    console.log(`  skipped: cannot mount a tmpfs here (${new TextDecoder().decode(mount.stderr).trim()})`);
    await Deno.remove(root, { recursive: true });
    return;
  }
  try {
    // The store is elsewhere, so the failing write is the checkpoint's: two of ~390 KiB fit, the third not.
    const sets = [
      "--set",
      "train.steps=16",
      "--set",
      "train.checkpoint_every=4",
      "--set",
      "train.eval_every=16",
    ];
    const r = await cli(
      ...["run", "tests/fixtures/micro.yaml", "--runs-dir", mnt, "--store", `sqlite:${root}/runs.db`],
      ...["--json", "--no-dashboard", ...sets],
    );
    const id = r.json().points[0].run_id;
    assertRunFailed(
      r,
      "No space left on device (os error 28)",
      `(writing ${mnt}/${id}/ckpt/step-12.safetensors)`,
    );
    const run = await RunDir.open(mnt, id);
    assertEquals(run.meta.status, "failed");
    assertEquals((await listCheckpoints(`${mnt}/${id}`)).map((c) => c.step), [4, 8]);
    assertEquals((await latestCheckpoint(`${mnt}/${id}`))!.entry.step, 8);
    assertEquals((await run.store.checkpoints(id)).map((c) => c.step), [4, 8]);
    assertEquals(tempFiles(mnt), []);
  } finally {
    closeRunStores();
    await new Deno.Command("umount", { args: [mnt] }).output();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a failure the store cannot record is reported with the real error first, then the store's", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const run = await RunDir.create(dir, runMeta("r1"), "name: r1\n");
    closeRunStores(); // the store refuses every write from here on, as a full disk would
    const real = "Error: No space left on device (os error 28) (writing runs/r1/ckpt/step-60.safetensors)";
    await rejects(recordRunFailure(run, real), (e: Error) => {
      assert(e instanceof FailureNotRecordedError, `${e.name}: ${e.message}`);
      assert(
        e.message.startsWith(`${real}\nThe run store could not record this failure of run r1 either: `),
        e.message,
      );
      return true;
    });
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * Gradient accumulation end to end: `train.micro_batch` in a config (and its error), the WebGPU step of a
 * batch run as micro-batches against the float64 step of the whole batch, and resume with accumulation.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { ConfigError, loadExperiment } from "../core/config/mod.ts";
import { type Experiment, ExperimentSchema } from "../core/config/schema.ts";
import type { Batch } from "../core/data/dataset.ts";
import { latestCheckpoint, sha256Hex } from "../core/runs/checkpoints.ts";
import { closeRunStores } from "../core/runs/open_store.ts";
import { RunDir } from "../core/runs/run_dir.ts";
import { CpuTrainBackend } from "../core/train/cpu_backend.ts";
import { GpuTrainBackend, parseFaultSteps } from "../core/train/gpu_backend.ts";
import { Rng } from "../core/util/rng.ts";
import { GpuLimitError } from "../gpu/errors.ts";
import { cli } from "./helpers/cli.ts";
import { allocationGuard, assertClose, testGpu } from "./helpers/gpu.ts";

/**
 * Tiny models with every batch-level router loss on, at weights large enough to move the gradients, and
 * routers far from uniform (init_std 0.3).
 */
const MODELS: Record<string, unknown> = {
  "DS-MoE (MoA, MI and z losses)": {
    model: {
      attention: { kind: "moa", experts: 3, heads_per_expert: 2, head_dim: 8 },
      mlp: { experts: 4, hidden: 12 },
    },
    loss: { mi: { attention: 0.5, mlp: 1.0 }, z: 0.01 },
  },
  "SMoE (top-2, Switch loss)": {
    model: {
      kind: "smoe",
      attention: { kind: "mha", heads: 2, head_dim: 8 },
      mlp: { experts: 4, hidden: 8 },
    },
    router: { train: "topk", k: 2 },
    loss: { load_balance: 0.5 },
  },
};

function config(over: unknown, microBatch?: number): Experiment {
  const o = over as Record<string, Record<string, unknown>>;
  return ExperimentSchema.parse({
    ...o,
    data: { seq_len: 7 },
    model: { d_model: 16, layers: 2, init_std: 0.3, ...o.model },
    train: { batch: 4, micro_batch: microBatch, optimizer: { lr: 1e-2 } },
  });
}

function randomBatch(seed: number, tokens: number): Batch {
  const rng = new Rng(seed);
  const ids = () => Uint32Array.from({ length: tokens }, () => rng.int(256));
  return { inputs: ids(), targets: ids(), domains: null };
}

for (const [name, over] of Object.entries(MODELS)) {
  Deno.test(`WebGPU steps of ${name} in 4 micro-batches match the float64 whole-batch steps`, async () => {
    const ctx = await testGpu();
    const whole = new CpuTrainBackend(config(over));
    const gpu = await GpuTrainBackend.create(config(over, 1), ctx);
    try {
      assertEquals(gpu.accumulation, 4);
      for (let t = 0; t < 2; t++) {
        const batch = randomBatch(t + 1, 4 * 7);
        const [want, got] = [await whole.step(batch, 1e-2), await gpu.step(batch, 1e-2)];
        assert(got.finite);
        // Mean of 4 micro-batches in f32 against the batch in float64 (measured: within 4e-7).
        const values = [got.loss, got.lmLoss, got.miAttention, got.miMlp, got.gradNorm];
        const ref = [want.loss, want.lmLoss, want.miAttention, want.miMlp, want.gradNorm];
        assertClose(values, ref, { atol: 4e-6, rtol: 1e-5 }, `step ${t + 1} loss, LM, MI, grad norm`);
      }
      const [want, got] = [await whole.exportState(), await gpu.exportState()];
      assertEquals(got.step, 2);
      for (const [p, w] of want.params) {
        // Two AdamW steps of lr 1e-2 (an update is ~1e-2) in f32: measured within 3e-6 of float64; the router
        // losses computed per micro-batch instead move parameters by 0.04.
        assertClose(got.params.get(p)!.data, w.data, { atol: 3e-5, rtol: 0 }, `parameter ${p}`);
      }
    } finally {
      gpu.destroy();
    }
  });
}

Deno.test("with accumulation, a NaN gradient skips its step and the next step's accumulators start clean", async () => {
  const ctx = await testGpu();
  const c = config(MODELS["DS-MoE (MoA, MI and z losses)"], 2);
  const b = await GpuTrainBackend.create(c, ctx, { nanGradAt: parseFaultSteps("2") });
  try {
    assert((await b.step(randomBatch(1, 4 * 7), 1e-2)).finite);
    const before = await b.exportState();
    assert(!(await b.step(randomBatch(2, 4 * 7), 1e-2)).finite, "step 2 saw the NaN");
    const after = await b.exportState();
    for (const [name, p] of before.params) assertEquals(after.params.get(name)!.data, p.data, name);
    const s3 = await b.step(randomBatch(3, 4 * 7), 1e-2);
    assert(s3.finite && Number.isFinite(s3.gradNorm), "step 3 trains again");
  } finally {
    b.destroy();
  }
});

Deno.test("train.micro_batch must divide train.batch: a located config error naming both keys", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/c.yaml`, "train:\n  batch: 8\n  micro_batch: 3\n");
    const e = await loadExperiment(`${dir}/c.yaml`).then(() => null, (e) => e);
    assert(e instanceof ConfigError, String(e));
    const text = e.message;
    assert(/c\.yaml:3:16/.test(text), text);
    assert(text.includes("train.micro_batch (3) must divide train.batch (8)"), text);
    const ok = await loadExperiment(`${dir}/c.yaml`, { sets: ["train.micro_batch=4"] });
    assertEquals(ok.config.train.micro_batch, 4);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("run --dry-run shows the batch split, a micro-batch's activations and the gradient accumulators", async () => {
  const dry = (...sets: string[]) =>
    cli("run", "configs/dsmoe-tiny.yaml", "--dry-run", "--json", ...sets.flatMap((s) => ["--set", s]));
  const [whole, micro] = [await dry(), await dry("train.micro_batch=4", "loss.mi.mlp=0.01")];
  assertEquals([whole.code, micro.code], [0, 0]);
  const [w, m] = [whole.json().points[0], micro.json().points[0]];
  assertEquals([w.batch, w.micro_batch, w.accumulation_steps, w.router_stats_pass], [16, 16, 1, false]);
  assertEquals([m.batch, m.micro_batch, m.accumulation_steps, m.router_stats_pass], [16, 4, 4, true]);
  assertEquals(m.memory_activations_bytes * 4, w.memory_activations_bytes);
  assertEquals([w.memory_grad_accum_bytes, m.memory_grad_accum_bytes], [0, 4 * m.params_total]);
  // The plan's own buffers (activations of 4 sequences, not 16, despite the accumulators and the statistics pass).
  assert(0 < m.memory_train_planned_bytes && m.memory_train_planned_bytes < w.memory_train_planned_bytes);
  const text = micro.out.join("\n");
  assert(text.includes("16 sequences per step: 4 micro-steps of 4 (gradient accumulation"), text);
  assert(/gradient accumulators [\d.]+ MiB, graph buffers of 4 sequences/.test(text), text);
});

Deno.test("on llvmpipe, a micro-batch past its loop limit (64 × 1,024 tokens) is refused before anything is allocated", async () => {
  // The device taken for llvmpipe on Mesa 22.3, which stops loops at 65,535 (Mesa 25's does not: loopLimit).
  const ctx = Object.create((await testGpu()).withProfile("cpu-simd"), { mesa: { value: "22.3.6" } });
  const guard = allocationGuard(ctx);
  const guarded = guard.ctx;
  const c = ExperimentSchema.parse({
    data: { seq_len: 1024 },
    model: {
      kind: "dense",
      d_model: 64,
      layers: 1,
      attention: { kind: "mha", heads: 1, head_dim: 64 },
      mlp: { experts: 1, hidden: 64 },
    },
    train: { batch: 128, micro_batch: 64 },
  });
  const e = await GpuTrainBackend.create(c, guarded).then(() => null, (e) => e);
  assert(e instanceof GpuLimitError, String(e));
  assert(
    /^Cannot plan the training step: Cannot run .*65536.*lower train\.micro_batch × data\.seq_len/i.test(
      e.message,
    ),
    e.message,
  );
  assertEquals(guard.allocations(), 0);
});

// The micro DS-MoE in micro-batches of 2 of its 8 sequences (4 micro-steps and the router statistics pass per
// step), 12 steps: straight, and stopped after 5 and resumed.
const RESUME = `extends: ${Deno.cwd()}/tests/fixtures/micro.yaml
name: accumulate
data: { synthetic_bytes: 8192 }
loss: { mi: { attention: 0.05, mlp: 0.1 } }
train: { steps: 12, micro_batch: 2, log_every: 1, eval_every: 12, checkpoint_every: 4, schedule: { warmup: 3 } }
`;

/** SHA-256 of every parameter and Adam moment of the newest checkpoint, in name order. */
async function stateSha256(dir: string, runId: string): Promise<string> {
  const ck = (await latestCheckpoint(`${dir}/${runId}`))!;
  assertEquals(ck.entry.step, 12);
  const names = [...ck.file.tensors.keys()].filter((n) => /^(param|adam_m|adam_v)\//.test(n)).sort();
  const parts = names.map((n) => ck.file.tensors.get(n)!.data);
  const all = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  parts.reduce((at, p) => (all.set(p, at), at + p.length), 0);
  return await sha256Hex(all);
}

Deno.test("resume with gradient accumulation is exact: 12 steps straight = 5 + resume (losses bit-identical, state SHA-256 equal)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/acc.yaml`, RESUME);
    const run = (...extra: string[]) =>
      cli("run", `${dir}/acc.yaml`, "--runs-dir", dir, "--json", "--no-dashboard", ...extra);
    const straight = await run();
    assertEquals(straight.code, 0, straight.err.join("\n"));
    const first = await run("--stop-after", "5");
    assertEquals(first.json().status, "interrupted");
    const id = first.json().run_id;
    const resumed = await cli("run", "--resume", id, "--runs-dir", dir, "--json", "--no-dashboard");
    assertEquals(resumed.code, 0, resumed.err.join("\n"));
    const losses = async (runId: string) =>
      (await (await RunDir.open(dir, runId)).readMetrics()).filter((p) => p.key === "train/loss")
        .map((p) => [p.step, p.value]);
    const want = await losses(straight.json().run_id);
    assertEquals(want.length, 12);
    assertEquals(await losses(id), want);
    assertEquals(await stateSha256(dir, id), await stateSha256(dir, straight.json().run_id));
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

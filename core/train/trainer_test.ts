import { deepStrictEqual as assertEquals, ok as assert, rejects } from "node:assert/strict";
import { ExperimentSchema } from "../config/schema.ts";
import { Dataset, splitTokens } from "../data/dataset.ts";
import { latestCheckpoint, listCheckpoints } from "../runs/checkpoints.ts";
import { newRunId, RunDir } from "../runs/run_dir.ts";
import { closeRunStores } from "../runs/open_store.ts";
import { runMeta } from "../../tests/helpers/run_meta.ts";
import { tensorToF32 } from "../runs/safetensors.ts";
import type { StepStats, TrainBackend, TrainState } from "./backend.ts";
import { MAX_NONFINITE_STREAK, train, TrainError } from "./trainer.ts";

/** A scripted backend: loss 1/(step+1), parameter w = number of applied steps; steps in `bad` are non-finite. */
class ScriptedBackend implements TrainBackend {
  readonly description = "scripted";
  applied = 0;
  calls = 0;
  constructor(readonly bad: (call: number) => boolean = () => false) {}
  step(): Promise<StepStats> {
    const call = this.calls++;
    const finite = !this.bad(call);
    if (finite) this.applied++;
    const loss = finite ? 1 / (call + 1) : NaN;
    return Promise.resolve({ loss, lmLoss: loss, miAttention: 0, miMlp: 0, gradNorm: 1, finite });
  }
  evaluate() {
    return Promise.resolve({
      lmLoss: 1 / (this.calls + 1),
      routers: [{ layer: 0, kind: "mlp" as const, load: [0.25, 0.75], meanProb: [0.3, 0.7], entropy: 0.5 }],
    });
  }
  exportState(): Promise<TrainState> {
    const w = new Float32Array([this.applied]);
    return Promise.resolve({
      params: new Map([["w", { shape: [1], data: w }]]),
      adamM: new Map([["w", new Float32Array(1)]]),
      adamV: new Map([["w", new Float32Array(1)]]),
      step: this.applied,
    });
  }
  importState(s: TrainState): Promise<void> {
    this.applied = s.step;
    return Promise.resolve();
  }
  destroy() {}
}

const config = ExperimentSchema.parse({
  data: { seq_len: 8 },
  train: {
    steps: 20,
    batch: 2,
    eval_every: 10,
    checkpoint_every: 10,
    log_every: 5,
    eval_batches: 2,
    schedule: { warmup: 2 },
  },
});
const tokens = Uint32Array.from({ length: 20_000 }, (_, i) => i % 200);
const dataset = new Dataset(splitTokens(tokens, null, { valFraction: 0.2, seed: 1 }), {
  seqLen: 8,
  seed: 1,
  domainNames: [],
});

async function withRun(fn: (run: RunDir) => Promise<void>): Promise<void> {
  const root = await Deno.makeTempDir();
  try {
    const id = newRunId("t");
    const run = await RunDir.create(root, runMeta(id), "name: t\n");
    await fn(run);
  } finally {
    closeRunStores();
    await Deno.remove(root, { recursive: true });
  }
}

Deno.test("train() logs metrics, evaluates, checkpoints and reports the final losses", async () => {
  await withRun(async (run) => {
    const lines: string[] = [];
    const r = await train({
      config,
      configYaml: "x",
      dataset,
      backend: new ScriptedBackend(),
      run,
      progress: (l) => lines.push(l),
    });
    assertEquals(r.status, "finished");
    assertEquals(r.steps, 20);
    assertEquals(r.final["train/loss"], 1 / 20);
    const m = await run.readMetrics();
    assertEquals(m.filter((p) => p.key === "train/loss").map((p) => p.step), [5, 10, 15, 20]);
    assertEquals(m.filter((p) => p.key === "val/loss").map((p) => p.step), [10, 20]);
    assertEquals(m.find((p) => p.key === "router/0/mlp/load/1")!.value, 0.75);
    assertEquals((await listCheckpoints(run.path)).map((c) => c.step), [10, 20]);
    assert(lines.some((l) => l.includes("tok/s") && l.includes("ETA")), lines.join("\n"));
  });
});

Deno.test("train() skips and counts non-finite steps, and stops after 10 in a row keeping the last good checkpoint", async () => {
  await withRun(async (run) => {
    // Steps 3 and 4 are non-finite (skipped, run goes on); from call 12 on every step is.
    const backend = new ScriptedBackend((c) => c === 3 || c === 4 || c >= 12);
    const long = { ...config, train: { ...config.train, steps: 40 } };
    await rejects(
      train({ config: long, configYaml: "x", dataset, backend, run }),
      (e: Error) =>
        e instanceof TrainError && e.message.includes(`${MAX_NONFINITE_STREAK} non-finite steps in a row`),
    );
    const latest = await latestCheckpoint(run.path);
    // Calls 12..21 are the 10 in a row: the run stops at step 22; the checkpoint of step 20 is the last.
    assertEquals(latest!.entry.step, 20);
    assertEquals(Array.from(tensorToF32(latest!.file.tensors.get("param/w")!)), [10]); // 20 steps, 10 skipped
    assertEquals(backend.calls, 22 + 2); // two more steps were already queued (in flight) when it stopped
    const m = await run.readMetrics();
    assert(m.every((p) => Number.isFinite(p.value)));
  });
});

Deno.test("train() with stopAfter stops early, checkpoints, and resumes from that step", async () => {
  await withRun(async (run) => {
    const b = new ScriptedBackend();
    const first = await train({ config, configYaml: "x", dataset, backend: b, run, stopAfter: 7 });
    assertEquals(first.status, "interrupted");
    assertEquals(first.steps, 7);
    assertEquals((await latestCheckpoint(run.path))!.entry.step, 7);
    const second = await train({ config, configYaml: "x", dataset, backend: b, run, startStep: 7 });
    assertEquals(second.status, "finished");
    assertEquals(b.calls, 20);
  });
});

/** The scripted backend with dynamic loss scaling: steps in `bad` overflow (finite loss) and halve the scale. */
class ScalingBackend extends ScriptedBackend {
  scale = 2 ** 16;
  constructor(bad: (call: number) => boolean, readonly min = 1) {
    super(bad);
  }
  override async step(): Promise<StepStats> {
    const s = await super.step(), used = this.scale;
    if (!s.finite) this.scale = Math.max(this.min, used / 2);
    // An overflow of the scale: the loss is finite, the gradients are not.
    return { ...s, loss: 0.5, lmLoss: 0.5, lossScale: { used, next: this.scale } };
  }
  override async exportState(): Promise<TrainState> {
    return { ...await super.exportState(), lossScale: { scale: this.scale, good: 3 } };
  }
}

Deno.test("train() with loss scaling: overflows halve the scale, are skipped and logged, and do not stop the run; at the scale's floor they count toward divergence", async () => {
  await withRun(async (run) => {
    // 14 overflows in a row (more than MAX_NONFINITE_STREAK): 2¹⁶ → 2², then training goes on.
    const backend = new ScalingBackend((c) => c < 14);
    const r = await train({ config, configYaml: "x", dataset, backend, run });
    assertEquals([r.status, r.skipped], ["finished", 14]);
    const m = await run.readMetrics();
    const scales = m.filter((p) => p.key === "train/loss_scale");
    assertEquals(
      scales.slice(0, 14).map((p) => [p.step, p.value]),
      [...Array(14)].map((_, i) => [i + 1, 2 ** (15 - i)]),
    );
    assertEquals(scales.at(-1)!.value, 4); // logged with the losses too (the scale the step used)
    const events = await run.store.events(run.meta.id);
    assert(
      events.some((e) =>
        e.message === "gradient overflow at step 1 with loss scale 65536: update skipped, loss scale 32768"
      ),
    );
    const ck = (await latestCheckpoint(run.path))!;
    assertEquals(Array.from(tensorToF32(ck.file.tensors.get("loss_scale")!)), [4, 3]);
  });
  await withRun(async (run) => {
    // At the floor (min 2¹⁶: nothing left to halve) 10 non-finite steps in a row stop the run.
    const backend = new ScalingBackend((c) => c >= 2, 2 ** 16);
    const long = { ...config, train: { ...config.train, steps: 40 } };
    await rejects(
      train({ config: long, configYaml: "x", dataset, backend, run }),
      (e: Error) =>
        e instanceof TrainError && e.message.includes(`${MAX_NONFINITE_STREAK} non-finite steps in a row`),
    );
  });
});

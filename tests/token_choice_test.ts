/**
 * Top-k token choice, complete (docs/design.md §16): expert capacity with token dropping, router jitter from
 * the run's seeded RNG, renormalised gates and softmax after top-k — their config errors, float64
 * identities, the WebGPU step against the float64 step, training through the CLI on this adapter with the
 * dropped share and per-expert loads logged, and exact resume with jitter under gradient accumulation.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { ConfigError, parseExperimentText } from "../core/config/mod.ts";
import { type Experiment, ExperimentSchema } from "../core/config/schema.ts";
import type { Batch } from "../core/data/dataset.ts";
import { latestCheckpoint, sha256Hex } from "../core/runs/checkpoints.ts";
import { closeRunStores } from "../core/runs/open_store.ts";
import { RunDir } from "../core/runs/run_dir.ts";
import { CpuTrainBackend } from "../core/train/cpu_backend.ts";
import { evaluateGraph, type HostValue } from "../core/graph/cpu_executor.ts";
import { CPU_OPS } from "../core/graph/cpu_ops.ts";
import { plan } from "../core/plan/plan.ts";
import { GpuTrainBackend } from "../core/train/gpu_backend.ts";
import { Rng } from "../core/util/rng.ts";
import { cli } from "./helpers/cli.ts";
import { assertClose, testGpu } from "./helpers/gpu.ts";

/** The config error lines of `text` parsed as t.yaml. */
function errorLines(text: string): string[] {
  try {
    parseExperimentText(text, "t.yaml");
  } catch (e) {
    if (e instanceof ConfigError) return e.message.split("\n");
    throw e;
  }
  throw new Error("expected a ConfigError, but the config was accepted");
}

const SMOE = "model:\n  kind: smoe\n  attention: { kind: mha }\n  mlp: { experts: 4 }\n";

Deno.test("token-choice options under router.train: dense are located errors naming the key", () => {
  const dense = (key: string, value: string) => errorLines(`router:\n  ${key}: ${value}\n`);
  const why =
    "applies to top-k token choice (router.train: topk); router.train dense selects no experts in " +
    "training";
  assertEquals(dense("capacity_factor", "1.25"), [
    `t.yaml:2:20: router.capacity_factor: router.capacity_factor (1.25) ${why}`,
  ]);
  assertEquals(dense("jitter", "0.01"), [
    "t.yaml:2:11: router.jitter: router.jitter (0.01) applies to sparse training (router.train: topk, " +
    "expert_choice, top_p, relu); router.train dense selects no experts in training",
  ]);
  assertEquals(dense("renormalize", "true"), [
    `t.yaml:2:16: router.renormalize: router.renormalize (true) ${why}`,
  ]);
  assertEquals(dense("softmax_order", "after"), [
    `t.yaml:2:18: router.softmax_order: router.softmax_order (after) ${why}`,
  ]);
  assertEquals(errorLines(`${SMOE}router: { train: topk, renormalize: true, softmax_order: after }\n`), [
    "t.yaml:5:37: router.renormalize: router.renormalize has no effect with router.softmax_order: after " +
    "(the softmax over the kept logits already sums to 1); remove one of them",
  ]);
  assertEquals(errorLines(`${SMOE}router: { train: topk, jitter: 1 }\n`), [
    "t.yaml:5:32: router.jitter: must be < 1, got 1",
  ]);
  assertEquals(errorLines(`${SMOE}router: { train: topk, capacity_factor: -1 }\n`), [
    "t.yaml:5:41: router.capacity_factor: must be ≥ 0, got -1",
  ]);
  // All of them together under train: topk are accepted.
  const ok = parseExperimentText(
    `${SMOE}router: { train: topk, capacity_factor: 1.25, jitter: 0.01, renormalize: true }\n`,
    "t.yaml",
  );
  assertEquals(ok.config.router.capacity_factor, 1.25);
});

/** A tiny SMoE (top-2 of 4) with routers far from uniform, and `router` options. */
function smoe(router: Record<string, unknown>, microBatch?: number): Experiment {
  return ExperimentSchema.parse({
    data: { seq_len: 7 },
    model: {
      kind: "smoe",
      d_model: 16,
      layers: 2,
      init_std: 0.3,
      attention: { kind: "mha", heads: 2, head_dim: 8 },
      mlp: { experts: 4, hidden: 8 },
    },
    router: { train: "topk", k: 2, ...router },
    loss: { load_balance: 0.5 },
    train: { batch: 4, micro_batch: microBatch, optimizer: { lr: 1e-2 } },
  });
}

function randomBatch(seed: number, tokens: number): Batch {
  const rng = new Rng(seed);
  const ids = () => Uint32Array.from({ length: tokens }, () => rng.int(256));
  return { inputs: ids(), targets: ids(), domains: null };
}

/** max |a − b| / max |a|. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(a[i]!));
  }
  return worst / Math.max(scale, 1e-300);
}

Deno.test("float64: softmax after top-k gives the renormalised gates' loss and gradients; a capacity of every token drops nothing", () => {
  const batch = randomBatch(5, 4 * 7);
  const run = (router: Record<string, unknown>) => new CpuTrainBackend(smoe(router)).lossAndGrads(batch);
  const after = run({ softmax_order: "after" }), renorm = run({ renormalize: true }), plain = run({});
  assert(relErr(after.parts, renorm.parts) < 1e-13, `${after.parts} vs ${renorm.parts}`);
  after.grads.forEach((g, i) => assert(relErr(g, renorm.grads[i]!) < 1e-12, `gradient ${i}`));
  // … and they are not the plain kept probabilities' (the renormalisation changes the model).
  assert(relErr(plain.parts, renorm.parts) > 1e-3, `${plain.parts} vs ${renorm.parts}`);
  // capacity_factor N / k: C = T, every selection kept; the same numbers as dropless, bit for bit.
  const full = run({ capacity_factor: 2 });
  assertEquals(full.parts, plain.parts);
  full.grads.forEach((g, i) => assertEquals(g, plain.grads[i]!));
  assertEquals(full.loads.length, 2 * plain.loads.length, "selected and kept loads per router");
  // A capacity of 1.0 (C = T·k/N) drops some assignments of these far-from-uniform routers.
  const tight = run({ capacity_factor: 1 });
  const [selected, kept] = [tight.loads[0]!, tight.loads[1]!];
  const sum = (a: ArrayLike<number>) => Array.from(a).reduce((x, y) => x + y, 0);
  assert(Math.abs(sum(selected) - 2) < 1e-12, `selected shares sum to k: ${sum(selected)}`);
  assert(sum(kept) < sum(selected) - 0.05, `dropped: ${sum(selected)} → ${sum(kept)}`);
  kept.forEach((v) => assert(v <= 0.5 + 1e-12, `an expert keeps at most C = T·k/N = T/2 tokens: ${v}`));
});

Deno.test("float64: sparse top-k inference of a model trained with renormalised gates or softmax after top-k gives the training graph's loss", async () => {
  const batch = randomBatch(6, 4 * 7);
  for (const router of [{ renormalize: true }, { softmax_order: "after" }, {}]) {
    const c = smoe({ ...router, infer: { kind: "topk", k: 2 } }), train = new CpuTrainBackend(c);
    const want = (await train.evaluate(batch)).lmLoss;
    const p = plan(c, "infer-sparse"), m = p.model;
    const feeds = new Map<number, HostValue>([[m.ids.id, batch.inputs], [m.targets.id, batch.targets]]);
    for (const s of m.params) feeds.set(s.value.id, train.params.get(s.value.name)!);
    const got = evaluateGraph(p.schedule.nodes, feeds, [m.lmLoss], CPU_OPS)[0]![0]!;
    assert(Math.abs(got - want) < 1e-12, `${JSON.stringify(router)}: ${got} vs ${want}`);
  }
});

Deno.test("WebGPU steps with capacity, jitter and renormalised gates in 4 micro-batches match the float64 steps", async () => {
  const ctx = await testGpu();
  const router = { capacity_factor: 1.25, jitter: 0.2, renormalize: true };
  const cpu = new CpuTrainBackend(smoe(router, 1)), gpu = await GpuTrainBackend.create(smoe(router, 1), ctx);
  try {
    assertEquals(gpu.accumulation, 4);
    let dropped = 0;
    for (let t = 0; t < 3; t++) {
      const batch = randomBatch(t + 1, 4 * 7);
      const [want, got] = [await cpu.step(batch, 1e-2), await gpu.step(batch, 1e-2)];
      assert(got.finite);
      assertClose([got.loss, got.lmLoss, got.gradNorm], [want.loss, want.lmLoss, want.gradNorm], {
        atol: 4e-6,
        rtol: 1e-5,
      }, `step ${t + 1} loss, LM loss, grad norm`);
      // The same selections and drops: shares are counts / tokens, exact in f32.
      assertEquals(got.routers!.length, 2);
      got.routers!.forEach((r, i) => {
        const w = want.routers![i]!;
        assertClose(r.load, w.load, { atol: 1e-7, rtol: 0 }, `step ${t + 1} router ${i} load`);
        assertClose([r.dropped!], [w.dropped!], { atol: 1e-7, rtol: 0 }, `step ${t + 1} router ${i} dropped`);
        dropped += w.dropped!;
      });
    }
    assert(dropped > 0, "capacity 1.25 drops assignments of these routers");
    const [want, got] = [await cpu.exportState(), await gpu.exportState()];
    for (const [p, w] of want.params) {
      assertClose(got.params.get(p)!.data, w.data, { atol: 5e-5, rtol: 0 }, `parameter ${p}`);
    }
  } finally {
    gpu.destroy();
  }
});

Deno.test("router jitter is seeded: the same run twice draws the same noise, and the noise changes the losses", async () => {
  const ctx = await testGpu();
  const losses = async (router: Record<string, unknown>) => {
    const b = await GpuTrainBackend.create(smoe(router), ctx);
    try {
      const out: number[] = [];
      for (let t = 0; t < 3; t++) out.push((await b.step(randomBatch(t + 1, 28), 1e-2)).loss);
      return out;
    } finally {
      b.destroy();
    }
  };
  const [a, b, none] = [await losses({ jitter: 0.3 }), await losses({ jitter: 0.3 }), await losses({})];
  assertEquals(a, b);
  a.forEach((v, i) => assert(v !== none[i], `step ${i + 1}: jitter changed nothing (${v})`));
});

// A tiny SMoE with every token-choice option: top-2 of 4 with capacity 1.0, jitter, renormalised gates,
// the Switch loss, and top-2 inference (renormalised like training).
const TINY = `extends: ${Deno.cwd()}/tests/fixtures/micro.yaml
name: token-choice
data: { synthetic_bytes: 20000 }
model:
  kind: smoe
  attention: { kind: mha, heads: 2, head_dim: 8 }
  mlp: { experts: 4, hidden: 16 }
router: { train: topk, k: 2, capacity_factor: 1.0, jitter: 0.1, renormalize: true, infer: { kind: topk, k: 2 } }
loss: { mi: { attention: 0, mlp: 0 }, load_balance: 0.01 }
train: { steps: 24, log_every: 2, eval_every: 24, eval_batches: 2, checkpoint_every: 24, schedule: { warmup: 2 } }
`;

Deno.test("an SMoE with capacity, jitter and renormalised gates trains on WebGPU: loss falls, dropped share and loads logged", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/tc.yaml`, TINY);
    const r = await cli("run", `${dir}/tc.yaml`, "--runs-dir", dir, "--json", "--no-dashboard");
    assertEquals(r.code, 0, r.err.join("\n"));
    const j = r.json();
    // From ln 256 = 5.55 at the start: at least 1.5 nats lower after 24 steps.
    assert(j.final["val/loss"] < 4.0 && j.final["train/loss"] < 4.0, JSON.stringify(j.final));
    const m = await (await RunDir.open(dir, j.run_id)).readMetrics();
    const at = (key: string) => m.filter((p) => p.key === key).map((p) => p.value);
    const loss = at("train/loss");
    assert(loss.length === 12 && loss.at(-1)! < loss[0]!, `train/loss ${loss}`);
    for (const layer of [0, 1]) {
      const key = `train/router/${layer}/mlp`;
      const dropped = at(`${key}/dropped`);
      assertEquals(dropped.length, 12, `${key}/dropped logged every log_every steps`);
      assert(
        dropped.every((v) => v >= 0 && v < 1) && dropped.some((v) => v > 0),
        `${key}/dropped ${dropped}`,
      );
      const loads = [0, 1, 2, 3].map((e) => at(`${key}/load/${e}`));
      for (let i = 0; i < 12; i++) {
        const total = loads.reduce((s, l) => s + l[i]!, 0);
        assert(Math.abs(total - 1) < 1e-6, `${key} loads at point ${i} sum to ${total}`);
      }
    }
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

/** SHA-256 of every parameter and Adam moment of the newest checkpoint (at `step`), in name order. */
async function stateSha256(dir: string, runId: string, step: number): Promise<string> {
  const ck = (await latestCheckpoint(`${dir}/${runId}`))!;
  assertEquals(ck.entry.step, step);
  const names = [...ck.file.tensors.keys()].filter((n) => n !== "optimizer_step").sort();
  const parts = names.map((n) => ck.file.tensors.get(n)!.data);
  const all = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  parts.reduce((o, p) => (all.set(p, o), o + p.length), 0);
  return await sha256Hex(all);
}

Deno.test("resume with jitter and capacity under gradient accumulation is exact: 10 steps straight = 4 + resume", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // 4 micro-steps of 2 sequences per step: the jitter noise is sliced per micro-step.
    const acc = TINY.replace(
      /^train: .*$/m,
      "train: { steps: 10, micro_batch: 2, log_every: 1, eval_every: 10, " +
        "eval_batches: 2, checkpoint_every: 5, schedule: { warmup: 2 } }",
    );
    await Deno.writeTextFile(`${dir}/acc.yaml`, acc);
    const run = (...extra: string[]) =>
      cli("run", `${dir}/acc.yaml`, "--runs-dir", dir, "--json", "--no-dashboard", ...extra);
    const straight = await run();
    assertEquals(straight.code, 0, straight.err.join("\n"));
    const first = await run("--stop-after", "4");
    assertEquals(first.json().status, "interrupted");
    const id = first.json().run_id;
    const resumed = await cli("run", "--resume", id, "--runs-dir", dir, "--json", "--no-dashboard");
    assertEquals(resumed.code, 0, resumed.err.join("\n"));
    const series = async (runId: string, key: string) =>
      (await (await RunDir.open(dir, runId)).readMetrics()).filter((p) => p.key === key)
        .map((p) => [p.step, p.value]);
    for (const key of ["train/loss", "train/router/1/mlp/dropped"]) {
      const want = await series(straight.json().run_id, key);
      assertEquals(want.length, 10, key);
      assertEquals(await series(id, key), want, key);
    }
    assertEquals(await stateSha256(dir, id, 10), await stateSha256(dir, straight.json().run_id, 10));
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

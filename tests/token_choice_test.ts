/**
 * Top-k token choice, complete (docs/design.md §16): expert capacity with token dropping, router jitter from
 * the run's seeded RNG, renormalised gates and softmax after top-k — their config errors, float64
 * identities, the WebGPU step against the float64 step, training through the CLI on this adapter with the
 * dropped share and per-expert loads logged, and exact resume with jitter under gradient accumulation.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { parseExperimentText } from "../core/config/mod.ts";
import type { Experiment } from "../core/config/schema.ts";
import { latestCheckpoint, sha256Hex } from "../core/runs/checkpoints.ts";
import { RunDir } from "../core/runs/run_dir.ts";
import { CpuTrainBackend } from "../core/train/cpu_backend.ts";
import { evaluateGraph } from "../core/graph/cpu_executor.ts";
import { CPU_OPS } from "../core/graph/cpu_ops.ts";
import { plan } from "../core/plan/plan.ts";
import { GpuTrainBackend } from "../core/train/gpu_backend.ts";
import { cli } from "./helpers/cli.ts";
import { assertClose, testGpu } from "./helpers/gpu.ts";
import {
  assertParamsClose,
  microSmoeYaml,
  randomBatch,
  rejectedLines as errorLines,
  relErr,
  SMOE_YAML as SMOE,
  STEP_TOL,
  tinySmoe,
  trainedFeeds,
  trainFalls,
  withBackends,
  withRunsDir,
} from "./helpers/router_configs.ts";

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
  const loss = { load_balance: 0.5 };
  return tinySmoe({ seqLen: 7, initStd: 0.3, router: { train: "topk", k: 2, ...router }, loss, microBatch });
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
    const feeds = trainedFeeds(m, batch, train);
    const got = evaluateGraph(p.schedule.nodes, feeds, [m.lmLoss], CPU_OPS)[0]![0]!;
    assert(Math.abs(got - want) < 1e-12, `${JSON.stringify(router)}: ${got} vs ${want}`);
  }
});

Deno.test("WebGPU steps with capacity, jitter and renormalised gates in 4 micro-batches match the float64 steps", async () => {
  const router = { capacity_factor: 1.25, jitter: 0.2, renormalize: true };
  await withBackends(smoe(router, 1), async (cpu, gpu) => {
    assertEquals(gpu.accumulation, 4);
    let dropped = 0;
    for (let t = 0; t < 3; t++) {
      const batch = randomBatch(t + 1, 4 * 7);
      const [want, got] = [await cpu.step(batch, 1e-2), await gpu.step(batch, 1e-2)];
      assert(got.finite);
      assertClose(
        [got.loss, got.lmLoss, got.gradNorm],
        [want.loss, want.lmLoss, want.gradNorm],
        STEP_TOL,
        `step ${t + 1} loss, LM loss, grad norm`,
      );
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
    await assertParamsClose(cpu, gpu, 5e-5);
  });
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
const TINY = microSmoeYaml(
  "token-choice",
  `router: { train: topk, k: 2, capacity_factor: 1.0, jitter: 0.1, renormalize: true, infer: { kind: topk, k: 2 } }
loss: { mi: { attention: 0, mlp: 0 }, load_balance: 0.01 }
train: { steps: 24, log_every: 2, eval_every: 24, eval_batches: 2, checkpoint_every: 24, schedule: { warmup: 2 } }
`,
);

Deno.test("an SMoE with capacity, jitter and renormalised gates trains on WebGPU: loss falls, dropped share and loads logged", async () => {
  await withRunsDir(async (dir) => {
    // From ln 256 = 5.55 at the start: at least 1.5 nats lower after 24 steps.
    const { at } = await trainFalls(dir, "tc.yaml", TINY, 12);
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
  });
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
  await withRunsDir(async (dir) => {
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
  });
});

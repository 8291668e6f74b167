/**
 * loss.load_balance_scope (docs/design.md §16): the tokens the Switch loss takes f and P over — the step's
 * whole batch (global, the default), each micro-batch, or each sequence — in float64 against its
 * definition, the WebGPU step against the float64 step under gradient accumulation, its config errors,
 * and a tiny SMoE trained through the CLI on this adapter with the loss per sequence.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import type { Experiment } from "../core/config/schema.ts";
import type { Batch } from "../core/data/dataset.ts";
import { CpuTrainBackend } from "../core/train/cpu_backend.ts";
import {
  assertParamsClose,
  compareSteps,
  errorLines,
  microSmoeYaml,
  randomBatch,
  relErr,
  tinySmoe,
  trainFalls,
  withBackends,
  withRunsDir,
} from "./helpers/router_configs.ts";

/** A tiny SMoE (top-2 of 4) with routers far from uniform and a large Switch loss weight. */
function smoe(scope: string | undefined, batch: number, microBatch?: number): Experiment {
  const loss = { load_balance: 0.5, load_balance_scope: scope };
  return tinySmoe({ seqLen: 6, initStd: 0.3, router: { train: "topk", k: 2 }, loss, batch, microBatch });
}

/** Sequences `from` … `from + n − 1` of `b` (6 tokens each). */
function slice(b: Batch, from: number, n: number): Batch {
  const cut = (a: Uint32Array) => a.slice(from * 6, (from + n) * 6);
  return { inputs: cut(b.inputs), targets: cut(b.targets), domains: null };
}

type LossAndGrads = ReturnType<CpuTrainBackend["lossAndGrads"]>;

/** The mean of several backends' loss terms and gradients (equal-sized parts of a batch). */
function meanOf(parts: LossAndGrads[]): { parts: number[]; grads: Float64Array[] } {
  const n = parts.length;
  return {
    parts: parts[0]!.parts.map((_, i) => parts.reduce((a, p) => a + p.parts[i]!, 0) / n),
    grads: parts[0]!.grads.map((g, i) => g.map((_, j) => parts.reduce((a, p) => a + p.grads[i]![j]!, 0) / n)),
  };
}

/**
 * Asserts equal total and LM losses and gradients to 1e-12 (the MI losses, logged with weight 0 here, are
 * not the Switch loss's and have no scope).
 */
function assertSame(a: { parts: number[]; grads: Float64Array[] }, b: typeof a, what: string) {
  const [pa, pb] = [a.parts.slice(0, 2), b.parts.slice(0, 2)];
  assert(relErr(pa, pb) < 1e-12, `${what}: losses ${pa} vs ${pb}`);
  a.grads.forEach((g, i) => assert(relErr(g, b.grads[i]!) < 1e-12, `${what}: gradient ${i}`));
}

Deno.test("float64: each scope is its definition — global = the whole batch's loss, micro_batch = the mean of the micro-batches' own, sequence = the mean of the sequences' own", () => {
  const batch = randomBatch(7, 8 * 6);
  const run = (scope: string | undefined, b: number, micro?: number, on = batch) =>
    new CpuTrainBackend(smoe(scope, b, micro)).lossAndGrads(on);
  const whole = run("global", 8);
  // global is the default, and under accumulation still the whole batch's loss (the statistics pass).
  assertSame(run(undefined, 8), whole, "global = default");
  assertSame(run("global", 8, 2), whole, "global under accumulation");
  // micro_batch: 4 micro-batches of 2 sequences, each with its own f and P.
  const micro = run("micro_batch", 8, 2);
  assertSame(
    micro,
    meanOf([0, 2, 4, 6].map((s) => run("global", 2, undefined, slice(batch, s, 2)))),
    "micro",
  );
  const diff = (a: LossAndGrads) => Math.abs(a.loss - whole.loss);
  assert(diff(micro) > 1e-3, `micro_batch scope differs from global here: ${micro.loss} vs ${whole.loss}`);
  // sequence: with or without accumulation, the mean over the 8 sequences of their own loss.
  const seq = run("sequence", 8);
  const perSequence = meanOf(
    [0, 1, 2, 3, 4, 5, 6, 7].map((s) => run("global", 1, undefined, slice(batch, s, 1))),
  );
  assertSame(seq, perSequence, "sequence");
  assertSame(run("sequence", 8, 2), seq, "sequence under accumulation");
  assert(diff(seq) > 1e-3, `sequence scope differs from global here: ${seq.loss} vs ${whole.loss}`);
  // Only the global scope needs the router statistics pass under accumulation.
  const stats = (scope: string) => new CpuTrainBackend(smoe(scope, 8, 2)).plan.stats !== null;
  assertEquals([stats("global"), stats("micro_batch"), stats("sequence")], [true, false, false]);
});

for (const scope of ["micro_batch", "sequence"]) {
  Deno.test(`WebGPU steps with the Switch loss per ${scope} in 4 micro-batches match the float64 steps`, async () => {
    await withBackends(smoe(scope, 8, 2), async (cpu, gpu) => {
      await compareSteps(cpu, gpu, 2, (t) => randomBatch(t + 1, 8 * 6));
      // Two AdamW steps of lr 1e-2 in f32: a rarely seen token's embedding row, whose gradient is near 0,
      // can move by up to ~1e-4 more or less than in float64 (Adam divides by √v).
      await assertParamsClose(cpu, gpu, 2e-4);
    });
  });
}

Deno.test("loss.load_balance_scope is a located config error without the Switch loss, and only takes its three values", () => {
  assertEquals(errorLines("loss:\n  load_balance_scope: sequence\n"), [
    "t.yaml:2:23: loss.load_balance_scope: loss.load_balance_scope (sequence) applies to the Switch " +
    "load-balance loss, which is off: set loss.load_balance > 0",
  ]);
  assertEquals(errorLines("loss:\n  load_balance: 0.01\n  load_balance_scope: batch\n"), [
    't.yaml:3:23: loss.load_balance_scope: expected one of "global", "micro_batch", "sequence", got "batch"',
  ]);
  assertEquals(errorLines("loss:\n  load_balance: 0.01\n  load_balance_scope: sequence\n"), []);
});

Deno.test("an SMoE with the Switch loss per sequence trains on WebGPU through the CLI: loss falls", async () => {
  await withRunsDir(async (dir) => {
    const yaml = microSmoeYaml(
      "scope-sequence",
      `router: { train: topk, k: 2, infer: { kind: topk, k: 2 } }
loss: { mi: { attention: 0, mlp: 0 }, load_balance: 0.05, load_balance_scope: sequence }
train: { steps: 20, micro_batch: 4, log_every: 2, eval_every: 20, eval_batches: 2, checkpoint_every: 20, schedule: { warmup: 2 } }
`,
    );
    await trainFalls(dir, "seq.yaml", yaml, 10);
  });
});

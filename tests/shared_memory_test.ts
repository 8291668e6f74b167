/**
 * The training step, its evaluation and its router statistics pass never run at once, so they share the
 * buffers of the values they read within a run (gpu/executor.ts `SharedPlanBuffers`) and, in half precision,
 * the buffers of their f16 copies (gpu/graph_ops_f16.ts `F16Copies`); docs/performance.md "Memory". What
 * the trainer allocates is what `run` checks against `hardware.memory_budget` (core/plan/plan.ts
 * `trainPlanBytes`), and evaluations between steps change no step: the same losses, gradient norms and
 * parameters bit for bit as training without them, and the same evaluation as a backend that only trained.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { parseExperimentText } from "../core/config/mod.ts";
import { loadDataset } from "../core/data/dataset.ts";
import { shareBuffers } from "../core/graph/schedule.ts";
import { estimateMemory } from "../core/plan/counts.ts";
import {
  plan,
  trainMemoryEstimate,
  trainPlanBytes,
  trainPlanMemory,
  trainSchedules,
} from "../core/plan/plan.ts";
import type { EvalResult, StepStats, TrainState } from "../core/train/backend.ts";
import { GpuTrainBackend, type GpuTrainOptions } from "../core/train/gpu_backend.ts";
import { readTensor, writeTensor } from "../gpu/buffers.ts";
import { GraphExecutor, SharedPlanBuffers } from "../gpu/executor.ts";
import { GPU_IMPLS } from "../gpu/graph_ops.ts";
import { F16Copies, f16MatmulImpls } from "../gpu/graph_ops_f16.ts";
import { numel } from "../core/graph/ir.ts";
import { allocationGuard, interceptBuffers, randomArray, testGpu } from "./helpers/gpu.ts";
import { GpuLimitError } from "../gpu/errors.ts";
import { cli } from "./helpers/cli.ts";
import { closeRunStores } from "../core/runs/open_store.ts";
import { fmtBytes } from "../core/util/format.ts";

const MICRO = await Deno.readTextFile("tests/fixtures/micro.yaml");

/** The cases: plain, with accumulation and the statistics pass, and f16 operands (packed, any adapter). */
const CASES: { name: string; sets: string[]; options: GpuTrainOptions }[] = [
  { name: "f32", sets: [], options: {} },
  { name: "accumulation", sets: ["train.micro_batch=2", "loss.mi.mlp=0.01"], options: {} },
  { name: "f16", sets: ["hardware.precision=f16"], options: { f16: "f16-packed" } },
];

function _config(sets: string[]) {
  return parseExperimentText(MICRO, "micro.yaml", { sets }).points[0]!.config;
}

Deno.test("the trainer allocates what run checks against memory_budget, and evaluation shares the step's buffers", async () => {
  for (const { name, sets, options } of CASES) {
    const config = _config(sets);
    const p = plan(config, "train-dense", { lossScale: name === "f16" });
    const mem = trainPlanMemory(p, name === "f16" ? "f16" : "f32");
    assertEquals(trainMemoryEstimate(config).bytes, mem.total, name);
    assertEquals(trainPlanBytes(p, name === "f16" ? "f16" : "f32"), mem.total, name);
    const schedules = trainSchedules(p);
    assertEquals(schedules.length, name === "accumulation" ? 3 : 2, name);
    // Sharing saves what the smaller graphs' unpinned buffers held.
    const apart = 4 * schedules.reduce((n, s) => n + s.memory.totalElements, 0);
    assert(mem.graphs < apart, `${name}: shared ${mem.graphs} vs apart ${apart}`);
    assertEquals(mem.graphs, 4 * shareBuffers(schedules.map((s) => s.memory)).totalElements, name);
    // The buffers GpuTrainBackend.create allocates, by label.
    let all = 0, copies = 0;
    const counted = interceptBuffers(await testGpu(), (d, real) => {
      const b = real(d);
      if (d.usage & GPUBufferUsage.STORAGE) all += b.size;
      if (d.label?.startsWith("f16_copy")) copies += b.size;
      return b;
    });
    const b = await GpuTrainBackend.create(config, counted, {}, options);
    b.destroy();
    assertEquals(copies, mem.f16Copies, name);
    // What the backend names (and checks against the budget): the plan and its kernels' scratch.
    const scratch = b.memoryBytes - mem.total;
    assert(scratch > 0 && scratch < 0.1 * mem.total, `${name}: scratch ${scratch} of ${mem.total}`);
    // Beyond that: the graphs' inputs (token ids, targets) and small state (scalars, loss scale).
    assert(
      all >= b.memoryBytes && all - b.memoryBytes < 0.01 * mem.total,
      `${name}: allocated ${all}, named ${b.memoryBytes}, planned ${mem.total}`,
    );
    // The estimate from the model's shape alone undercounts the plan (temporaries and evaluation's buffers).
    assert(estimateMemory(config).train < mem.total, name);
  }
});

/** Trains `steps` steps, evaluating after those in `evalAfter`; the step statistics, evaluations and state. */
async function _train(
  sets: string[],
  options: GpuTrainOptions,
  steps: number,
  evalAfter: Set<number>,
): Promise<{ stats: StepStats[]; evals: EvalResult[]; state: TrainState }> {
  const config = _config(sets);
  const b = await GpuTrainBackend.create(config, await testGpu(), {}, options);
  try {
    const ds = await loadDataset(config);
    const stats: StepStats[] = [], evals: EvalResult[] = [];
    for (let t = 0; t < steps; t++) {
      stats.push(await b.step(ds.trainBatch(t, config.train.batch), 1e-2));
      if (evalAfter.has(t)) evals.push(await b.evaluate(ds.valBatch(t % 2, 2, config.train.batch)));
    }
    return { stats, evals, state: await b.exportState() };
  } finally {
    b.destroy();
  }
}

Deno.test("evaluations between steps change no step, and evaluate as they would after training alone (buffers shared)", async () => {
  const steps = 4;
  for (const { name, sets, options } of CASES) {
    const mixed = await _train(sets, options, steps, new Set([0, 1, 2, 3]));
    const plain = await _train(sets, options, steps, new Set([steps - 1]));
    const row = (s: StepStats) => [s.loss, s.lmLoss, s.gradNorm, s.finite];
    assertEquals(mixed.stats.map(row), plain.stats.map(row), name);
    for (const [p, v] of plain.state.params) {
      assertEquals(mixed.state.params.get(p)!.data, v.data, `${name}: ${p}`);
    }
    assertEquals(mixed.evals.at(-1), plain.evals[0], name);
    // And as a new backend given the trained state evaluates it, before any step of its own.
    const config = _config(sets), fresh = await GpuTrainBackend.create(config, await testGpu(), {}, options);
    try {
      await fresh.importState(plain.state);
      const ds = await loadDataset(config);
      assertEquals(
        await fresh.evaluate(ds.valBatch((steps - 1) % 2, 2, config.train.batch)),
        plain.evals[0],
        name,
      );
    } finally {
      fresh.destroy();
    }
    // The evaluations saw the model move (so they read the step's parameters, not a stale copy).
    assert(mixed.evals[0]!.lmLoss !== mixed.evals[2]!.lmLoss, name);
  }
});

/** The routers of the zoo on the micro model (as tests/router_zoo_train_test.ts trains them). */
const SMOE = ["model.kind=smoe", "router.train=topk", "loss.mi.attention=0", "loss.mi.mlp=0"];
const ROUTERS: [string, string[]][] = [
  ["DS-MoE, accumulation and the statistics pass", ["train.micro_batch=2", "loss.mi.mlp=0.01"]],
  ["DS-MoE, shared and fine-grained experts", ["model.mlp.segments=2", "model.mlp.shared=1"]],
  ["top-2 with capacity (tokens dropped)", [...SMOE, "router.capacity_factor=1.25"]],
  ["expert choice", [...SMOE, "router.train=expert_choice", "router.capacity=1.5", "router.infer.kind=topk"]],
  ["top-p", [...SMOE, "router.train=top_p", "router.p=0.5", "router.infer.kind=top_p", "router.infer.p=0.5"]],
  ["ReLU", [
    ...SMOE,
    "router.train=relu",
    "loss.l1=0.001",
    "router.target_sparsity=0.5",
    "router.infer.kind=dense",
  ]],
  ["null experts", [...SMOE, "router.null_experts=2", "router.k=3", "router.infer.k=3"]],
  ["aux-free", [...SMOE, "router.balance=aux_free", "router.bias_rate=0.001", "loss.load_balance=0"]],
];

Deno.test("one training step's outputs are the same bits with every buffer its own as with shared buffers (every router) and lifetime-planned f16 copies", async () => {
  const ctx = await testGpu();
  for (const [name, sets] of ROUTERS) {
    const p = plan(_config(sets), "train-dense");
    const leaves = [...p.model.graph.leaves.values()].map((l) => l.value);
    const outputs = async (f16: "none" | "scratch" | "planned", shared: boolean): Promise<number[][]> => {
      const pool = shared ? new SharedPlanBuffers(ctx, trainSchedules(p)) : undefined;
      const copies = f16 === "planned" ? new F16Copies(ctx, trainSchedules(p)) : undefined;
      const impls = f16 === "none"
        ? GPU_IMPLS
        : f16MatmulImpls("f16-packed", copies?.forSchedule(p.schedule));
      // Evaluation (and the statistics pass) first, so that the step finds the shared buffers holding their
      // values, where its own buffers start as zeros: a kernel that reads what it did not write differs.
      const others = trainSchedules(p).slice(1).map((s) =>
        new GraphExecutor(ctx, s, leaves, undefined, GPU_IMPLS, pool)
      );
      const exec = new GraphExecutor(ctx, p.schedule, leaves, undefined, impls, pool);
      for (const [i, v] of leaves.entries()) {
        const n = numel(v.shape);
        // Token ids below the vocabulary; a batch's mean router probabilities (pbar) a distribution.
        const data = v.dtype === "u32"
          ? new Uint32Array(n).map((_, j) => (i + j) % 7)
          : v.name.endsWith("pbar")
          ? new Float32Array(n).fill(1 / n)
          : Float32Array.from(randomArray(n, 100 + i, -0.5, 0.5));
        for (const x of [exec, ...others]) writeTensor(ctx, x.tensor(v), data);
      }
      for (const x of others) x.run();
      await exec.run().done();
      const out = await Promise.all(
        p.outputs.map(async (v) => Array.from(await readTensor(ctx, exec.tensor(v)))),
      );
      for (const x of [exec, ...others]) x.destroy();
      pool?.destroy(), copies?.destroy();
      return out;
    };
    const own = await outputs("none", false);
    const bad = own.flatMap((
      o,
      k,
    ) => (o.every(Number.isFinite) ? [] : [`${p.outputs[k]!.name}: ${o.slice(0, 4)}`]));
    assert(bad.length === 0, `${name}: ${bad.join("; ")}`);
    assert(JSON.stringify(await outputs("none", true)) === JSON.stringify(own), `${name}: shared buffers`);
    if (name.startsWith("DS-MoE, acc")) {
      const f16 = await outputs("scratch", false);
      assertEquals(await outputs("planned", true), f16, `${name}: planned f16 copies`);
      assert(JSON.stringify(f16) !== JSON.stringify(own), "f16 operands change the bits");
    }
  }
});

Deno.test("run names the device memory training takes, and refuses (exit 2, nothing allocated) a budget the kernels' scratch passes", async () => {
  const b = await GpuTrainBackend.create(_config([]), await testGpu());
  const named = b.memoryBytes, planned = trainMemoryEstimate(_config([])).bytes;
  b.destroy();
  assert(planned < named);
  const dir = await Deno.makeTempDir();
  try {
    const r = await cli(
      ...["run", "tests/fixtures/micro.yaml", "--runs-dir", dir, "--no-dashboard", "--stop-after", "1"],
    );
    assertEquals(r.code, 0, r.err.join("\n"));
    const line = [...r.out, ...r.err].find((l) => l.startsWith("device: "));
    assert(line?.endsWith(`parameters; ${fmtBytes(named)} of device memory`), `${line} (${named})`);
    // A budget the plan fits (so the command's own check passes) but not with the kernels' scratch.
    const budget = `hardware.memory_budget=${planned + Math.floor((named - planned) / 2)}`;
    const guard = allocationGuard(await testGpu());
    const e = await GpuTrainBackend.create(_config([budget]), guard.ctx).then(() => null, (e) => e);
    assert(e instanceof GpuLimitError && /kernels' scratch/.test(e.message), String(e));
    assertEquals(guard.allocations(), 0);
    const refused = await cli(
      ...[
        "run",
        "tests/fixtures/micro.yaml",
        "--runs-dir",
        `${dir}/other`,
        "--no-dashboard",
        "--set",
        budget,
      ],
    );
    assertEquals(refused.code, 2, refused.err.join("\n"));
    const text = refused.err.join("\n");
    assert(/^Plan refused: training needs .* more than hardware\.memory_budget/m.test(text), text);
    assert(!/\n\s+at /.test(text), "no stack trace");
    assertEquals([...Deno.readDirSync(dir)].map((x) => x.name).includes("other"), false, "no runs directory");
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * Shared pieces of the router tests (docs/design.md §16): config error lines, tiny SMoE configs, random
 * batches and parameter feeds, the relative error of float64 results, the sparse inference graph's feeds
 * from a trained float64 backend, WebGPU steps compared with float64 steps, and tiny SMoEs trained through
 * the CLI in a temporary runs directory.
 *
 * @module
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { ConfigError, parseExperimentText } from "../../core/config/mod.ts";
import { type Experiment, ExperimentSchema } from "../../core/config/schema.ts";
import type { Batch } from "../../core/data/dataset.ts";
import type { HostValue } from "../../core/graph/cpu_executor.ts";
import type { ModelGraph } from "../../core/plan/model.ts";
import type { StepStats } from "../../core/train/backend.ts";
import { CpuTrainBackend } from "../../core/train/cpu_backend.ts";
import { GpuTrainBackend } from "../../core/train/gpu_backend.ts";
import { closeRunStores } from "../../core/runs/open_store.ts";
import { RunDir } from "../../core/runs/run_dir.ts";
import { Rng } from "../../core/util/rng.ts";
import { cli, type CliResult } from "./cli.ts";
import { assertClose, testGpu } from "./gpu.ts";

/** The config error lines of `text` parsed as t.yaml; [] when it is accepted. */
export function errorLines(text: string): string[] {
  try {
    parseExperimentText(text, "t.yaml");
  } catch (e) {
    if (e instanceof ConfigError) return e.message.split("\n");
    throw e;
  }
  return [];
}

/** The config error lines of `text` parsed as t.yaml; throws when it is accepted. */
export function rejectedLines(text: string): string[] {
  const lines = errorLines(text);
  if (lines.length === 0) throw new Error("expected a ConfigError, but the config was accepted");
  return lines;
}

/** The YAML head of an SMoE of 4 MHA-attended experts, for config error tests. */
export const SMOE_YAML = "model:\n  kind: smoe\n  attention: { kind: mha }\n  mlp: { experts: 4 }\n";

/** What a tiny SMoE of `tinySmoe` varies. */
export interface TinySmoe {
  seqLen: number;
  initStd: number;
  /** Merged into the MLP's { experts: 4, hidden: 8 }. */
  mlp?: Record<string, unknown>;
  router: Record<string, unknown>;
  loss?: Record<string, unknown>;
  batch?: number;
  microBatch?: number;
}

/**
 * A tiny SMoE: d 16, 2 layers, MHA of 2 heads × 8, 4 experts of hidden 8, AdamW lr 1e-2, `batch` (4)
 * sequences of `seqLen` tokens.
 */
export function tinySmoe(o: TinySmoe): Experiment {
  return ExperimentSchema.parse({
    data: { seq_len: o.seqLen },
    model: {
      kind: "smoe",
      d_model: 16,
      layers: 2,
      init_std: o.initStd,
      attention: { kind: "mha", heads: 2, head_dim: 8 },
      mlp: { experts: 4, hidden: 8, ...o.mlp },
    },
    router: o.router,
    ...(o.loss ? { loss: o.loss } : {}),
    train: { batch: o.batch ?? 4, micro_batch: o.microBatch, optimizer: { lr: 1e-2 } },
  });
}

/** The sizes of a tiny MoA model of `tinyMoa`. */
export interface MoaSize {
  seqLen: number;
  dModel: number;
  headsPerExpert: number;
  headDim: number;
  hidden: number;
}

/**
 * A tiny 2-layer model with 3 routed attention experts (MoA) and 4 MLP experts of `size`, under the config
 * sections `over` (its `model` merged into the model's).
 */
export function tinyMoa(over: Record<string, Record<string, unknown>>, size: MoaSize): Experiment {
  return ExperimentSchema.parse({
    ...over,
    data: { seq_len: size.seqLen },
    model: {
      d_model: size.dModel,
      layers: 2,
      attention: { kind: "moa", experts: 3, heads_per_expert: size.headsPerExpert, head_dim: size.headDim },
      mlp: { experts: 4, hidden: size.hidden },
      ...over.model,
    },
  });
}

/** Feeds of `m`'s ids then targets, random bytes from `rng`, and of each router state leaf at its init. */
export function idAndStateFeeds(m: ModelGraph, rng: Rng): Map<number, HostValue> {
  const feeds = new Map<number, HostValue>([
    [m.ids.id, Uint32Array.from({ length: m.tokens }, () => rng.int(256))],
    [m.targets.id, Uint32Array.from({ length: m.tokens }, () => rng.int(256))],
  ]);
  for (const s of m.routerState) feeds.set(s.value.id, Float64Array.of(s.init));
  return feeds;
}

/** `tokens` random byte ids as inputs and as targets, from `seed`. */
export function randomBatch(seed: number, tokens: number): Batch {
  const rng = new Rng(seed);
  const ids = () => Uint32Array.from({ length: tokens }, () => rng.int(256));
  return { inputs: ids(), targets: ids(), domains: null };
}

/** max |a − b| / max |a|. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(a[i]!));
  }
  return worst / Math.max(scale, 1e-300);
}

/**
 * Feeds of `m`: the inputs of randomBatch(1) and the targets of randomBatch(2), and every parameter
 * normal · `std` from `rng`.
 */
export function randomModelFeeds(m: ModelGraph, rng: Rng, std: number): Map<number, HostValue> {
  const feeds = new Map<number, HostValue>([
    [m.ids.id, randomBatch(1, m.tokens).inputs],
    [m.targets.id, randomBatch(2, m.tokens).targets],
  ]);
  for (const p of m.params) {
    feeds.set(
      p.value.id,
      Float64Array.from({ length: p.value.shape.reduce((a, b) => a * b, 1) }, () => rng.normal() * std),
    );
  }
  return feeds;
}

/**
 * Feeds of an inference model `m` on `batch`: `train`'s parameters, and router state (the aux-free
 * biases) from `state` where the model has no such parameter.
 */
export function trainedFeeds(
  m: ModelGraph,
  batch: Batch,
  train: CpuTrainBackend,
  state?: Map<string, ArrayLike<number>>,
): Map<number, HostValue> {
  const feeds = new Map<number, HostValue>([[m.ids.id, batch.inputs], [m.targets.id, batch.targets]]);
  for (const s of m.params) {
    const name = s.value.name;
    feeds.set(s.value.id, (train.params.get(name) ?? (state && Float64Array.from(state.get(name)!)))!);
  }
  return feeds;
}

/** The tolerance of a WebGPU step's loss and gradient norm against the float64 step's. */
export const STEP_TOL = { atol: 4e-6, rtol: 1e-5 };

/** Runs `body` with a float64 and a WebGPU backend of `c`, destroying the WebGPU one after. */
export async function withBackends(
  c: Experiment,
  body: (cpu: CpuTrainBackend, gpu: GpuTrainBackend) => Promise<void>,
): Promise<void> {
  const ctx = await testGpu();
  const cpu = new CpuTrainBackend(c), gpu = await GpuTrainBackend.create(c, ctx);
  try {
    await body(cpu, gpu);
  } finally {
    gpu.destroy();
  }
}

/**
 * `steps` steps at lr 1e-2 on both backends, on batch(t) at step t: asserts the losses and gradient norms
 * close (STEP_TOL, "step t"), then calls `each` with both steps' statistics.
 */
export async function compareSteps(
  cpu: CpuTrainBackend,
  gpu: GpuTrainBackend,
  steps: number,
  batch: (t: number) => Batch,
  each?: (got: StepStats, want: StepStats, t: number) => void,
): Promise<void> {
  for (let t = 0; t < steps; t++) {
    const b = batch(t);
    const [want, got] = [await cpu.step(b, 1e-2), await gpu.step(b, 1e-2)];
    assertClose([got.loss, got.gradNorm], [want.loss, want.gradNorm], STEP_TOL, `step ${t}`);
    each?.(got, want, t);
  }
}

/** Asserts every parameter of the WebGPU backend within `atol` of the float64 backend's. */
export async function assertParamsClose(cpu: CpuTrainBackend, gpu: GpuTrainBackend, atol: number) {
  const [want, got] = [await cpu.exportState(), await gpu.exportState()];
  for (const [p, w] of want.params) {
    assertClose(got.params.get(p)!.data, w.data, { atol, rtol: 0 }, `parameter ${p}`);
  }
}

/** Asserts the WebGPU backend's aux-free biases (of layers 0 and 1) within 1e-7 of the float64 backend's. */
export async function assertBiasesClose(cpu: CpuTrainBackend, gpu: GpuTrainBackend) {
  const [want, got] = [await cpu.exportState(), await gpu.exportState()];
  assertEquals([...got.routerState!.keys()], ["h0.mlp.router.balance_bias", "h1.mlp.router.balance_bias"]);
  for (const [name, b] of want.routerState!) {
    assertClose(got.routerState!.get(name)!, b, { atol: 1e-7, rtol: 0 }, name);
  }
}

/**
 * The micro fixture (tests/fixtures/micro.yaml) as an SMoE named `name` on 20000 synthetic bytes: MHA of 2
 * heads × 8, 4 experts of hidden 16, then the YAML lines `tail`.
 */
export function microSmoeYaml(name: string, tail: string): string {
  return `extends: ${Deno.cwd()}/tests/fixtures/micro.yaml
name: ${name}
data: { synthetic_bytes: 20000 }
model:
  kind: smoe
  attention: { kind: mha, heads: 2, head_dim: 8 }
  mlp: { experts: 4, hidden: 16 }
${tail}`;
}

/** Runs `body` with a temporary runs directory, closing the run stores and removing it after. */
export async function withRunsDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await body(dir);
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Writes `yaml` to `dir`/`file` and trains it through `run --json` into `dir`, asserting it exits 0: the
 * CLI result and `at(key)`, the logged values of a metric in order.
 */
export async function trainYaml(
  dir: string,
  file: string,
  yaml: string,
): Promise<{ r: CliResult; at: (key: string) => number[] }> {
  await Deno.writeTextFile(`${dir}/${file}`, yaml);
  const r = await cli("run", `${dir}/${file}`, "--runs-dir", dir, "--json", "--no-dashboard");
  assertEquals(r.code, 0, r.err.join("\n"));
  const metrics = await (await RunDir.open(dir, r.json().run_id)).readMetrics();
  return { r, at: (key: string) => metrics.filter((p) => p.key === key).map((p) => p.value) };
}

/**
 * `trainYaml`, then asserts the final validation and training losses below 4.0 (ln 256 = 5.55 at the start)
 * and `points` logged training losses, the last below the first.
 */
export async function trainFalls(
  dir: string,
  file: string,
  yaml: string,
  points: number,
): Promise<{ r: CliResult; at: (key: string) => number[] }> {
  const run = await trainYaml(dir, file, yaml), j = run.r.json();
  assert(j.final["val/loss"] < 4.0 && j.final["train/loss"] < 4.0, JSON.stringify(j.final));
  const loss = run.at("train/loss");
  assert(loss.length === points && loss.at(-1)! < loss[0]!, `train/loss ${loss}`);
  return run;
}

/**
 * `hardware.backend: webgpu` — the training graph on the GPU. One step is one command encoder: the graph
 * (forward, losses, backward), partial sums of squared gradients, the norm/clip/finite kernel and AdamW per
 * parameter, then a copy of the step's scalars into a mappable buffer. The host maps that buffer
 * asynchronously, so the training loop reads losses a few steps behind and never waits inside a step.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import type { Batch } from "../data/dataset.ts";
import type { Value } from "../graph/ir.ts";
import { schedule } from "../graph/schedule.ts";
import type { ModelGraph } from "../plan/model.ts";
import { plan } from "../plan/plan.ts";
import { createTensor, type GpuTensor, readTensor, writeTensor } from "../../gpu/buffers.ts";
import { type GpuContext, openGpu } from "../../gpu/device.ts";
import { type KernelCall, prepare, type PreparedCall, releaseCall, Step } from "../../gpu/dispatch.ts";
import { GraphExecutor } from "../../gpu/executor.ts";
import "../../gpu/graph_ops.ts";
import type { EvalResult, StepStats, TrainBackend, TrainState } from "./backend.ts";
import { initParams } from "./init.ts";
import { optimizerCalls } from "./optimizer_calls.ts";
import { routerStats } from "./router_stats.ts";

/**
 * Faults to inject, for reliability tests (`DSMOE_FAULT_NAN_GRAD`, see {@linkcode parseFaultSteps}):
 * `nanGradAt(t)` true puts a NaN into the first gradient of optimizer step t (1-based), after the backward
 * pass and before clipping and AdamW, as a real overflow would.
 */
export interface TrainFaults {
  nanGradAt?: (t: number) => boolean;
  /** True for the optimizer step t (1-based) at whose start the device is destroyed (a simulated loss). */
  loseDeviceAt?: (t: number) => boolean;
}

/**
 * Parses a step list such as `3,4,10-` (step 3, step 4, every step from 10 on) into a predicate.
 *
 * @example
 * ```ts
 * import { parseFaultSteps } from "./gpu_backend.ts";
 * const at = parseFaultSteps("3,10-");
 * if (!at(3) || at(4) || !at(12)) throw new Error("steps");
 * ```
 */
export function parseFaultSteps(text: string): (t: number) => boolean {
  const parts = text.split(",").map((s) => s.trim()).filter((s) => s !== "");
  const exact = new Set<number>();
  let from = Infinity;
  for (const p of parts) {
    const m = /^(\d+)(-?)$/.exec(p);
    if (!m) throw new RangeError(`Cannot parse fault step "${p}" (expected N or N-)`);
    if (m[2]) from = Math.min(from, Number(m[1]));
    else exact.add(Number(m[1]));
  }
  return (t) => exact.has(t) || t >= from;
}

/** The WebGPU backend. Create with {@linkcode GpuTrainBackend.create}. */
export class GpuTrainBackend implements TrainBackend {
  readonly description: string;
  readonly ctx: GpuContext;
  readonly model: ModelGraph;
  readonly #c: Readonly<Experiment>;
  readonly #train: GraphExecutor;
  readonly #eval: GraphExecutor;
  readonly #opt: PreparedCall[];
  readonly #optSources: { code: string; label: string }[];
  readonly #ownsDevice: boolean;
  readonly #m = new Map<string, GpuTensor>();
  readonly #v = new Map<string, GpuTensor>();
  readonly #hyper: GpuTensor; // [lr, 1 − β1^t, 1 − β2^t]
  readonly #stats: GpuTensor; // [grad norm, clip, finite]
  readonly #report: Value[]; // scalars read back each step
  readonly #firstGrad: GpuTensor;
  #faults: TrainFaults = {};
  #nan: GpuTensor | null = null;
  #t = 0;

  private constructor(ctx: GpuContext, c: Readonly<Experiment>, ownsDevice: boolean) {
    this.ctx = ctx;
    this.#ownsDevice = ownsDevice;
    this.#c = c;
    this.description = `webgpu: ${ctx.adapter.description}`;
    const p = plan(c, "train-dense");
    this.model = p.model;
    const m = this.model, grads = p.grads;
    this.#report = p.outputs.slice(0, p.outputs.length - grads.length);
    const leaves = [...m.graph.leaves.values()].map((l) => l.value);
    this.#train = new GraphExecutor(ctx, p.schedule, leaves);
    const shared = new Map(leaves.map((v) => [v.id, this.#train.tensor(v)]));
    this.#eval = new GraphExecutor(
      ctx,
      schedule(m.graph, [m.lmLoss, ...m.routers.map((r) => r.probs)]),
      leaves,
      shared,
    );
    this.#hyper = createTensor(ctx, [3], "f32", undefined, "adam.hyper");
    this.#stats = createTensor(ctx, [3], "f32", undefined, "grad.stats");
    this.#firstGrad = this.#train.tensor(grads[0]!);
    const calls = this.#optimizerCalls(grads);
    this.#optSources = calls.map(({ code, label }) => ({ code, label }));
    this.#opt = calls.map((call) => prepare(ctx, call));
  }

  /** Opens the device, builds and compiles everything, and uploads the seeded initial parameters. */
  static async create(
    c: Readonly<Experiment>,
    ctx?: GpuContext,
    faults: TrainFaults = {},
  ): Promise<GpuTrainBackend> {
    const gpu = ctx ??
      await openGpu({ powerPreference: c.hardware.power_preference, validation: c.hardware.validation });
    const b = new GpuTrainBackend(gpu, c, !ctx);
    b.#faults = faults;
    if (faults.nanGradAt) b.#nan = createTensor(gpu, [1], "f32", Float32Array.of(NaN), "fault.nan");
    await b.#train.check();
    await b.#eval.check();
    for (const { code, label } of b.#optSources) await gpu.pipelines.check(code, label);
    await gpu.checkAllocations(); // the optimizer's moments and partial sums
    const init = initParams(b.model.params, c.seed);
    for (const p of b.model.params) writeTensor(gpu, b.#train.tensor(p.value), init.get(p.value.name)!);
    return b;
  }

  #optimizerCalls(grads: Value[]): KernelCall[] {
    const m = this.model;
    const r = optimizerCalls(
      this.ctx,
      m.params.map((p, i) => ({
        name: p.value.name,
        param: this.#train.tensor(p.value),
        grad: this.#train.tensor(grads[i]!),
        decay: p.decay,
      })),
      {
        loss: this.#train.tensor(m.loss),
        stats: this.#stats,
        hyper: this.#hyper,
        optimizer: this.#c.train.optimizer,
        gradClip: this.#c.train.grad_clip,
      },
    );
    for (const [name, t] of r.m) this.#m.set(name, t);
    for (const [name, t] of r.v) this.#v.set(name, t);
    return r.calls;
  }

  step(batch: Batch, lr: number, options: { profile?: boolean } = {}): Promise<StepStats> {
    const ctx = this.ctx, o = this.#c.train.optimizer;
    ctx.assertAlive();
    ctx.assertAllocated();
    if (options.profile && !ctx.hasTimestamps) {
      throw new RangeError(`Cannot profile: the adapter (${ctx.adapter.description}) has no timestamp-query`);
    }
    if (this.#faults.loseDeviceAt?.(this.#t + 1)) ctx.device.destroy();
    this.#writeBatch(batch);
    this.#t++;
    writeTensor(
      ctx,
      this.#hyper,
      new Float32Array([lr, 1 - o.betas[0] ** this.#t, 1 - o.betas[1] ** this.#t]),
    );
    const step = new Step(ctx, { label: "train-step", timing: options.profile, maxTimed: 2048 });
    this.#train.encode(step);
    if (this.#nan && this.#faults.nanGradAt?.(this.#t)) {
      step.encoder.copyBufferToBuffer(this.#nan.buffer, 0, this.#firstGrad.buffer, 0, 4);
    }
    for (const c of this.#opt) step.dispatch(c);
    const n = this.#report.length + 3;
    const staging = ctx.device.createBuffer({
      size: n * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const enc = step.encoder;
    this.#report.forEach((v, i) =>
      enc.copyBufferToBuffer(this.#train.tensor(v).buffer, 0, staging, i * 4, 4)
    );
    enc.copyBufferToBuffer(this.#stats.buffer, 0, staging, this.#report.length * 4, 12);
    step.submit();
    return staging.mapAsync(GPUMapMode.READ).catch(async (e) => {
      // A lost device fails the read-back; say so rather than pass on WebGPU's generic error.
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([ctx.device.lost, new Promise((r) => timer = setTimeout(r, 200))]);
      clearTimeout(timer);
      ctx.assertAlive();
      throw e;
    }).then(async () => {
      const r = new Float32Array(staging.getMappedRange().slice(0));
      staging.destroy();
      const nAtt = this.model.miLoss.attention.length, k = this.#report.length;
      const sum = (a: number, b: number) => Array.from(r.subarray(a, b)).reduce((x, y) => x + y, 0);
      return {
        loss: r[0]!,
        lmLoss: r[1]!,
        miAttention: sum(2, 2 + nAtt),
        miMlp: sum(2 + nAtt, k),
        gradNorm: r[k]!,
        finite: r[k + 2] === 1,
        ...(options.profile ? { kernels: await step.timings() } : {}),
      };
    });
  }

  async evaluate(batch: Batch): Promise<EvalResult> {
    this.#writeBatch(batch);
    await this.#eval.run().done();
    const m = this.model;
    const lm = (await readTensor(this.ctx, this.#eval.tensor(m.lmLoss)))[0]!;
    const routers = [];
    for (const r of m.routers) {
      const probs = await readTensor(this.ctx, this.#eval.tensor(r.probs));
      routers.push(routerStats(r.layer, r.kind, probs, r.probs.shape[1]!));
    }
    return { lmLoss: lm, routers };
  }

  async exportState(): Promise<TrainState> {
    const params = new Map<string, { shape: readonly number[]; data: Float32Array }>();
    const adamM = new Map<string, Float32Array>(), adamV = new Map<string, Float32Array>();
    for (const p of this.model.params) {
      const name = p.value.name;
      params.set(name, {
        shape: p.value.shape,
        data: (await readTensor(this.ctx, this.#train.tensor(p.value))) as Float32Array,
      });
      adamM.set(name, (await readTensor(this.ctx, this.#m.get(name)!)) as Float32Array);
      adamV.set(name, (await readTensor(this.ctx, this.#v.get(name)!)) as Float32Array);
    }
    return { params, adamM, adamV, step: this.#t };
  }

  importState(s: TrainState): Promise<void> {
    for (const p of this.model.params) {
      const name = p.value.name, saved = s.params.get(name);
      if (!saved) throw new RangeError(`Checkpoint has no parameter "${name}"`);
      writeTensor(this.ctx, this.#train.tensor(p.value), saved.data);
      writeTensor(this.ctx, this.#m.get(name)!, s.adamM.get(name)!);
      writeTensor(this.ctx, this.#v.get(name)!, s.adamV.get(name)!);
    }
    this.#t = s.step;
    return Promise.resolve();
  }

  destroy(): void {
    this.#nan?.buffer.destroy();
    this.#opt.forEach(releaseCall);
    this.#train.destroy();
    this.#eval.destroy();
    if (this.#ownsDevice) this.ctx.destroy();
  }

  #writeBatch(batch: Batch): void {
    writeTensor(this.ctx, this.#train.tensor(this.model.ids), batch.inputs);
    writeTensor(this.ctx, this.#train.tensor(this.model.targets), batch.targets);
  }
}

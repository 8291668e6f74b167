/**
 * `hardware.backend: webgpu` — the training graph on the GPU. One step is one command encoder: the graph
 * (forward, losses, backward), partial sums of squared gradients, the norm/clip/finite kernel and AdamW per
 * parameter, then a copy of the step's scalars into a mappable buffer. The host maps that buffer
 * asynchronously, so the training loop reads losses a few steps behind and never waits inside a step.
 *
 * Gradient accumulation (`train.micro_batch` < `train.batch`, core/plan/plan.ts) stays in that one encoder:
 * the whole batch is uploaded once and each micro-step copies its slice of tokens into the graph's inputs.
 * When a batch-level router loss is on, a forward pass per micro-batch first averages the routers'
 * statistics into the training graph's inputs; then every micro-step runs the graph and adds its gradients
 * and loss scalars into accumulators (the last one scales them to the mean), which the optimizer reads.
 *
 * @module
 */
import { type Experiment, parseByteSize, precisionOf } from "../config/schema.ts";
import type { Batch } from "../data/dataset.ts";
import { numel, type Value } from "../graph/ir.ts";
import type { Schedule } from "../graph/schedule.ts";
import type { ModelGraph } from "../plan/model.ts";
import { balanceBiasUpdate } from "../../gpu/kernels/balance.ts";
import { plan, trainPlanBytes, trainSchedules } from "../plan/plan.ts";
import { type GraphFlops, trainStepFlops } from "../plan/flops.ts";
import { createTensor, GpuTensor, readTensor, writeTensor } from "../../gpu/buffers.ts";
import { assertAdapterFeatures, type GpuContext, openGpu } from "../../gpu/device.ts";
import { GPU_IMPLS, type GpuTable } from "../../gpu/graph_ops.ts";
import { F16Copies, f16MatmulImpls, type F16Storage } from "../../gpu/graph_ops_f16.ts";
import { lossScaleUpdate } from "../../gpu/kernels/optimizer.ts";
import { requiredGpuFeatures } from "./gpu_features.ts";
import { checkLossScaleSettings, LOSS_SCALE_DEFAULTS, type LossScaleSettings } from "./loss_scale.ts";
import { type KernelCall, prepare, type PreparedCall, releaseCall, Step } from "../../gpu/dispatch.ts";
import { GraphExecutor, SharedPlanBuffers } from "../../gpu/executor.ts";
import { accumulateCalls, type AccumulatePair } from "../../gpu/kernels/accumulate.ts";
import { assertScheduleBuilds, placeholderTensor } from "../../gpu/preflight.ts";
import { GpuLimitError } from "../../gpu/errors.ts";
import { f16Words } from "../../gpu/kernels/f16.ts";
import { fmtBytes } from "../util/format.ts";
import type { EvalResult, StepStats, TrainBackend, TrainState } from "./backend.ts";
import { initParams } from "./init.ts";
import { optimizerCalls } from "./optimizer_calls.ts";
import { routerStats, routerStepStats, trainRuleStats } from "./router_stats.ts";
import { jitterNoise } from "./jitter.ts";
import { l1LambdaUpdate } from "../../gpu/kernels/router_zoo.ts";

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

/**
 * How the backend runs a config beyond what the config says, for tests (docs/performance.md "Half
 * precision"): `f16` picks how f16 operands are read ("f16": `array<f16>`, the device must have shader-f16,
 * the default of `hardware.precision: f16`; "f16-packed": unpacked from u32 words, the same bits and sums on
 * any adapter, so llvmpipe can run the f16 path end to end); `lossScale` turns dynamic loss scaling on with
 * these settings (on by default with f16, off with f32; false turns it off).
 */
export interface GpuTrainOptions {
  f16?: F16Storage;
  lossScale?: LossScaleSettings | false;
}

/** Prepared calls of one accumulation, by the micro-step's place: first, in between, last. */
interface AccumulationCalls {
  first: PreparedCall[];
  mid: PreparedCall[];
  last: PreparedCall[];
}

/** The WebGPU backend. Create with {@linkcode GpuTrainBackend.create}. */
export class GpuTrainBackend implements TrainBackend {
  readonly description: string;
  readonly adapter: string;
  readonly modelFlops: GraphFlops;
  readonly memoryBytes: number;
  readonly ctx: GpuContext;
  readonly model: ModelGraph;
  /** Micro-steps per optimizer step (`train.batch / train.micro_batch`; 1 without accumulation). */
  readonly accumulation: number;
  readonly #c: Readonly<Experiment>;
  readonly #train: GraphExecutor;
  readonly #eval: GraphExecutor;
  /** The router statistics pass (null unless a batch-level router loss is accumulated). */
  readonly #routerStats: GraphExecutor | null;
  readonly #sharedPlan: SharedPlanBuffers;
  readonly #f16Copies: F16Copies | null;
  readonly #opt: PreparedCall[];
  /**
   * After the optimizer: the update of each router state value (docs/design.md §16: the aux-free balancing
   * biases, ReLU routing's λ); empty for most models.
   */
  readonly #routerStateCalls: PreparedCall[];
  /** Kernel sources outside the graphs (accumulation, optimizer), compiled and checked by `create`. */
  readonly #sources: { code: string; label: string }[] = [];
  readonly #ownsDevice: boolean;
  readonly #m = new Map<string, GpuTensor>();
  readonly #v = new Map<string, GpuTensor>();
  readonly #hyper: GpuTensor; // [lr, 1 − β1^t, 1 − β2^t]
  readonly #stats: GpuTensor; // [grad norm, clip, finite]
  readonly #report: GpuTensor[]; // scalars read back each step: loss, LM loss, MI per router, model scalars
  readonly #loads: GpuTensor[]; // the routers' selection statistics read back each step (train: topk)
  /** With accumulation and router jitter: per router input, the whole batch's noise, sliced per micro-step. */
  readonly #jitterBatch: GpuTensor[] = [];
  readonly #grads: GpuTensor[]; // what the optimizer reads: the graph's gradients, or their accumulators
  /** With accumulation: the whole batch's tokens and targets, sliced into the graph's inputs per micro-step. */
  readonly #batchTokens: { ids: GpuTensor; targets: GpuTensor } | null = null;
  readonly #accumulators: GpuTensor[] = [];
  readonly #accumulate: AccumulationCalls | null = null;
  readonly #accumulateStats: AccumulationCalls | null = null;
  #faults: TrainFaults = {};
  #nan: GpuTensor | null = null;
  #t = 0;
  /** How matmul operands are stored: "f32", or f16 (core/train/loss_scale.ts, gpu/graph_ops_f16.ts). */
  readonly precision: "f32" | F16Storage;
  /** Dynamic loss scaling's settings and state [S, good steps, S of the last step]; null when off. */
  readonly #lossScale: { settings: LossScaleSettings; state: GpuTensor; update: PreparedCall } | null = null;

  private constructor(
    ctx: GpuContext,
    c: Readonly<Experiment>,
    ownsDevice: boolean,
    options: GpuTrainOptions,
  ) {
    this.ctx = ctx;
    this.#ownsDevice = ownsDevice;
    this.#c = c;
    this.description = `webgpu: ${ctx.adapter.description}`;
    this.adapter = ctx.adapter.description;
    this.precision = options.f16 ?? (precisionOf(c) === "f16" ? "f16" : "f32");
    const scaling = options.lossScale ?? (this.precision === "f32" ? false : LOSS_SCALE_DEFAULTS);
    if (scaling) checkLossScaleSettings(scaling);
    const p = plan(c, "train-dense", { lossScale: !!scaling });
    this.modelFlops = trainStepFlops(p);
    this.model = p.model;
    this.accumulation = p.accumulation;
    const m = this.model, grads = p.grads;
    const evalSchedule = p.evaluate;
    // Every executor (and preflight) its own table: each execution makes its own f16 copies of operands.
    const f16 = this.precision === "f32" ? null : this.precision;
    const impls = (copies?: (v: Value) => GpuTensor): GpuTable =>
      f16 ? f16MatmulImpls(f16, copies) : GPU_IMPLS;
    // Refuse sizes this device cannot run (llvmpipe's loop limit, dispatch limits) before allocating; the
    // kernels' scratch (e.g. split-K partial sums on real GPUs) counts with the plan's bytes in the budget.
    const planned = (v: Value) =>
      placeholderTensor({ shape: [f16Words(numel(v.shape))], dtype: "u32", name: v.name });
    const scratch = assertScheduleBuilds(ctx, p.schedule, "Cannot plan the training step", impls(planned)) +
      (p.stats
        ? assertScheduleBuilds(ctx, p.stats, "Cannot plan the router statistics pass", impls(planned))
        : 0) +
      assertScheduleBuilds(ctx, evalSchedule, "Cannot plan evaluation", impls(planned));
    const planBytes = trainPlanBytes(p, f16 ? "f16" : "f32");
    this.memoryBytes = planBytes + scratch;
    const budget = parseByteSize(c.hardware.memory_budget);
    if (this.memoryBytes > budget) {
      throw new GpuLimitError(
        `training needs ${fmtBytes(this.memoryBytes)} of device memory on ${ctx.adapter.description} ` +
          `(${fmtBytes(planBytes)} planned, ${fmtBytes(scratch)} of its kernels' scratch), more than ` +
          `hardware.memory_budget (${fmtBytes(budget)}): raise the budget, or lower train.micro_batch ` +
          "(gradient accumulation), data.seq_len or the model",
      );
    }
    const leaves = [...m.graph.leaves.values()].map((l) => l.value);
    // Loss scaling's state; the backward pass starts from its first element (the graph's loss_scale leaf).
    const state = scaling
      ? createTensor(ctx, [3], "f32", Float32Array.of(scaling.init, 0, scaling.init), "loss_scale")
      : null;
    const given = new Map<number, GpuTensor>();
    if (state && p.lossScale) {
      given.set(p.lossScale.id, new GpuTensor(state.buffer, p.lossScale.shape, "f32", "loss_scale"));
    }
    // The step, evaluation and the statistics pass never run at once: they share their planned buffers
    // and the buffers of their f16 copies (docs/performance.md "Memory").
    const schedules = trainSchedules(p);
    this.#sharedPlan = new SharedPlanBuffers(ctx, schedules);
    this.#f16Copies = f16 ? new F16Copies(ctx, schedules) : null;
    const pool = this.#sharedPlan, copies = (s: Schedule) => this.#f16Copies?.forSchedule(s);
    this.#train = new GraphExecutor(ctx, p.schedule, leaves, given, impls(copies(p.schedule)), pool);
    const shared = new Map(leaves.map((v) => [v.id, this.#train.tensor(v)]));
    this.#eval = new GraphExecutor(ctx, evalSchedule, leaves, shared, impls(copies(evalSchedule)), pool);
    this.#routerStats = p.stats
      ? new GraphExecutor(ctx, p.stats, leaves, shared, impls(copies(p.stats)), pool)
      : null;
    // Reported each step: the losses, MI per router and the model's scalars (then the loads, then gradients).
    const reported = 2 + m.miLoss.attention.length + m.miLoss.mlp.length + m.scalars.length;
    const report = p.outputs.slice(0, reported).map((v) => this.#train.tensor(v));
    const loads = p.loads.map((v) => this.#train.tensor(v));
    const gradTensors = grads.map((g) => this.#train.tensor(g));
    if (p.accumulation > 1) {
      const tokens = c.train.batch * c.data.seq_len;
      this.#batchTokens = {
        ids: createTensor(ctx, [tokens], "u32", undefined, "batch.ids"),
        targets: createTensor(ctx, [tokens], "u32", undefined, "batch.targets"),
      };
      for (const v of m.jitter) {
        this.#jitterBatch.push(
          createTensor(ctx, [p.accumulation * numel(v.shape)], "f32", undefined, `batch.${v.name}`),
        );
      }
      const pairs = [...report, ...loads, ...gradTensors].map((x): AccumulatePair => {
        const y = createTensor(ctx, x.shape, "f32", undefined, `acc.${x.label}`);
        this.#accumulators.push(y);
        return { x, y };
      });
      this.#accumulate = this.#accumulationCalls(pairs);
      if (this.#routerStats) {
        const stats = this.#routerStats;
        this.#accumulateStats = this.#accumulationCalls(
          m.batchStats.map((s) => ({ x: stats.tensor(s.micro), y: this.#train.tensor(s.batch) })),
        );
      }
      this.#report = this.#accumulators.slice(0, report.length);
      this.#loads = this.#accumulators.slice(report.length, report.length + loads.length);
      this.#grads = this.#accumulators.slice(report.length + loads.length);
    } else {
      this.#report = report;
      this.#loads = loads;
      this.#grads = gradTensors;
    }
    this.#hyper = createTensor(ctx, [3], "f32", undefined, "adam.hyper");
    this.#stats = createTensor(ctx, [3], "f32", undefined, "grad.stats");
    this.#opt = this.#prepare(this.#optimizerCalls(state ?? undefined));
    if (scaling && state) {
      const [update] = this.#prepare([
        lossScaleUpdate(ctx, { state, stats: this.#stats, settings: scaling }),
      ]);
      this.#lossScale = { settings: scaling, state, update: update! };
    }
    this.#routerStateCalls = this.#prepare(this.#routerStateUpdates(p.loads));
  }

  /**
   * The kernels that change the router state after a step (docs/design.md §16), each reading the optimizer's
   * finite flag (a skipped step moves nothing): λ from the step's mean share of zero gates (a reported
   * scalar), an aux-free bias from its block's selection shares (`#loads`) over the step's tokens; both are
   * accumulated means over the micro-steps.
   */
  #routerStateUpdates(loads: readonly Value[]): KernelCall[] {
    const c = this.#c, m = this.model, nMi = m.miLoss.attention.length + m.miLoss.mlp.length;
    const scalar = (v: Value) => this.#report[2 + nMi + m.scalars.findIndex((s) => s.value === v)]!;
    const tokens = c.train.batch * c.data.seq_len;
    return m.routerState.map((s) => {
      const u = s.update, state = this.#train.tensor(s.value), stats = this.#stats;
      if (u.kind === "l1_lambda") {
        const { target, rate } = u;
        return l1LambdaUpdate(this.ctx, { lambda: state, sparsity: scalar(u.sparsity), stats, target, rate });
      }
      const load = this.#loads[loads.indexOf(u.load)]!;
      return balanceBiasUpdate(this.ctx, { bias: state, load, stats, rate: u.rate, k: u.k, tokens });
    });
  }

  /** Opens the device, builds and compiles everything, and uploads the seeded initial parameters. */
  static async create(
    c: Readonly<Experiment>,
    ctx?: GpuContext,
    faults: TrainFaults = {},
    options: GpuTrainOptions = {},
  ): Promise<GpuTrainBackend> {
    // hardware.precision f16 reads f16 operands natively: refused on an adapter without shader-f16 before a
    // device is requested (or, on a device given, before anything is allocated). Packed f16 needs nothing.
    const require = options.f16 === "f16-packed" ? undefined : requiredGpuFeatures(c);
    if (ctx && require) assertAdapterFeatures(ctx.adapter.description, ctx.features, require);
    const gpu = ctx ??
      await openGpu({
        powerPreference: c.hardware.power_preference,
        validation: c.hardware.validation,
        ...(require ? { require } : {}),
      });
    let b: GpuTrainBackend;
    try {
      b = new GpuTrainBackend(gpu, c, !ctx, options);
    } catch (e) {
      if (!ctx) gpu.destroy(); // a plan refused on a device this opened: close it again
      throw e;
    }
    b.#faults = faults;
    if (faults.nanGradAt) b.#nan = createTensor(gpu, [1], "f32", Float32Array.of(NaN), "fault.nan");
    await b.#train.check();
    await b.#eval.check();
    await b.#routerStats?.check();
    for (const { code, label } of b.#sources) await gpu.pipelines.check(code, label);
    await gpu.checkAllocations(); // the optimizer's moments and partial sums
    const init = initParams(b.model.params, c.seed);
    for (const p of b.model.params) writeTensor(gpu, b.#train.tensor(p.value), init.get(p.value.name)!);
    for (const s of b.model.routerState) {
      writeTensor(gpu, b.#train.tensor(s.value), new Float32Array(numel(s.value.shape)).fill(s.init));
    }
    return b;
  }

  /** The accumulation of `pairs` after the first, a middle and the last micro-step (scaled by 1 / steps). */
  #accumulationCalls(pairs: AccumulatePair[]): AccumulationCalls {
    const K = this.accumulation;
    const make = (first: boolean, scale: number) =>
      this.#prepare(accumulateCalls(this.ctx, pairs, { first, scale }));
    return { first: make(true, 1), mid: K > 2 ? make(false, 1) : [], last: make(false, 1 / K) };
  }

  /** Prepares calls, keeping their sources for `create` to compile and check. */
  #prepare(calls: KernelCall[]): PreparedCall[] {
    for (const { code, label } of calls) this.#sources.push({ code, label });
    return calls.map((call) => prepare(this.ctx, call));
  }

  #optimizerCalls(lossScale?: GpuTensor): KernelCall[] {
    const m = this.model;
    const r = optimizerCalls(
      this.ctx,
      m.params.map((p, i) => ({
        name: p.value.name,
        param: this.#train.tensor(p.value),
        grad: this.#grads[i]!,
        decay: p.decay,
      })),
      {
        loss: this.#report[0]!,
        stats: this.#stats,
        hyper: this.#hyper,
        optimizer: this.#c.train.optimizer,
        gradClip: this.#c.train.grad_clip,
        ...(lossScale ? { lossScale } : {}),
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
    this.#writeJitter(false);
    this.#t++;
    writeTensor(
      ctx,
      this.#hyper,
      new Float32Array([lr, 1 - o.betas[0] ** this.#t, 1 - o.betas[1] ** this.#t]),
    );
    const step = new Step(ctx, { label: "train-step", timing: options.profile, maxTimed: 2048 });
    this.#encodeMicroSteps(step, batch);
    if (this.#nan && this.#faults.nanGradAt?.(this.#t)) {
      step.encoder.copyBufferToBuffer(this.#nan.buffer, 0, this.#grads[0]!.buffer, 0, 4);
    }
    for (const c of this.#opt) step.dispatch(c);
    if (this.#lossScale) step.dispatch(this.#lossScale.update);
    for (const c of this.#routerStateCalls) step.dispatch(c);
    const state = this.model.routerState.map((s) => this.#train.tensor(s.value));
    const scaleState = this.#lossScale ? [this.#lossScale.state] : [];
    const n = this.#report.length + 3 +
      [...this.#loads, ...state, ...scaleState].reduce((a, t) => a + t.size, 0);
    const staging = ctx.device.createBuffer({
      size: n * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const enc = step.encoder;
    this.#report.forEach((t, i) => enc.copyBufferToBuffer(t.buffer, 0, staging, i * 4, 4));
    enc.copyBufferToBuffer(this.#stats.buffer, 0, staging, this.#report.length * 4, 12);
    let at = this.#report.length + 3;
    for (const t of [...this.#loads, ...state, ...scaleState]) {
      enc.copyBufferToBuffer(t.buffer, 0, staging, at * 4, t.size * 4);
      at += t.size;
    }
    step.submit();
    return this.#mapped(staging).then(async () => {
      const r = new Float32Array(staging.getMappedRange().slice(0));
      staging.destroy();
      const m = this.model, k = this.#report.length;
      const nAtt = m.miLoss.attention.length, nMi = nAtt + m.miLoss.mlp.length;
      const sum = (a: number, b: number) => Array.from(r.subarray(a, b)).reduce((x, y) => x + y, 0);
      let at = k + 3;
      const loads = this.#loads.map((t) => r.subarray(at, at += t.size));
      const states = new Map(m.routerState.map((s, i) => [s.name, r.subarray(at, at += state[i]!.size)]));
      const scale = this.#lossScale ? r.subarray(at, at += 3) : null;
      return {
        loss: r[0]!,
        lmLoss: r[1]!,
        miAttention: sum(2, 2 + nAtt),
        miMlp: sum(2 + nAtt, 2 + nMi),
        scalars: Object.fromEntries([
          ...m.scalars.map((s, i) => [s.key, r[2 + nMi + i]!]),
          ...m.routerState.flatMap((s) =>
            s.update.kind === "l1_lambda" ? [[s.name, states.get(s.name)![0]!]] : []
          ),
        ]),
        gradNorm: r[k]!,
        finite: r[k + 2] === 1,
        routers: routerStepStats(m.loads, loads, states),
        ...(scale ? { lossScale: { used: scale[2]!, next: scale[0]! } } : {}),
        ...(options.profile ? { kernels: await step.timings() } : {}),
      };
    });
  }

  /**
   * The forward pass over each micro-batch of `batch` in one submit, its LM loss and router probabilities
   * copied out and read back once: the mean LM loss, and router statistics over all of the batch's tokens.
   */
  async evaluate(batch: Batch): Promise<EvalResult> {
    const m = this.model, K = this.accumulation, ctx = this.ctx;
    const gates = m.routers.flatMap((r) => r.trainGate ? [r.trainGate] : []);
    const outs = [m.lmLoss, ...m.routers.map((r) => r.probs), ...gates];
    const sizes = outs.map((v) => numel(v.shape)), per = sizes.reduce((a, b) => a + b, 0);
    const staging = ctx.device.createBuffer({
      size: K * per * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const step = new Step(ctx, { label: "evaluate" });
    this.#uploadBatch(batch);
    this.#writeJitter(true);
    for (let k = 0; k < K; k++) {
      this.#copySlice(step, k, true, false);
      this.#eval.encode(step);
      let at = k * per;
      outs.forEach((v, i) => {
        step.encoder.copyBufferToBuffer(this.#eval.tensor(v).buffer, 0, staging, at * 4, sizes[i]! * 4);
        at += sizes[i]!;
      });
    }
    step.submit();
    await this.#mapped(staging);
    const r = new Float32Array(staging.getMappedRange().slice(0));
    staging.destroy();
    let lm = 0;
    for (let k = 0; k < K; k++) lm += r[k * per]!;
    /** Output `j` of every micro-batch, one after another. */
    const joined = (j: number) => {
      const size = sizes[j]!, at = sizes.slice(0, j).reduce((a, b) => a + b, 0);
      const all = new Float32Array(K * size);
      for (let k = 0; k < K; k++) all.set(r.subarray(k * per + at, k * per + at + size), k * size);
      return all;
    };
    const routers = m.routers.map((t, i) => {
      const E = t.probs.shape[1]!, stats = routerStats(t.layer, t.kind, joined(i + 1), E);
      const g = t.trainGate ? gates.indexOf(t.trainGate) : -1;
      return g < 0 ? stats : { ...stats, train: trainRuleStats(joined(1 + m.routers.length + g), E) };
    });
    return { lmLoss: lm / K, routers };
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
    const routerState = new Map<string, Float32Array>();
    for (const s of this.model.routerState) {
      routerState.set(s.name, (await readTensor(this.ctx, this.#train.tensor(s.value))) as Float32Array);
    }
    const ls = this.#lossScale ? (await readTensor(this.ctx, this.#lossScale.state)) as Float32Array : null;
    return {
      params,
      adamM,
      adamV,
      step: this.#t,
      routerState,
      ...(ls ? { lossScale: { scale: ls[0]!, good: ls[1]! } } : {}),
    };
  }

  importState(s: TrainState): Promise<void> {
    for (const p of this.model.params) {
      const name = p.value.name, saved = s.params.get(name);
      if (!saved) throw new RangeError(`Checkpoint has no parameter "${name}"`);
      writeTensor(this.ctx, this.#train.tensor(p.value), saved.data);
      writeTensor(this.ctx, this.#m.get(name)!, s.adamM.get(name)!);
      writeTensor(this.ctx, this.#v.get(name)!, s.adamV.get(name)!);
    }
    for (const r of this.model.routerState) {
      const saved = s.routerState?.get(r.name);
      if (!saved) throw new RangeError(`Checkpoint has no router state "${r.name}"`);
      writeTensor(this.ctx, this.#train.tensor(r.value), saved);
    }
    if (this.#lossScale) {
      // A checkpoint of a run without loss scaling (none yet) starts from the initial scale.
      const ls = s.lossScale ?? { scale: this.#lossScale.settings.init, good: 0 };
      writeTensor(this.ctx, this.#lossScale.state, Float32Array.of(ls.scale, ls.good, ls.scale));
    }
    this.#t = s.step;
    return Promise.resolve();
  }

  destroy(): void {
    this.#nan?.buffer.destroy();
    if (this.#lossScale) {
      releaseCall(this.#lossScale.update);
      this.#lossScale.state.buffer.destroy();
    }
    this.#opt.forEach(releaseCall);
    this.#routerStateCalls.forEach(releaseCall);
    for (const calls of [this.#accumulate, this.#accumulateStats]) {
      if (calls) [...calls.first, ...calls.mid, ...calls.last].forEach(releaseCall);
    }
    for (
      const t of [
        ...this.#accumulators,
        ...this.#jitterBatch,
        this.#batchTokens?.ids,
        this.#batchTokens?.targets,
      ]
    ) {
      t?.buffer.destroy();
    }
    this.#train.destroy();
    this.#eval.destroy();
    this.#routerStats?.destroy();
    this.#sharedPlan.destroy();
    this.#f16Copies?.destroy();
    if (this.#ownsDevice) this.ctx.destroy();
  }

  /**
   * A step's graph work: the graph on the batch, or with accumulation the router statistics pass over every
   * micro-batch (when planned), then each micro-step's graph and accumulation.
   */
  #encodeMicroSteps(step: Step, batch: Batch): void {
    const K = this.accumulation;
    this.#uploadBatch(batch);
    const place = (calls: AccumulationCalls, k: number) =>
      k === 0 ? calls.first : k === K - 1 ? calls.last : calls.mid;
    if (this.#routerStats) {
      for (let k = 0; k < K; k++) {
        this.#copySlice(step, k, false, true);
        this.#routerStats.encode(step);
        for (const c of place(this.#accumulateStats!, k)) step.dispatch(c);
      }
    }
    for (let k = 0; k < K; k++) {
      this.#copySlice(step, k, true, true);
      this.#train.encode(step);
      if (this.#accumulate) { for (const c of place(this.#accumulate, k)) step.dispatch(c); }
    }
  }

  /** Writes the batch: into the graph's inputs, or with accumulation into the whole-batch tensors. */
  #uploadBatch(batch: Batch): void {
    const to = this.#batchTokens ??
      { ids: this.#train.tensor(this.model.ids), targets: this.#train.tensor(this.model.targets) };
    writeTensor(this.ctx, to.ids, batch.inputs);
    writeTensor(this.ctx, to.targets, batch.targets);
  }

  /**
   * With accumulation: copies micro-batch k's tokens (and with `targets`, its targets; with `jitter`, its
   * slice of the router jitter noise) into the graph's inputs.
   */
  #copySlice(step: Step, k: number, targets: boolean, jitter: boolean): void {
    if (!this.#batchTokens) return;
    const m = this.model;
    const pairs: [GpuTensor, Value][] = [[this.#batchTokens.ids, m.ids]];
    if (targets) pairs.push([this.#batchTokens.targets, m.targets]);
    if (jitter) m.jitter.forEach((v, i) => pairs.push([this.#jitterBatch[i]!, v]));
    for (const [from, to] of pairs) {
      const bytes = numel(to.shape) * 4;
      step.encoder.copyBufferToBuffer(from.buffer, k * bytes, this.#train.tensor(to).buffer, 0, bytes);
    }
  }

  /**
   * Writes the router jitter noise of the step after the `#t` taken (core/train/jitter.ts; with
   * accumulation the whole batch's, sliced per micro-step by `#copySlice`), or with `ones` (evaluation) a
   * factor of 1 into every jitter input.
   */
  #writeJitter(ones: boolean): void {
    const c = this.#c, K = this.accumulation;
    this.model.jitter.forEach((v, i) => {
      const leaf = this.#train.tensor(v), n = numel(v.shape);
      if (ones) writeTensor(this.ctx, leaf, new Float32Array(n).fill(1));
      else {
        const noise = jitterNoise(c.seed, this.#t, i, K * n, c.router.jitter);
        writeTensor(this.ctx, this.#jitterBatch[i] ?? leaf, noise);
      }
    });
  }

  /** Maps a read-back buffer; a lost device fails it, and then says so rather than WebGPU's generic error. */
  #mapped(staging: GPUBuffer): Promise<void> {
    const ctx = this.ctx;
    return staging.mapAsync(GPUMapMode.READ).catch(async (e) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([ctx.device.lost, new Promise((r) => timer = setTimeout(r, 200))]);
      clearTimeout(timer);
      ctx.assertAlive();
      throw e;
    });
  }
}

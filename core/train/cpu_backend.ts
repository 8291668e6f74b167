/**
 * `hardware.backend: cpu` — training in float64 on the CPU through the reference ops. Slow, but it is the
 * oracle: the WebGPU backend's losses and gradients are checked against it. Gradient accumulation runs as on
 * the GPU (core/plan/plan.ts): the batch-level router statistics averaged over the micro-batches first, then
 * each micro-batch's losses and gradients, averaged.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import type { Batch } from "../data/dataset.ts";
import { evaluateGraph, type HostValue } from "../graph/cpu_executor.ts";
import { CPU_OPS } from "../graph/cpu_ops.ts";
import type { Node, Value } from "../graph/ir.ts";
import { type ModelGraph, routerState } from "../plan/model.ts";
import { balanceBiasUpdateRef } from "../ref/token_choice.ts";
import { AUX_FREE_BIAS_RATE } from "../config/schema.ts";
import { plan, type TrainPlan } from "../plan/plan.ts";
import { adamwStepRef } from "../ref/adamw.ts";
import type { EvalResult, StepStats, TrainBackend, TrainState } from "./backend.ts";
import { routerStats, routerStepStats } from "./router_stats.ts";
import { initParams } from "./init.ts";
import { jitterNoise } from "./jitter.ts";

/** The float64 reference backend. */
export class CpuTrainBackend implements TrainBackend {
  readonly description = "cpu: float64 reference";
  readonly plan: TrainPlan;
  readonly model: ModelGraph;
  readonly grads: Value[];
  readonly #c: Readonly<Experiment>;
  readonly #evalNodes: Node[];
  /** The batch's router statistics (batch leaf id → value), set before a step's micro-batches. */
  #batchStats = new Map<number, Float64Array>();
  /** The step's jitter noise per router input, for the whole batch (ones while evaluating). */
  #jitter: Float64Array[] = [];
  readonly #params = new Map<string, Float64Array>();
  readonly #m = new Map<string, Float64Array>();
  readonly #v = new Map<string, Float64Array>();
  /** The aux-free balancing biases by leaf name (optimizer-free state, moved after every step). */
  readonly #state = new Map<string, Float64Array>();
  #t = 0;

  constructor(c: Readonly<Experiment>) {
    this.#c = c;
    this.plan = plan(c, "train-dense");
    this.model = this.plan.model;
    this.grads = this.plan.grads;
    this.#evalNodes = this.plan.evaluate.nodes;
    for (const [name, data] of initParams(this.model.params, c.seed)) {
      this.#params.set(name, Float64Array.from(data));
      this.#m.set(name, new Float64Array(data.length));
      this.#v.set(name, new Float64Array(data.length));
    }
    for (const v of routerState(this.model)) this.#state.set(v.name, new Float64Array(v.shape[0]!));
  }

  /**
   * Loss terms and parameter gradients of one batch (no update), for gradient checks: with accumulation,
   * the means over its micro-batches, whose batch-level router losses read the batch's statistics.
   */
  lossAndGrads(
    batch: Batch,
  ): { loss: number; parts: number[]; grads: Float64Array[]; loads: Float64Array[] } {
    const p = this.plan, m = this.model, K = p.accumulation;
    this.#jitter = this.#noise(K);
    const feeds = (k: number) => this.#feeds(batch, k);
    if (p.stats) {
      const micro = m.batchStats.map((s) => s.micro);
      const means = _meanOver(K, (k) => evaluateGraph(p.stats!.nodes, feeds(k), micro, CPU_OPS));
      this.#batchStats = new Map(m.batchStats.map((s, i) => [s.batch.id, means[i]!]));
    }
    const parts = [m.loss, m.lmLoss, ...m.miLoss.attention, ...m.miLoss.mlp];
    const outs = _meanOver(
      K,
      (k) => evaluateGraph(p.schedule.nodes, feeds(k), [...parts, ...p.loads, ...this.grads], CPU_OPS),
    );
    const loadsEnd = parts.length + p.loads.length;
    return {
      loss: outs[0]![0]!,
      parts: outs.slice(0, parts.length).map((o) => o[0]!),
      loads: outs.slice(parts.length, loadsEnd),
      grads: outs.slice(loadsEnd),
    };
  }

  /**
   * The jitter noise of the step after the `#t` taken, per router input, for K micro-batches (the same
   * f32 numbers the WebGPU backend feeds, core/train/jitter.ts); ones for every factor when `ones`.
   */
  #noise(K: number, ones = false): Float64Array[] {
    const c = this.#c;
    return this.model.jitter.map((v, i) => {
      const count = K * v.shape[0]! * v.shape[1]!;
      return ones
        ? new Float64Array(count).fill(1)
        : Float64Array.from(jitterNoise(c.seed, this.#t, i, count, c.router.jitter));
    });
  }

  /** Parameter values by name (live arrays: gradient checks perturb them in place). */
  get params(): Map<string, Float64Array> {
    return this.#params;
  }

  step(batch: Batch, lr: number, options: { profile?: boolean } = {}): Promise<StepStats> {
    if (options.profile) {
      throw new RangeError("Cannot profile the CPU reference backend: it has no GPU kernels");
    }
    const { parts, grads, loads } = this.lossAndGrads(batch);
    const m = this.model, nAtt = m.miLoss.attention.length;
    let sq = 0;
    for (const g of grads) for (const x of g) sq += x * x;
    const gradNorm = Math.sqrt(sq);
    const finite = parts.every(Number.isFinite) && Number.isFinite(gradNorm);
    if (finite) {
      const t = this.#c.train, clip = t.grad_clip > 0 ? Math.min(1, t.grad_clip / (gradNorm + 1e-6)) : 1;
      this.#t++;
      m.params.forEach((p, i) => {
        const name = p.value.name;
        adamwStepRef({
          param: this.#params.get(name)!,
          grad: grads[i]!.map((x) => x * clip),
          m: this.#m.get(name)!,
          v: this.#v.get(name)!,
          lr,
          beta1: t.optimizer.betas[0],
          beta2: t.optimizer.betas[1],
          eps: t.optimizer.eps,
          weightDecay: p.decay ? t.optimizer.weight_decay : 0,
          step: this.#t,
        });
      });
      this.#updateBiases(loads);
    }
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
    return Promise.resolve({
      loss: parts[0]!,
      lmLoss: parts[1]!,
      miAttention: sum(parts.slice(2, 2 + nAtt)),
      miMlp: sum(parts.slice(2 + nAtt)),
      gradNorm,
      finite,
      routers: routerStepStats(m.loads, loads, routerState(m).map((v) => this.#state.get(v.name)!)),
    });
  }

  /** Forward passes over the batch's micro-batches: the mean LM loss, router statistics over every token. */
  evaluate(batch: Batch): Promise<EvalResult> {
    const m = this.model, K = this.plan.accumulation, outs: HostValue[][] = [];
    this.#jitter = this.#noise(K, true);
    for (let k = 0; k < K; k++) {
      outs.push(evaluateGraph(this.#evalNodes, this.#feeds(batch, k), [
        m.lmLoss,
        ...m.routers.map((r) => r.probs),
      ], CPU_OPS));
    }
    const routers = m.routers.map((r, i) => {
      const probs = new Float64Array(K * r.probs.shape[0]! * r.probs.shape[1]!);
      outs.forEach((o, k) => probs.set(o[i + 1]!, (k * probs.length) / K));
      return routerStats(r.layer, r.kind, probs, r.probs.shape[1]!);
    });
    return Promise.resolve({ lmLoss: outs.reduce((a, o) => a + o[0]![0]!, 0) / K, routers });
  }

  exportState(): Promise<TrainState> {
    const params = new Map<string, { shape: readonly number[]; data: Float32Array }>();
    for (const p of this.model.params) {
      params.set(p.value.name, {
        shape: p.value.shape,
        data: Float32Array.from(this.#params.get(p.value.name)!),
      });
    }
    const f32 = (m: Map<string, Float64Array>) => new Map([...m].map(([k, v]) => [k, Float32Array.from(v)]));
    return Promise.resolve({
      params,
      adamM: f32(this.#m),
      adamV: f32(this.#v),
      step: this.#t,
      state: f32(this.#state),
    });
  }

  importState(s: TrainState): Promise<void> {
    for (const [name, p] of s.params) {
      this.#params.set(name, Float64Array.from(p.data));
      this.#m.set(name, Float64Array.from(s.adamM.get(name)!));
      this.#v.set(name, Float64Array.from(s.adamV.get(name)!));
    }
    this.#t = s.step;
    for (const [name, b] of this.#state) {
      const saved = s.state?.get(name);
      if (!saved) throw new RangeError(`Checkpoint has no router state "${name}"`);
      b.set(saved);
    }
    return Promise.resolve();
  }

  /**
   * The aux-free bias update after a step (docs/design.md §3) from its selection shares (`loads`, in
   * `plan.loads` order), over the step's tokens.
   */
  #updateBiases(loads: Float64Array[]): void {
    const c = this.#c, tokens = c.train.batch * c.data.seq_len;
    const rate = c.router.bias_rate ?? AUX_FREE_BIAS_RATE;
    let at = 0;
    for (const l of this.model.loads) {
      const selected = loads[at]!;
      at += l.kept ? 2 : 1;
      if (!l.bias) continue;
      const b = this.#state.get(l.bias.name)!;
      b.set(balanceBiasUpdateRef(b, selected, { rate, k: l.k, tokens }));
    }
  }

  destroy(): void {}

  /** Leaf values of micro-batch k: its tokens, the parameters and the batch's router statistics. */
  #feeds(batch: Batch, k: number): Map<number, HostValue> {
    const n = this.model.tokens, slice = (a: Uint32Array) => a.subarray(k * n, (k + 1) * n);
    const feeds = new Map<number, HostValue>([
      [this.model.ids.id, slice(batch.inputs)],
      [this.model.targets.id, slice(batch.targets)],
      ...this.#batchStats,
    ]);
    this.model.jitter.forEach((v, i) => {
      const size = v.shape[0]! * v.shape[1]!;
      feeds.set(v.id, this.#jitter[i]!.subarray(k * size, (k + 1) * size));
    });
    for (const p of this.model.params) feeds.set(p.value.id, this.#params.get(p.value.name)!);
    for (const v of routerState(this.model)) feeds.set(v.id, this.#state.get(v.name)!);
    return feeds;
  }
}

/** The element-wise means of `run(k)`'s arrays over k = 0 … K−1 (K = 1: run(0)'s arrays themselves). */
function _meanOver(K: number, run: (k: number) => HostValue[]): Float64Array[] {
  const sums = (run(0) as Float64Array[]).map((a) => K === 1 ? a : Float64Array.from(a));
  for (let k = 1; k < K; k++) {
    run(k).forEach((a, i) => {
      const s = sums[i]!;
      for (let j = 0; j < s.length; j++) s[j]! += a[j]!;
    });
  }
  if (K > 1) { for (const s of sums) for (let j = 0; j < s.length; j++) s[j]! /= K; }
  return sums;
}

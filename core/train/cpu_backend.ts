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
import type { ModelGraph } from "../plan/model.ts";
import { balanceBiasUpdateRef } from "../ref/token_choice.ts";
import { plan, type TrainPlan } from "../plan/plan.ts";
import { adamwStepRef } from "../ref/adamw.ts";
import type { EvalResult, StepStats, TrainBackend, TrainState } from "./backend.ts";
import { routerStats, routerStepStats, trainRuleStats } from "./router_stats.ts";
import { initParams } from "./init.ts";
import { jitterNoise } from "./jitter.ts";
import { nextL1Lambda } from "../plan/router_zoo.ts";

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
  /**
   * The optimizer-free router state by name (`ModelGraph.routerState`: the aux-free balancing biases, ReLU
   * routing's λ), fed to its leaves and moved after each finite step.
   */
  readonly #routerState = new Map<string, Float64Array>();
  /** The leaf id of each router state value, by name. */
  readonly #stateLeaf = new Map<string, number>();
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
    for (const s of this.model.routerState) {
      this.#routerState.set(s.name, new Float64Array(s.value.shape[0]!).fill(s.init));
      this.#stateLeaf.set(s.name, s.value.id);
    }
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
    const parts = [
      m.loss,
      m.lmLoss,
      ...m.miLoss.attention,
      ...m.miLoss.mlp,
      ...m.scalars.map((s) => s.value),
    ];
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
    const m = this.model, nAtt = m.miLoss.attention.length, nMi = nAtt + m.miLoss.mlp.length;
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
      this.#updateRouterState(parts, loads);
    }
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
    return Promise.resolve({
      loss: parts[0]!,
      lmLoss: parts[1]!,
      miAttention: sum(parts.slice(2, 2 + nAtt)),
      miMlp: sum(parts.slice(2 + nAtt, 2 + nMi)),
      gradNorm,
      finite,
      routers: routerStepStats(m.loads, loads, this.#routerState),
      scalars: Object.fromEntries([
        ...m.scalars.map((s, i) => [s.key, parts[2 + nMi + i]!]),
        ...m.routerState.flatMap((s) =>
          s.update.kind === "l1_lambda" ? [[s.name, this.#routerState.get(s.name)![0]!]] : []
        ),
      ]),
    });
  }

  /** Forward passes over the batch's micro-batches: the mean LM loss, router statistics over every token. */
  evaluate(batch: Batch): Promise<EvalResult> {
    const m = this.model, K = this.plan.accumulation, outs: HostValue[][] = [];
    this.#jitter = this.#noise(K, true);
    const gates = m.routers.flatMap((r) => r.trainGate ? [r.trainGate] : []);
    for (let k = 0; k < K; k++) {
      outs.push(evaluateGraph(this.#evalNodes, this.#feeds(batch, k), [
        m.lmLoss,
        ...m.routers.map((r) => r.probs),
        ...gates,
      ], CPU_OPS));
    }
    /** Output `at` of every micro-batch, one after another. */
    const joined = (at: number) => {
      const size = outs[0]![at]!.length, all = new Float64Array(K * size);
      outs.forEach((o, k) => all.set(o[at]!, k * size));
      return all;
    };
    const routers = m.routers.map((r, i) => {
      const E = r.probs.shape[1]!, stats = routerStats(r.layer, r.kind, joined(i + 1), E);
      const g = r.trainGate ? gates.indexOf(r.trainGate) : -1;
      return g < 0 ? stats : { ...stats, train: trainRuleStats(joined(1 + m.routers.length + g), E) };
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
    const routerState = new Map([...this.#routerState].map(([k, v]) => [k, Float32Array.from(v)]));
    return Promise.resolve({ params, adamM: f32(this.#m), adamV: f32(this.#v), step: this.#t, routerState });
  }

  importState(s: TrainState): Promise<void> {
    for (const [name, p] of s.params) {
      this.#params.set(name, Float64Array.from(p.data));
      this.#m.set(name, Float64Array.from(s.adamM.get(name)!));
      this.#v.set(name, Float64Array.from(s.adamV.get(name)!));
    }
    this.#t = s.step;
    for (const [name, now] of this.#routerState) {
      const saved = s.routerState?.get(name);
      if (!saved) throw new RangeError(`Checkpoint has no router state "${name}"`);
      now.set(saved);
    }
    return Promise.resolve();
  }

  /**
   * Moves the router state after a finite step (docs/design.md §16), in float64: ReLU routing's λ from the
   * step's mean share of zero gates (`parts`: the step's scalars after the losses), each aux-free balancing
   * bias from its block's selection shares (`loads`, in `plan.loads` order) over the step's tokens.
   */
  #updateRouterState(parts: number[], loads: Float64Array[]): void {
    const c = this.#c, m = this.model, tokens = c.train.batch * c.data.seq_len;
    const nMi = m.miLoss.attention.length + m.miLoss.mlp.length;
    const scalar = (v: Value) => parts[2 + nMi + m.scalars.findIndex((s) => s.value === v)]!;
    for (const s of m.routerState) {
      const now = this.#routerState.get(s.name)!, u = s.update;
      if (u.kind === "l1_lambda") now[0] = nextL1Lambda(now[0]!, scalar(u.sparsity), u.target, u.rate);
      else now.set(balanceBiasUpdateRef(now, loads[this.plan.loads.indexOf(u.load)]!, { ...u, tokens }));
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
    for (const [name, now] of this.#routerState) feeds.set(this.#stateLeaf.get(name)!, now);
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

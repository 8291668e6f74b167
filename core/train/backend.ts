/**
 * What the training loop needs from a compute backend (WebGPU, or the float64 CPU reference).
 * A step is queued, not awaited: its statistics resolve later, so the loop never waits on the device
 * inside a step (docs/design.md §9) and reads losses a few steps behind.
 *
 * @module
 */
import type { Batch } from "../data/dataset.ts";

/** Statistics of one optimizer step, read back asynchronously. */
export interface StepStats {
  loss: number; // total loss
  lmLoss: number;
  miAttention: number; // Σ over attention routers (unweighted)
  miMlp: number; // Σ over MLP routers (unweighted)
  gradNorm: number; // before clipping
  finite: boolean; // false: the update was skipped on the device
  /** The model's scalars (`ModelGraph.scalars`) by key, logged as `train/<key>`; empty for most models. */
  scalars?: Record<string, number>;
  /** GPU milliseconds of each dispatch, when the step was profiled. */
  kernels?: { label: string; ms: number }[];
  /** Per routed block, its top-k selection over the step (router.train: topk; empty otherwise). */
  routers?: RouterStepStats[];
  /**
   * With dynamic loss scaling (core/train/loss_scale.ts): the scale the step's backward pass used and the
   * scale after it (halved after an overflow, doubled after a run of finite steps).
   */
  lossScale?: { used: number; next: number };
}

/** One routed block's top-k selection over a training step's tokens (docs/design.md §16). */
export interface RouterStepStats {
  layer: number;
  kind: "attention" | "mlp";
  /** (E,) each expert's share of the step's token-assignments (selections; sums to 1); null experts last. */
  load: number[];
  /** With an expert capacity: the share of the assignments dropped (tokens past an expert's capacity). */
  dropped?: number;
  /** With null experts (router.null_experts): their share of the assignments (tokens skipping an expert). */
  nullShare?: number;
  /** With router.balance: aux_free, the (E,) balancing bias after the step's update. */
  bias?: number[];
}

/** Router statistics of an evaluation: per router, mean probability per expert and mean entropy. */
export interface RouterStats {
  layer: number;
  kind: "attention" | "mlp";
  load: number[]; // (E,) fraction of tokens whose top-1 expert is i
  meanProb: number[]; // (E,)
  entropy: number; // mean per-token routing entropy (nats)
  /** The training rule's statistics (routers of docs/design.md §16, whose graphs expose their gate). */
  train?: TrainRuleStats;
}

/** Statistics of a training rule's gate over evaluated tokens (core/train/router_stats.ts). */
export interface TrainRuleStats {
  load: number[]; // (E,) expert i's share of the routed (token, expert) pairs
  dropped: number; // share of tokens routed to no expert
  perToken: number; // mean routed experts per token
  sparsity: number; // share of zero gates
}

/** Result of evaluating one batch without updating. */
export interface EvalResult {
  lmLoss: number;
  routers: RouterStats[];
}

/** Full training state for checkpoints: parameters and optimizer moments, by name. */
export interface TrainState {
  params: Map<string, { shape: readonly number[]; data: Float32Array }>;
  adamM: Map<string, Float32Array>;
  adamV: Map<string, Float32Array>;
  step: number; // optimizer steps taken (AdamW's t)
  /**
   * Optimizer-free router state by name (`ModelGraph.routerState`, docs/design.md §16: the aux-free
   * balancing biases, ReLU routing's λ), saved as `router_state/<name>`; absent or empty for most models.
   */
  routerState?: Map<string, Float32Array>;
  /** Dynamic loss scaling's state (core/train/loss_scale.ts), saved as `loss_scale` [scale, good steps]. */
  lossScale?: { scale: number; good: number };
}

/** A backend able to train one model. */
export interface TrainBackend {
  /** Human-readable device, e.g. "webgpu: llvmpipe (LLVM 15.0.6, 256 bits)". */
  readonly description: string;
  /** The adapter's own description (WebGPU), for its fp32 peak (gpu/peak.ts); absent on the CPU. */
  readonly adapter?: string;
  /** Model FLOPs of one optimizer step (core/plan/flops.ts), for `run --profile`'s MFU. */
  readonly modelFlops?: { matmul: number; attention: number; total: number };
  /** Device bytes its training plan allocates (core/plan/plan.ts `trainPlanMemory`); absent on the CPU. */
  readonly memoryBytes?: number;
  /**
   * Queues one optimizer step at learning rate `lr` on a batch of `train.batch` sequences (run as micro-batches
   * of `train.micro_batch` with their gradients accumulated, core/plan/plan.ts); resolves when its statistics
   * are read back. With `profile`, each dispatch is timed on the GPU (a backend that cannot time throws a
   * RangeError).
   */
  step(batch: Batch, lr: number, options?: { profile?: boolean }): Promise<StepStats>;
  /** Forward pass only, micro-batch by micro-batch: the batch's mean LM loss and its router statistics. */
  evaluate(batch: Batch): Promise<EvalResult>;
  /** Copies the whole training state to the host. */
  exportState(): Promise<TrainState>;
  /** Replaces the training state (resume). */
  importState(state: TrainState): Promise<void>;
  /** Releases device resources. */
  destroy(): void;
}

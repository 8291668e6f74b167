/**
 * The training loop: warmup + decay learning rate, steps queued a few ahead of their statistics (no host
 * sync inside a step), evaluation every `eval_every` steps, router metrics, checkpoints every
 * `checkpoint_every` steps, a progress line, and the non-finite policy: a non-finite step is skipped on the
 * device and counted; 10 in a row stop the run. With dynamic loss scaling (core/train/loss_scale.ts) an
 * overflow that halved the scale is skipped and logged but does not count toward the 10. Checkpoints only
 * ever hold finite values.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import type { Dataset } from "../data/dataset.ts";
import { tokenizerMetadata } from "../data/tokenizers.ts";
import type { RunDir } from "../runs/run_dir.ts";
import { ProfileAccumulator, type StepProfile } from "./profile.ts";
import { f32Tensor, type SafeTensor, tensorToF32 } from "../runs/safetensors.ts";
import type { StepStats, TrainBackend, TrainRuleStats, TrainState } from "./backend.ts";
import { learningRate } from "./lr_schedule.ts";
import { fmtDuration } from "../util/format.ts";
import { fmtBpb, fmtLoss, fmtPpl, fmtRate } from "../util/quantities.js";
import { optionalEnv } from "../util/env.ts";
import { faultKillPoint } from "../util/atomic_write.ts";
import { CheckpointError } from "../runs/checkpoints.ts";

/** The prefix of router state tensors in checkpoints (`router_state/l1_lambda`). */
export const ROUTER_STATE = "router_state/";

/** The checkpoint tensor of dynamic loss scaling's state: [scale, good steps] (core/train/loss_scale.ts). */
export const LOSS_SCALE = "loss_scale";

/** Consecutive non-finite steps that stop a run. */
export const MAX_NONFINITE_STREAK = 10;

/** A training run failed in a way the user must see (exit code 1). */
export class TrainError extends Error {
  override name = "TrainError";
}

/** Options of {@linkcode train}. */
export interface TrainOptions {
  config: Readonly<Experiment>;
  configYaml: string; // resolved config, stored in every checkpoint
  dataset: Dataset;
  backend: TrainBackend;
  run: RunDir;
  startStep?: number; // steps already done (resume)
  startSkipped?: number; // non-finite steps skipped before startStep (resume; from the checkpoint)
  stopAfter?: number; // stop after this many steps of this invocation
  progress?: (line: string) => void;
  signal?: AbortSignal; // abort = interrupt: checkpoint, then stop
  /**
   * Abort = the run is no longer this process's (a sweep worker lost its claim): stop before the next step
   * or checkpoint and throw the signal's reason, writing no checkpoint.
   */
  abandon?: AbortSignal;
  inFlight?: number; // steps queued ahead of their statistics (default 2)
  profile?: boolean; // time every dispatch on the GPU (timestamp queries) and report per-kernel shares
}

/** What a finished (or stopped) run reports. */
export interface TrainResult {
  status: "finished" | "interrupted";
  steps: number; // optimizer steps completed in total
  skipped: number; // non-finite steps skipped
  final: { "train/loss": number; "val/loss": number; "val/ppl": number; "val/bpb": number };
  profile: StepProfile | null; // with `profile`: GPU time per step and per kernel
}

/** Trains until `train.steps`, `stopAfter` or an abort; throws {@linkcode TrainError} on divergence. */
export async function train(o: TrainOptions): Promise<TrainResult> {
  const c = o.config, t = c.train, tokensPerStep = t.batch * c.data.seq_len;
  const start = o.startStep ?? 0;
  const end = Math.min(t.steps, o.stopAfter !== undefined ? start + o.stopAfter : t.steps);
  const t0 = performance.now(), elapsed = () => (performance.now() - t0) / 1000;
  const log = (key: string, step: number, value: number) =>
    o.run.log({ key, step, tokens: step * tokensPerStep, time: elapsed(), value });
  // `at`: when the step's statistics arrived, on the throughput clock (the profile's wall time per step).
  const pending: { step: number; lr: number; stats: Promise<StepStats>; at: number }[] = [];
  let streak = 0, skipped = o.startSkipped ?? 0, lastLoss = NaN, lastVal = NaN, done = start;
  let mark = { step: start, time: 0 }, paused = 0;
  const profile = new ProfileAccumulator({ adapter: o.backend.adapter, modelFlops: o.backend.modelFlops });
  // Fault injection for reliability tests: DSMOE_FAULT_KILL_AFTER_STEP=N SIGKILLs this process right after
  // step N (its metrics stored, no checkpoint, nothing cleaned up), as an OOM killer or a pulled plug would.
  const killAfter = Number(optionalEnv("DSMOE_FAULT_KILL_AFTER_STEP") ?? NaN);
  // Evaluation and checkpoints run off the throughput clock.
  const offClock = async <T>(f: () => Promise<T>): Promise<T> => {
    const p0 = elapsed();
    try {
      return await f();
    } finally {
      paused += elapsed() - p0;
    }
  };

  const drain = async (keep: number) => {
    while (pending.length > keep) {
      const p = pending.shift()!;
      const s = await p.stats;
      done = p.step + 1;
      if (s.kernels) {
        // The first step of a process also compiles every shader on adapters that compile at first
        // dispatch (llvmpipe: seconds), so the profile leaves it out unless it is the only step.
        if (p.step > start || end - start === 1) profile.add(s.kernels, p.at);
        log("system/gpu_ms_per_step", done, s.kernels.reduce((a, k) => a + k.ms, 0));
      }
      if (!s.finite) {
        skipped++;
        log("train/skipped_steps", done, skipped);
        // Dynamic loss scaling: gradients past f16's range with a finite loss are the scale's overflow; the
        // scale was halved on the device and the step does not count toward divergence (until the scale is
        // at its floor, where halving no longer changes it).
        const ls = s.lossScale, overflow = ls !== undefined && Number.isFinite(s.loss) && ls.next < ls.used;
        if (ls) log("train/loss_scale", done, ls.next);
        await o.run.event(
          "skipped_step",
          overflow
            ? `gradient overflow at step ${done} with loss scale ${ls!.used}: update skipped, loss scale ${
              ls!.next
            }`
            : `non-finite loss or gradient at step ${done}: update skipped`,
          done,
        );
        if (overflow) continue;
        if (++streak >= MAX_NONFINITE_STREAK) {
          throw new TrainError(
            `Training diverged: ${streak} non-finite steps in a row (last at step ${done}); the last good ` +
              `checkpoint is kept. Lower train.optimizer.lr or raise train.grad_clip.`,
          );
        }
        continue;
      }
      streak = 0;
      lastLoss = s.loss;
      if (done % t.log_every === 0 || done === end) {
        // Rate over the steps since the previous line: the first steps include pipeline compilation,
        // and a resumed run's earlier steps are not this process's work.
        const now = elapsed() - paused;
        const rate = ((done - mark.step) * tokensPerStep) / Math.max(now - mark.time, 1e-9);
        mark = { step: done, time: now };
        _logStep(log, done, s, p.lr, rate);
        const epoch = o.dataset.epochAt(done, t.batch);
        log("train/epoch", done, epoch);
        o.progress?.(
          `step ${done}/${end}  epoch ${epoch.toFixed(2)}  loss ${fmtLoss(s.loss)}  lr ${fmtRate(p.lr)}  ` +
            `${Math.round(rate)} tok/s  ${progressEta(done, end, t.steps, tokensPerStep, rate)}` +
            `${skipped ? `  skipped ${skipped}` : ""}`,
        );
      }
    }
  };

  if (end < t.steps && end > start) {
    o.progress?.(`stopping at step ${end} of ${t.steps} (--stop-after ${end - start}), with a checkpoint`);
  }
  for (let step = start; step < end; step++) {
    o.abandon?.throwIfAborted();
    if (o.signal?.aborted) break;
    const lr = learningRate(t, step);
    const stats = o.backend.step(o.dataset.trainBatch(step, t.batch), lr, { profile: o.profile });
    // Read in order by drain(); a step that fails while an earlier one is awaited must not count as unhandled.
    stats.catch(() => {});
    const entry = { step, lr, stats, at: NaN };
    stats.then(() => entry.at = elapsed() - paused, () => {});
    pending.push(entry);
    await drain(o.inFlight ?? 2);
    const n = step + 1;
    if (n % t.eval_every === 0 || n === end) {
      await drain(0);
      lastVal = await offClock(() => evaluate(o, n, log));
      o.progress?.(
        `step ${n}  val loss ${fmtLoss(lastVal)}  ppl ${fmtPpl(Math.exp(lastVal))}  bpb ${
          fmtBpb(o.dataset.bitsPerByte(lastVal))
        }`,
      );
    }
    if (n % t.checkpoint_every === 0 || n === end) {
      await drain(0);
      await offClock(() => _checkpoint(o, n, skipped));
    }
    await o.run.flush();
    if (n === killAfter) {
      await drain(0);
      await o.run.flush();
      Deno.kill(Deno.pid, "SIGKILL");
    }
  }
  await drain(0);
  const interrupted = done < t.steps && (o.signal?.aborted ?? false);
  if (interrupted || (done < t.steps && done > start)) await _checkpoint(o, done, skipped);
  await o.run.flush();
  return {
    status: done >= t.steps ? "finished" : "interrupted",
    steps: done,
    skipped,
    final: {
      "train/loss": lastLoss,
      "val/loss": lastVal,
      "val/ppl": Math.exp(lastVal),
      "val/bpb": o.dataset.bitsPerByte(lastVal),
    },
    profile: profile.result(),
  };
}

/**
 * The end of a progress line: the time left to `end`, the step this invocation stops at, and where that is
 * short of the run's `steps` (`--stop-after`), says so: `ETA 12s (stopping at 20 of 300)`, and at the stop
 * itself `stopping at 20 of 300`.
 */
export function progressEta(
  done: number,
  end: number,
  steps: number,
  tokensPerStep: number,
  rate: number,
): string {
  const eta = `ETA ${fmtDuration(((end - done) * tokensPerStep) / rate)}`;
  if (end >= steps) return eta;
  return done >= end ? `stopping at ${end} of ${steps}` : `${eta} (stopping at ${end} of ${steps})`;
}

/** Mean validation loss over `eval_batches` fixed batches, with router load and entropy metrics. */
export async function evaluate(
  o: Pick<TrainOptions, "config" | "dataset" | "backend">,
  step: number,
  log: (key: string, step: number, value: number) => void,
): Promise<number> {
  const n = o.config.train.eval_batches;
  let sum = 0;
  const loads = new Map<string, { load: number[]; prob: number[]; entropy: number }>();
  const trains = new Map<string, TrainRuleStats>();
  for (let i = 0; i < n; i++) {
    const r = await o.backend.evaluate(o.dataset.valBatch(i, n, o.config.train.batch));
    sum += r.lmLoss;
    for (const rs of r.routers) {
      const key = `router/${rs.layer}/${rs.kind}`;
      const acc = loads.get(key) ?? { load: rs.load.map(() => 0), prob: rs.load.map(() => 0), entropy: 0 };
      rs.load.forEach((v, e) => acc.load[e]! += v / n);
      rs.meanProb.forEach((v, e) => acc.prob[e]! += v / n);
      acc.entropy += rs.entropy / n;
      loads.set(key, acc);
      if (rs.train) trains.set(key, _addTrainStats(trains.get(key), rs.train, n));
    }
  }
  const val = sum / n;
  log("val/loss", step, val);
  log("val/ppl", step, Math.exp(val));
  log("val/bpb", step, o.dataset.bitsPerByte(val));
  for (const [key, acc] of loads) {
    acc.load.forEach((v, e) => log(`${key}/load/${e}`, step, v));
    acc.prob.forEach((v, e) => log(`${key}/prob/${e}`, step, v));
    log(`${key}/entropy`, step, acc.entropy);
  }
  for (const [key, t] of trains) {
    t.load.forEach((v, e) => log(`${key}/train_load/${e}`, step, v));
    log(`${key}/dropped`, step, t.dropped);
    log(`${key}/experts_per_token`, step, t.perToken);
    log(`${key}/sparsity`, step, t.sparsity);
  }
  return val;
}

/** `acc` (or zeros) plus `t` / n: the mean of a training rule's statistics over n evaluation batches. */
function _addTrainStats(acc: TrainRuleStats | undefined, t: TrainRuleStats, n: number): TrainRuleStats {
  const a = acc ?? { load: t.load.map(() => 0), dropped: 0, perToken: 0, sparsity: 0 };
  return {
    load: a.load.map((v, e) => v + t.load[e]! / n),
    dropped: a.dropped + t.dropped / n,
    perToken: a.perToken + t.perToken / n,
    sparsity: a.sparsity + t.sparsity / n,
  };
}

function _logStep(
  log: (key: string, step: number, value: number) => void,
  step: number,
  s: StepStats,
  lr: number,
  tokensPerSecond: number,
): void {
  log("train/loss", step, s.loss);
  log("train/lm_loss", step, s.lmLoss);
  log("train/mi_loss/attention", step, s.miAttention);
  log("train/mi_loss/mlp", step, s.miMlp);
  log("train/lr", step, lr);
  log("train/grad_norm", step, s.gradNorm);
  log("train/tokens_per_s", step, tokensPerSecond);
  if (s.lossScale) log("train/loss_scale", step, s.lossScale.used);
  for (const [key, v] of Object.entries(s.scalars ?? {})) log(`train/${key}`, step, v);
  _logRouterStep(log, step, s);
}

/**
 * The step's top-k selection per routed block (docs/design.md §16): each expert's share of the
 * token-assignments (`train/router/<layer>/<kind>/load/<e>`, null experts last), with an expert capacity the
 * share dropped, with null experts their share (`…/null_share`), and with aux-free balancing the bias
 * (`…/bias/<e>`).
 */
function _logRouterStep(log: (key: string, step: number, value: number) => void, step: number, s: StepStats) {
  for (const r of s.routers ?? []) {
    const key = `train/router/${r.layer}/${r.kind}`;
    r.load.forEach((v, e) => log(`${key}/load/${e}`, step, v));
    if (r.dropped !== undefined) log(`${key}/dropped`, step, r.dropped);
    if (r.nullShare !== undefined) log(`${key}/null_share`, step, r.nullShare);
    r.bias?.forEach((v, e) => log(`${key}/bias/${e}`, step, v));
  }
}

async function _checkpoint(o: TrainOptions, step: number, skipped: number): Promise<void> {
  o.abandon?.throwIfAborted();
  // The metric points up to `step` are stored before the checkpoint exists: a run resumed from it (after a
  // kill between the two) would never log them again.
  await o.run.flush();
  const state = await o.backend.exportState();
  const metadata = {
    config: o.configYaml,
    format: "dsmoe-1",
    skipped_steps: String(skipped),
    ...tokenizerMetadata(o.dataset.tokenizer),
  };
  try {
    await o.run.checkpoint(step, stateToTensors(state), metadata, 3);
  } catch (e) {
    // A manifest that turned unreadable mid-run: the run fails (exit 1); the manifest is left as it is.
    if (e instanceof CheckpointError) {
      throw new TrainError(`Checkpoint of step ${step} not written: ${e.message}`);
    }
    throw e;
  }
  faultKillPoint("checkpoint:stored");
  await o.run.update({ step });
}

/**
 * Flattens a training state into named tensors (`param/…`, `adam_m/…`, `adam_v/…`, `optimizer_step`,
 * `router_state/…` for optimizer-free router state, docs/design.md §16, and with dynamic loss scaling
 * `loss_scale` [scale, good steps]).
 */
export function stateToTensors(state: TrainState): Map<string, SafeTensor> {
  const out = new Map<string, SafeTensor>();
  for (const [name, p] of state.params) {
    out.set(`param/${name}`, f32Tensor(p.shape, p.data));
    out.set(`adam_m/${name}`, f32Tensor(p.shape, state.adamM.get(name)!));
    out.set(`adam_v/${name}`, f32Tensor(p.shape, state.adamV.get(name)!));
  }
  out.set("optimizer_step", f32Tensor([1], new Float32Array([state.step])));
  if (state.lossScale) {
    out.set(LOSS_SCALE, f32Tensor([2], Float32Array.of(state.lossScale.scale, state.lossScale.good)));
  }
  for (const [name, v] of state.routerState ?? []) {
    out.set(`${ROUTER_STATE}${name}`, f32Tensor([v.length], v));
  }
  return out;
}

/**
 * The inverse of {@linkcode stateToTensors}: a checkpoint's tensors back into a training state. Throws
 * CheckpointError where the optimizer state is incomplete (a missing `optimizer_step` would restart the
 * schedule; a missing moment would leave the optimizer's buffers as they were). Values and shapes are
 * checked against the model by `checkCheckpointContent` (core/runs/stored_run.ts) before this is called.
 */
export function tensorsToState(t: ReadonlyMap<string, SafeTensor>): TrainState {
  const adamM = new Map<string, Float32Array>(), adamV = new Map<string, Float32Array>();
  const routerState = new Map<string, Float32Array>();
  for (const [key, tensor] of t) {
    if (key.startsWith("adam_m/")) adamM.set(key.slice(7), tensorToF32(tensor));
    else if (key.startsWith("adam_v/")) adamV.set(key.slice(7), tensorToF32(tensor));
    else if (key.startsWith(ROUTER_STATE)) {
      routerState.set(key.slice(ROUTER_STATE.length), tensorToF32(tensor));
    }
  }
  const params = paramsFromTensors(t);
  for (const name of params.keys()) {
    if (!adamM.has(name) || !adamV.has(name)) {
      throw new CheckpointError(`Checkpoint has no Adam moments of parameter "${name}"`);
    }
  }
  const step = t.get("optimizer_step");
  const value = step && step.shape.length === 1 && step.shape[0] === 1 ? tensorToF32(step)[0]! : NaN;
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new CheckpointError(`Checkpoint has no valid optimizer_step (${step ? value : "missing"})`);
  }
  const ls = t.get(LOSS_SCALE);
  const lossScale = ls ? { scale: tensorToF32(ls)[0]!, good: tensorToF32(ls)[1]! } : undefined;
  return { params, adamM, adamV, step: value, routerState, ...(lossScale ? { lossScale } : {}) };
}

/**
 * The parameters' values by name (`param/…` of a checkpoint's tensors), as inference takes them, with the
 * router state (`router_state/…`, docs/design.md §16: the aux-free balancing biases, which top-k inference
 * reads as parameters; inference graphs have no leaf named after the rest).
 */
export function paramValues(t: ReadonlyMap<string, SafeTensor>): Map<string, Float32Array> {
  const out = new Map([...paramsFromTensors(t)].map(([name, p]) => [name, p.data]));
  for (const [key, tensor] of t) {
    if (key.startsWith(ROUTER_STATE)) out.set(key.slice(ROUTER_STATE.length), tensorToF32(tensor));
  }
  return out;
}

/** Only the parameters (`param/…`) of a checkpoint's tensors, for inference; each must be F32. */
export function paramsFromTensors(
  t: ReadonlyMap<string, SafeTensor>,
): Map<string, { shape: readonly number[]; data: Float32Array }> {
  const params = new Map<string, { shape: readonly number[]; data: Float32Array }>();
  for (const [key, tensor] of t) {
    if (key.startsWith("param/")) {
      params.set(key.slice(6), { shape: tensor.shape, data: tensorToF32(tensor) });
    }
  }
  return params;
}

/**
 * Per-kernel GPU time of training steps, from timestamp queries (`run --profile`): each dispatch of a
 * profiled step gets its own compute pass with begin/end timestamps, and the times are summed by kernel
 * label over the profiled steps. Host syncs: a step is encoded and submitted without waiting for the GPU;
 * its statistics (and, profiled, its timestamps) are read back afterwards, a few steps behind.
 *
 * With the model FLOPs of a step (core/plan/flops.ts) and the adapter's fp32 peak (gpu/peak.ts), the profile
 * also gives the model FLOPs utilization (MFU, docs/performance.md "MFU"): model FLOPs per second over the
 * peak, per second of GPU time (the kernels' sum) and per second of wall time (profiled steps, whose pass
 * boundaries add a little time).
 *
 * @module
 */
import { table } from "../util/format.ts";
import { fmtCount } from "../util/quantities.js";
import type { Peak } from "../../gpu/peak.ts";

/** One kernel's share of a step. */
export interface KernelShare {
  label: string;
  calls: number; // dispatches per step
  ms: number; // GPU milliseconds per step
  share: number; // % of the step's GPU time
}

/** The profile of some training steps. */
export interface StepProfile {
  steps: number;
  gpu_ms_per_step: number;
  dispatches_per_step: number;
  host_syncs_per_step: number; // waits for the GPU inside a step's encode and submit
  kernels: KernelShare[]; // largest share first
  /** Wall milliseconds per profiled step (evaluation and checkpoints excluded); null with one step. */
  wall_ms_per_step: number | null;
  /** Model FLOPs of one optimizer step (core/plan/flops.ts), when the backend counts them. */
  model_flops_per_step?: { matmul: number; attention: number; total: number };
  /** The adapter the steps ran on (its description), when the backend has one. */
  adapter?: string;
  /** Model FLOP/s and MFU, once the adapter's peak is looked up ({@linkcode profileMfu}). */
  mfu?: Mfu | null;
}

/** What the backend tells the profile: its adapter and the model FLOPs of a step. */
export interface ProfileContext {
  adapter?: string;
  modelFlops?: { matmul: number; attention: number; total: number };
}

/** Sums per-dispatch timings of profiled steps by kernel label. */
export class ProfileAccumulator {
  #steps = 0;
  readonly #byLabel = new Map<string, { ms: number; calls: number }>();
  readonly #context: ProfileContext;
  #firstAt = NaN;
  #lastAt = NaN;

  constructor(context: ProfileContext = {}) {
    this.#context = context;
  }

  /**
   * Adds one step's dispatch timings; `atSeconds` is when its statistics arrived on the run's clock
   * (evaluation and checkpoints excluded), from which the wall time per step is taken.
   */
  add(timings: readonly { label: string; ms: number }[], atSeconds?: number): void {
    this.#steps++;
    if (atSeconds !== undefined) {
      if (Number.isNaN(this.#firstAt)) this.#firstAt = atSeconds;
      this.#lastAt = atSeconds;
    }
    for (const t of timings) {
      const a = this.#byLabel.get(t.label) ?? { ms: 0, calls: 0 };
      a.ms += t.ms;
      a.calls++;
      this.#byLabel.set(t.label, a);
    }
  }

  get steps(): number {
    return this.#steps;
  }

  /** The profile so far (null before any step). */
  result(): StepProfile | null {
    if (this.#steps === 0) return null;
    const n = this.#steps;
    const total = [...this.#byLabel.values()].reduce((s, a) => s + a.ms, 0) / n;
    const kernels = [...this.#byLabel].map(([label, a]) => ({
      label,
      calls: a.calls / n,
      ms: a.ms / n,
      share: total > 0 ? (100 * a.ms) / n / total : 0,
    })).sort((x, y) => y.ms - x.ms);
    return {
      steps: n,
      gpu_ms_per_step: total,
      dispatches_per_step: kernels.reduce((s, k) => s + k.calls, 0),
      host_syncs_per_step: 0,
      kernels,
      // n steps arrive over n − 1 intervals.
      wall_ms_per_step: n > 1 && this.#lastAt > this.#firstAt
        ? (1000 * (this.#lastAt - this.#firstAt)) / (n - 1)
        : null,
      ...(this.#context.modelFlops ? { model_flops_per_step: this.#context.modelFlops } : {}),
      ...(this.#context.adapter ? { adapter: this.#context.adapter } : {}),
    };
  }
}

/** Model FLOP/s and MFU of a profile (null where the time or the peak is unknown). */
export interface Mfu {
  /** Model TFLOP/s per second of GPU time (the kernels' sum) and per second of wall time. */
  tflops_gpu: number | null;
  tflops_wall: number | null;
  /** The fp32 peak (TFLOP/s) and where it came from; null when unknown (then `peak_unknown` says why). */
  peak_tflops: number | null;
  peak_source: string | null;
  peak_unknown?: string;
  /** Model FLOP/s over the peak, in %, per GPU time and per wall time. */
  mfu_gpu_pct: number | null;
  mfu_wall_pct: number | null;
}

/**
 * The MFU of a profile given the adapter's peak (`peak` from gpu/peak.ts `fp32Peak`; null when unknown, with
 * `why`); null when the profile has no model FLOPs (a backend that does not count them).
 *
 * @example
 * ```ts
 * import { profileMfu, type StepProfile } from "./profile.ts";
 * const p: StepProfile = {
 *   steps: 2, gpu_ms_per_step: 1000, dispatches_per_step: 1, host_syncs_per_step: 0, kernels: [],
 *   wall_ms_per_step: 2000, model_flops_per_step: { matmul: 30e12, attention: 0, total: 30e12 },
 * };
 * const m = profileMfu(p, { flops: 60e12, source: "--peak-tflops" }, "");
 * if (m?.mfu_gpu_pct !== 50 || m.mfu_wall_pct !== 25) throw new Error("mfu");
 * ```
 */
export function profileMfu(p: StepProfile, peak: Peak | null, why: string): Mfu | null {
  const f = p.model_flops_per_step?.total;
  if (f === undefined) return null;
  const rate = (ms: number | null) => (ms !== null && ms > 0 ? f / (ms / 1000) : null);
  const gpu = rate(p.gpu_ms_per_step), wall = rate(p.wall_ms_per_step);
  const pct = (r: number | null) => (r !== null && peak ? (100 * r) / peak.flops : null);
  return {
    tflops_gpu: gpu === null ? null : gpu / 1e12,
    tflops_wall: wall === null ? null : wall / 1e12,
    peak_tflops: peak ? peak.flops / 1e12 : null,
    peak_source: peak?.source ?? null,
    ...(peak ? {} : { peak_unknown: why }),
    mfu_gpu_pct: pct(gpu),
    mfu_wall_pct: pct(wall),
  };
}

/** The MFU lines under a profile's table. */
export function formatMfu(p: StepProfile, m: Mfu): string {
  const f = p.model_flops_per_step!;
  const t = (x: number | null) => (x === null ? "–" : Number(x.toPrecision(3)).toString());
  const pc = (x: number | null) => (x === null ? "–" : `${x.toFixed(1)}%`);
  const lines = [
    `Model FLOPs per step ${fmtCount(f.total)} (matmul ${fmtCount(f.matmul)}, attention ${
      fmtCount(f.attention)
    }): ` +
    `${t(m.tflops_gpu)} TFLOP/s per GPU second, ${t(m.tflops_wall)} TFLOP/s per wall second` +
    (p.wall_ms_per_step === null ? "" : ` (${p.wall_ms_per_step.toFixed(2)} ms per profiled step)`),
  ];
  lines.push(
    m.peak_tflops === null
      ? `MFU: ${m.peak_unknown}`
      : `MFU ${pc(m.mfu_gpu_pct)} of GPU time, ${pc(m.mfu_wall_pct)} of wall time, over the fp32 peak ` +
        `${m.peak_tflops} TFLOP/s of ${m.peak_source}`,
  );
  return lines.join("\n");
}

/**
 * The profile as a table: kernel, dispatches per step, ms per step, share; then the totals, and with its
 * `mfu` the model FLOP/s and MFU lines.
 */
export function formatProfile(p: StepProfile, top = 25): string {
  const rows = p.kernels.slice(0, top).map((k) => [
    k.label,
    k.calls.toFixed(k.calls % 1 === 0 ? 0 : 1),
    k.ms.toFixed(3),
    `${k.share.toFixed(1)}%`,
  ]);
  const rest = p.kernels.slice(top);
  if (rest.length > 0) {
    const ms = rest.reduce((s, k) => s + k.ms, 0), share = rest.reduce((s, k) => s + k.share, 0);
    rows.push([`(${rest.length} more kernels)`, "", ms.toFixed(3), `${share.toFixed(1)}%`]);
  }
  return [
    `GPU time per step ${p.gpu_ms_per_step.toFixed(2)} ms over ${p.steps} profiled steps; ` +
    `${p.dispatches_per_step} dispatches per step; host syncs inside a step: ${p.host_syncs_per_step}`,
    table(["kernel", "per step", "ms", "share"], rows, ["left", "right", "right", "right"]),
    ...(p.mfu ? [formatMfu(p, p.mfu)] : []),
  ].join("\n");
}

/**
 * Per-kernel GPU time of training steps, from timestamp queries (`run --profile`): each dispatch of a
 * profiled step gets its own compute pass with begin/end timestamps, and the times are summed by kernel
 * label over the profiled steps. Host syncs: a step is encoded and submitted without waiting for the GPU;
 * its statistics (and, profiled, its timestamps) are read back afterwards, a few steps behind.
 *
 * @module
 */
import { table } from "../util/format.ts";

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
}

/** Sums per-dispatch timings of profiled steps by kernel label. */
export class ProfileAccumulator {
  #steps = 0;
  readonly #byLabel = new Map<string, { ms: number; calls: number }>();

  /** Adds one step's dispatch timings. */
  add(timings: readonly { label: string; ms: number }[]): void {
    this.#steps++;
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
    };
  }
}

/** The profile as a table: kernel, dispatches per step, ms per step, share; then the totals. */
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
  ].join("\n");
}

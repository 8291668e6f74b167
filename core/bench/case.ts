/**
 * Benchmark cases and the runner that checks then times every implementation of a case, one row each.
 *
 * @module
 */
import { BenchCheckError, checkClose, type Tolerance } from "./check.ts";
import { checkTiming, Samples, sizeQueue, timeSample, type TimingOptions } from "./timing.ts";

/** The implementations compared in a case unless it names its own ({@linkcode BenchCase.impls}). */
export const IMPLS = ["dsmoe", "tfjs-webgpu"] as const;

/** Our two executions of one layer in the moe suite: every expert computed, or only the routed ones. */
export const MOE_IMPLS = ["dense", "sparse"] as const;

/** Further peers of the train suite: jax-js on its WebGPU and WebAssembly backends. */
export const JAX_IMPLS = ["jax-js-webgpu", "jax-js-wasm"] as const;

/** One of {@linkcode IMPLS}, {@linkcode MOE_IMPLS} or {@linkcode JAX_IMPLS}. */
export type ImplName = typeof IMPLS[number] | typeof MOE_IMPLS[number] | typeof JAX_IMPLS[number];

/** One implementation, set up with its inputs on the GPU. */
export interface Runnable {
  /**
   * Encodes and submits `times` runs (default 1) back to back and resolves when the GPU has finished them
   * all, waiting on the host once where the implementation allows.
   */
  run(times?: number): Promise<void>;
  /** The output of the last repetition, read back to the host (for the correctness check). */
  output(): Promise<ArrayLike<number>>;
  /** Frees what the setup allocated. */
  dispose(): void;
  /**
   * The work runs on this machine's CPUs and each run ends in its own wait (jax-js on WebAssembly): a
   * queue gains nothing there, so such a row is timed with p = 1 whatever p the case uses.
   */
  hostBound?: boolean;
  /** Decode suite: compute dispatches per decoded token and per layer (mean over the blocks). */
  dispatches?(): { perToken: number; perLayer: number };
}

/** What a case makes once its inputs exist on the host. */
export interface CaseSetup {
  tolerance: Tolerance;
  /**
   * Float64 reference of the checked values (all of the output, or what `select` keeps). Called once per
   * case with no argument, unless `referencePerImpl` asks for one call per implementation (cases whose
   * rows run different models).
   */
  reference(impl?: ImplName): ArrayLike<number>;
  referencePerImpl?: boolean;
  /** The checked part of an output; default all of it (large matmuls check sampled rows). */
  select?(out: ArrayLike<number>): ArrayLike<number>;
  /** A builder for each implementation the case lists; a missing one becomes an error row. */
  impls: Partial<Record<ImplName, () => Promise<Runnable> | Runnable>>;
}

/** One benchmark case: a kernel at one size, built lazily so only one case's buffers exist at a time. */
export interface BenchCase {
  suite: string;
  name: string;
  /** Floating-point operations of one run when counted (matmul: 2·m·k·n); null where not meaningful. */
  flops: number | null;
  /** Tokens one run decodes (decode and serve suites): rows then report tokens/s. */
  tokens?: number;
  /** Serve suite: sequences decoded together (each run is `tokens / batch` batched steps). */
  batch?: number;
  /** Implementations compared, in row order; default {@linkcode IMPLS}. */
  impls?: readonly ImplName[];
  setup(): CaseSetup;
}

/** One output row: an implementation of a case, timed, or the error that stopped it. */
export interface BenchRow {
  suite: string;
  case: string;
  impl: ImplName;
  /** Median milliseconds of one repetition, null when the case failed. */
  ms: number | null;
  /** flops / ms / 1e6, null when the case has no FLOP count or failed. */
  gflops: number | null;
  /** GFLOP/s as a % of the adapter's fp32 peak (gpu/peak.ts), when the peak is known. */
  peak_pct?: number;
  flops: number | null;
  /** Decode and serve suites: tokens one run decodes and tokens per second (else absent). */
  tokens?: number;
  tokens_per_s?: number | null;
  /** Serve suite: sequences decoded together; tokens_per_s is their total. */
  batch?: number;
  /** Decode suite: compute dispatches per decoded token and per layer (docs/performance.md). */
  dispatches_per_token?: number;
  dispatches_per_layer?: number;
  /** Largest |got − ref| of the correctness check. */
  max_err: number | null;
  /** Runs queued per host↔GPU wait when timing (the same for every implementation of a case). */
  per_sync?: number;
  error?: string;
}

/** Options of {@linkcode runCases}. */
export interface RunCasesOptions extends TimingOptions {
  /** Called with a line as each implementation starts and ends (the CLI writes them to stderr). */
  progress?: (line: string) => void;
}

/**
 * Checks every implementation of a case, then times them in turn: warm-ups, then sample 1 of each
 * implementation, sample 2 of each, …, so that a slow spell of a shared machine falls on all of a case's
 * rows rather than on one. A wrong result or a thrown error becomes a row with `error` set and `ms: null`;
 * the rest still run.
 *
 * @example
 * ```ts
 * import { runCases } from "./case.ts";
 * const r = { run: () => Promise.resolve(), output: () => Promise.resolve([1]), dispose() {} };
 * const rows = await runCases([{
 *   suite: "demo", name: "one", flops: 1e6,
 *   setup: () => ({ tolerance: { atol: 0, rtol: 0 }, reference: () => [1], impls: { dsmoe: () => r, "tfjs-webgpu": () => r } }),
 * }], { warmup: 0, reps: 1 });
 * if (rows.length !== 2 || rows.some((x) => x.error)) throw new Error("rows");
 * ```
 */
export async function runCases(cases: readonly BenchCase[], o: RunCasesOptions): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const c of cases) {
    let setup: CaseSetup, ref: ArrayLike<number>;
    try {
      setup = c.setup();
      ref = setup.reference();
    } catch (e) {
      for (const impl of c.impls ?? IMPLS) rows.push(_errorRow(c, impl, e));
      o.progress?.(`${c.suite} ${c.name}: setup failed: ${(e as Error).message}`);
      continue;
    }
    rows.push(...await _runCase(c, setup, ref, o));
  }
  return rows;
}

/** An implementation that passed its check, being timed. */
interface _Live {
  impl: ImplName;
  r: Runnable;
  maxErr: number;
  perSync: number;
  samples: Samples;
  error?: unknown;
  dispatches?: { perToken: number; perLayer: number };
}

async function _runCase(
  c: BenchCase,
  setup: CaseSetup,
  ref: ArrayLike<number>,
  o: RunCasesOptions,
): Promise<BenchRow[]> {
  const out = new Map<ImplName, BenchRow | _Live>();
  // The first implementation that runs fixes the queue length for the whole case.
  let perSync = o.perSync;
  try {
    for (const impl of c.impls ?? IMPLS) {
      o.progress?.(`${c.suite} ${c.name} ${impl} …`);
      let r: Runnable | null = null;
      try {
        const build = setup.impls[impl];
        if (!build) throw new TypeError(`case ${c.name} has no "${impl}" implementation`);
        r = await build();
        // The check run also compiles the pipelines, so it doubles as the first warm-up.
        await r.run();
        const got = await r.output();
        const want = setup.referencePerImpl ? setup.reference(impl) : ref;
        const maxErr = checkClose(
          setup.select ? setup.select(got) : got,
          want,
          setup.tolerance,
          `${c.suite} ${c.name} ${impl}`,
        );
        const p = r.hostBound ? 1 : (perSync ??= await sizeQueue((times) => r!.run(times), o.now));
        checkTiming(o.reps, p);
        out.set(impl, { impl, r, maxErr, perSync: p, samples: new Samples(), dispatches: r.dispatches?.() });
      } catch (e) {
        r?.dispose();
        out.set(impl, _errorRow(c, impl, e));
        o.progress?.(`${c.suite} ${c.name} ${impl}: ERROR ${out.get(impl)!.error}`);
      }
    }
    const live = () => [...out.values()].filter((x): x is _Live => "r" in x && x.error === undefined);
    const each = async (f: (l: _Live) => Promise<void>) => {
      for (const l of live()) {
        try {
          await f(l);
        } catch (e) {
          l.error = e;
        }
      }
    };
    for (let i = 0; i < o.warmup; i++) await each((l) => l.r.run(l.perSync));
    for (let i = 0; i < o.reps; i++) {
      await each(async (l) => l.samples.add(await timeSample((t) => l.r.run(t), l.perSync, o.now)));
    }
    return [...out.values()].map((x) => {
      if (!("r" in x)) return x;
      const row = _timedRow(c, x);
      o.progress?.(
        row.error
          ? `${c.suite} ${c.name} ${x.impl}: ERROR ${row.error}`
          : `${c.suite} ${c.name} ${x.impl}: ${row.ms!.toFixed(2)} ms${
            row.gflops === null ? "" : ` (${row.gflops.toFixed(2)} GFLOP/s)`
          }`,
      );
      return row;
    });
  } finally {
    for (const x of out.values()) if ("r" in x) x.r.dispose();
  }
}

function _timedRow(c: BenchCase, l: _Live): BenchRow {
  try {
    if (l.error !== undefined) throw l.error;
    const ms = l.samples.ms();
    if (!(ms > 0) || !Number.isFinite(ms)) throw new RangeError(`timing gave ${ms} ms`);
    return {
      suite: c.suite,
      case: c.name,
      impl: l.impl,
      ms,
      gflops: c.flops === null ? null : c.flops / ms / 1e6,
      flops: c.flops,
      ...(c.tokens ? { tokens: c.tokens, tokens_per_s: (1000 * c.tokens) / ms } : {}),
      ...(c.batch ? { batch: c.batch } : {}),
      ...(l.dispatches
        ? { dispatches_per_token: l.dispatches.perToken, dispatches_per_layer: l.dispatches.perLayer }
        : {}),
      max_err: l.maxErr,
      per_sync: l.perSync,
    };
  } catch (e) {
    return _errorRow(c, l.impl, e);
  }
}

function _errorRow(c: BenchCase, impl: ImplName, e: unknown): BenchRow {
  const msg = e instanceof BenchCheckError ? e.message : `${(e as Error).name}: ${(e as Error).message}`;
  return {
    suite: c.suite,
    case: c.name,
    impl,
    ms: null,
    gflops: null,
    flops: c.flops,
    ...(c.tokens ? { tokens: c.tokens, tokens_per_s: null } : {}),
    ...(c.batch ? { batch: c.batch } : {}),
    max_err: null,
    error: msg,
  };
}

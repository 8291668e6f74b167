/**
 * Opening a WebGPU device: adapter request, the adapter's real limits, its description, loss handling.
 *
 * @module
 */
import {
  GpuFeatureError,
  GpuLostError,
  GpuOutOfMemoryError,
  GpuUnavailableError,
  GpuValidationError,
} from "./errors.ts";
import { PipelineCache } from "./pipeline_cache.ts";
import { optionalEnv } from "../core/util/env.ts";
import { processMesaRelease } from "./mesa.ts";
import { fmtBytes } from "../core/util/format.ts";

/** What the adapter says about itself, recorded with every run. */
export interface AdapterDescription {
  description: string;
  vendor: string;
  architecture: string;
  isFallbackAdapter: boolean;
}

/** Options of {@linkcode openGpu}. */
export interface OpenGpuOptions {
  powerPreference?: GPUPowerPreference;
  /** Wrap steps in error scopes ({@linkcode GpuContext.scoped}) and check them. */
  validation?: boolean;
  /** Ask for `timestamp-query` when the adapter has it. Default true. */
  timestamps?: boolean;
  /**
   * Features the caller cannot run without (`shader-f16` for f16 kernels): an adapter lacking one is refused
   * with a {@linkcode GpuFeatureError} naming the feature and the adapter, before a device is requested.
   * `why` says what needs them (in the message).
   */
  require?: { features: readonly GPUFeatureName[]; why: string; fix?: string };
  /**
   * Kernel templates to use instead of the ones picked from the adapter's description (tests run the
   * `gpu` templates on llvmpipe this way). Default: the environment variable `DSMOE_KERNELS`
   * (`gpu` or `cpu-simd`) when set, else detected.
   */
  profile?: KernelProfile;
}

/**
 * True for a software adapter (llvmpipe, lavapipe, SwiftShader, or one the browser calls a fallback): the GPU
 * work runs on the host's CPUs. Picks the default kernel profile, whatever `DSMOE_KERNELS` overrides.
 */
export function isSoftwareAdapter(adapter: AdapterDescription): boolean {
  return adapter.isFallbackAdapter || /llvmpipe|lavapipe|swiftshader|software/i.test(adapter.description);
}

/** Which family of kernel templates a context builds: see {@linkcode GpuContext.profile}. */
export type KernelProfile = "cpu-simd" | "gpu";

/** What every context of one device shares: its loss and its allocations' verdicts. */
interface _DeviceState {
  lost: GpuLostError | null;
  // Allocations whose out-of-memory scope has not been popped yet, and the first one the device refused.
  pendingAllocations: Set<Promise<unknown>>;
  refused: GpuOutOfMemoryError | null;
  // Fault injection for reliability tests: DSMOE_FAULT_OOM=<label> makes the allocation of that tensor
  // report out-of-memory, as a device that has run out would.
  faultOom: string | undefined;
}

/** Where llvmpipe's thread count comes from. */
export type LlvmpipeThreadsSource = "LP_NUM_THREADS" | "cpu count";

/**
 * llvmpipe's thread count: `LP_NUM_THREADS` when it is set to a whole number, else one per CPU (`cpus`).
 *
 * @example
 * ```ts
 * import { llvmpipeThreads } from "./device.ts";
 * if (llvmpipeThreads("4", 16).threads !== 4) throw new Error("env wins");
 * if (llvmpipeThreads(undefined, 16).from !== "cpu count") throw new Error("cpu count");
 * ```
 */
export function llvmpipeThreads(
  env: string | undefined,
  cpus: number | null,
): { threads: number | null; from: LlvmpipeThreadsSource } {
  const n = env === undefined ? NaN : Number(env.trim());
  if (env !== undefined && env.trim() !== "" && Number.isSafeInteger(n) && n >= 0) {
    return { threads: n, from: "LP_NUM_THREADS" };
  }
  return { threads: cpus, from: "cpu count" };
}

/**
 * Threads a software adapter computes with: llvmpipe's (`LP_NUM_THREADS`, else one per CPU), at least 1;
 * 4 where the CPU count is unknown.
 */
function _softwareThreads(): number {
  const cpus = navigator.hardwareConcurrency ?? null;
  return Math.max(1, llvmpipeThreads(optionalEnv("LP_NUM_THREADS"), cpus).threads ?? 4);
}

const _STATE = Symbol("GpuContext.state");

/**
 * Runs `make` (a buffer or texture creation) inside an out-of-memory error scope: a refusal thrown at once
 * is rethrown as `oom(message)`; one the device reports later is kept in `state` for `checkAllocations`.
 * A function, not a method, so that views made with Object.create(ctx, …) can allocate.
 */
function _tracked<T>(
  device: GPUDevice,
  state: _DeviceState,
  make: () => T,
  label: string | undefined,
  oom: (why: string) => GpuOutOfMemoryError,
): T {
  device.pushErrorScope("out-of-memory");
  let made: T;
  try {
    made = make();
  } catch (e) {
    device.popErrorScope().catch(() => {});
    throw oom((e as Error).message);
  }
  const popped = device.popErrorScope().then(
    (err) => err ?? (state.faultOom === label ? { message: "injected by DSMOE_FAULT_OOM" } : null),
    () => null, // the device was lost: lostError says so
  ).then((err) => {
    if (err && !state.refused) state.refused = oom(err.message);
    state.pendingAllocations.delete(popped);
  });
  state.pendingAllocations.add(popped);
  return made;
}

/** An open device plus everything the kernels need from it. */
export class GpuContext {
  readonly device: GPUDevice;
  readonly adapter: AdapterDescription;
  readonly limits: GPUSupportedLimits;
  readonly features: ReadonlySet<string>;
  readonly pipelines: PipelineCache;
  readonly validation: boolean;
  /**
   * Tuning profile for kernel templates. `cpu-simd`: a software adapter (llvmpipe, lavapipe, SwiftShader),
   * where big per-invocation register tiles and tiny workgroups win (docs/llvmpipe.md);
   * `gpu`: a real GPU, where 4×4–8×8 tiles, 64–256-thread workgroups and shared memory win.
   */
  readonly profile: KernelProfile;
  /**
   * The threads a software adapter runs workgroups on: `cpu-simd` kernels size their grids to give each a
   * share. 4 on a real GPU, which runs those kernels only when `DSMOE_KERNELS=cpu-simd` forces them.
   */
  readonly threads: number;
  /**
   * The Mesa release a software adapter computes on (gpu/mesa.ts), which some `cpu-simd` kernels are shaped
   * for; null on a real GPU or where it cannot be read.
   */
  readonly mesa: string | null;
  // Keyed by a module symbol, not a #private field, so that a view made with Object.create(ctx, …) (tests
  // override limits that way) reaches the same state through its prototype.
  readonly [_STATE]: _DeviceState;

  constructor(
    device: GPUDevice,
    adapter: AdapterDescription,
    validation: boolean,
    profile?: KernelProfile,
    shared?: { pipelines: PipelineCache; state: _DeviceState },
  ) {
    this.device = device;
    this.adapter = adapter;
    this.limits = device.limits;
    this.features = new Set(device.features);
    this.pipelines = shared?.pipelines ?? new PipelineCache(device);
    this.validation = validation;
    this.profile = profile ?? (isSoftwareAdapter(adapter) ? "cpu-simd" : "gpu");
    this.threads = isSoftwareAdapter(adapter) ? _softwareThreads() : 4;
    this.mesa = isSoftwareAdapter(adapter) ? processMesaRelease() : null;
    const state = this[_STATE] = shared?.state ?? {
      lost: null,
      pendingAllocations: new Set(),
      refused: null,
      faultOom: optionalEnv("DSMOE_FAULT_OOM"),
    };
    if (!shared) {
      device.lost.then((info) => {
        state.lost = new GpuLostError(`WebGPU device lost (${info.reason}): ${info.message || "no message"}`);
      });
    }
  }

  /**
   * This context building the kernel templates of another profile: the same device, pipeline cache, loss
   * and allocation checks (tests run the `gpu` templates on llvmpipe this way, on tensors of this device).
   */
  withProfile(profile: KernelProfile): GpuContext {
    return new GpuContext(this.device, this.adapter, this.validation, profile, {
      pipelines: this.pipelines,
      state: this[_STATE],
    });
  }

  /** The loss error, if the device was lost; callers check it before trusting results. */
  get lostError(): GpuLostError | null {
    return this[_STATE].lost;
  }

  /** Throws if the device has been lost. */
  assertAlive(): void {
    if (this[_STATE].lost) throw this[_STATE].lost;
  }

  /**
   * Creates a buffer inside an out-of-memory error scope. A refusal the device reports later is kept and
   * thrown, naming `what` (a tensor's label and shape) and the size, by {@linkcode checkAllocations} and
   * {@linkcode assertAllocated}; one the browser reports at once (a mapping at creation) is thrown here.
   */
  createBuffer(desc: GPUBufferDescriptor, what: string): GPUBuffer {
    const oom = (why: string) => this.#outOfMemory(what, desc.size, why);
    return _tracked(this.device, this[_STATE], () => this.device.createBuffer(desc), desc.label, oom);
  }

  /**
   * Creates a texture inside the same out-of-memory scope as {@linkcode createBuffer}, refusals reported
   * the same way (`bytes`: its size, for the message).
   */
  createTexture(desc: GPUTextureDescriptor, bytes: number, what: string): GPUTexture {
    const oom = (why: string) => this.#outOfMemory(what, bytes, why);
    return _tracked(this.device, this[_STATE], () => this.device.createTexture(desc), desc.label, oom);
  }

  /** Waits for the device's verdict on every buffer created so far; throws the first refusal. */
  async checkAllocations(): Promise<void> {
    await Promise.all(this[_STATE].pendingAllocations);
    this.assertAllocated();
  }

  /** Throws {@linkcode GpuOutOfMemoryError} if the device has refused an allocation (without waiting). */
  assertAllocated(): void {
    if (this[_STATE].refused) throw this[_STATE].refused;
  }

  #outOfMemory(what: string, bytes: number, why: string): GpuOutOfMemoryError {
    return new GpuOutOfMemoryError(
      `Out of GPU memory: ${this.adapter.description} could not allocate ${what} (${
        fmtBytes(bytes)
      }): ${why}. ` +
        `Lower train.micro_batch, data.seq_len or the model's size, or use a device with more memory.`,
    );
  }

  /** Whether GPU timestamps can be recorded per kernel. */
  get hasTimestamps(): boolean {
    return this.features.has("timestamp-query");
  }

  /**
   * Runs `fn` inside validation and out-of-memory error scopes and throws the first error found.
   * With `validation: false` it only runs `fn` (scopes cost a little on every step).
   */
  async scoped<T>(label: string, fn: () => T | Promise<T>): Promise<T> {
    if (!this.validation) return await fn();
    this.device.pushErrorScope("out-of-memory");
    this.device.pushErrorScope("validation");
    let result: T;
    let thrown: unknown = null;
    try {
      result = await fn();
    } catch (e) {
      thrown = e;
    }
    const validation = await this.device.popErrorScope();
    const oom = await this.device.popErrorScope();
    const err = validation ?? oom;
    if (err) throw new GpuValidationError(`WebGPU error in ${label}: ${err.message}`);
    if (thrown !== null) throw thrown;
    this.assertAlive();
    return result!;
  }

  /** Releases the device. */
  destroy(): void {
    this.device.destroy();
  }
}

/**
 * Requests an adapter and a device with the adapter's real limits.
 * Throws {@linkcode GpuUnavailableError} with a clear message when there is none.
 */
export async function openGpu(options: OpenGpuOptions = {}): Promise<GpuContext> {
  const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
  if (!gpu) {
    throw new GpuUnavailableError("no WebGPU adapter: navigator.gpu is not available in this runtime");
  }
  const adapter = await gpu.requestAdapter({
    powerPreference: options.powerPreference ?? "high-performance",
  });
  if (!adapter) {
    throw new GpuUnavailableError(
      "no WebGPU adapter: requestAdapter() returned null (no GPU driver, and no software adapter such as " +
        "Mesa llvmpipe/lavapipe installed)",
    );
  }
  const requiredLimits: Record<string, number> = {};
  for (const key of _LIMIT_KEYS) {
    const v = (adapter.limits as unknown as Record<string, number>)[key];
    if (typeof v === "number") requiredLimits[key] = v;
  }
  const requiredFeatures: GPUFeatureName[] = [];
  if ((options.timestamps ?? true) && adapter.features.has("timestamp-query")) {
    requiredFeatures.push("timestamp-query");
  }
  if (options.require) {
    assertAdapterFeatures(_description(adapter.info), new Set(adapter.features), options.require);
    requiredFeatures.push(...options.require.features);
  }
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({ requiredLimits, requiredFeatures });
  } catch (e) {
    throw new GpuUnavailableError(`no WebGPU device: requestDevice() failed: ${(e as Error).message}`);
  }
  const info = adapter.info;
  const desc: AdapterDescription = {
    description: _description(info),
    vendor: info.vendor,
    architecture: info.architecture,
    isFallbackAdapter: (info as { isFallbackAdapter?: boolean }).isFallbackAdapter ?? false,
  };
  return new GpuContext(device, desc, options.validation ?? false, options.profile ?? _envProfile());
}

/** An adapter's description as runs record it. */
function _description(info: GPUAdapterInfo): string {
  return info.description || info.device || "unknown adapter";
}

/**
 * Throws {@linkcode GpuFeatureError} unless `features` has every feature of `require`, naming the first
 * missing one, the adapter, what needs it and (`fix`) what to do instead.
 *
 * @example
 * ```ts
 * import { assertAdapterFeatures } from "./device.ts";
 * assertAdapterFeatures("a GPU", new Set(["shader-f16"]), { features: ["shader-f16"], why: "f16" });
 * ```
 */
export function assertAdapterFeatures(
  adapter: string,
  features: ReadonlySet<string>,
  require: { features: readonly string[]; why: string; fix?: string },
): void {
  const missing = require.features.find((f) => !features.has(f));
  if (missing === undefined) return;
  throw new GpuFeatureError(
    `${require.why} needs the WebGPU feature ${missing}, which the adapter ${adapter} does not have` +
      (require.fix ? `: ${require.fix}` : ""),
  );
}

/**
 * The adapter a device would be opened on, and its optional features, without opening a device (nothing is
 * allocated): for refusing a plan that needs a feature before any work starts.
 */
export async function probeAdapter(
  powerPreference: GPUPowerPreference = "high-performance",
): Promise<{ description: string; features: ReadonlySet<string> }> {
  const gpu = (globalThis.navigator as Navigator | undefined)?.gpu;
  if (!gpu) {
    throw new GpuUnavailableError("no WebGPU adapter: navigator.gpu is not available in this runtime");
  }
  const adapter = await gpu.requestAdapter({ powerPreference });
  if (!adapter) throw new GpuUnavailableError("no WebGPU adapter: requestAdapter() returned null");
  return { description: _description(adapter.info), features: new Set(adapter.features) };
}

function _envProfile(): KernelProfile | undefined {
  const v = optionalEnv("DSMOE_KERNELS");
  if (v === undefined || v === "") return undefined;
  if (v !== "gpu" && v !== "cpu-simd") {
    throw new GpuUnavailableError(`DSMOE_KERNELS must be "gpu" or "cpu-simd", got "${v}"`);
  }
  return v;
}

// The limits kernels and the planner depend on; requested at the adapter's maximum.
const _LIMIT_KEYS = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxUniformBufferBindingSize",
  "maxBindGroups",
];

/**
 * Runs a scheduled graph on WebGPU: every value gets a tensor view of a buffer from the memory plan,
 * every node becomes prepared kernel calls (built once, encoded every step), and one execution is one
 * {@linkcode Step}: one encoder, one submit, no host sync. Op → kernel calls comes from the table it is given,
 * by default `GPU_IMPLS` of gpu/graph_ops.ts (beside the kernels).
 *
 * @module
 */
import type { Node, Value } from "../core/graph/ir.ts";
import { numel } from "../core/graph/ir.ts";
import { type Schedule, shareBuffers } from "../core/graph/schedule.ts";
import { assertBindable, createIndirectTensor, createTensor, GpuTensor } from "./buffers.ts";
import type { GpuContext } from "./device.ts";
import { GpuLimitError } from "./errors.ts";
import { prepare, type PreparedCall, releaseCall, Step } from "./dispatch.ts";
import { GPU_IMPLS, gpuImplOf, type GpuTable, type Scratch } from "./graph_ops.ts";

/** A buffer copy in place of a kernel (reshape between different buffers). */
interface CopyCall {
  copy: { from: GpuTensor; to: GpuTensor; bytes: number };
}

/**
 * The planned buffers of graphs that never run at once (a training step, its evaluation and its router
 * statistics pass), allocated once and shared by their executors ({@linkcode shareBuffers}: the unpinned
 * buffers of each plan, by size rank). Each executor keeps its own buffers for the values read after its run.
 * The owner destroys it after its executors.
 *
 * @example
 * ```ts ignore
 * const shared = new SharedPlanBuffers(ctx, [train, evaluate]);
 * const a = new GraphExecutor(ctx, train, leaves, undefined, GPU_IMPLS, shared);
 * const b = new GraphExecutor(ctx, evaluate, leaves, params, GPU_IMPLS, shared);
 * ```
 */
export class SharedPlanBuffers {
  readonly #schedules: readonly Schedule[];
  readonly #slots: (number | null)[][];
  readonly #buffers: GPUBuffer[] = [];

  /** Checks every plan against the device's limits, then allocates the shared buffers. */
  constructor(ctx: GpuContext, schedules: readonly Schedule[]) {
    for (const s of schedules) _assertPlanFits(ctx, s, []);
    const shared = shareBuffers(schedules.map((s) => s.memory));
    this.#schedules = schedules;
    this.#slots = shared.slots;
    shared.sizes.forEach((n, i) =>
      this.#buffers.push(createTensor(ctx, [n], "f32", undefined, `shared${i}`).buffer)
    );
  }

  /** For each planned buffer of `sched`: the shared buffer it uses, or null (the executor allocates it). */
  buffersOf(sched: Schedule): (GPUBuffer | null)[] {
    const i = this.#schedules.indexOf(sched);
    if (i < 0) throw new RangeError("This schedule does not share these buffers");
    return this.#slots[i]!.map((slot) => (slot === null ? null : this.#buffers[slot]!));
  }

  destroy(): void {
    for (const b of this.#buffers) b.destroy();
  }
}

/** A graph bound to buffers and pipelines, executable any number of times. */
export class GraphExecutor {
  readonly ctx: GpuContext;
  readonly tensors = new Map<number, GpuTensor>(); // value id → tensor (views share buffers)
  readonly #buffers: GPUBuffer[] = [];
  readonly #steps: (PreparedCall | CopyCall)[] = [];
  readonly #sources = new Map<string, string>(); // WGSL source → label
  readonly #impls: GpuTable;
  #lastDispatches = 0;
  readonly #owners: { op: string; value: string; inputs: string[] }[] = []; // per dispatch: its node

  /**
   * Allocates the memory plan's buffers (and one per leaf), and prepares every node's calls.
   * `leafTensors` may supply existing tensors for leaves (parameters shared with an optimizer); `impls` is
   * the op → kernel calls table; `shared` supplies the unpinned planned buffers (graphs that never run at
   * once, {@linkcode SharedPlanBuffers}), which this executor then does not destroy.
   */
  constructor(
    ctx: GpuContext,
    sched: Schedule,
    leaves: readonly Value[],
    leafTensors = new Map<number, GpuTensor>(),
    impls: GpuTable = GPU_IMPLS,
    shared?: SharedPlanBuffers,
  ) {
    this.ctx = ctx;
    this.#impls = impls;
    _assertPlanFits(ctx, sched, leaves);
    for (const v of leaves) {
      this.tensors.set(v.id, leafTensors.get(v.id) ?? createTensor(ctx, v.shape, v.dtype, undefined, v.name));
    }
    const given = shared?.buffersOf(sched);
    const planned = sched.memory.bufferSizes.map((n, i) => {
      const b = given?.[i];
      if (b) return b;
      const own = createTensor(ctx, [n], "f32", undefined, `buf${i}`).buffer;
      this.#buffers.push(own);
      return own;
    });
    for (const node of sched.nodes) {
      for (const o of node.outputs) {
        const b = sched.memory.bufferOf.get(o.id);
        if (b === undefined) throw new RangeError(`No buffer planned for "${o.name}"`);
        this.tensors.set(o.id, new GpuTensor(planned[b]!, o.shape, o.dtype, o.name));
      }
    }
    for (const node of sched.nodes) this.#prepareNode(node);
  }

  /**
   * Throws {@linkcode GpuOutOfMemoryError} if the device refused a buffer of the graph (naming it), then
   * compiles every kernel source and throws {@linkcode WgslCompileError} on the first that fails: an
   * invalid pipeline would otherwise run as a no-op and leave zeros behind.
   */
  async check(): Promise<void> {
    await this.ctx.checkAllocations();
    for (const [code, label] of this.#sources) await this.ctx.pipelines.check(code, label);
  }

  /** The tensor holding `v`. */
  tensor(v: Value): GpuTensor {
    const t = this.tensors.get(v.id);
    if (!t) throw new RangeError(`Value "${v.name}" is not part of this executor`);
    return t;
  }

  /** Encodes the whole graph into `step` (the caller submits). */
  encode(step: Step): void {
    const before = step.dispatches;
    for (const s of this.#steps) {
      if ("copy" in s) {
        step.encoder.copyBufferToBuffer(s.copy.from.buffer, 0, s.copy.to.buffer, 0, s.copy.bytes);
      } else step.dispatch(s);
    }
    this.#lastDispatches = step.dispatches - before;
  }

  /**
   * Compute dispatches (direct and indirect) the last {@linkcode GraphExecutor.encode} recorded: one
   * execution of the graph. 0 before the first. Buffer copies (reshapes between buffers) are not counted.
   */
  get dispatches(): number {
    return this.#lastDispatches;
  }

  /**
   * Every dispatch one execution records, in order: the kernel's label, the op of the node it runs, the
   * name of that node's first output and the names of its inputs (docs/performance.md).
   */
  kernels(): { label: string; op: string; value: string; inputs: string[] }[] {
    return this.#steps.flatMap((s) => ("copy" in s ? [] : [s.label])).map((label, i) => ({
      label,
      ...this.#owners[i]!,
    }));
  }

  /** Encodes and submits the graph as one step. */
  run(): Step {
    const step = new Step(this.ctx, { label: "graph" });
    this.encode(step);
    step.submit();
    return step;
  }

  /**
   * Frees pipelines' uniforms and the buffers this executor allocated (leaf tensors and shared buffers
   * supplied by the caller stay).
   */
  destroy(): void {
    for (const s of this.#steps) if (!("copy" in s)) releaseCall(s);
    for (const b of this.#buffers) b.destroy();
  }

  #prepareNode(node: Node): void {
    const ins = node.inputs.map((v) => this.tensor(v)), outs = node.outputs.map((v) => this.tensor(v));
    if (node.op === "reshape") {
      if (ins[0]!.buffer !== outs[0]!.buffer) {
        this.#steps.push({ copy: { from: ins[0]!, to: outs[0]!, bytes: numel(node.outputs[0]!.shape) * 4 } });
      }
      return;
    }
    const impl = gpuImplOf(node, this.#impls);
    const scratch: Scratch = (shape, label, kind = "f32") => {
      const name = `${node.op}${node.id}.${label}`;
      const t = kind === "indirect"
        ? createIndirectTensor(this.ctx, numel(shape), name)
        : createTensor(this.ctx, shape, kind, undefined, name);
      this.#buffers.push(t.buffer);
      return t;
    };
    for (const call of impl(this.ctx, node, ins, outs, scratch)) {
      this.#sources.set(call.code, call.label);
      this.#steps.push(prepare(this.ctx, call));
      this.#owners.push({
        op: node.op,
        value: node.outputs[0]?.name ?? "",
        inputs: node.inputs.map((v) => v.name),
      });
    }
  }
}

/**
 * Refuses a plan with a buffer that one binding (or one allocation) of this device cannot hold, before
 * anything is allocated: a half-built executor would hold GPU memory until the process exits.
 */
function _assertPlanFits(ctx: GpuContext, sched: Schedule, leaves: readonly Value[]): void {
  const max = Math.min(ctx.limits.maxStorageBufferBindingSize, ctx.limits.maxBufferSize);
  const refuse = (bytes: number, what: string) => {
    assertBindable(ctx, bytes, what);
    throw new GpuLimitError(
      `Cannot allocate ${what}: ${bytes} bytes exceeds maxBufferSize (${ctx.limits.maxBufferSize})`,
    );
  };
  for (const v of leaves) {
    if (numel(v.shape) * 4 > max) refuse(numel(v.shape) * 4, `"${v.name}" [${v.shape}]`);
  }
  sched.memory.bufferSizes.forEach((n, i) => {
    if (n * 4 <= max) return;
    const held = sched.nodes.flatMap((node) => node.outputs).filter((o) =>
      sched.memory.bufferOf.get(o.id) === i
    );
    refuse(
      n * 4,
      `plan buffer ${i} (for ${held.slice(0, 3).map((o) => `"${o.name}" [${o.shape}]`).join(", ")})`,
    );
  });
}

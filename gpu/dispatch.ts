/**
 * Kernel calls, prepared once (pipeline + bind group + uniform buffer) and encoded many times,
 * and the {@linkcode Step}: one command encoder per step, one submit, optional per-kernel timestamps.
 *
 * @module
 */
import type { GpuContext } from "./device.ts";
import { assertBindable, createMatrixTexture, encodeMatrixCopy, type GpuTensor } from "./buffers.ts";
import { GpuLimitError } from "./errors.ts";

/**
 * One dispatch of a kernel. `bindings` are `@binding(0..n-1)` in order: storage buffers, or texture views
 * (a weight's texture copy, gpu/buffers.ts `textureMirror`); `uniform`, if given, is `@binding(n)` (a
 * `var<uniform>` struct the kernel template declares).
 */
export interface KernelCall {
  label: string;
  code: string;
  bindings: readonly (GpuTensor | GPUBuffer | GPUTextureView)[];
  uniform?: ArrayBuffer | ArrayBufferView;
  /**
   * Workgroup counts; use {@linkcode grid} to fold a large 1-D count into 2-D. Not used to dispatch when
   * `indirect` is set (give `[0]` there).
   */
  workgroups: readonly [number, number?, number?];
  /**
   * Dispatch with the counts a kernel wrote on the GPU (`dispatchWorkgroupsIndirect`): three u32 (x, y, z)
   * at byte `offset` of a buffer made with INDIRECT usage (`createIndirectTensor` in buffers.ts). For work whose
   * size is only known on the GPU (routed token counts), so no host readback is needed.
   */
  indirect?: { buffer: GPUBuffer | GpuTensor; offset: number };
  /**
   * Bindings read through a texture copy refreshed before every dispatch: `bindings[binding]` is a tensor
   * holding a row-major (rows, cols) f32 matrix, and the kernel declares that binding as a read-only storage
   * texture (gpu/kernels/common.ts `WEIGHT_TEXTURE`) of cols/4 `rgba32float` texels by rows.
   * {@linkcode prepare} makes the texture (the prepared call owns it, {@linkcode releaseCall} frees it) and
   * {@linkcode Step.dispatch} encodes the copy first. For operands that change between steps where a texel
   * fetch beats a storage load (llvmpipe, gpu/kernels/matmul.ts `matmulCopiesB`); cols must be a multiple of
   * 64 (a copy's rows are multiples of 256 bytes).
   */
  textureCopies?: readonly TextureCopySpec[];
}

/** One binding of a {@linkcode KernelCall} read through a texture copy: see `textureCopies`. */
export interface TextureCopySpec {
  binding: number;
  rows: number;
  cols: number;
}

/** A prepared texture copy: `source`'s bytes into `texture`, encoded before the call's dispatch. */
export interface PreparedTextureCopy {
  readonly source: GPUBuffer;
  readonly texture: GPUTexture;
  readonly rows: number;
  readonly cols: number;
}

/** A call ready to be encoded any number of times. */
export interface PreparedCall {
  readonly label: string;
  readonly pipeline: GPUComputePipeline;
  readonly bindGroup: GPUBindGroup;
  readonly uniformBuffer: GPUBuffer | null;
  readonly workgroups: readonly [number, number, number];
  /** Set for an indirect dispatch: the args buffer and byte offset. */
  readonly indirect: { readonly buffer: GPUBuffer; readonly offset: number } | null;
  /** Texture copies to encode before the dispatch (see {@linkcode KernelCall.textureCopies}); owned here. */
  readonly copies: readonly PreparedTextureCopy[];
}

/**
 * Folds `n` workgroups into `[x, y]` with x ≤ the device's per-dimension limit. Kernels recover the
 * linear index as `wid.x + wid.y * nwg.x` (`@builtin(num_workgroups) nwg`) and return when it is ≥ n.
 * Throws {@linkcode GpuLimitError} when even 2-D does not fit.
 */
export function grid(ctx: GpuContext, n: number): [number, number] {
  const max = ctx.limits.maxComputeWorkgroupsPerDimension;
  if (n <= max) return [Math.max(1, n), 1];
  const y = Math.ceil(n / max);
  if (y > max) {
    throw new GpuLimitError(
      `Cannot dispatch ${n} workgroups: exceeds ${max}² (maxComputeWorkgroupsPerDimension²)`,
    );
  }
  return [Math.ceil(n / y), y];
}

/** Checks limits, builds (or reuses) the pipeline, and makes the bind group. */
export function prepare(ctx: GpuContext, call: KernelCall): PreparedCall {
  const max = ctx.limits.maxComputeWorkgroupsPerDimension;
  const [x, y = 1, z = 1] = call.workgroups;
  for (const d of [x, y, z]) {
    if (!Number.isInteger(d) || d < 0) {
      throw new RangeError(`Cannot dispatch ${call.label}: bad workgroup count ${d}`);
    }
    if (d > max) {
      throw new GpuLimitError(
        `Cannot dispatch ${call.label}: ${d} workgroups in one dimension exceeds maxComputeWorkgroupsPerDimension (${max})`,
      );
    }
  }
  const pipeline = ctx.pipelines.get(call.code, call.label);
  const copies = (call.textureCopies ?? []).map((c) => _prepareCopy(ctx, call, c));
  const entries: GPUBindGroupEntry[] = call.bindings.map((b, i) => {
    const copy = copies.find((_, j) => call.textureCopies![j]!.binding === i);
    if (copy) return { binding: i, resource: copy.texture.createView({ label: copy.texture.label }) };
    if (b instanceof GPUTextureView) return { binding: i, resource: b };
    const buffer = b instanceof GPUBuffer ? b : b.buffer;
    assertBindable(
      ctx,
      buffer.size,
      `${call.label} binding ${i}${b instanceof GPUBuffer ? "" : ` ("${b.label}")`}`,
    );
    return { binding: i, resource: { buffer } };
  });
  let uniformBuffer: GPUBuffer | null = null;
  if (call.uniform) {
    const bytes = call.uniform instanceof ArrayBuffer ? call.uniform.byteLength : call.uniform.byteLength;
    uniformBuffer = ctx.device.createBuffer({
      size: Math.max(16, Math.ceil(bytes / 16) * 16),
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
      label: `${call.label}.uniform`,
    });
    writeUniform(ctx, { uniformBuffer }, call.uniform);
    entries.push({ binding: entries.length, resource: { buffer: uniformBuffer } });
  }
  const bindGroup = ctx.device.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries,
    label: call.label,
  });
  let indirect: PreparedCall["indirect"] = null;
  if (call.indirect) {
    const { buffer: b, offset } = call.indirect;
    const buffer = b instanceof GPUBuffer ? b : b.buffer;
    if (!Number.isInteger(offset) || offset < 0 || offset % 4 !== 0 || offset + 12 > buffer.size) {
      throw new RangeError(
        `Cannot dispatch ${call.label}: indirect offset ${offset} is not a multiple of 4 with 12 bytes after it in a ${buffer.size}-byte buffer`,
      );
    }
    if (!(buffer.usage & GPUBufferUsage.INDIRECT)) {
      throw new TypeError(`Cannot dispatch ${call.label}: the indirect args buffer lacks INDIRECT usage`);
    }
    indirect = { buffer, offset };
  }
  return { label: call.label, pipeline, bindGroup, uniformBuffer, workgroups: [x, y, z], indirect, copies };
}

/** Checks one of a call's texture copies and makes its texture. */
function _prepareCopy(ctx: GpuContext, call: KernelCall, c: TextureCopySpec): PreparedTextureCopy {
  const b = call.bindings[c.binding];
  const bad = (why: string) =>
    new RangeError(`Cannot dispatch ${call.label}: texture copy of binding ${c.binding} ${why}`);
  if (b === undefined || b instanceof GPUTextureView || b instanceof GPUBuffer) throw bad("is not a tensor");
  const { rows, cols } = c, max = ctx.limits.maxTextureDimension2D;
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 1 || cols < 64 || cols % 64 !== 0) {
    throw bad(`needs rows ≥ 1 and cols a multiple of 64 (${rows}×${cols})`);
  }
  if (rows * cols * 4 > b.buffer.size) throw bad(`(${rows}×${cols}) is larger than "${b.label}"`);
  if (rows > max || cols / 4 > max) {
    throw new GpuLimitError(
      `Cannot dispatch ${call.label}: a ${rows}×${cols / 4} texture exceeds maxTextureDimension2D (${max})`,
    );
  }
  const texture = createMatrixTexture(
    ctx,
    rows,
    cols,
    `${b.label}.texture`,
    `texture copy of "${b.label}" [${rows}, ${cols}] f32 (${call.label})`,
  );
  return { source: b.buffer, texture, rows, cols };
}

/** Rewrites a prepared call's uniform (e.g. the step number of AdamW); ordered before the next submit. */
export function writeUniform(
  ctx: GpuContext,
  call: Pick<PreparedCall, "uniformBuffer">,
  data: ArrayBuffer | ArrayBufferView,
): void {
  if (!call.uniformBuffer) throw new TypeError("Cannot write uniform: this call has none");
  if (data instanceof ArrayBuffer) ctx.device.queue.writeBuffer(call.uniformBuffer, 0, data);
  else ctx.device.queue.writeBuffer(call.uniformBuffer, 0, data as BufferSource);
}

/** Frees a prepared call's own uniform buffer and the textures of its texture copies. */
export function releaseCall(call: PreparedCall): void {
  call.uniformBuffer?.destroy();
  for (const c of call.copies) c.texture.destroy();
}

/**
 * One step of GPU work: one command encoder, dispatches encoded in order, one submit.
 * With `timing` and an adapter that has `timestamp-query`, each dispatch gets its own pass with
 * timestamps and {@linkcode Step.timings} resolves per-label GPU milliseconds after the submit.
 */
export class Step {
  readonly #ctx: GpuContext;
  readonly #encoder: GPUCommandEncoder;
  #pass: GPUComputePassEncoder | null = null;
  readonly #timed: { label: string; index: number }[] = [];
  readonly #query: GPUQuerySet | null;
  readonly #capacity: number;
  #submitted = false;
  #dispatches = 0;

  constructor(ctx: GpuContext, options: { label?: string; timing?: boolean; maxTimed?: number } = {}) {
    this.#ctx = ctx;
    this.#encoder = ctx.device.createCommandEncoder({ label: options.label ?? "step" });
    // Two timestamps per timed pass, and a query set holds at most 4096 (WebGPU's maxQuerySetSize).
    this.#capacity = Math.min(options.maxTimed ?? 256, 2048);
    this.#query = options.timing && ctx.hasTimestamps
      ? ctx.device.createQuerySet({ type: "timestamp", count: this.#capacity * 2 })
      : null;
  }

  /** The underlying encoder, for copies between dispatches. Ends any open pass first. */
  get encoder(): GPUCommandEncoder {
    this.#endPass();
    return this.#encoder;
  }

  /** Compute dispatches encoded into this step so far (direct and indirect; copies are not dispatches). */
  get dispatches(): number {
    return this.#dispatches;
  }

  /** Encodes one prepared call (or prepares a raw call on the fly), after its texture copies. */
  dispatch(call: PreparedCall | KernelCall): void {
    const p = "pipeline" in call ? call : prepare(this.#ctx, call);
    this.#dispatches++;
    if (p.copies.length > 0) {
      this.#endPass();
      for (const c of p.copies) {
        encodeMatrixCopy(this.#encoder, c.source, c.texture, c.rows, c.cols);
      }
    }
    let pass: GPUComputePassEncoder;
    if (this.#query && this.#timed.length < this.#capacity) {
      this.#endPass();
      const index = this.#timed.length;
      this.#timed.push({ label: p.label, index });
      pass = this.#encoder.beginComputePass({
        timestampWrites: {
          querySet: this.#query,
          beginningOfPassWriteIndex: 2 * index,
          endOfPassWriteIndex: 2 * index + 1,
        },
      });
      this.#encode(pass, p);
      pass.end();
      return;
    }
    this.#pass ??= this.#encoder.beginComputePass({ label: "step" });
    this.#encode(this.#pass, p);
  }

  /** Finishes and submits; resolves when the queue has accepted it (does not wait for the GPU). */
  submit(): void {
    if (this.#submitted) throw new Error("Cannot submit a step twice");
    this.#endPass();
    this.#submitted = true;
    if (this.#query && this.#timed.length > 0) {
      const bytes = this.#timed.length * 16;
      this.#resolve = this.#ctx.device.createBuffer({
        size: bytes,
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      });
      this.#encoder.resolveQuerySet(this.#query, 0, this.#timed.length * 2, this.#resolve, 0);
    }
    this.#ctx.device.queue.submit([this.#encoder.finish()]);
  }

  /** Waits until the GPU has finished this step's work (a host sync: avoid inside training loops). */
  async done(): Promise<void> {
    await this.#ctx.device.queue.onSubmittedWorkDone();
    this.#ctx.assertAlive();
  }

  /** Per-dispatch GPU milliseconds (empty when the adapter has no timestamps or timing was off). */
  async timings(): Promise<{ label: string; ms: number }[]> {
    if (!this.#resolve) return [];
    const { readBuffer } = await import("./buffers.ts");
    const raw = new BigUint64Array(await readBuffer(this.#ctx, this.#resolve, this.#timed.length * 16));
    return this.#timed.map(({ label, index }) => ({
      label,
      ms: Number(raw[2 * index + 1]! - raw[2 * index]!) / 1e6,
    }));
  }

  #resolve: GPUBuffer | null = null;

  #encode(pass: GPUComputePassEncoder, p: PreparedCall): void {
    pass.setPipeline(p.pipeline);
    pass.setBindGroup(0, p.bindGroup);
    if (p.indirect) pass.dispatchWorkgroupsIndirect(p.indirect.buffer, p.indirect.offset);
    else pass.dispatchWorkgroups(p.workgroups[0], p.workgroups[1], p.workgroups[2]);
  }

  #endPass(): void {
    this.#pass?.end();
    this.#pass = null;
  }
}

/** Convenience for tests and one-off work: prepares, encodes and submits `calls` as one step. */
export function runCalls(ctx: GpuContext, calls: readonly KernelCall[], label = "calls"): Step {
  const step = new Step(ctx, { label });
  const prepared = calls.map((c) => prepare(ctx, c));
  for (const p of prepared) step.dispatch(p);
  step.submit();
  queueMicrotask(() => prepared.forEach(releaseCall));
  return step;
}

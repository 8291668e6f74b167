/**
 * GPU tensors, a buffer pool that reuses freed buffers by size class, and asynchronous readback.
 *
 * @module
 */
import type { GpuContext } from "./device.ts";
import { GpuLimitError } from "./errors.ts";

/** Element types kept on the GPU. */
export type DType = "f32" | "u32" | "i32";

/** Typed array matching a {@linkcode DType}. */
export type HostArray = Float32Array | Uint32Array | Int32Array;

const _STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

/** A storage buffer with a shape; row-major, 4 bytes per element. */
export class GpuTensor {
  readonly buffer: GPUBuffer;
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly label: string;

  constructor(buffer: GPUBuffer, shape: readonly number[], dtype: DType, label: string) {
    this.buffer = buffer;
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.label = label;
  }

  /** Number of elements. */
  get size(): number {
    return shapeSize(this.shape);
  }

  /** Bytes actually used (the buffer may be larger when it came from a pool). */
  get byteLength(): number {
    return this.size * 4;
  }
}

/** Product of the dimensions of `shape` (1 for a scalar). */
export function shapeSize(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** WebGPU buffers must be non-empty and sized in multiples of 4; we round up to 16 for vec4 kernels. */
export function paddedBytes(bytes: number): number {
  return Math.max(16, Math.ceil(bytes / 16) * 16);
}

/** Throws {@linkcode GpuLimitError} if a binding of `bytes` exceeds the device's storage binding limit. */
export function assertBindable(ctx: GpuContext, bytes: number, what: string): void {
  const max = ctx.limits.maxStorageBufferBindingSize;
  if (bytes > max) {
    throw new GpuLimitError(
      `Cannot bind ${what}: ${bytes} bytes exceeds maxStorageBufferBindingSize (${max}) of ${ctx.adapter.description}`,
    );
  }
}

/**
 * Creates a tensor, optionally filled from `data` (its length must equal the shape's size).
 *
 * @example
 * ```ts ignore
 * const t = createTensor(ctx, [2, 3], "f32", new Float32Array([1, 2, 3, 4, 5, 6]), "x");
 * ```
 */
export function createTensor(
  ctx: GpuContext,
  shape: readonly number[],
  dtype: DType = "f32",
  data?: HostArray,
  label = "tensor",
): GpuTensor {
  const n = shapeSize(shape);
  if (data && data.length !== n) {
    throw new RangeError(
      `Cannot create tensor "${label}": data has ${data.length} elements, shape [${shape}] needs ${n}`,
    );
  }
  const bytes = paddedBytes(n * 4);
  if (bytes > ctx.limits.maxBufferSize) {
    throw new GpuLimitError(
      `Cannot allocate "${label}": ${bytes} bytes exceeds maxBufferSize (${ctx.limits.maxBufferSize})`,
    );
  }
  const buffer = ctx.createBuffer(
    { size: bytes, usage: _STORAGE, label, mappedAtCreation: !!data },
    `tensor "${label}" [${shape.join(", ")}] ${dtype}`,
  );
  if (data) {
    const view = dtype === "f32"
      ? new Float32Array(buffer.getMappedRange())
      : dtype === "u32"
      ? new Uint32Array(buffer.getMappedRange())
      : new Int32Array(buffer.getMappedRange());
    view.set(data);
    buffer.unmap();
  }
  return new GpuTensor(buffer, shape, dtype, label);
}

/**
 * A u32 tensor that kernels can write (storage) and that can hold the args of
 * `dispatchWorkgroupsIndirect` (INDIRECT usage): 3 words (x, y, z) per indirect dispatch. Plain storage
 * tensors lack INDIRECT usage on purpose, so an args buffer is always made here and is easy to find.
 *
 * @example
 * ```ts ignore
 * const args = createIndirectTensor(ctx, 6, "moe.args"); // two indirect dispatches
 * const call = { ...kernel, workgroups: [0], indirect: { buffer: args, offset: 12 } };
 * ```
 */
export function createIndirectTensor(ctx: GpuContext, words: number, label = "indirect_args"): GpuTensor {
  if (!Number.isInteger(words) || words < 3) {
    throw new RangeError(`Cannot create indirect args "${label}": ${words} words, need at least 3`);
  }
  const buffer = ctx.createBuffer(
    { size: paddedBytes(words * 4), usage: _STORAGE | GPUBufferUsage.INDIRECT, label },
    `indirect args "${label}" [${words}] u32`,
  );
  return new GpuTensor(buffer, [words], "u32", label);
}

/** Writes host data into an existing tensor (queued; ordered before the next submit). */
export function writeTensor(ctx: GpuContext, t: GpuTensor, data: HostArray): void {
  if (_frozen.has(t)) {
    throw new TypeError(`Cannot write "${t.label}": it is frozen (kernels may read a copy made once)`);
  }
  if (data.length !== t.size) {
    throw new RangeError(`Cannot write "${t.label}": ${data.length} elements, tensor has ${t.size}`);
  }
  ctx.device.queue.writeBuffer(t.buffer, 0, data as BufferSource);
}

/** Texture mirrors of frozen tensors, by "rows×cols". */
interface _Mirror {
  texture: GPUTexture;
  view: GPUTextureView;
}
const _frozen = new WeakSet<GpuTensor>();
const _mirrors = new WeakMap<GpuTensor, Map<string, _Mirror>>();

/**
 * Marks `t` as never written again (a decoder's weights, uploaded once): kernels may then read it through
 * a texture copy ({@linkcode textureMirror}), and {@linkcode writeTensor} refuses it. Free it with
 * {@linkcode destroyTensor}, which frees the copies too.
 */
export function freezeTensor(t: GpuTensor): GpuTensor {
  _frozen.add(t);
  return t;
}

/**
 * A frozen tensor read as a (rows, cols) f32 matrix from an `rgba32float` texture, one texel per 4 floats
 * along a row (cols/4 texels wide, rows high), made with one copy on first request and kept with the tensor.
 * On llvmpipe a texel fetch loads a whole texel per lane where a storage load loops over the lanes, so
 * products read weights this way on the `cpu-simd` profile (docs/llvmpipe.md, "Weights as textures").
 * Null (read the buffer) where `t` is not frozen or not f32, rows·cols is not its size, cols is not a
 * multiple of 64 (a copy's rows are multiples of 256 bytes), or a side exceeds maxTextureDimension2D.
 */
export function textureMirror(
  ctx: GpuContext,
  t: GpuTensor,
  rows: number,
  cols: number,
): GPUTextureView | null {
  if (!_frozen.has(t) || rows * cols !== t.size || !textureCopyFits(ctx, t, rows, cols)) return null;
  const key = `${rows}x${cols}`;
  const mirrors = _mirrors.get(t) ?? new Map<string, _Mirror>();
  _mirrors.set(t, mirrors);
  const have = mirrors.get(key);
  if (have) return have.view;
  const label = `${t.label}.texture`;
  const texture = createMatrixTexture(
    ctx,
    rows,
    cols,
    label,
    `texture copy of "${t.label}" [${rows}, ${cols}] f32`,
  );
  const enc = ctx.device.createCommandEncoder({ label });
  encodeMatrixCopy(enc, t.buffer, texture, rows, cols);
  ctx.device.queue.submit([enc.finish()]);
  const view = texture.createView({ label });
  mirrors.set(key, { texture, view });
  return view;
}

/**
 * The texture a row-major (rows, cols) f32 matrix is copied into: `rgba32float`, a texel per 4 floats along a
 * row (cols/4 texels wide, rows high), read by kernels as a storage texture (gpu/kernels/common.ts
 * `WEIGHT_TEXTURE`) and filled by {@linkcode encodeMatrixCopy}. For {@linkcode textureMirror} and the copies
 * made before each dispatch (gpu/dispatch.ts `textureCopies`); `what` names it in an out-of-memory error.
 */
export function createMatrixTexture(
  ctx: GpuContext,
  rows: number,
  cols: number,
  label: string,
  what: string,
): GPUTexture {
  return ctx.createTexture(
    {
      size: [cols / 4, rows],
      format: "rgba32float",
      usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_DST,
      label,
    },
    rows * cols * 4,
    what,
  );
}

/** Encodes the copy of the row-major (rows, cols) f32 matrix at the start of `buffer` into its `texture`. */
export function encodeMatrixCopy(
  enc: GPUCommandEncoder,
  buffer: GPUBuffer,
  texture: GPUTexture,
  rows: number,
  cols: number,
): void {
  enc.copyBufferToTexture({ buffer, bytesPerRow: cols * 4, rowsPerImage: rows }, { texture }, [
    cols / 4,
    rows,
  ]);
}

/**
 * Whether `t` can be read as a (rows, cols) f32 matrix from an `rgba32float` texture copy: f32, holding
 * rows·cols values, cols a multiple of 64 (a copy's rows are multiples of 256 bytes), both sides within
 * maxTextureDimension2D (cols/4 texels wide). For {@linkcode textureMirror} and for the copies made before
 * each dispatch (gpu/dispatch.ts `textureCopies`).
 */
export function textureCopyFits(ctx: GpuContext, t: GpuTensor, rows: number, cols: number): boolean {
  const max = ctx.limits.maxTextureDimension2D;
  return t.dtype === "f32" && rows * cols <= t.size && cols % 64 === 0 && rows <= max && cols / 4 <= max;
}

/** Frees a tensor's buffer and any texture copies of it; the tensor must not be used afterwards. */
export function destroyTensor(t: GpuTensor): void {
  t.buffer.destroy();
  for (const m of _mirrors.get(t)?.values() ?? []) m.texture.destroy();
  _mirrors.delete(t);
}

/**
 * Copies `byteLength` bytes of `buffer` to the host. Asynchronous: it submits a copy and awaits the map,
 * so call it after a step's work is submitted, never in the middle of encoding one.
 */
export async function readBuffer(
  ctx: GpuContext,
  buffer: GPUBuffer,
  byteLength: number,
  offset = 0,
): Promise<ArrayBuffer> {
  const size = Math.ceil(byteLength / 4) * 4;
  const staging = ctx.device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = ctx.device.createCommandEncoder({ label: "readback" });
  enc.copyBufferToBuffer(buffer, offset, staging, 0, size);
  ctx.device.queue.submit([enc.finish()]);
  try {
    await staging.mapAsync(GPUMapMode.READ);
  } catch (e) {
    ctx.assertAlive();
    throw e;
  }
  const out = staging.getMappedRange().slice(0, byteLength);
  staging.unmap();
  staging.destroy();
  return out;
}

/**
 * Reads several whole tensors back with one submit and one map (one host↔GPU wait, not one per tensor):
 * each is copied into its own 4-byte-aligned range of a single staging buffer.
 */
export async function readTensors(ctx: GpuContext, ts: readonly GpuTensor[]): Promise<HostArray[]> {
  const sizes = ts.map((t) => Math.ceil(t.byteLength / 4) * 4);
  const offsets = sizes.map((_, i) => sizes.slice(0, i).reduce((a, b) => a + b, 0));
  const total = Math.max(4, sizes.reduce((a, b) => a + b, 0));
  const staging = ctx.device.createBuffer({
    size: total,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const enc = ctx.device.createCommandEncoder({ label: "readback" });
  ts.forEach((t, i) => enc.copyBufferToBuffer(t.buffer, 0, staging, offsets[i]!, sizes[i]!));
  ctx.device.queue.submit([enc.finish()]);
  try {
    await staging.mapAsync(GPUMapMode.READ);
  } catch (e) {
    staging.destroy();
    ctx.assertAlive();
    throw e;
  }
  const all = staging.getMappedRange();
  const out = ts.map((t, i) => _typed(t.dtype, all.slice(offsets[i]!, offsets[i]! + t.byteLength)));
  staging.unmap();
  staging.destroy();
  return out;
}

/** Bytes as the typed array of `dtype`. */
function _typed(dtype: GpuTensor["dtype"], bytes: ArrayBuffer): HostArray {
  switch (dtype) {
    case "f32":
      return new Float32Array(bytes);
    case "u32":
      return new Uint32Array(bytes);
    case "i32":
      return new Int32Array(bytes);
    default:
      return dtype satisfies never;
  }
}

/** Reads a whole tensor back as its typed array. */
export async function readTensor(ctx: GpuContext, t: GpuTensor): Promise<HostArray> {
  return _typed(t.dtype, await readBuffer(ctx, t.buffer, t.byteLength));
}

/**
 * Reuses storage buffers by power-of-two size class. `release` returns a buffer for later `acquire`s;
 * `trim` destroys everything idle. Planned graphs allocate once; the pool serves transient work.
 */
export class BufferPool {
  readonly #ctx: GpuContext;
  readonly #free = new Map<number, GPUBuffer[]>();
  #allocated = 0;

  constructor(ctx: GpuContext) {
    this.#ctx = ctx;
  }

  /** Bytes currently allocated by the pool (in use or idle). */
  get allocatedBytes(): number {
    return this.#allocated;
  }

  /** A tensor whose buffer comes from the pool (contents undefined). */
  acquire(shape: readonly number[], dtype: DType = "f32", label = "pooled"): GpuTensor {
    const cls = _sizeClass(paddedBytes(shapeSize(shape) * 4));
    const list = this.#free.get(cls);
    const buffer = list?.pop() ?? this.#create(cls, label);
    return new GpuTensor(buffer, shape, dtype, label);
  }

  /** Returns a tensor's buffer to the pool. The tensor must not be used afterwards. */
  release(t: GpuTensor): void {
    const cls = t.buffer.size;
    const list = this.#free.get(cls) ?? [];
    list.push(t.buffer);
    this.#free.set(cls, list);
  }

  /** Destroys every idle buffer. */
  trim(): void {
    for (const [cls, list] of this.#free) {
      for (const b of list) b.destroy();
      this.#allocated -= cls * list.length;
    }
    this.#free.clear();
  }

  #create(cls: number, label: string): GPUBuffer {
    if (cls > this.#ctx.limits.maxBufferSize) {
      throw new GpuLimitError(`Cannot allocate "${label}": ${cls} bytes exceeds maxBufferSize`);
    }
    this.#allocated += cls;
    return this.#ctx.createBuffer({ size: cls, usage: _STORAGE, label }, `pooled buffer "${label}"`);
  }
}

function _sizeClass(bytes: number): number {
  return 2 ** Math.ceil(Math.log2(bytes));
}

/**
 * Our own safetensors reader and writer, validated like the reference format: an 8-byte little-endian
 * header length, a JSON header (`{name: {dtype, shape, data_offsets}}` plus optional `__metadata__` of
 * strings), then the data. The reader refuses oversized headers, headers that are not UTF-8 JSON objects,
 * duplicate tensor names, offsets that are not contiguous from 0, overlaps, gaps, shapes too large to
 * count, sizes that disagree with dtype × shape, and trailing bytes — every refusal a
 * {@linkcode SafeTensorsError}.
 *
 * @module
 */

/** Data types we read and write; sizes in bytes. */
export const DTYPE_BYTES = {
  F64: 8,
  F32: 4,
  I32: 4,
  U32: 4,
  I64: 8,
  U8: 1,
  I8: 1,
  F16: 2,
  BF16: 2,
  BOOL: 1,
} as const;

/** A dtype name of the safetensors format. */
export type SafeDType = keyof typeof DTYPE_BYTES;

/** One tensor: raw little-endian bytes plus dtype and shape. */
export interface SafeTensor {
  dtype: SafeDType;
  shape: readonly number[];
  data: Uint8Array;
}

/** A parsed file. */
export interface SafeTensorsFile {
  tensors: Map<string, SafeTensor>;
  metadata: Record<string, string>;
}

/** The reference implementation's header limit (100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

/** A malformed safetensors file; the message says what is wrong. */
export class SafeTensorsError extends Error {
  override name = "SafeTensorsError";
}

/** Float32 tensor from a typed array. */
export function f32Tensor(shape: readonly number[], values: Float32Array): SafeTensor {
  return { dtype: "F32", shape, data: new Uint8Array(values.buffer, values.byteOffset, values.byteLength) };
}

/** The tensor's values as Float32Array (copied, aligned). Throws for other dtypes. */
export function tensorToF32(t: SafeTensor): Float32Array {
  if (t.dtype !== "F32") throw new SafeTensorsError(`Expected an F32 tensor, got ${t.dtype}`);
  return new Float32Array(t.data.slice().buffer);
}

/**
 * Serializes tensors (in the order given) and string metadata. With `requireFinite`, refuses an F32/F64
 * tensor holding NaN or ±Infinity (checkpoints must never hold a non-finite value).
 *
 * @example
 * ```ts
 * import { f32Tensor, readSafeTensors, writeSafeTensors } from "./safetensors.ts";
 * const bytes = writeSafeTensors(new Map([["w", f32Tensor([2], new Float32Array([1, 2]))]]), { step: "3" });
 * if (readSafeTensors(bytes).metadata.step !== "3") throw new Error("round trip");
 * ```
 */
export function writeSafeTensors(
  tensors: ReadonlyMap<string, SafeTensor>,
  metadata: Record<string, string> = {},
  options: { requireFinite?: boolean } = {},
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of tensors) {
    if (name === "__metadata__") throw new SafeTensorsError(`Invalid tensor name "__metadata__"`);
    const expected = _elements(t.shape) * DTYPE_BYTES[t.dtype];
    if (t.data.byteLength !== expected) {
      throw new SafeTensorsError(
        `Tensor "${name}": ${t.data.byteLength} bytes, ${t.dtype} [${t.shape}] needs ${expected}`,
      );
    }
    if (options.requireFinite) _assertFinite(name, t);
    header[name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + expected] };
    offset += expected;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const t of tensors.values()) out.set(t.data, at), at += t.data.byteLength;
  return out;
}

/** Parses and validates a safetensors file (see module docs). */
export function readSafeTensors(bytes: Uint8Array): SafeTensorsFile {
  if (bytes.byteLength < 8) throw new SafeTensorsError(`File too short: ${bytes.byteLength} bytes`);
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw new SafeTensorsError(`Header of ${n} bytes exceeds ${MAX_HEADER_BYTES}`);
  }
  const headerLen = Number(n);
  if (8 + headerLen > bytes.byteLength) {
    throw new SafeTensorsError(
      `Header length ${headerLen} runs past the end of the file (${bytes.byteLength} bytes)`,
    );
  }
  const { entries, metadata } = _header(bytes, headerLen);
  const data = bytes.subarray(8 + headerLen);
  _checkLayout(entries, data.byteLength);
  const tensors = new Map<string, SafeTensor>();
  for (const e of entries) {
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: data.subarray(e.begin, e.end) });
  }
  return { tensors, metadata };
}

/**
 * Sorts `entries` by offset and checks that they tile `dataBytes` exactly: contiguous from 0, each the size
 * its dtype and shape need.
 */
function _checkLayout(entries: _Entry[], dataBytes: number): void {
  entries.sort((a, b) => a.begin - b.begin);
  let expect = 0;
  for (const e of entries) {
    if (e.begin !== expect) {
      throw new SafeTensorsError(
        `Tensor "${e.name}" starts at ${e.begin}, expected ${expect}: offsets must be contiguous, without gaps or overlaps`,
      );
    }
    const size = _elements(e.shape) * DTYPE_BYTES[e.dtype];
    if (e.end - e.begin !== size) {
      throw new SafeTensorsError(
        `Tensor "${e.name}": ${e.end - e.begin} bytes, ${e.dtype} [${e.shape}] needs ${size}`,
      );
    }
    expect = e.end;
  }
  if (expect !== dataBytes) {
    throw new SafeTensorsError(`Data is ${dataBytes} bytes but tensors cover ${expect}`);
  }
}

/**
 * The `__metadata__` of the safetensors file at `path`, reading only its length prefix and header (at most
 * {@linkcode MAX_HEADER_BYTES}), validated as {@linkcode readSafeTensors} validates it, the tensors' layout
 * against the file's size included: a look at a checkpoint's config before its data is read.
 */
export async function readSafeTensorsMetadata(path: string): Promise<Record<string, string>> {
  const f = await Deno.open(path, { read: true });
  try {
    const size = (await f.stat()).size;
    const prefix = await _readExactly(f, Math.min(8, size));
    if (prefix.byteLength < 8) throw new SafeTensorsError(`File too short: ${size} bytes`);
    const n = new DataView(prefix.buffer).getBigUint64(0, true);
    if (n > BigInt(MAX_HEADER_BYTES)) {
      throw new SafeTensorsError(`Header of ${n} bytes exceeds ${MAX_HEADER_BYTES}`);
    }
    if (8 + Number(n) > size) {
      throw new SafeTensorsError(`Header length ${n} runs past the end of the file (${size} bytes)`);
    }
    const header = await _readExactly(f, Number(n));
    const bytes = new Uint8Array(8 + header.byteLength);
    bytes.set(prefix), bytes.set(header, 8);
    const { entries, metadata } = _header(bytes, header.byteLength);
    _checkLayout(entries, size - bytes.byteLength);
    return metadata;
  } finally {
    f.close();
  }
}

async function _readExactly(f: Deno.FsFile, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  for (let at = 0; at < n;) {
    const got = await f.read(out.subarray(at));
    if (got === null) return out.subarray(0, at);
    at += got;
  }
  return out;
}

interface _Entry {
  name: string;
  dtype: SafeDType;
  shape: number[];
  begin: number;
  end: number;
}

/** The validated header of a file whose first `8 + headerLen` bytes are in `bytes`. */
function _header(
  bytes: Uint8Array,
  headerLen: number,
): { entries: _Entry[]; metadata: Record<string, string> } {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + headerLen));
  } catch {
    throw new SafeTensorsError("Header is not valid UTF-8");
  }
  if (!text.startsWith("{")) throw new SafeTensorsError("Header does not start with '{'");
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    throw new SafeTensorsError(`Header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new SafeTensorsError("Header is not a JSON object");
  }
  // JSON.parse keeps the last of two equal keys; a file naming a tensor twice is refused instead.
  const dup = _duplicateTopLevelKey(text);
  if (dup !== null) throw new SafeTensorsError(`Tensor name "${dup}" appears twice in the header`);
  return _parseHeader(header as Record<string, unknown>);
}

function _parseHeader(
  header: Record<string, unknown>,
): { entries: _Entry[]; metadata: Record<string, string> } {
  const metadata: Record<string, string> = {};
  const entries: _Entry[] = [];
  for (const [name, v] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (typeof v !== "object" || v === null || Array.isArray(v)) {
        throw new SafeTensorsError("__metadata__ is not an object");
      }
      for (const [k, s] of Object.entries(v)) {
        if (typeof s !== "string") throw new SafeTensorsError(`__metadata__.${k} is not a string`);
        metadata[k] = s;
      }
      continue;
    }
    const t = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof t !== "object" || t === null) {
      throw new SafeTensorsError(`Tensor "${name}": entry is not an object`);
    }
    if (typeof t.dtype !== "string" || !(t.dtype in DTYPE_BYTES)) {
      throw new SafeTensorsError(`Tensor "${name}": unknown dtype ${JSON.stringify(t.dtype)}`);
    }
    const ints = (a: unknown): a is number[] =>
      Array.isArray(a) && a.every((x) => Number.isSafeInteger(x) && x >= 0);
    if (!ints(t.shape)) {
      throw new SafeTensorsError(`Tensor "${name}": shape must be a list of non-negative integers`);
    }
    if (!ints(t.data_offsets) || t.data_offsets.length !== 2 || t.data_offsets[0]! > t.data_offsets[1]!) {
      throw new SafeTensorsError(`Tensor "${name}": data_offsets must be [begin, end] with begin ≤ end`);
    }
    entries.push({
      name,
      dtype: t.dtype as SafeDType,
      shape: t.shape,
      begin: t.data_offsets[0]!,
      end: t.data_offsets[1]!,
    });
  }
  return { entries, metadata };
}

function _elements(shape: readonly number[]): number {
  const n = shape.reduce((a, b) => a * b, 1);
  if (!Number.isSafeInteger(n * 8)) throw new SafeTensorsError(`Shape [${shape}] has too many elements`);
  return n;
}

/**
 * The first key that occurs twice at the top level of a JSON object text (already known to parse), or null.
 * Walks strings and nesting without building values.
 */
function _duplicateTopLevelKey(text: string): string | null {
  const seen = new Set<string>();
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === "{" || c === "[") depth++;
    else if (c === "}" || c === "]") depth--;
    else if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      if (depth === 1) {
        let k = j + 1;
        while (/\s/.test(text[k] ?? "")) k++;
        if (text[k] === ":") {
          const key = JSON.parse(text.slice(i, j + 1)) as string;
          if (seen.has(key)) return key;
          seen.add(key);
        }
      }
      i = j;
    }
  }
  return null;
}

function _assertFinite(name: string, t: SafeTensor): void {
  if (t.dtype !== "F32" && t.dtype !== "F64") return;
  const a = t.dtype === "F32"
    ? new Float32Array(t.data.slice().buffer)
    : new Float64Array(t.data.slice().buffer);
  const i = a.findIndex((v) => !Number.isFinite(v));
  if (i >= 0) throw new SafeTensorsError(`Tensor "${name}" holds a non-finite value (${a[i]}) at index ${i}`);
}

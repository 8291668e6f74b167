/**
 * Half precision storage (docs/performance.md "Half precision"): f32 values rounded to IEEE binary16 and
 * stored two per 32-bit word (element 2i in the low half, 2i + 1 in the high half: the layout of WGSL's
 * `array<f16>` on a little-endian device, and of `pack2x16float`). {@linkcode castF16} writes them with
 * the core builtin `pack2x16float`, so every adapter rounds the same way, and makes out-of-range values
 * ±infinity and NaN a NaN explicitly (the WGSL builtins leave those indeterminate): an overflow then shows up
 * in the gradients, which dynamic loss scaling (core/train/loss_scale.ts) needs to see.
 *
 * The host-side {@linkcode toF16} / {@linkcode fromF16Bits} are the float64 references of the rounding.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { simpleKernel } from "./common.ts";

/** The largest finite f16. */
export const F16_MAX = 65504;

/** 32-bit words that hold `n` f16 values. */
export function f16Words(n: number): number {
  return Math.ceil(n / 2);
}

/** WGSL: `f16bits(v)`, the binary16 bits of v in the low 16 bits (round to nearest even; ±inf past 65504). */
export const F16_BITS_WGSL = `fn f16bits(v: f32) -> u32 {
  let b = bitcast<u32>(v);
  let s = (b >> 16u) & 0x8000u;
  if ((b & 0x7f800000u) == 0x7f800000u) { return select(s | 0x7c00u, 0x7e00u, (b & 0x007fffffu) != 0u); }
  if ((b & 0x7fffffffu) >= 0x477ff000u) { return s | 0x7c00u; } // |v| ≥ 65520 rounds past 65504
  return pack2x16float(vec2<f32>(v, 0.0)) & 0xffffu;
}`;

/**
 * y (⌈n/2⌉ u32 words) = x (n f32 values) rounded to f16, two per word; an odd n leaves the last high half 0.
 *
 * @example
 * ```ts ignore
 * const y = createTensor(ctx, [f16Words(x.size)], "u32", undefined, "x.f16");
 * await runCalls(ctx, [castF16(ctx, { x, y })]).done();
 * ```
 */
export function castF16(ctx: GpuContext, o: { x: GpuTensor; y: GpuTensor }): KernelCall {
  const n = o.x.size, words = f16Words(n);
  if (o.y.size < words) {
    throw new RangeError(
      `Cannot cast "${o.x.label}" to f16: "${o.y.label}" has ${o.y.size} words, needs ${words}`,
    );
  }
  return simpleKernel(ctx, {
    label: "cast_f16",
    bindings: [{ name: "x", tensor: o.x, type: "f32" }, { name: "y", tensor: o.y, write: true, type: "u32" }],
    fields: [["n", "u32", words], ["len", "u32", n]],
    invocations: words,
    prelude: F16_BITS_WGSL,
    body: `  let lo = f16bits(x[2u * i]);
  var hi = 0u;
  if (2u * i + 1u < u.len) { hi = f16bits(x[2u * i + 1u]); }
  y[i] = lo | (hi << 16u);`,
  });
}

/** The binary16 bits of `v`, rounded to nearest even (the float64 reference of `f16bits`). */
export function toF16Bits(v: number): number {
  if (Number.isNaN(v)) return 0x7e00;
  const s = v < 0 || Object.is(v, -0) ? 0x8000 : 0, a = Math.abs(v);
  if (a >= 65520) return s | 0x7c00;
  if (a < 2 ** -24 / 2) return s; // rounds to zero (exactly half of the smallest subnormal goes to even: 0)
  const e = Math.max(Math.floor(Math.log2(a)), -14);
  // Units of the last place at exponent e (subnormals share e = -14); round the significand to an integer.
  const ulp = 2 ** (e - 10);
  let q = a / ulp;
  const f = Math.floor(q), r = q - f;
  q = r > 0.5 || (r === 0.5 && f % 2 === 1) ? f + 1 : f;
  const value = q * ulp;
  return s | _bitsOfExact(value);
}

/** The bits of a value exactly representable in f16 (positive). */
function _bitsOfExact(a: number): number {
  if (a === 0) return 0;
  if (a < 2 ** -14) return Math.round(a / 2 ** -24); // subnormal
  const e = Math.floor(Math.log2(a));
  const m = Math.round((a / 2 ** e - 1) * 1024);
  return ((e + 15) << 10) | m;
}

/** The value of binary16 bits. */
export function fromF16Bits(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0x1f) return m ? NaN : s * Infinity;
  return e === 0 ? s * m * 2 ** -24 : s * (1 + m / 1024) * 2 ** (e - 15);
}

/** `v` rounded to the nearest f16 (ties to even), as a float64. */
export function toF16(v: number): number {
  return fromF16Bits(toF16Bits(v));
}

/** Host-side packing of values as {@linkcode castF16} stores them (tests, uploads). */
export function packF16(values: ArrayLike<number>): Uint32Array {
  const out = new Uint32Array(f16Words(values.length));
  for (let i = 0; i < values.length; i++) out[i >> 1]! |= toF16Bits(values[i]!) << ((i & 1) * 16);
  return out;
}

/** The values of f16 words, `n` of them (the inverse of {@linkcode packF16}). */
export function unpackF16(words: ArrayLike<number>, n: number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = fromF16Bits((words[i >> 1]! >>> ((i & 1) * 16)) & 0xffff);
  return out;
}

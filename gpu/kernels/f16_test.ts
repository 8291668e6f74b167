/**
 * Half precision kernels (docs/performance.md "Half precision"): the f32 → f16 cast against its float64
 * reference bit for bit, the f16-operand matmul against float64 on f16-rounded operands, its WGSL, and the
 * native `array<f16>` kernel where an adapter has shader-f16: this process's, or Mesa's Vulkan driver in a
 * child process (tests/helpers/f16.ts); a visible skip where none has it (llvmpipe through GL has none, and
 * there the packed kernel, which reads the same bits and sums in the same order, is what runs).
 */
import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import { matmulRef } from "../../core/ref/matmul.ts";
import { f16Test } from "../../tests/helpers/f16.ts";
import { assertClose, randomArray, testGpu } from "../../tests/helpers/gpu.ts";
import { createTensor, readTensor } from "../buffers.ts";
import { type GpuContext, openGpu } from "../device.ts";
import { runCalls } from "../dispatch.ts";
import { castF16, F16_MAX, f16Words, fromF16Bits, packF16, toF16, toF16Bits, unpackF16 } from "./f16.ts";
import {
  _matmulGpuWgsl,
  GPU_TILE_LARGE,
  GPU_TILE_SMALL,
  matmul,
  matmulCalls,
  type MatmulOperands,
  matmulScratch,
} from "./matmul.ts";

Deno.test("toF16Bits rounds to nearest even, saturates to ±inf past 65504 and keeps subnormals (float64 reference)", () => {
  assertEquals(toF16Bits(1), 0x3c00);
  assertEquals(toF16Bits(-2), 0xc000);
  assertEquals(toF16Bits(F16_MAX), 0x7bff);
  assertEquals(toF16Bits(65519), 0x7bff);
  assertEquals(toF16Bits(65520), 0x7c00);
  assertEquals(toF16Bits(-1e9), 0xfc00);
  assertEquals(toF16Bits(NaN), 0x7e00);
  assertEquals(toF16Bits(2 ** -24), 0x0001); // the smallest subnormal
  assertEquals(toF16Bits(2 ** -25), 0x0000); // half of it: a tie, to even (0)
  assertEquals(toF16Bits(1.5 * 2 ** -25), 0x0001);
  assertEquals(toF16Bits(1 + 2 ** -11), 0x3c00); // a tie between 1 and 1 + 2⁻¹⁰: to even
  assertEquals(toF16Bits(1 + 3 * 2 ** -11), 0x3c02);
  assertEquals(toF16(0.1), 0.0999755859375);
  for (let h = 0; h < 0x7c00; h += 37) assertEquals(toF16Bits(fromF16Bits(h)), h, `bits ${h}`);
  assertEquals(unpackF16(packF16([1, -2, 0.5]), 3), Float64Array.of(1, -2, 0.5));
});

Deno.test("castF16 stores f16 bits two per word exactly as the float64 reference rounds them, overflow as ±inf", async () => {
  const ctx = await testGpu();
  const special = [
    0,
    -0,
    1,
    -1,
    65504,
    65519,
    65520,
    70000,
    -1e30,
    Infinity,
    -Infinity,
    NaN,
    1e-8,
    3e-5,
    6e-5,
  ];
  const values = Float32Array.from([...special, ...randomArray(1001, 3, -300, 300)]); // odd length
  const x = createTensor(ctx, [values.length], "f32", values, "x");
  const y = createTensor(ctx, [f16Words(values.length)], "u32", undefined, "y");
  await ctx.scoped("cast", () => runCalls(ctx, [castF16(ctx, { x, y })]).done());
  const got = (await readTensor(ctx, y)) as Uint32Array, want = packF16(values);
  const bad = [...got].findIndex((w, i) => w !== want[i]);
  assert(
    bad < 0,
    `word ${bad}: got ${got[bad]?.toString(16)}, want ${want[bad]?.toString(16)} (x ${values[2 * bad]}, ${
      values[2 * bad + 1]
    })`,
  );
  assertEquals(
    unpackF16(got, 11).slice(6),
    Float64Array.of(Infinity, Infinity, -Infinity, Infinity, -Infinity),
  );
  assert(Number.isNaN(unpackF16(got, 12)[11]));
  assertThrows(
    () => castF16(ctx, { x, y: createTensor(ctx, [2], "u32", undefined, "small") }),
    /"small" has 2 words, needs 508/,
  );
  for (const t of [x, y]) t.buffer.destroy();
});

/** The products a matmul with f16 operands must give: float64 over the f16-rounded operands. */
async function checkF16Matmul(
  ctx: GpuContext,
  operands: MatmulOperands,
  c: { m: number; k: number; n: number; transA?: boolean; transB?: boolean; split?: boolean },
): Promise<ArrayLike<number>> {
  const { m, k, n } = c, seed = 7 * m + 13 * k + n;
  const a32 = Float32Array.from(randomArray(m * k, seed, -4, 4)),
    b32 = Float32Array.from(randomArray(k * n, seed + 1, -4, 4));
  const a16 = Float64Array.from(a32, toF16), b16 = Float64Array.from(b32, toF16);
  const up = (v: Float32Array, name: string) => createTensor(ctx, [v.length], "f32", v, name);
  const a = up(a32, "a"), b = up(b32, "b");
  const ah = createTensor(ctx, [f16Words(m * k)], "u32", undefined, "a.f16");
  const bh = createTensor(ctx, [f16Words(k * n)], "u32", undefined, "b.f16");
  const out = createTensor(ctx, [m * n], "f32", undefined, "c");
  const splits = c.split ? 4 : 1;
  const partial = c.split
    ? createTensor(ctx, [matmulScratch(m, n, splits)], "f32", undefined, "partial")
    : undefined;
  const o = { a: ah, b: bh, c: out, m, k, n, transA: c.transA, transB: c.transB, operands };
  const calls = [
    castF16(ctx, { x: a, y: ah }),
    castF16(ctx, { x: b, y: bh }),
    ...(c.split ? matmulCalls(ctx.withProfile("gpu"), { ...o, splits, partial }) : [matmul(ctx, o)]),
  ];
  await ctx.scoped("matmul f16", () => runCalls(ctx, calls).done());
  const got = await readTensor(ctx, out);
  const dims = { m, k, n, transA: c.transA, transB: c.transB };
  // f32 sums of exact f16 products: the same bound as the f32 kernel's tests, relative to Σ|a||b| ≤ 16k.
  assertClose(
    got,
    matmulRef(a16, b16, dims),
    { atol: 2e-5 * 16 * Math.sqrt(k), rtol: 1e-5 },
    `${operands} ${JSON.stringify(c)}`,
  );
  // And the operands really were rounded: against the f32 operands the error is f16's (2⁻¹¹ relative).
  const exact = matmulRef(Float64Array.from(a32), Float64Array.from(b32), dims);
  const worst = Math.max(...Array.from(got, (v, i) => Math.abs(v - exact[i]!)));
  assert(
    worst > 1e-3,
    `${operands}: off the f32 product by only ${worst}: were the operands rounded to f16?`,
  );
  for (const t of [a, b, ah, bh, out, partial]) t?.buffer.destroy();
  return got;
}

const F16_CASES = [
  { m: 67, k: 45, n: 33 },
  { m: 64, k: 128, n: 96, transB: true },
  { m: 40, k: 70, n: 24, transA: true },
  { m: 9, k: 300, n: 17, transA: true, transB: true },
  { m: 32, k: 512, n: 48, transA: true, split: true },
];

Deno.test("matmul with f16-packed operands (unpack2x16float, any adapter) matches float64 on f16-rounded operands, every layout and a K split", async () => {
  const ctx = await testGpu();
  for (const c of F16_CASES) await checkF16Matmul(ctx, "f16-packed", c);
});

Deno.test("the f16 matmul's WGSL: enable f16, array<f16> operands and f16 tiles widened to f32 sums; packed: no extension", () => {
  for (const tile of [GPU_TILE_SMALL, GPU_TILE_LARGE]) {
    const native = _matmulGpuWgsl(tile, false, true, "f16"),
      packed = _matmulGpuWgsl(tile, false, true, "f16-packed");
    assert(native.startsWith("enable f16;\n"), native.slice(0, 40));
    assert(
      /var<storage, read> A: array<f16>;/.test(native) && /var<storage, read> B: array<f16>;/.test(native),
    );
    assert(/var<storage, read_write> C: array<f32>;/.test(native));
    assert(/var<workgroup> As: array<vec4<f16>/.test(native) && /vec4<f32>\(As\[/.test(native));
    assert(/var c0_0 = vec4<f32>\(0\.0\)/.test(native), "f32 accumulators");
    assert(!packed.includes("enable f16") && !/\bf16\b/.test(packed.replace(/unpack2x16float/g, "")), packed);
    assert(/var<storage, read> A: array<u32>;/.test(packed) && packed.includes("unpack2x16float(A["));
    assertEquals(_matmulGpuWgsl(tile, false, true), _matmulGpuWgsl(tile, false, true, "f32"));
    assert(!_matmulGpuWgsl(tile, false, true).includes("f16"));
  }
});

// The native kernel needs an adapter with shader-f16 (its own device asks for the feature): this process's,
// or the Vulkan backend's in a child process (lavapipe has it where llvmpipe through GL does not).
await f16Test(
  "matmul with native f16 operands (array<f16>, shader-f16) matches float64 on f16-rounded operands and equals the packed kernel",
  import.meta.url,
  async () => {
    const ctx = await openGpu({ validation: true, require: { features: ["shader-f16"], why: "this test" } });
    try {
      for (const c of F16_CASES) {
        const native = await checkF16Matmul(ctx, "f16", c),
          packed = await checkF16Matmul(ctx, "f16-packed", c);
        assertEquals(Array.from(native), Array.from(packed), JSON.stringify(c));
      }
    } finally {
      ctx.destroy();
    }
  },
);

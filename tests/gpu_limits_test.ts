/**
 * Shapes past a device limit are split or refused before dispatch, never run wrong: bindings over
 * maxStorageBufferBindingSize, plans with such a buffer, dispatches over 65535 workgroups per dimension, and
 * (on llvmpipe) invocations that would loop past its per-invocation limit.
 */
import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import { apply1 } from "../core/graph/ops.ts";
import { Graph } from "../core/graph/ir.ts";
import { schedule } from "../core/graph/schedule.ts";
import { activationRef } from "../core/ref/activation.ts";
import { matmulRef } from "../core/ref/matmul.ts";
import { createTensor, readTensor, writeTensor } from "../gpu/buffers.ts";
import type { GpuContext } from "../gpu/device.ts";
import { grid, prepare, runCalls } from "../gpu/dispatch.ts";
import { GpuLimitError } from "../gpu/errors.ts";
import { GraphExecutor } from "../gpu/executor.ts";
import { activation } from "../gpu/kernels/activation.ts";
import { matmul } from "../gpu/kernels/matmul.ts";
import { attention, attentionBackward } from "../gpu/kernels/attention.ts";
import { attentionBackwardRef, attentionRef } from "../core/ref/attention.ts";
import { LLVMPIPE_LOOP_LIMIT, loopLimit } from "../gpu/kernels/common.ts";
import { allocationGuard, assertClose, randomArray, testGpu } from "./helpers/gpu.ts";

/** The test device seen through smaller limits: kernels and the executor read limits from the context. */
function limited(ctx: GpuContext, limits: Partial<Record<keyof GPUSupportedLimits, number>>): GpuContext {
  return Object.create(ctx, { limits: { value: { ...toPlain(ctx.limits), ...limits } } }) as GpuContext;
}

function toPlain(l: GPUSupportedLimits): Record<string, number> {
  const out: Record<string, number> = {};
  for (
    const k of ["maxStorageBufferBindingSize", "maxBufferSize", "maxComputeWorkgroupsPerDimension"] as const
  ) {
    out[k] = l[k];
  }
  return out;
}

Deno.test("a binding over maxStorageBufferBindingSize is refused before dispatch, naming the tensor", async () => {
  const ctx = await testGpu();
  const small = limited(ctx, { maxStorageBufferBindingSize: 1024 });
  const a = createTensor(ctx, [16, 32], "f32", undefined, "wide"); // 2048 bytes
  const b = createTensor(ctx, [32, 4], "f32", undefined, "b");
  const c = createTensor(ctx, [16, 4], "f32", undefined, "c");
  assertThrows(
    () => matmul(small, { a, b, c, m: 16, k: 32, n: 4 }),
    (e: unknown) =>
      e instanceof GpuLimitError && /"wide"\).*maxStorageBufferBindingSize \(1024\)/.test(e.message),
  );
  // Kernels that do not check their bindings themselves are caught when the call is prepared.
  const call = activation(ctx, { kind: "gelu", x: a, y: a });
  assertThrows(() => prepare(small, call), /activation_gelu binding 0 \("wide"\): 2048 bytes exceeds/);
  for (const t of [a, b, c]) t.buffer.destroy();
});

Deno.test("GraphExecutor refuses a plan with a buffer over the binding limit before allocating anything", async () => {
  const ctx = await testGpu();
  const g = new Graph();
  const x = g.leaf("input", "x", [64, 64]);
  const y = apply1(g, "activation", [x], { kind: "gelu" });
  const guard = allocationGuard(limited(ctx, { maxStorageBufferBindingSize: 8192 }));
  const small = guard.ctx;
  assertThrows(
    () => new GraphExecutor(small, schedule(g, [y]), g.inputs()),
    (e) =>
      e instanceof GpuLimitError && e.message.includes(`"x" [64,64]`) && e.message.includes("16384 bytes"),
  );
  assertEquals(guard.allocations(), 0);
});

Deno.test("grid() folds more than 65535 workgroups into two dimensions and refuses more than 65535²", async () => {
  const ctx = await testGpu();
  const max = ctx.limits.maxComputeWorkgroupsPerDimension;
  for (const n of [1, max, max + 1, 3 * max + 7, max * max]) {
    const [x, y] = grid(ctx, n);
    assert(x <= max && y <= max && x * y >= n && x * y - n < x, `grid(${n}) = [${x}, ${y}]`);
  }
  assertThrows(() => grid(ctx, max * max + 1), GpuLimitError);
});

Deno.test("a dispatch of more than 65535 workgroups covers every element exactly once", async () => {
  const ctx = await testGpu();
  // 64 invocations per workgroup, one element each (an odd size keeps GELU on its scalar kernel):
  // 65535·64 + 101 elements need 65537 workgroups.
  const n = ctx.limits.maxComputeWorkgroupsPerDimension * 64 + 101;
  const x64 = Float64Array.from(Float32Array.from(randomArray(n, 5, -3, 3)));
  const x = createTensor(ctx, [n], "f32", Float32Array.from(x64), "x");
  const y = createTensor(ctx, [n], "f32", undefined, "y");
  const call = activation(ctx, { kind: "gelu", x, y });
  assert(call.workgroups[1]! > 1, `expected a folded dispatch, got ${call.workgroups}`);
  await ctx.scoped("gelu", () => runCalls(ctx, [call]).done());
  assertClose(
    await readTensor(ctx, y),
    activationRef("gelu", x64),
    { atol: 3e-6, rtol: 3e-5 },
    "gelu over a folded grid",
  );
  for (const t of [x, y]) t.buffer.destroy();
});

Deno.test("matmul on a device allowing 7 workgroups per dimension folds its grid and stays exact", async () => {
  const ctx = await testGpu();
  const tiny = limited(ctx, { maxComputeWorkgroupsPerDimension: 7 });
  const m = 45, k = 9, n = 70, batch = 3;
  const a64 = Float64Array.from(Float32Array.from(randomArray(batch * m * k, 1)));
  const b64 = Float64Array.from(Float32Array.from(randomArray(batch * k * n, 2)));
  const a = createTensor(ctx, [a64.length], "f32", Float32Array.from(a64), "a");
  const b = createTensor(ctx, [b64.length], "f32", Float32Array.from(b64), "b");
  const c = createTensor(ctx, [batch * m * n], "f32", undefined, "c");
  const call = matmul(tiny, { a, b, c, m, k, n, batch, tile: { tm: 16, tn: 16, wx: 2 } });
  assert(call.workgroups[0]! <= 7 && call.workgroups[1]! > 1, `grid ${call.workgroups}`);
  await ctx.scoped("matmul", () => runCalls(ctx, [call]).done());
  assertClose(await readTensor(ctx, c), matmulRef(a64, b64, { m, k, n, batch }), { atol: 2e-5, rtol: 1e-5 });
  for (const t of [a, b, c]) t.buffer.destroy();
});

Deno.test("llvmpipe before Mesa 25 ends an invocation's loops after 65535 iterations; kernels that would loop more refuse to build there", async () => {
  const ctx = await testGpu();
  // The adapter's behaviour, measured: one invocation counting to 100000.
  const out = createTensor(ctx, [1], "u32", undefined, "count");
  const code = `@group(0) @binding(0) var<storage, read_write> out: array<u32>;
struct U { n: u32, a: u32, b: u32, c: u32 }
@group(0) @binding(1) var<uniform> u: U;
@compute @workgroup_size(1) fn main() {
  var s = 0u; for (var i = 0u; i < u.n; i = i + 1u) { s = s + 1u; } out[0] = s;
}`;
  await runCalls(ctx, [{
    label: "count",
    code,
    bindings: [out],
    uniform: Uint32Array.of(100000, 0, 0, 0),
    workgroups: [1],
  }])
    .done();
  const counted = (await readTensor(ctx, out))[0];
  assertEquals(counted, loopLimit(ctx) ?? 100000, `${ctx.adapter.description}, Mesa ${ctx.mesa}`);
  out.buffer.destroy();

  // So on a software adapter that has the limit, kernels whose invocations would pass it are refused with
  // the sizes to lower (here taken for Mesa 22.3, which has it; a Mesa 25 view has none).
  const real = ctx.withProfile("cpu-simd");
  const cpu = Object.create(real, { mesa: { value: "22.3.6" } }) as GpuContext;
  const m25 = Object.create(real, { mesa: { value: "25.0.7" } }) as GpuContext;
  assertEquals([loopLimit(cpu), loopLimit(m25), loopLimit(ctx.withProfile("gpu"))], [
    LLVMPIPE_LOOP_LIMIT,
    null,
    null,
  ]);
  const gpu = ctx.withProfile("gpu");
  const big = createTensor(ctx, [70000 * 8], "f32", undefined, "big");
  const small = createTensor(ctx, [64], "f32", undefined, "small");
  const wgrad = { a: big, b: big, c: small, m: 8, k: 70000, n: 8, transA: true };
  assertThrows(
    () => matmul(cpu, wgrad),
    (e: Error) => e instanceof GpuLimitError && /K = 70000/.test(e.message),
  );
  matmul(gpu, wgrad); // no such limit on a real GPU
  matmul(m25, wgrad); // nor on Mesa 25's llvmpipe
  matmul(cpu, { ...wgrad, k: 60000 });
  // Attention's one-row kernel (scalar rows) loops T·(2·D + 1) times: 1024 · 129 is past the limit. The
  // blocked kernel (vec4 rows, written out) loops T times per query head, so only T itself can pass it.
  const q = createTensor(ctx, [1, 1024, 2, 66], "f32", undefined, "q");
  assertThrows(
    () => attention(cpu, { q, k: q, v: q, o: q, lse: small }),
    (e: Error) => e instanceof GpuLimitError && /data\.seq_len/.test(e.message),
  );
  const long = createTensor(ctx, [1, 70000, 1, 4], "f32", undefined, "long");
  assertThrows(
    () => attention(cpu, { q: long, k: long, v: long, o: long, lse: small }),
    (e: Error) => e instanceof GpuLimitError && /T 70000/.test(e.message),
  );
  for (const t of [big, small, q, long]) t.buffer.destroy();
});

Deno.test("blocked attention kernels at T 1024, head_dim 64 run every key row (loops under the limit), forward and backward", async () => {
  // 1024 · (2·64 + 1) loop steps per row would be cut short by llvmpipe; the blocked kernels loop 1024 times
  // and must match the float64 reference on every row, the last ones included.
  const ctx = await testGpu();
  const [B, T, Hq, Hkv, D] = [1, 1024, 2, 1, 64], dims = { B, T, Hq, Hkv, D };
  const q64 = randomArray(B * T * Hq * D, 71), k64 = randomArray(B * T * Hkv * D, 72);
  const v64 = randomArray(B * T * Hkv * D, 73), dO64 = randomArray(B * T * Hq * D, 74);
  const up = (x: Float64Array | null, shape: number[], name: string) => {
    const t = createTensor(ctx, shape, "f32", undefined, name);
    if (x) writeTensor(ctx, t, Float32Array.from(x));
    return t;
  };
  const q = up(q64, [B, T, Hq, D], "q"), k = up(k64, [B, T, Hkv, D], "k"), v = up(v64, [B, T, Hkv, D], "v");
  const dO = up(dO64, [B, T, Hq, D], "dO"),
    o = up(null, [B, T, Hq, D], "o"),
    lse = up(null, [B, Hq, T], "lse");
  const dq = up(null, [B, T, Hq, D], "dq"),
    dk = up(null, [B, T, Hkv, D], "dk"),
    dv = up(null, [B, T, Hkv, D], "dv");
  const delta = up(null, [B, Hq, T], "delta");
  await ctx.scoped("attention", () =>
    runCalls(ctx, [
      attention(ctx, { q, k, v, o, lse }),
      ...attentionBackward(ctx, { q, k, v, o, lse, dO, dq, dk, dv, delta }),
    ]).done());
  const ref = attentionRef(q64, k64, v64, dims);
  const gotO = await readTensor(ctx, o), gotLse = await readTensor(ctx, lse);
  assertClose(gotO, ref.o, { atol: 1e-5, rtol: 1e-4 }, "o");
  assertClose(gotLse, ref.lse, { atol: 1e-5, rtol: 1e-5 }, "lse");
  const g = attentionBackwardRef(q64, k64, v64, ref.o, ref.lse, dO64, dims);
  assertClose(await readTensor(ctx, dq), g.dq, { atol: 3e-5, rtol: 3e-4 }, "dq");
  assertClose(await readTensor(ctx, dk), g.dk, { atol: 3e-5, rtol: 3e-4 }, "dk");
  assertClose(await readTensor(ctx, dv), g.dv, { atol: 3e-5, rtol: 3e-4 }, "dv");
  for (const t of [q, k, v, dO, o, lse, dq, dk, dv, delta]) t.buffer.destroy();
});

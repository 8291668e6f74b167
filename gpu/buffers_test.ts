import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import { testGpu } from "../tests/helpers/gpu.ts";
import {
  createTensor,
  destroyTensor,
  freezeTensor,
  readTensor,
  readTensors,
  textureMirror,
  writeTensor,
} from "./buffers.ts";

Deno.test("readTensors reads several tensors of any dtype and odd sizes in one map, each as readTensor does", async () => {
  const ctx = await testGpu();
  const ts = [
    createTensor(ctx, [3], "f32", Float32Array.of(1.5, -2, 3.25)),
    createTensor(ctx, [5], "u32", Uint32Array.of(7, 0, 4294967295, 1, 2)),
    createTensor(ctx, [1, 1], "f32", Float32Array.of(-0.125)),
  ];
  try {
    const got = await readTensors(ctx, ts);
    assertEquals(got.map((a) => [a.constructor.name, Array.from(a)]), [
      ["Float32Array", [1.5, -2, 3.25]],
      ["Uint32Array", [7, 0, 4294967295, 1, 2]],
      ["Float32Array", [-0.125]],
    ]);
    for (const [i, t] of ts.entries()) {
      assertEquals(Array.from(got[i]!), Array.from(await readTensor(ctx, t)));
    }
    assertEquals(await readTensors(ctx, []), []);
  } finally {
    for (const t of ts) t.buffer.destroy();
  }
});

Deno.test("textureMirror copies only frozen f32 tensors whose rows fit a texture copy, once per layout", async () => {
  const ctx = await testGpu();
  const t = createTensor(ctx, [4, 128], "f32", new Float32Array(512), "w");
  const u = createTensor(ctx, [512], "u32", undefined, "ids");
  try {
    assertEquals(textureMirror(ctx, t, 4, 128), null); // not frozen: kernels read the buffer
    freezeTensor(t);
    freezeTensor(u);
    const view = textureMirror(ctx, t, 4, 128);
    assert(view instanceof GPUTextureView);
    assertEquals(textureMirror(ctx, t, 4, 128), view); // made once
    const other = textureMirror(ctx, t, 8, 64); // another layout of the same floats: its own copy
    assert(other instanceof GPUTextureView && other !== view);
    assertEquals(textureMirror(ctx, t, 16, 32), null); // rows of 128 bytes: not a multiple of 256
    assertEquals(textureMirror(ctx, t, 2, 128), null); // not the whole tensor
    assertEquals(textureMirror(ctx, u, 4, 128), null); // not f32
    // 32 texels wide on a device whose textures are at most 16: the buffer, not an error.
    const small = Object.create(ctx, { limits: { value: { maxTextureDimension2D: 16 } } }) as typeof ctx;
    assertEquals(textureMirror(small, t, 4, 128), null);
    throws(() => writeTensor(ctx, t, new Float32Array(512)), /Cannot write "w": it is frozen/);
    await ctx.checkAllocations();
  } finally {
    destroyTensor(t);
    destroyTensor(u);
  }
});

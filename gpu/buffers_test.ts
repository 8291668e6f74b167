import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { testGpu } from "../tests/helpers/gpu.ts";
import { createTensor, readTensor, readTensors } from "./buffers.ts";

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

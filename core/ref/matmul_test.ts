import { randomArray } from "../../tests/helpers/gpu.ts";
import { matmulRef } from "./matmul.ts";

function transpose(x: Float64Array, rows: number, cols: number, batch = 1): Float64Array {
  const y = new Float64Array(x.length);
  for (let s = 0; s < batch; s++) {
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) y[s * rows * cols + j * rows + i] = x[s * rows * cols + i * cols + j]!;
    }
  }
  return y;
}

function assertEqual(got: Float64Array, want: Float64Array, what: string): void {
  for (let i = 0; i < want.length; i++) {
    if (Math.abs(got[i]! - want[i]!) > 1e-12) throw new Error(`${what}: [${i}] ${got[i]} != ${want[i]}`);
  }
}

Deno.test("matmulRef gives the same product for every transpose layout", () => {
  const [m, k, n] = [3, 5, 4];
  const a = randomArray(m * k, 1), b = randomArray(k * n, 2);
  const want = matmulRef(a, b, { m, k, n });
  let direct = 0;
  for (let p = 0; p < k; p++) direct += a[1 * k + p]! * b[p * n + 2]!;
  if (Math.abs(want[1 * n + 2]! - direct) > 1e-12) throw new Error("plain product");
  const at = transpose(a, m, k), bt = transpose(b, k, n);
  assertEqual(matmulRef(at, b, { m, k, n, transA: true }), want, "transA");
  assertEqual(matmulRef(a, bt, { m, k, n, transB: true }), want, "transB");
  assertEqual(matmulRef(at, bt, { m, k, n, transA: true, transB: true }), want, "transA+transB");
});

Deno.test("matmulRef batches, broadcasts B, scales by alpha and accumulates into c", () => {
  const [m, k, n, batch] = [2, 3, 4, 3];
  const a = randomArray(batch * m * k, 3),
    b = randomArray(batch * k * n, 4),
    c0 = randomArray(batch * m * n, 5);
  const got = matmulRef(a, b, { m, k, n, batch, alpha: -0.5, c: c0 });
  const shared = matmulRef(a, b.subarray(0, k * n), { m, k, n, batch, broadcastB: true });
  for (let s = 0; s < batch; s++) {
    const one = matmulRef(a.subarray(s * m * k, (s + 1) * m * k), b.subarray(s * k * n, (s + 1) * k * n), {
      m,
      k,
      n,
    });
    const first = matmulRef(a.subarray(s * m * k, (s + 1) * m * k), b.subarray(0, k * n), { m, k, n });
    assertEqual(
      got.subarray(s * m * n, (s + 1) * m * n),
      one.map((x, i) => c0[s * m * n + i]! - 0.5 * x),
      `batch ${s}`,
    );
    assertEqual(shared.subarray(s * m * n, (s + 1) * m * n), first, `broadcast ${s}`);
  }
});

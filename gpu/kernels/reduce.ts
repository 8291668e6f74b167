/**
 * Reductions: sum, mean and max over rows of a flat tensor (the last row may be shorter), and over a whole
 * tensor in two passes (rows of {@linkcode REDUCE_CHUNK} into partials, then the partials), so a large
 * reduction spreads over many invocations instead of one. Float64 twin: core/ref/reduce.ts.
 * One invocation per row, serial within the row: on llvmpipe each invocation is a SIMD lane, and a
 * serial row keeps the summation order fixed (results do not depend on the workgroup size).
 *
 * @module
 */
import type { ReduceOp } from "../../core/graph/op_types.ts";
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { simpleKernel } from "./common.ts";

/** Elements per partial in the first pass of {@linkcode reduceAll}. */
export const REDUCE_CHUNK = 1024;

/**
 * out[r] = op over x[r·cols … min((r+1)·cols, n)); `n` defaults to x's size. `mean` divides by `count`
 * when given (the second pass of a mean over partial sums), else by the row's length.
 *
 * @example
 * ```ts ignore
 * const call = reduceRows(ctx, { x, out, op: "max", cols: 256 });
 * ```
 */
export function reduceRows(
  ctx: GpuContext,
  o: { x: GpuTensor; out: GpuTensor; op: ReduceOp; cols: number; n?: number; count?: number },
): KernelCall {
  const n = o.n ?? o.x.size, rows = Math.ceil(n / o.cols);
  if (!Number.isInteger(o.cols) || o.cols < 1) throw new RangeError(`Cannot reduce: cols ${o.cols}`);
  if (o.out.size < rows) throw new RangeError(`Cannot reduce: out has ${o.out.size} elements, needs ${rows}`);
  const init = o.op === "max" ? "-3.4028234663852886e38" : "0.0";
  const step = o.op === "max" ? "acc = max(acc, x[j]);" : "acc = acc + x[j];";
  const finish = o.op !== "mean" ? "acc" : o.count ? "acc / u.count" : "acc / f32(end - start)";
  return simpleKernel(ctx, {
    label: `reduce_${o.op}`,
    bindings: [{ name: "x", tensor: o.x }, { name: "out", tensor: o.out, write: true }],
    fields: [["n", "u32", rows], ["cols", "u32", o.cols], ["len", "u32", n], ["count", "f32", o.count ?? 1]],
    invocations: rows,
    workgroup: 8,
    body: `  let start = i * u.cols;
  let end = min(start + u.cols, u.len);
  var acc = ${init};
  for (var j = start; j < end; j = j + 1u) { ${step} }
  out[i] = ${finish};`,
  });
}

/**
 * out[0] = op over all of x, in two passes through `partials` (≥ ⌈n / REDUCE_CHUNK⌉ elements).
 *
 * @example
 * ```ts ignore
 * const calls = reduceAll(ctx, { x, out, op: "mean", partials });
 * ```
 */
export function reduceAll(
  ctx: GpuContext,
  o: { x: GpuTensor; out: GpuTensor; op: ReduceOp; partials: GpuTensor },
): KernelCall[] {
  const n = o.x.size, parts = Math.ceil(n / REDUCE_CHUNK);
  const first = reduceRows(ctx, {
    x: o.x,
    out: o.partials,
    op: o.op === "mean" ? "sum" : o.op,
    cols: REDUCE_CHUNK,
  });
  const second = reduceRows(ctx, { x: o.partials, out: o.out, op: o.op, cols: parts, n: parts, count: n });
  return [first, second];
}

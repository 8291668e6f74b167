/**
 * Float64 reference of the reductions: sum, mean and max over rows of a flat array (the last row may be
 * shorter), and over everything.
 *
 * @module
 */
import type { ReduceOp } from "../graph/op_types.ts";

/**
 * out[r] = op(x[r·cols … min((r+1)·cols, n))), n = x.length.
 *
 * @example
 * ```ts
 * import { reduceRowsRef } from "./reduce.ts";
 * const r = reduceRowsRef([1, 2, 3, 4, 5], 2, "max"); // rows [1, 2], [3, 4], [5]
 * if (r.join() !== "2,4,5") throw new Error(r.join());
 * ```
 */
export function reduceRowsRef(x: ArrayLike<number>, cols: number, op: ReduceOp): Float64Array {
  const rows = Math.ceil(x.length / cols), out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    const end = Math.min(x.length, (r + 1) * cols);
    let acc = op === "max" ? -Infinity : 0;
    for (let i = r * cols; i < end; i++) acc = op === "max" ? Math.max(acc, x[i]!) : acc + x[i]!;
    out[r] = op === "mean" ? acc / (end - r * cols) : acc;
  }
  return out;
}

/** op over all of x. */
export function reduceAllRef(x: ArrayLike<number>, op: ReduceOp): number {
  return reduceRowsRef(x, Math.max(1, x.length), op)[0]!;
}

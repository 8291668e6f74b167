/**
 * Float64 twins of gpu/kernels/elementwise.ts.
 *
 * @module
 */

/** a + b. */
export function addRef(a: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  return Float64Array.from(a, (v, i) => v + b[i]!);
}

/** a ⊙ b. */
export function mulRef(a: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  return Float64Array.from(a, (v, i) => v * b[i]!);
}

/** alpha · x. */
export function scaleRef(x: ArrayLike<number>, alpha: number): Float64Array {
  return Float64Array.from(x, (v) => alpha * v);
}

/** Σ xs. */
export function addNRef(xs: readonly ArrayLike<number>[]): Float64Array {
  const out = new Float64Array(xs[0]!.length);
  for (const x of xs) for (let i = 0; i < out.length; i++) out[i]! += x[i]!;
  return out;
}

/** y (rows, d) = x + b broadcast over rows. */
export function biasAddRef(x: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  return Float64Array.from(x, (v, i) => v + b[i % b.length]!);
}

/** Column sums of x (rows, d) → (d). */
export function sumRowsRef(x: ArrayLike<number>, d: number): Float64Array {
  const out = new Float64Array(d);
  for (let i = 0; i < x.length; i++) out[i % d]! += x[i]!;
  return out;
}

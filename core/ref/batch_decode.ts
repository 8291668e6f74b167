/**
 * Float64 references of batched decoding (docs/design.md §10, "Batched decoding"): B sequences decoded
 * together, one new token per sequence per step, each at its own position and with its own KV cache.
 *
 * Layout: the caches of the B sequences are stacked, (B·T, width): sequence b owns rows b·T … b·T + T − 1,
 * so row b·T + p holds the key (value) of its token at position p. New token b (row b of q, k, v) at
 * position pos[b] is written into row b·T + pos[b], then attends over rows b·T … b·T + pos[b] — exactly what
 * one batch-1 decoder of that sequence does with its own (T, width) cache (core/ref/cached_attention.ts).
 *
 * @module
 */
import type { KeyWindow } from "./cached_attention.ts";

/**
 * The window of new token b of a batched decoding step: its sequence's cache rows b·T … b·T + pos[b].
 *
 * @example
 * ```ts
 * import { batchCacheWindow } from "./batch_decode.ts";
 * const w = batchCacheWindow(8, [3, 0])(1);
 * if (w.first !== 8 || w.len !== 1) throw new Error(JSON.stringify(w));
 * ```
 */
export function batchCacheWindow(T: number, pos: ArrayLike<number>): KeyWindow {
  return (b) => ({ first: b * T, len: pos[b]! + 1 });
}

/**
 * Writes row b of k, v (B, width) into row b·T + pos[b] of the stacked caches (B·T, width), in place.
 * Throws for a position outside its sequence's T rows.
 *
 * @example
 * ```ts
 * import { kvWriteBatchRef } from "./batch_decode.ts";
 * const kc = new Float64Array(8), vc = new Float64Array(8); // B 2, T 4, width 1
 * kvWriteBatchRef([1, 2], [3, 4], kc, vc, [2, 1], 4, 1);
 * if (kc[2] !== 1 || kc[5] !== 2 || vc[5] !== 4) throw new Error("rows not written");
 * ```
 */
export function kvWriteBatchRef(
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  kcache: Float64Array,
  vcache: Float64Array,
  pos: ArrayLike<number>,
  T: number,
  width: number,
): void {
  const B = pos.length;
  if (k.length !== B * width || v.length !== B * width || kcache.length !== B * T * width) {
    throw new RangeError(
      `kvWriteBatchRef: k ${k.length}, v ${v.length} and cache ${kcache.length} do not fit B ${B}, T ${T}, ` +
        `width ${width}`,
    );
  }
  for (let b = 0; b < B; b++) {
    const p = pos[b]!;
    if (!(p >= 0 && p < T)) {
      throw new RangeError(`kvWriteBatchRef: sequence ${b} at position ${p}, T is ${T}`);
    }
    for (let j = 0; j < width; j++) {
      kcache[(b * T + p) * width + j] = k[b * width + j]!;
      vcache[(b * T + p) * width + j] = v[b * width + j]!;
    }
  }
}

/**
 * Float64 reference of the load-balance loss over sequences (loss.load_balance_scope: sequence,
 * docs/design.md §16): the Switch loss of each sequence's own tokens, averaged over the sequences.
 *
 * @module
 */
import { meanRowsRef } from "./losses.ts";

/** Column means of mask and S over each sequence of `seq` tokens: f (B, E) and P (B, E). */
function _perSequence(s: ArrayLike<number>, mask: ArrayLike<number>, E: number, seq: number) {
  const B = s.length / (E * seq), f: Float64Array[] = [], P: Float64Array[] = [];
  for (let b = 0; b < B; b++) {
    const rows = (x: ArrayLike<number>) => Array.prototype.slice.call(x, b * seq * E, (b + 1) * seq * E);
    f.push(meanRowsRef(rows(mask), E));
    P.push(meanRowsRef(rows(s), E));
  }
  return { B, f, P };
}

/** (1/B) Σ_b E · Σ_i (f_b,i / k) · P_b,i over the B sequences of `seq` tokens of S and mask (N, E). */
export function switchLossSeqRef(
  s: ArrayLike<number>,
  mask: ArrayLike<number>,
  E: number,
  k: number,
  seq: number,
): number {
  const { B, f, P } = _perSequence(s, mask, E, seq);
  let l = 0;
  for (let b = 0; b < B; b++) for (let i = 0; i < E; i++) l += (f[b]![i]! / k) * P[b]![i]!;
  return (E * l) / B;
}

/** dS[t, i] = dl · E · f_b(t),i / (k · seq · B). */
export function switchLossSeqBackwardRef(
  s: ArrayLike<number>,
  mask: ArrayLike<number>,
  E: number,
  k: number,
  seq: number,
  dl: number,
): Float64Array {
  const { B, f } = _perSequence(s, mask, E, seq);
  return Float64Array.from(s, (_, i) => {
    const b = Math.floor(i / (E * seq));
    return (dl * E * f[b]![i % E]!) / (k * seq * B);
  });
}

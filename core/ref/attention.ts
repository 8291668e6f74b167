/**
 * Float64 reference of causal grouped-query attention and its backward. Query head h reads KV head
 * h mod Hkv (for MoA's E experts × Hkv heads, expert e's head j is e·Hkv + j and reads KV head j).
 * Layout: q, o (B, T, Hq, D); k, v (B, T, Hkv, D); lse (B, Hq, T). Scale 1/sqrt(D).
 *
 * @module
 */

/** Sizes of an attention call. */
export interface AttentionDims {
  B: number;
  T: number;
  Hq: number;
  Hkv: number;
  D: number;
}

/** Forward: o and the log-sum-exp of every score row (for the backward). */
export function attentionRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  s: AttentionDims,
): { o: Float64Array; lse: Float64Array } {
  const { B, T, Hq, Hkv, D } = s, scale = 1 / Math.sqrt(D);
  const o = new Float64Array(B * T * Hq * D), lse = new Float64Array(B * Hq * T);
  const p = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < Hq; h++) {
      const kh = h % Hkv;
      for (let t = 0; t < T; t++) {
        const qo = ((b * T + t) * Hq + h) * D;
        let max = -Infinity;
        for (let u = 0; u <= t; u++) {
          const ko = ((b * T + u) * Hkv + kh) * D;
          let dot = 0;
          for (let j = 0; j < D; j++) dot += q[qo + j]! * k[ko + j]!;
          p[u] = dot * scale;
          max = Math.max(max, p[u]!);
        }
        let sum = 0;
        for (let u = 0; u <= t; u++) sum += p[u] = Math.exp(p[u]! - max);
        lse[(b * Hq + h) * T + t] = max + Math.log(sum);
        for (let u = 0; u <= t; u++) {
          const vo = ((b * T + u) * Hkv + kh) * D, w = p[u]! / sum;
          for (let j = 0; j < D; j++) o[qo + j]! += w * v[vo + j]!;
        }
      }
    }
  }
  return { o, lse };
}

/** Backward: dq, dk, dv (dk, dv summed over the query heads that share a KV head). */
export function attentionBackwardRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  o: ArrayLike<number>,
  lse: ArrayLike<number>,
  dO: ArrayLike<number>,
  s: AttentionDims,
): { dq: Float64Array; dk: Float64Array; dv: Float64Array } {
  const { B, T, Hq, Hkv, D } = s, scale = 1 / Math.sqrt(D);
  const dq = new Float64Array(q.length), dk = new Float64Array(k.length), dv = new Float64Array(v.length);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < Hq; h++) {
      const kh = h % Hkv;
      for (let t = 0; t < T; t++) {
        const qo = ((b * T + t) * Hq + h) * D, l = lse[(b * Hq + h) * T + t]!;
        let delta = 0; // Σ_u P·dP = dO_t · o_t
        for (let j = 0; j < D; j++) delta += dO[qo + j]! * o[qo + j]!;
        for (let u = 0; u <= t; u++) {
          const ko = ((b * T + u) * Hkv + kh) * D;
          let dot = 0, dp = 0;
          for (let j = 0; j < D; j++) dot += q[qo + j]! * k[ko + j]!, dp += dO[qo + j]! * v[ko + j]!;
          const p = Math.exp(dot * scale - l), ds = p * (dp - delta) * scale;
          for (let j = 0; j < D; j++) {
            dq[qo + j]! += ds * k[ko + j]!;
            dk[ko + j]! += ds * q[qo + j]!;
            dv[ko + j]! += p * dO[qo + j]!;
          }
        }
      }
    }
  }
  return { dq, dk, dv };
}

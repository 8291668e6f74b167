/**
 * Float64 reference of the losses and their gradients: cross-entropy from logits, the DS-MoE
 * mutual-information router loss, the Switch load-balance loss and the router z-loss; and the forms of the
 * two batch-level router losses that a micro-batch takes under gradient accumulation (the batch's
 * statistics given as inputs).
 *
 * @module
 */
import { logSumExpRef, softmaxRef } from "./softmax.ts";

/** ε inside log of the entropies: H(p) = −Σ p log(p + ε), so a probability that underflows to 0 is safe. */
export const MI_EPS = 1e-9;

/** Mean over rows of −log softmax(logits)[target]; logits (N, V). */
export function crossEntropyRef(logits: ArrayLike<number>, targets: ArrayLike<number>, V: number): number {
  const lse = logSumExpRef(logits, V);
  let sum = 0;
  for (let t = 0; t < targets.length; t++) sum += lse[t]! - logits[t * V + targets[t]!]!;
  return sum / targets.length;
}

/** dlogits = dloss · (softmax − onehot) / N. */
export function crossEntropyBackwardRef(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  V: number,
  dloss: number,
) {
  const p = softmaxRef(logits, V), N = targets.length;
  for (let t = 0; t < N; t++) p[t * V + targets[t]!]! -= 1;
  for (let i = 0; i < p.length; i++) p[i]! *= dloss / N;
  return p;
}

/** Column means of x (N, E) → (E). */
export function meanRowsRef(x: ArrayLike<number>, E: number): Float64Array {
  const N = x.length / E, m = new Float64Array(E);
  for (let i = 0; i < x.length; i++) m[i % E]! += x[i]! / N;
  return m;
}

/** L = −H(p̄) + (1/N) Σ_t H(S_t) over router probabilities S (N, E). */
export function miLossRef(s: ArrayLike<number>, E: number): number {
  const N = s.length / E, pbar = meanRowsRef(s, E);
  let l = 0;
  for (const p of pbar) l += p * Math.log(p + MI_EPS);
  for (let i = 0; i < s.length; i++) l -= (s[i]! * Math.log(s[i]! + MI_EPS)) / N;
  return l;
}

/** dL/dS = (dL/N) · [log(p̄_i + ε) + p̄_i/(p̄_i + ε) − log(S + ε) − S/(S + ε)]. */
export function miLossBackwardRef(s: ArrayLike<number>, E: number, dl: number): Float64Array {
  return miLossGlobalBackwardRef(s, E, meanRowsRef(s, E), dl);
}

/** c_i = ∂F/∂p̄_i = log(p̄_i + ε) + p̄_i/(p̄_i + ε), F(p̄) = Σ_i p̄_i log(p̄_i + ε) = −H(p̄). */
function _entropySlope(pbar: ArrayLike<number>): Float64Array {
  return Float64Array.from(pbar, (p) => Math.log(p + MI_EPS) + p / (p + MI_EPS));
}

/**
 * The MI loss of a micro-batch S (N, E) against the batch's p̄ `pbar` (E): F(pbar) + Σ_i c_i·(p̄_S,i −
 * pbar_i) + (1/N) Σ_t H(S_t), with F and c as in {@linkcode miLossGlobalBackwardRef}. Equals
 * {@linkcode miLossRef} when pbar is S's own p̄; averaged over micro-batches whose p̄ average to pbar, it is
 * the batch's MI loss.
 */
export function miLossGlobalRef(s: ArrayLike<number>, E: number, pbar: ArrayLike<number>): number {
  const N = s.length / E, own = meanRowsRef(s, E), c = _entropySlope(pbar);
  let l = 0;
  for (let i = 0; i < E; i++) l += pbar[i]! * Math.log(pbar[i]! + MI_EPS) + c[i]! * (own[i]! - pbar[i]!);
  for (let i = 0; i < s.length; i++) l -= (s[i]! * Math.log(s[i]! + MI_EPS)) / N;
  return l;
}

/** dL/dS = (dL/N) · [c_i − log(S + ε) − S/(S + ε)], c_i = log(pbar_i + ε) + pbar_i/(pbar_i + ε). */
export function miLossGlobalBackwardRef(
  s: ArrayLike<number>,
  E: number,
  pbar: ArrayLike<number>,
  dl: number,
): Float64Array {
  const N = s.length / E, c = _entropySlope(pbar);
  return Float64Array.from(s, (v, i) => (dl / N) * (c[i % E]! - Math.log(v + MI_EPS) - v / (v + MI_EPS)));
}

/**
 * N_E · Σ_i f_i P_i: f_i = routed share of expert i (mask (N, E) of k choices per token, / (N·k)), P_i = mean S.
 * k = 0: the mask routes a varying number of experts per token (top-p, docs/design.md §16) and f_i is the
 * column mean over Σ_j of them, expert i's share of the routed pairs.
 */
export function switchLossRef(s: ArrayLike<number>, mask: ArrayLike<number>, E: number, k: number): number {
  const N = s.length / E, P = meanRowsRef(s, E), f = meanRowsRef(mask, E), kk = switchK(f, k);
  let l = 0;
  for (let i = 0; i < E; i++) l += (f[i]! / kk) * P[i]!;
  return E * l * (N > 0 ? 1 : 0);
}

/**
 * The divisor of the Switch loss's column means f: k, or for k = 0 the mean routed experts per token Σ_i f_i
 * (1 when nothing is routed, so f / it stays 0).
 */
export function switchK(f: ArrayLike<number>, k: number): number {
  if (k > 0) return k;
  let sum = 0;
  for (let i = 0; i < f.length; i++) sum += f[i]!;
  return sum > 0 ? sum : 1;
}

/** dL/dS[t, i] = dl · E · f_i / (k · N). */
export function switchLossBackwardRef(
  s: ArrayLike<number>,
  mask: ArrayLike<number>,
  E: number,
  k: number,
  dl: number,
) {
  const N = s.length / E, f = meanRowsRef(mask, E), kk = switchK(f, k);
  return Float64Array.from(s, (_, i) => (dl * E * f[i % E]!) / (kk * N));
}

/** E · Σ_i (f_i/k) P_i with the batch's routed shares f (E) given, P = column means of S (N, E). */
export function switchLossGlobalRef(
  s: ArrayLike<number>,
  f: ArrayLike<number>,
  E: number,
  k: number,
): number {
  const P = meanRowsRef(s, E), kk = switchK(f, k);
  let l = 0;
  for (let i = 0; i < E; i++) l += (f[i]! / kk) * P[i]!;
  return E * l;
}

/** dL/dS[t, i] = dl · E · f_i / (k · N), f given. */
export function switchLossGlobalBackwardRef(
  s: ArrayLike<number>,
  f: ArrayLike<number>,
  E: number,
  k: number,
  dl: number,
): Float64Array {
  const N = s.length / E, kk = switchK(f, k);
  return Float64Array.from(s, (_, i) => (dl * E * f[i % E]!) / (kk * N));
}

/** (1/N) Σ_t logsumexp(logits_t)²; logits (N, E). */
export function zLossRef(logits: ArrayLike<number>, E: number): number {
  const lse = logSumExpRef(logits, E);
  return lse.reduce((a, v) => a + v * v, 0) / lse.length;
}

/** dlogits = dl · (2/N) · lse_t · softmax(logits_t). */
export function zLossBackwardRef(logits: ArrayLike<number>, E: number, dl: number): Float64Array {
  const lse = logSumExpRef(logits, E), p = softmaxRef(logits, E), N = lse.length;
  return Float64Array.from(p, (v, i) => (dl * 2 * lse[Math.floor(i / E)]! * v) / N);
}

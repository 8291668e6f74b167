import { randomArray } from "../../tests/helpers/gpu.ts";
import { attentionBackwardRef, type AttentionDims, attentionRef } from "./attention.ts";

// Central differences in float64 with step 1e-6 are good to ~1e-9 here; 1e-7 leaves a wide margin and is
// still far below the 1e-2-scale change a wrong rule (a missing term, a wrong head mapping) causes.
const FD_TOL = 1e-7;

/** L = Σ o ⊙ w, so dL/do = w; returns dL/dx for x ∈ {q, k, v} by central differences. */
function numericGrads(q: Float64Array, k: Float64Array, v: Float64Array, w: Float64Array, s: AttentionDims) {
  const loss = () => attentionRef(q, k, v, s).o.reduce((acc, o, i) => acc + o * w[i]!, 0);
  const eps = 1e-6;
  return [q, k, v].map((x) =>
    Float64Array.from(x, (x0, i) => {
      x[i] = x0 + eps;
      const up = loss();
      x[i] = x0 - eps;
      const down = loss();
      x[i] = x0;
      return (up - down) / (2 * eps);
    })
  );
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return worst;
}

const CASES: AttentionDims[] = [
  { B: 1, T: 1, Hq: 1, Hkv: 1, D: 2 },
  { B: 2, T: 4, Hq: 4, Hkv: 2, D: 3 },
  { B: 1, T: 5, Hq: 3, Hkv: 1, D: 4 },
];

/** Queries and keys in [−2, 2), values and the output weights w in [−1, 1), from seeds seed…seed+3. */
function randomInputs(s: AttentionDims, seed: number) {
  const nq = s.B * s.T * s.Hq * s.D, nk = s.B * s.T * s.Hkv * s.D;
  return {
    q: randomArray(nq, seed, -2, 2),
    k: randomArray(nk, seed + 1, -2, 2),
    v: randomArray(nk, seed + 2),
    w: randomArray(nq, seed + 3),
  };
}

Deno.test("attentionBackwardRef matches float64 central differences (grouped-query heads, causal)", () => {
  for (const s of CASES) {
    const { q, k, v, w } = randomInputs(s, 1);
    const { o, lse } = attentionRef(q, k, v, s);
    const analytic = attentionBackwardRef(q, k, v, o, lse, w, s);
    const [dq, dk, dv] = numericGrads(q, k, v, w, s);
    for (
      const [name, got, num] of [["dq", analytic.dq, dq], ["dk", analytic.dk, dk], [
        "dv",
        analytic.dv,
        dv,
      ]] as const
    ) {
      const err = maxDiff(got, num!);
      if (!(err <= FD_TOL)) {
        throw new Error(`${name} ${JSON.stringify(s)}: max |analytic − numeric| = ${err}`);
      }
    }
  }
});

Deno.test("the finite-difference check catches a KV gradient that ignores the other query heads of a group", () => {
  const s = CASES[1]!;
  const { q, k, v, w } = randomInputs(s, 5);
  const { o, lse } = attentionRef(q, k, v, s);
  // Wrong rule: dk/dv from query head h == kv head only (Hkv heads instead of Hq), i.e. no group sum.
  const firstHeads = (x: Float64Array, H: number, keep: number) =>
    Float64Array.from(x, (val, i) => (Math.floor(i / s.D) % H < keep ? val : 0));
  const broken = attentionBackwardRef(
    firstHeads(q, s.Hq, s.Hkv),
    k,
    v,
    o,
    lse,
    firstHeads(w, s.Hq, s.Hkv),
    s,
  );
  const [, dk] = numericGrads(q, k, v, w, s);
  const err = maxDiff(broken.dk, dk!);
  if (!(err > 1e-3)) throw new Error(`the broken rule was not caught: max diff ${err}`);
});

Deno.test("attentionRef equals an explicit masked softmax and lse is the row log-sum-exp", () => {
  const s = { B: 1, T: 3, Hq: 2, Hkv: 1, D: 2 };
  const q = randomArray(12, 9), k = randomArray(6, 10), v = randomArray(6, 11);
  const { o, lse } = attentionRef(q, k, v, s);
  for (let h = 0; h < 2; h++) {
    for (let t = 0; t < 3; t++) {
      const scores = [0, 1, 2].map((u) =>
        (q[(t * 2 + h) * 2]! * k[u * 2]! + q[(t * 2 + h) * 2 + 1]! * k[u * 2 + 1]!) / Math.SQRT2
      );
      const e = scores.map((x, u) => (u <= t ? Math.exp(x) : 0)), z = e.reduce((a, b) => a + b);
      if (Math.abs(lse[h * 3 + t]! - Math.log(z)) > 1e-12) throw new Error(`lse[${h},${t}]`);
      for (let j = 0; j < 2; j++) {
        const want = e.reduce((acc, p, u) => acc + (p / z) * v[u * 2 + j]!, 0);
        if (Math.abs(o[(t * 2 + h) * 2 + j]! - want) > 1e-12) throw new Error(`o[${t},${h},${j}]`);
      }
    }
  }
});

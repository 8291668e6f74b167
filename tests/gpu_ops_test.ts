/**
 * Conformance of every WebGPU graph op with its float64 CPU twin: each case builds a small graph of one op
 * (plus the forward it differentiates, for backward ops) at several shapes including odd sizes, runs it on
 * both executors and compares every output with |got − ref| ≤ atol + rtol·|ref| (tests/helpers/conform.ts).
 */
import { Graph, type Value } from "../core/graph/ir.ts";
import { apply, apply1 } from "../core/graph/ops.ts";
import { schedule } from "../core/graph/schedule.ts";
import { Rng } from "../core/util/rng.ts";
import { readTensor, writeTensor } from "../gpu/buffers.ts";
import { GraphExecutor } from "../gpu/executor.ts";
import { testGpu, type Tolerance } from "./helpers/gpu.ts";
import { type Build, conform } from "./helpers/conform.ts";

const EXACT = { atol: 1e-6, rtol: 1e-6 },
  SUMS = { atol: 1e-5, rtol: 1e-4 },
  TRANS = { atol: 3e-5, rtol: 3e-4 };
const ROWS = [1, 7, 33, 300];

/**
 * [B, T, Hq, Hkv, D] of the attention cases. D 4, 8, 16, 32: rows as vec4s on cpu-simd, in blocks of rows
 * (lanes across heads up to D 16, and for the forward up to 32; odd block counts); D 6: as floats.
 */
const ATTENTION_SHAPES = [
  [1, 1, 1, 1, 4],
  [2, 7, 4, 2, 8],
  [1, 33, 6, 3, 16],
  [3, 21, 4, 2, 16],
  [2, 19, 8, 2, 32],
  [1, 5, 2, 1, 6],
] as const;

const CASES: Record<string, [Build, Tolerance]> = {
  "matmul at odd sizes, all transposes": [(g, f) => {
    const out: Value[] = [];
    // [1, 300, 65]: one row with K long enough that the gpu profile runs it as gemv (gpu/kernels/gemv.ts).
    for (const [m, k, n] of [[1, 1, 1], [7, 33, 5], [33, 7, 65], [100, 64, 36], [1, 300, 65]] as const) {
      out.push(apply1(g, "matmul", [f([m, k]), f([k, n])]));
      out.push(apply1(g, "matmul", [f([k, m]), f([k, n])], { transA: true }));
      out.push(apply1(g, "matmul", [f([m, k]), f([n, k])], { transB: true }));
      out.push(apply1(g, "matmul", [f([k, m]), f([n, k])], { transA: true, transB: true }));
    }
    return out;
  }, SUMS],
  "embedding and its gradient": [(g, f, ids) =>
    ROWS.flatMap((n) => {
      const i = ids(n, 11), w = f([11, 5]);
      // d = 5 (scalar kernel), 8 and 32 (vec4 kernels, 2 and 4 vec4s per invocation); a vocabulary with
      // rows no token names (their gradient is zero), and ids past the vocabulary (they add nothing).
      return [
        apply1(g, "embedding", [i, w]),
        apply1(g, "embedding_grad", [i, f([n, 5])], { vocab: 11 }),
        apply1(g, "embedding_grad", [i, f([n, 8])], { vocab: 11 }),
        apply1(g, "embedding_grad", [i, f([n, 32])], { vocab: 11 }),
        apply1(g, "embedding_grad", [i, f([n, 12])], { vocab: 40 }),
        apply1(g, "embedding_grad", [ids(n, 14), f([n, 7])], { vocab: 11 }),
        apply1(g, "embedding_grad", [ids(n, 14), f([n, 16])], { vocab: 11 }),
      ];
    }), SUMS],
  "add_rows, sum_rows_mod, bias_add, sum_rows": [
    (
      g,
      f,
    ) => [
      apply1(g, "add_rows", [f([21, 3]), f([7, 3])]),
      apply1(g, "sum_rows_mod", [f([21, 3])], { period: 7 }),
      apply1(g, "bias_add", [f([33, 5]), f([5])]),
      apply1(g, "bias_add", [f([7, 12]), f([12])]), // the vec4 form
      apply1(g, "sum_rows", [f([33, 5])]),
    ],
    SUMS,
  ],
  "element-wise add, mul, scale, add_n, fill": [
    (
      g,
      f,
    ) => [
      apply1(g, "add", [f([7, 3]), f([7, 3])]),
      apply1(g, "mul", [f([33]), f([33])]),
      apply1(g, "scale", [f([1000])], { alpha: 0.5 }),
      apply1(g, "add_n", [f([9]), f([9]), f([9])]),
      apply1(g, "fill", [], { shape: [5], value: 2 }),
    ],
    EXACT,
  ],
  "layernorm and rmsnorm with backward": [
    (g, f) =>
      // Width 13 and 200: the gpu profile's 64-thread row workgroups with idle and with looping threads.
      [...ROWS.map((n) => [n, 13]), [3, 200]].flatMap(([n, w]) =>
        (["layernorm", "rmsnorm"] as const).flatMap((kind) => {
          const x = f([n!, w!]), gamma = f([w!]), dy = f([n!, w!]);
          const ins = kind === "layernorm" ? [x, gamma, f([w!])] : [x, gamma];
          const [y, mean, rstd] = apply(g, "norm", ins, { kind, eps: 1e-5 });
          const [dx, dg, db] = apply(g, "norm_backward", [x, gamma, mean!, rstd!, dy], { kind, eps: 1e-5 });
          return kind === "layernorm" ? [y!, mean!, rstd!, dx!, dg!, db!] : [y!, rstd!, dx!, dg!];
        })
      ),
    TRANS,
  ],
  "activations and their backward": [(g, f) =>
    (["gelu", "relu", "silu"] as const).flatMap((kind) => {
      // 1000 elements: the vec4 kernels; 999: the scalar ones.
      const x = f([1000], -4, 4), x3 = f([999], -4, 4);
      return [
        apply1(g, "activation", [x], { kind }),
        apply1(g, "activation_backward", [x, f([1000])], { kind }),
        apply1(g, "activation", [x3], { kind }),
        apply1(g, "activation_backward", [x3, f([999])], { kind }),
      ];
    }), TRANS],
  "softmax and its backward": [(g, f) =>
    ROWS.flatMap((n) => {
      const y = apply1(g, "softmax", [f([n, 9], -5, 5)]);
      return [y, apply1(g, "softmax_backward", [y, f([n, 9])])];
    }), TRANS],
  "causal grouped-query attention and its backward": [
    (g, f) =>
      ATTENTION_SHAPES.flatMap(
        ([B, T, Hq, Hkv, D]) => {
          const q = f([B, T, Hq, D]), k = f([B, T, Hkv, D]), v = f([B, T, Hkv, D]);
          const [o, lse] = apply(g, "attention", [q, k, v]);
          const [dq, dk, dv] = apply(g, "attention_backward", [q, k, v, o!, lse!, f([B, T, Hq, D])]);
          return [o!, lse!, dq!, dk!, dv!];
        },
      ),
    TRANS,
  ],
  "gated activation (activation and router gate in one pass) and its backward": [
    (g, f) =>
      ROWS.flatMap((n) =>
        // h = 3 (scalar), 8 and 16 (vec4, 2 and 4 vec4s per invocation); every activation.
        ([[3, "gelu"], [8, "relu"], [16, "silu"], [16, "gelu"]] as const).flatMap(([h, kind]) => {
          const u = f([n, 4 * h], -3, 3), s = f([n, 4], 0, 1);
          const [a, y] = apply(g, "gated_activation", [u, s], { kind, blocks: 4 });
          return [a!, y!, apply1(g, "gated_activation_backward", [u, s, f([n, 4 * h])], { kind, blocks: 4 })];
        })
      ),
    TRANS,
  ],
  "router scaling, its gradient and the top-k mask": [(g, f) =>
    ROWS.flatMap((n) => {
      // h = 3 (the scalar kernels), 8 and 16 (vec4 kernels, 2 and 4 vec4s per invocation).
      const x = f([n, 12]), s = f([n, 4], 0, 1), x8 = f([n, 32]), x16 = f([n, 64]);
      return [
        apply1(g, "router_scale", [x, s]),
        apply1(g, "router_scale_ds", [x, f([n, 12])], { blocks: 4 }),
        apply1(g, "router_scale", [x8, s]),
        apply1(g, "router_scale_ds", [x8, f([n, 32])], { blocks: 4 }),
        apply1(g, "router_scale", [x16, s]),
        apply1(g, "router_scale_ds", [x16, f([n, 64])], { blocks: 4 }),
        apply1(g, "topk_mask", [s], { k: 2 }),
      ];
    }), SUMS],
  "inference routing masks (threshold, top-k, threshold-top-K, top-p, dense) and the fused router gate": [
    (g, f) =>
      ROWS.flatMap((n) => {
        const z = f([n, 8], -3, 3), s = apply1(g, "softmax", [z]);
        const rule = { epsilon: 0.5, k: 3, p: 0.8 };
        return [
          ...(["threshold", "topk", "threshold_topk", "top_p", "dense"] as const).map((kind) =>
            apply1(g, "route_mask", [s], { ...rule, kind })
          ),
          // probs, mask and gate from the logits in one op
          ...(["threshold", "topk", "top_p", "dense"] as const).flatMap((kind) =>
            apply(g, "route_gate", [z], { ...rule, kind })
          ),
        ];
      }),
    SUMS,
  ],
  "top-k token choice: expert capacity, renormalised gates and their gradient, softmax after top-k": [
    (g, f) =>
      ROWS.flatMap((n) =>
        ([[4, 2], [8, 3]] as const).flatMap(([E, k]) => {
          const z = f([n, E], -3, 3),
            s = apply1(g, "softmax", [z]),
            mask = apply1(g, "topk_mask", [s], { k });
          const x = apply1(g, "mul", [s, mask]);
          return [
            apply1(g, "capacity_mask", [mask], { capacity: Math.ceil((n * k) / E) }),
            apply1(g, "capacity_mask", [mask], { capacity: 1 }),
            apply1(g, "renormalize_rows", [x]),
            // rows dropped entirely (capacity 1): renormalised to 0, with no gradient
            apply1(g, "renormalize_rows", [apply1(g, "capacity_mask", [mask], { capacity: 1 })]),
            apply1(g, "renormalize_rows_backward", [x, f([n, E])]),
            apply1(g, "renormalize_rows_backward", [
              apply1(g, "mul", [s, apply1(g, "capacity_mask", [mask], { capacity: 1 })]),
              f([n, E]),
            ]),
            apply1(g, "masked_softmax", [z, mask]),
            apply1(g, "masked_softmax", [z, apply1(g, "capacity_mask", [mask], { capacity: 1 })]),
          ];
        })
      ),
    TRANS,
  ],
  "the real experts' columns of a router with null experts, and their gradient": [
    (g, f) =>
      ROWS.flatMap((n) => [
        apply1(g, "slice_cols", [f([n, 6])], { width: 4 }),
        apply1(g, "slice_cols_backward", [f([n, 4])], { cols: 6 }),
        apply1(g, "slice_cols", [f([n, 9])], { width: 1 }),
        apply1(g, "slice_cols_backward", [f([n, 9])], { cols: 9 }),
      ]),
    EXACT,
  ],
  "the Switch loss per sequence and its gradient": [
    (g, f) =>
      ([[1, 7], [4, 5], [3, 33], [2, 150]] as const).flatMap(([B, T]) => {
        const s = apply1(g, "softmax", [f([B * T, 5], -3, 3)]), mask = apply1(g, "topk_mask", [s], { k: 2 });
        return [
          apply1(g, "switch_loss_seq", [s, mask], { k: 2, seq: T }),
          apply1(g, "switch_loss_seq_backward", [s, mask, f([1])], { k: 2, seq: T }),
        ];
      }),
    TRANS,
  ],
  "cross-entropy, MI, Switch and z losses with gradients": [(g, f, ids) =>
    ROWS.flatMap((n) => {
      const logits = f([n, 17], -3, 3), t = ids(n, 17), dl = f([1]);
      const s = apply1(g, "softmax", [f([n, 5], -3, 3)]), mask = apply1(g, "topk_mask", [s], { k: 2 });
      const r = f([n, 5], -2, 2);
      return [
        apply1(g, "cross_entropy", [logits, t]),
        apply1(g, "cross_entropy_backward", [logits, t, dl]),
        apply1(g, "mi_loss", [s]),
        apply1(g, "mi_loss_backward", [s, dl]),
        apply1(g, "switch_loss", [s, mask], { k: 2 }),
        apply1(g, "switch_loss_backward", [s, mask, dl], { k: 2 }),
        apply1(g, "z_loss", [r]),
        apply1(g, "z_loss_backward", [r, dl]),
      ];
    }), TRANS],
  "batch-level router losses of a micro-batch (mean_rows, MI and Switch against given statistics)": [
    (g, f) =>
      ROWS.flatMap((n) => {
        const s = apply1(g, "softmax", [f([n, 5], -3, 3)]), dl = f([1]);
        // The batch's statistics: column means of another batch's probabilities and top-2 mask.
        const other = apply1(g, "softmax", [f([2 * n + 3, 5], -3, 3)]);
        const pbar = apply1(g, "mean_rows", [other]);
        const share = apply1(g, "mean_rows", [apply1(g, "topk_mask", [other], { k: 2 })]);
        return [
          pbar,
          share,
          apply1(g, "mi_loss_global", [s, pbar]),
          apply1(g, "mi_loss_global_backward", [s, pbar, dl]),
          apply1(g, "switch_loss_global", [s, share], { k: 2 }),
          apply1(g, "switch_loss_global_backward", [s, share, dl], { k: 2 }),
        ];
      }),
    TRANS,
  ],
};

for (const [name, [build, tol]] of Object.entries(CASES)) {
  Deno.test(`WebGPU ${name} match the float64 reference (atol ${tol.atol}, rtol ${tol.rtol})`, () =>
    conform(name, build, tol));
  // The same graphs through the templates a real GPU gets (workgroup reductions, shared-memory tiles).
  Deno.test(`WebGPU ${name}, gpu kernel profile, match the float64 reference`, () =>
    conform(name, build, tol, true));
}

Deno.test("WebGPU embedding_grad sums each row's tokens in ascending token order from zero, bit for bit", async () => {
  // The order a scan over all tokens uses, in float32: the same bits every run and on every adapter.
  const ctx = await testGpu(), rnd = new Rng(4242);
  for (const [n, d, vocab] of [[300, 8, 11], [257, 5, 7], [64, 32, 3]] as const) {
    const g = new Graph();
    const i = g.leaf("input", "ids", [n], "u32"), dy = g.leaf("input", "dy", [n, d]);
    const out = apply1(g, "embedding_grad", [i, dy], { vocab });
    const idv = Uint32Array.from({ length: n }, () => rnd.int(vocab + 1)); // vocab itself: out of range
    const dyv = Float32Array.from({ length: n * d }, () => rnd.next() * 2 - 1);
    const want = new Float32Array(vocab * d);
    for (let t = 0; t < n; t++) {
      if (idv[t]! >= vocab) continue;
      for (let j = 0; j < d; j++) {
        want[idv[t]! * d + j] = Math.fround(want[idv[t]! * d + j]! + dyv[t * d + j]!);
      }
    }
    const ex = new GraphExecutor(ctx, schedule(g, [out]), [i, dy]);
    writeTensor(ctx, ex.tensor(i), idv);
    writeTensor(ctx, ex.tensor(dy), dyv);
    await ex.run().done();
    const got = await readTensor(ctx, ex.tensor(out));
    ex.destroy();
    for (let k = 0; k < want.length; k++) {
      if (got[k] !== want[k]) {
        throw new Error(`n=${n} d=${d}: dw[${k}] = ${got[k]}, the ordered float32 sum is ${want[k]}`);
      }
    }
  }
});

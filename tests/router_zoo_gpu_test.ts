/**
 * WebGPU kernels of the routers of the literature (docs/design.md §16) against their float64 twins, on the
 * cpu-simd and gpu kernel profiles (tests/helpers/conform.ts).
 */
import { gradients } from "../core/graph/autodiff.ts";
import { apply, apply1 } from "../core/graph/ops.ts";
import { schedule } from "../core/graph/schedule.ts";
import { buildModel } from "../core/plan/model.ts";
import { Rng } from "../core/util/rng.ts";
import { type Build, conform, runBoth } from "./helpers/conform.ts";
import { idAndStateFeeds, tinyMoa } from "./helpers/router_configs.ts";
import { assertClose, testGpu, type Tolerance } from "./helpers/gpu.ts";
import { deepStrictEqual as assertEquals } from "node:assert/strict";
import { createTensor, readTensor } from "../gpu/buffers.ts";
import { runCalls } from "../gpu/dispatch.ts";
import { l1LambdaUpdate } from "../gpu/kernels/router_zoo.ts";
import { nextL1Lambda } from "../core/plan/router_zoo.ts";

const EXACT = { atol: 1e-6, rtol: 1e-6 }, TRANS = { atol: 3e-5, rtol: 3e-4 };
const ROWS = [1, 7, 33, 300];

const CASES: Record<string, [Build, Tolerance]> = {
  "expert-choice masks (C of N tokens per expert, ties to the lower token) and gates": [
    (g, f) =>
      ROWS.flatMap((n) => {
        const s = apply1(g, "softmax", [f([n, 5], -3, 3)]), tied = f([n, 3], 0.25, 0.25);
        const masks = [1, Math.ceil(n / 3), n].map((tokens) =>
          apply1(g, "expert_choice_mask", [s], { tokens })
        );
        return [
          ...masks,
          apply1(g, "mul", [s, masks[1]!]),
          apply1(g, "expert_choice_mask", [tied], { tokens: Math.ceil(n / 2) }),
        ];
      }),
    EXACT,
  ],
  "top-p masks and gates, the dynamic (entropy) loss and its gradient": [(g, f) =>
    ROWS.flatMap((n) => {
      const s = apply1(g, "softmax", [f([n, 6], -3, 3)]), dl = f([1]);
      const masks = [0.3, 0.7, 1].map((p) => apply1(g, "topp_mask", [s], { p }));
      return [
        ...masks,
        apply1(g, "mul", [s, masks[1]!]),
        apply1(g, "entropy_loss", [s]),
        apply1(g, "entropy_loss_backward", [s, dl]),
      ];
    }), TRANS],
  "Switch losses over shares of a top-p mask (k 0), whole and against the batch's shares": [
    (g, f) =>
      ROWS.flatMap((n) => {
        const s = apply1(g, "softmax", [f([n, 5], -3, 3)]), dl = f([1]);
        const mask = apply1(g, "topp_mask", [s], { p: 0.6 });
        const other = apply1(g, "softmax", [f([2 * n + 3, 5], -3, 3)]);
        const share = apply1(g, "mean_rows", [apply1(g, "topp_mask", [other], { p: 0.6 })]);
        return [
          apply1(g, "switch_loss", [s, mask], { k: 0 }),
          apply1(g, "switch_loss_backward", [s, mask, dl], { k: 0 }),
          apply1(g, "switch_loss_global", [s, share], { k: 0 }),
          apply1(g, "switch_loss_global_backward", [s, share, dl], { k: 0 }),
        ];
      }),
    TRANS,
  ],
  "ReLU routing: the L1 term and its gradient, the share of zero gates, the inference router under each rule":
    [
      (g, f) =>
        ROWS.flatMap((n) => {
          const z = f([n, 6], -2, 2), gates = apply1(g, "activation", [z], { kind: "relu" });
          const lambda = f([1], 0.1, 2), dl = f([1]), rule = { epsilon: 0.5, k: 2, p: 0.6 };
          return [
            apply1(g, "l1_loss", [gates, lambda]),
            apply1(g, "l1_loss_backward", [gates, lambda, dl]),
            apply1(g, "zero_share", [gates]),
            // A row of zero gates only: the token runs no expert.
            ...apply(g, "relu_route_gate", [f([1, 6], -2, -1)], { ...rule, kind: "dense" }),
            ...(["threshold", "topk", "top_p", "dense"] as const).flatMap((kind) =>
              apply(g, "relu_route_gate", [z], { ...rule, kind })
            ),
          ];
        }),
      TRANS,
    ],
};

for (const [name, [build, tol]] of Object.entries(CASES)) {
  Deno.test(`WebGPU ${name} match the float64 reference (atol ${tol.atol}, rtol ${tol.rtol})`, () =>
    conform(name, build, tol));
  Deno.test(`WebGPU ${name}, gpu kernel profile, match the float64 reference`, () =>
    conform(name, build, tol, true));
}

/** Tiny models of each router (MoA and MLP routers both), trained graphs on WebGPU against float64. */
const MODELS: Record<string, Record<string, Record<string, unknown>>> = {
  "expert choice": { model: { kind: "smoe" }, router: { train: "expert_choice", capacity: 1.5 } },
  "ReLU routing": { model: { kind: "smoe" }, router: { train: "relu" }, loss: { l1: 0.3, z: 0.01 } },
  "DS-MoE with shared and fine-grained experts": {
    model: { mlp: { experts: 4, hidden: 8, segments: 2, shared: 1 } },
    loss: { mi: { mlp: 0.1, attention: 0.1 } },
  },
  "top-k with shared and fine-grained experts": {
    model: { kind: "smoe", mlp: { experts: 4, hidden: 8, segments: 2, shared: 2 } },
    router: { train: "topk", k: 1 },
    loss: { load_balance: 0.1 },
  },
  "dynamic top-p": {
    model: { kind: "smoe" },
    router: { train: "top_p", p: 0.5 },
    loss: { dynamic: 0.1, load_balance: 0.1 },
  },
};

for (const [name, over] of Object.entries(MODELS)) {
  Deno.test(`WebGPU forward and backward of a tiny ${name} model match the float64 reference`, async () => {
    const ctx = await testGpu();
    const c = tinyMoa(over, { seqLen: 7, dModel: 16, headsPerExpert: 2, headDim: 8, hidden: 8 });
    const m = buildModel(c, 3), params = m.params.map((p) => p.value);
    assertEquals(m.routerState.length, name === "ReLU routing" ? 1 : 0);
    const outs = [m.loss, m.lmLoss, ...gradients(m.graph, m.loss, params)];
    const rng = new Rng(5), feeds = idAndStateFeeds(m, rng);
    for (const p of m.params) {
      const n = p.value.shape.reduce((a, b) => a * b, 1), base = p.init === "ones" ? 1 : 0;
      feeds.set(
        p.value.id,
        Float64Array.from(Float32Array.from({ length: n }, () => base + 0.3 * (2 * rng.next() - 1))),
      );
    }
    const { ref, got } = await runBoth(ctx, m, schedule(m.graph, outs), feeds, outs, name);
    outs.forEach((_, i) => {
      const scale = Math.max(...Array.from(ref[i]!, Math.abs));
      const what = i < 2 ? (i === 0 ? "loss" : "lm loss") : `grad ${params[i - 2]!.name}`;
      assertClose(got[i]!, ref[i]!, { atol: 2e-4 * scale + 1e-7, rtol: 2e-3 }, what);
    });
  });
}

Deno.test("WebGPU l1_lambda_update multiplies λ by the rate below the target sparsity, divides above, keeps it at the target or after a skipped step", async () => {
  const ctx = await testGpu();
  const cases: [sparsity: number, finite: number, want: number][] = [
    [0.5, 1, 0.25 * 1.2],
    [0.9, 1, 0.25 / 1.2],
    [0.75, 1, 0.25],
    [0.5, 0, 0.25],
  ];
  for (const [sparsity, finite, want] of cases) {
    const lambda = createTensor(ctx, [1], "f32", Float32Array.of(0.25), "lambda");
    const sp = createTensor(ctx, [1], "f32", Float32Array.of(sparsity), "sparsity");
    const stats = createTensor(ctx, [3], "f32", Float32Array.of(1, 1, finite), "stats");
    await runCalls(ctx, [l1LambdaUpdate(ctx, { lambda, sparsity: sp, stats, target: 0.75, rate: 1.2 })])
      .done();
    const got = (await readTensor(ctx, lambda))[0]!;
    assertEquals(got, Math.fround(want), `sparsity ${sparsity}, finite ${finite}: λ ${got}`);
    assertEquals(Math.fround(nextL1Lambda(0.25, sparsity, 0.75, finite ? 1.2 : 1)), got, "the float64 rule");
    for (const t of [lambda, sp, stats]) t.buffer.destroy();
  }
});

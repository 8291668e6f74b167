import { ok as assert } from "node:assert/strict";
import { ExperimentSchema } from "../config/schema.ts";
import { buildModel } from "../plan/model.ts";
import { Rng } from "../util/rng.ts";
import { gradients } from "./autodiff.ts";
import { evaluateGraph, type HostValue } from "./cpu_executor.ts";
import { CPU_OPS } from "./cpu_ops.ts";
import { schedule } from "./schedule.ts";
import { checkGradients, randomFeeds } from "./grad_check.ts";
import { Graph, type Value } from "./ir.ts";
import { apply, apply1, OPS, type OpTable } from "./ops.ts";

// Central differences in float64 with eps 1e-5 agree with exact gradients to ~1e-9 relative; 1e-6 leaves
// room for curvature while any wrong rule shows errors of order 1.
const TOL = 1e-6;

/** Builds `op` on random leaves and reduces its first output to a scalar with a random weight. */
function opCase(
  build: (g: Graph, p: (shape: number[]) => Value) => Value,
  fixed = new Map<number, HostValue>(),
) {
  const g = new Graph();
  const params: Value[] = [];
  const p = (shape: number[]) => {
    const v = g.leaf("param", `p${params.length}`, shape);
    params.push(v);
    return v;
  };
  const out = build(g, p);
  const loss = out.shape.length === 1 && out.shape[0] === 1
    ? out
    : apply1(g, "dot", [out, g.leaf("const", "w", out.shape)]);
  return { g, loss, params, feeds: randomFeeds(g, 7, fixed) };
}

function ids(g: Graph, name: string, n: number, max: number, fixed: Map<number, HostValue>): Value {
  const v = g.leaf("input", name, [n], "u32");
  const rng = new Rng(n * 31 + max);
  fixed.set(v.id, Uint32Array.from({ length: n }, () => rng.int(max)));
  return v;
}

const CASES: Record<string, () => ReturnType<typeof opCase>> = {
  "matmul": () => opCase((g, p) => apply1(g, "matmul", [p([3, 4]), p([4, 5])])),
  "matmul transA": () => opCase((g, p) => apply1(g, "matmul", [p([4, 3]), p([4, 5])], { transA: true })),
  "matmul transB": () => opCase((g, p) => apply1(g, "matmul", [p([3, 4]), p([5, 4])], { transB: true })),
  "matmul transA transB": () =>
    opCase((g, p) => apply1(g, "matmul", [p([4, 3]), p([5, 4])], { transA: true, transB: true })),
  "add, mul, scale, add_n, reshape": () =>
    opCase((g, p) => {
      const a = p([2, 3]), b = p([2, 3]);
      const s = apply1(g, "add_n", [
        apply1(g, "add", [a, b]),
        apply1(g, "mul", [a, b]),
        apply1(g, "scale", [a], { alpha: 3 }),
      ]);
      return apply1(g, "reshape", [s], { shape: [3, 2] });
    }),
  "bias_add": () => opCase((g, p) => apply1(g, "bias_add", [p([3, 4]), p([4])])),
  "add_rows": () => opCase((g, p) => apply1(g, "add_rows", [p([6, 2]), p([3, 2])])),
  "embedding": () => {
    const fixed = new Map<number, HostValue>();
    return opCase((g, p) => apply1(g, "embedding", [ids(g, "ids", 9, 5, fixed), p([5, 3])]), fixed);
  },
  "layernorm": () =>
    opCase((g, p) => apply(g, "norm", [p([3, 5]), p([5]), p([5])], { kind: "layernorm", eps: 1e-5 })[0]!),
  "rmsnorm": () =>
    opCase((g, p) => apply(g, "norm", [p([3, 5]), p([5])], { kind: "rmsnorm", eps: 1e-5 })[0]!),
  "gelu": () => opCase((g, p) => apply1(g, "activation", [p([4, 3])], { kind: "gelu" })),
  "relu": () => opCase((g, p) => apply1(g, "activation", [p([4, 3])], { kind: "relu" })),
  "silu": () => opCase((g, p) => apply1(g, "activation", [p([4, 3])], { kind: "silu" })),
  "softmax": () => opCase((g, p) => apply1(g, "softmax", [p([3, 5])])),
  "attention (GQA, causal)": () =>
    opCase((g, p) => apply(g, "attention", [p([2, 4, 4, 3]), p([2, 4, 2, 3]), p([2, 4, 2, 3])])[0]!),
  "router_scale": () => opCase((g, p) => apply1(g, "router_scale", [p([3, 6]), p([3, 2])], { blocks: 2 })),
  "gated_activation (gated output)": () =>
    opCase((g, p) => apply(g, "gated_activation", [p([3, 6]), p([3, 2])], { kind: "gelu", blocks: 2 })[1]!),
  "gated_activation (both outputs used)": () =>
    opCase((g, p) => {
      const [a, y] = apply(g, "gated_activation", [p([3, 8]), p([3, 2])], { kind: "silu", blocks: 2 });
      return apply1(g, "mul", [a!, y!]);
    }),
  "cross_entropy": () => {
    const fixed = new Map<number, HostValue>();
    return opCase((g, p) => apply1(g, "cross_entropy", [p([4, 6]), ids(g, "t", 4, 6, fixed)]), fixed);
  },
  "mi_loss": () => opCase((g, p) => apply1(g, "mi_loss", [apply1(g, "softmax", [p([5, 4])])])),
  "switch_loss": () =>
    opCase((g, p) => {
      const s = apply1(g, "softmax", [p([5, 4])]);
      return apply1(g, "switch_loss", [s, apply1(g, "topk_mask", [s], { k: 2 })], { k: 2 });
    }),
  // The batch-level router losses of a micro-batch, the batch's statistics given (gradient accumulation).
  "mi_loss_global": () => {
    const fixed = new Map<number, HostValue>();
    return opCase((g, p) => {
      const pbar = g.leaf("const", "pbar", [4]);
      fixed.set(pbar.id, Float64Array.of(0.1, 0.2, 0.3, 0.4));
      return apply1(g, "mi_loss_global", [apply1(g, "softmax", [p([5, 4])]), pbar]);
    }, fixed);
  },
  "switch_loss_global": () => {
    const fixed = new Map<number, HostValue>();
    return opCase((g, p) => {
      const f = g.leaf("const", "f", [4]);
      fixed.set(f.id, Float64Array.of(0.5, 0.25, 0.75, 0.5));
      return apply1(g, "switch_loss_global", [apply1(g, "softmax", [p([5, 4])]), f], { k: 2 });
    }, fixed);
  },
  "z_loss": () => opCase((g, p) => apply1(g, "z_loss", [p([5, 4])])),
  // Top-k token choice (docs/design.md §16): gates renormalised over the kept experts, with a capacity of 1
  // token per expert: 4 of the 12 assignments are kept, so at least 3 of the 6 tokens keep no expert (gate 0).
  "renormalize_rows (top-2 of 4, capacity 1)": () =>
    opCase((g, p) => {
      const s = apply1(g, "softmax", [p([6, 4])]), mask = apply1(g, "topk_mask", [s], { k: 2 });
      const kept = apply1(g, "capacity_mask", [mask], { capacity: 1 });
      return apply1(g, "renormalize_rows", [apply1(g, "mul", [s, kept])]);
    }),
  // The Switch loss per sequence: 3 sequences of 4 tokens, each with its own f and P.
  "switch_loss_seq (3 sequences of 4)": () =>
    opCase((g, p) => {
      const s = apply1(g, "softmax", [p([12, 4])]);
      return apply1(g, "switch_loss_seq", [s, apply1(g, "topk_mask", [s], { k: 2 })], { k: 2, seq: 4 });
    }),
  // Null experts: the real experts' 3 columns of a router's 3 + 2 gates.
  "slice_cols (3 real of 5 gates)": () =>
    opCase((g, p) => {
      const s = apply1(g, "softmax", [p([4, 5])]);
      return apply1(g, "slice_cols", [apply1(g, "mul", [s, apply1(g, "topk_mask", [s], { k: 3 })])], {
        width: 3,
      });
    }),
  "masked_softmax (softmax after top-2 of 5)": () =>
    opCase((g, p) => {
      const z = p([4, 5]);
      return apply1(g, "masked_softmax", [z, apply1(g, "topk_mask", [z], { k: 2 })]);
    }),
  "dot, mul_scalar": () => opCase((g, p) => apply1(g, "mul_scalar", [p([3, 2]), p([1])])),
};

for (const [name, make] of Object.entries(CASES)) {
  Deno.test(`the ${name} gradient rule matches float64 central differences`, () => {
    const c = make();
    const r = checkGradients(c.g, c.loss, c.params, c.feeds as Map<number, HostValue>);
    assert(r.worst < TOL, `worst relative error ${r.worst} at ${r.where}`);
    assert(r.checked > 0);
  });
}

Deno.test("the gradient check catches a deliberately broken rule (activation passing dy through)", () => {
  const broken: OpTable = {
    ...OPS,
    activation: { ...OPS.activation, grad: (_g, _n, [dy]) => [dy] },
  };
  const c = CASES.gelu!();
  const r = checkGradients(c.g, c.loss, c.params, c.feeds as Map<number, HostValue>, { table: broken });
  assert(r.worst > 1e-2, `broken rule not caught: worst ${r.worst}`);
});

Deno.test("the gradient check catches deliberately broken router-zoo rules (renormalisation differentiated as a softmax, softmax after top-k passing dy through, the null experts' slice without a gradient, the per-sequence Switch loss with the batch's f)", () => {
  const cases: [string, OpTable][] = [
    ["renormalize_rows (top-2 of 4, capacity 1)", {
      ...OPS,
      renormalize_rows: {
        ...OPS.renormalize_rows,
        // a plausible slip: the softmax's rule at y = x / Σx, y ⊙ (dy − Σ dy·y), instead of (dy − Σ dy·y) / Σx
        grad: (g, n, [dy]) => [apply1(g, "softmax_backward", [n.outputs[0]!, dy!])],
      },
    }],
    ["masked_softmax (softmax after top-2 of 5)", {
      ...OPS,
      masked_softmax: { ...OPS.masked_softmax, grad: (_g, _n, [dy]) => [dy, null] },
    }],
    ["slice_cols (3 real of 5 gates)", {
      ...OPS,
      // a plausible slip: the real experts' slice taken for a selection, with no gradient
      slice_cols: { ...OPS.slice_cols, grad: () => [null] },
    }],
    ["switch_loss_seq (3 sequences of 4)", {
      ...OPS,
      switch_loss_seq: {
        ...OPS.switch_loss_seq,
        // a plausible slip: the whole graph's routed shares f instead of each sequence's own
        grad: (g, n, [dl]) => [
          apply1(g, "switch_loss_backward", [n.inputs[0]!, n.inputs[1]!, dl!], { k: n.attrs.k }),
          null,
        ],
      },
    }],
  ];
  for (const [name, broken] of cases) {
    const c = CASES[name]!();
    const ok = checkGradients(c.g, c.loss, c.params, c.feeds as Map<number, HostValue>);
    assert(ok.worst < TOL, `${name}: the correct rule passes (${ok.worst})`);
    const r = checkGradients(c.g, c.loss, c.params, c.feeds as Map<number, HostValue>, { table: broken });
    assert(r.worst > 1e-2, `${name}: broken rule not caught: worst ${r.worst}`);
  }
});

Deno.test("at the micro-batch's own statistics, mi_loss_global and switch_loss_global equal mi_loss and switch_loss, gradients too", () => {
  const g = new Graph(), z = g.leaf("param", "z", [6, 4]);
  const s = apply1(g, "softmax", [z]), mask = apply1(g, "topk_mask", [s], { k: 2 });
  const own = (x: Value) => apply1(g, "mean_rows", [x]);
  const losses = [
    apply1(g, "mi_loss", [s]),
    apply1(g, "mi_loss_global", [s, own(s)]),
    apply1(g, "switch_loss", [s, mask], { k: 2 }),
    apply1(g, "switch_loss_global", [s, own(mask)], { k: 2 }),
  ];
  const grads = losses.map((l) => gradients(g, l, [z])[0]!);
  const feeds = randomFeeds(g, 5, new Map());
  const [mi, miGlobal, sw, swGlobal, dMi, dMiGlobal, dSw, dSwGlobal] = evaluateGraph(
    schedule(g, [...losses, ...grads]).nodes,
    feeds,
    [...losses, ...grads],
    CPU_OPS,
  );
  const close = (a: HostValue, b: HostValue, what: string) =>
    a.forEach((v, i) => assert(Math.abs(v - b[i]!) < 1e-14, `${what}[${i}]: ${v} vs ${b[i]}`));
  close(mi!, miGlobal!, "MI loss");
  close(sw!, swGlobal!, "Switch loss");
  close(dMi!, dMiGlobal!, "MI gradient");
  close(dSw!, dSwGlobal!, "Switch gradient");
});

const MODELS: Record<string, unknown> = {
  "dense": {
    model: {
      kind: "dense",
      attention: { kind: "mha", heads: 4, kv_heads: 2, head_dim: 3 },
      mlp: { experts: 1, hidden: 8 },
    },
  },
  "SMoE (top-2, Switch loss)": {
    model: {
      kind: "smoe",
      attention: { kind: "mha", heads: 2, head_dim: 4 },
      mlp: { experts: 4, hidden: 4 },
    },
    router: { train: "topk", k: 2 },
    loss: { load_balance: 0.01 },
  },
  "SMoE with top-k token choice (capacity 1.0, jitter, renormalised gates, Switch loss)": {
    model: {
      kind: "smoe",
      attention: { kind: "mha", heads: 2, head_dim: 4 },
      mlp: { experts: 4, hidden: 4 },
    },
    router: { train: "topk", k: 2, capacity_factor: 1.0, jitter: 0.1, renormalize: true },
    loss: { load_balance: 0.01 },
  },
  "SMoE with aux-free balancing (a random bias in the selection)": {
    model: {
      kind: "smoe",
      attention: { kind: "mha", heads: 2, head_dim: 4 },
      mlp: { experts: 4, hidden: 4 },
    },
    router: { train: "topk", k: 2, balance: "aux_free" },
  },
  "SMoE with 2 null experts (top-3 of 4 + 2, capacity 1.25, renormalised)": {
    model: {
      kind: "smoe",
      attention: { kind: "mha", heads: 2, head_dim: 4 },
      mlp: { experts: 4, hidden: 4 },
    },
    router: { train: "topk", k: 3, null_experts: 2, capacity_factor: 1.25, renormalize: true },
    loss: { load_balance: 0.01 },
  },
  "SMoE with softmax after top-k (capacity 1.5)": {
    model: {
      kind: "smoe",
      attention: { kind: "mha", heads: 2, head_dim: 4 },
      mlp: { experts: 4, hidden: 4 },
    },
    router: { train: "topk", k: 2, capacity_factor: 1.5, softmax_order: "after" },
  },
  "DS-MoE (MoA, MI and z losses)": {
    model: {
      attention: { kind: "moa", experts: 3, heads_per_expert: 2, head_dim: 3 },
      mlp: { experts: 4, hidden: 4 },
    },
    loss: { mi: { attention: 0.1, mlp: 0.2 }, z: 0.01 },
  },
  "DS-MoE with MLP routers and RMSNorm, untied head": {
    model: {
      norm: "rmsnorm",
      tie_embeddings: false,
      attention: { kind: "moa", experts: 2, heads_per_expert: 1, head_dim: 4 },
      mlp: { experts: 3, hidden: 4, activation: "silu" },
    },
    router: { hidden: 5 },
    loss: { mi: { attention: 0.1, mlp: 0.1 } },
  },
};

/** The whole-model gradient check of MODELS[name] (random leaves: biases, jitter), with `table`'s rules. */
function modelCheck(name: string, table?: OpTable) {
  const o = MODELS[name] as Record<string, Record<string, unknown>>;
  const c = ExperimentSchema.parse({
    ...o,
    data: { seq_len: 5 },
    model: { d_model: 8, layers: 2, ...o.model },
  });
  const m = buildModel(c, 2);
  const rng = new Rng(3);
  const fixed = new Map<number, HostValue>([
    [m.ids.id, Uint32Array.from({ length: m.tokens }, () => rng.int(256))],
    [m.targets.id, Uint32Array.from({ length: m.tokens }, () => rng.int(256))],
  ]);
  const feeds = randomFeeds(m.graph, 11, fixed, 0.5);
  const r = checkGradients(m.graph, m.loss, m.params.map((p) => p.value), feeds as Map<number, HostValue>, {
    samples: 3,
    floor: 1e-4, // a loss near 5 leaves ~1e-10 absolute noise in differences; ignore it for tiny gradients
    ...(table ? { table } : {}),
  });
  return { r, params: m.params.length };
}

for (const name of Object.keys(MODELS)) {
  Deno.test(`whole-model gradients of ${name} match float64 central differences`, () => {
    const { r, params } = modelCheck(name);
    assert(r.worst < 1e-5, `worst relative error ${r.worst} at ${r.where}`);
    assert(r.checked >= 3 * params - 10);
  });
}

Deno.test("the whole-model check catches a selection given a gradient: aux-free top-k with a straight-through mask fails", () => {
  // The biased scores select (topk_mask, discrete): a rule passing the mask's gradient on to the scores
  // (and so to the router) is wrong, and the check must say so.
  const broken: OpTable = { ...OPS, topk_mask: { ...OPS.topk_mask, grad: (_g, _n, [dy]) => [dy] } };
  const { r } = modelCheck("SMoE with aux-free balancing (a random bias in the selection)", broken);
  assert(r.worst > 1e-2, `broken rule not caught: worst ${r.worst}`);
});

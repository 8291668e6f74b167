/**
 * Gradient checks of the routers of the literature (docs/design.md §16) against float64 central
 * differences: each new op or gate on its own, each router in a whole small model, and for each a
 * deliberately broken rule that the check must catch.
 */
import { ok as assert } from "node:assert/strict";
import { buildModel } from "../plan/model.ts";
import { Rng } from "../util/rng.ts";
import type { HostValue } from "./cpu_executor.ts";
import { checkGradients, type GradCheckResult, randomFeeds } from "./grad_check.ts";
import { Graph, type Value } from "./ir.ts";
import { apply1, OPS, type OpTable } from "./ops.ts";
import { idAndStateFeeds, tinyMoa } from "../../tests/helpers/router_configs.ts";

const TOL = 1e-6;

/** The check of `build`'s output reduced by a random weight, on random parameters (with `table`). */
function checkOp(build: CaseBuild, table?: OpTable): GradCheckResult {
  const g = new Graph(), params: Value[] = [];
  const p = (shape: number[]) => {
    const v = g.leaf("param", `p${params.length}`, shape);
    params.push(v);
    return v;
  };
  const fixed = new Map<number, HostValue>();
  const out = build(g, p, (name, values) => {
    const v = g.leaf("const", name, [values.length]);
    fixed.set(v.id, Float64Array.from(values));
    return v;
  });
  const loss = out.shape.length === 1 && out.shape[0] === 1
    ? out
    : apply1(g, "dot", [out, g.leaf("const", "w", out.shape)]);
  const feeds = randomFeeds(g, 7, fixed);
  return checkGradients(g, loss, params, feeds as Map<number, HostValue>, { table, samples: 8 });
}

/** A table whose `mul` passes dy to its first input ungated: the gradient of S where the gate is S ⊙ mask. */
const UNGATED: OpTable = {
  ...OPS,
  mul: { ...OPS.mul, grad: (g, n, [dy]) => [dy, apply1(g, "mul", [dy!, n.inputs[0]!])] },
};

/** A table whose entropy loss has the gradient's sign flipped (the loss pushed the wrong way). */
const ENTROPY_FLIPPED: OpTable = {
  ...OPS,
  entropy_loss: {
    ...OPS.entropy_loss,
    grad: (g, n, [dl]) => [
      apply1(g, "scale", [apply1(g, "entropy_loss_backward", [n.inputs[0]!, dl!])], { alpha: -1 }),
    ],
  },
};

/** A table whose Switch losses divide by k = 1 where the mask routes a varying count (k = 0). */
const SWITCH_K1: OpTable = {
  ...OPS,
  switch_loss: {
    ...OPS.switch_loss,
    grad: (g, n, [dl]) => [apply1(g, "switch_loss_backward", [...n.inputs, dl!], { k: 1 }), null],
  },
  switch_loss_global: {
    ...OPS.switch_loss_global,
    grad: (g, n, [dl]) => [apply1(g, "switch_loss_global_backward", [...n.inputs, dl!], { k: 1 }), null],
  },
};

/** A table whose L1 term's gradient leaves λ out (as if λ were 1). */
const L1_NO_LAMBDA: OpTable = {
  ...OPS,
  l1_loss: {
    ...OPS.l1_loss,
    grad: (g, n, [dl]) => [apply1(g, "l1_loss_backward", [n.inputs[0]!, dl!, dl!]), null],
  },
};

/** A table whose ReLU passes the gradient through where its input is negative (a straight-through gate). */
const RELU_STRAIGHT: OpTable = {
  ...OPS,
  activation: {
    ...OPS.activation,
    grad: (g, n, dOut) => {
      const rule = OPS.activation.grad;
      if (typeof rule !== "function") throw new TypeError("activation has a gradient rule");
      return n.attrs.kind === "relu" ? [dOut[0]] : rule(g, n, dOut);
    },
  },
};

/**
 * A table whose `add` gives its second input no gradient: the shared experts' branch (and each residual
 * branch) would not learn.
 */
const ADD_FIRST_ONLY: OpTable = { ...OPS, add: { ...OPS.add, grad: (_g, _n, [dy]) => [dy, null] } };

/** Router probabilities of 6 tokens over 4 experts, sharp enough for top-p to keep 1 to 4 experts. */
const probs = (g: Graph, p: Param) => apply1(g, "softmax", [apply1(g, "scale", [p([6, 4])], { alpha: 3 })]);

type Param = (shape: number[]) => Value;
/** A constant leaf of the given values (not perturbed). */
type Fixed = (name: string, values: number[]) => Value;
/** A case's graph: its output from parameters `p` and constants `fix`. */
type CaseBuild = (g: Graph, p: Param, fix: Fixed) => Value;

const OP_CASES: Record<string, { build: CaseBuild; broken: OpTable }> = {
  "expert-choice gate S ⊙ mask (3 of 6 tokens per expert)": {
    build: (g, p) => {
      const s = apply1(g, "softmax", [p([6, 4])]);
      return apply1(g, "mul", [s, apply1(g, "expert_choice_mask", [s], { tokens: 3 })]);
    },
    broken: UNGATED,
  },
  "top-p gate S ⊙ mask (p 0.6)": {
    build: (g, p) => {
      const s = probs(g, p);
      return apply1(g, "mul", [s, apply1(g, "topp_mask", [s], { p: 0.6 })]);
    },
    broken: UNGATED,
  },
  "ReLU gates and their L1 term (λ 0.7)": {
    build: (g, p, fix) => {
      const gates = apply1(g, "activation", [p([6, 4])], { kind: "relu" });
      return apply1(g, "add", [
        apply1(g, "l1_loss", [gates, fix("lambda", [0.7])]),
        apply1(g, "dot", [gates, gates]),
      ]);
    },
    broken: L1_NO_LAMBDA,
  },
  "dynamic (entropy) loss": {
    build: (g, p) => apply1(g, "entropy_loss", [probs(g, p)]),
    broken: ENTROPY_FLIPPED,
  },
  "Switch loss over shares of a top-p mask (k 0)": {
    build: (g, p) => {
      const s = probs(g, p);
      return apply1(g, "switch_loss", [s, apply1(g, "topp_mask", [s], { p: 0.6 })], { k: 0 });
    },
    broken: SWITCH_K1,
  },
  "Switch loss of a micro-batch against the batch's top-p shares (k 0)": {
    build: (g, p) => {
      const f = apply1(g, "mean_rows", [apply1(g, "topp_mask", [probs(g, p)], { p: 0.6 })]);
      return apply1(g, "switch_loss_global", [probs(g, p), f], { k: 0 });
    },
    broken: SWITCH_K1,
  },
};

for (const [name, c] of Object.entries(OP_CASES)) {
  Deno.test(`the ${name} gradient matches float64 central differences`, () => {
    const r = checkOp(c.build);
    assert(r.worst < TOL, `worst relative error ${r.worst} at ${r.where}`);
    assert(r.checked >= 8);
  });
  Deno.test(`the gradient check catches a broken rule of the ${name}`, () => {
    const r = checkOp(c.build, c.broken);
    assert(r.worst > 1e-2, `broken rule not caught: worst ${r.worst}`);
  });
}

/** Small models of each router, MoA and MLP routers both. */
const MODELS: Record<string, { over: Record<string, Record<string, unknown>>; broken: OpTable }> = {
  "expert choice (capacity 1.5)": {
    over: { model: { kind: "smoe" }, router: { train: "expert_choice", capacity: 1.5 } },
    broken: UNGATED,
  },
  "dynamic top-p (p 0.5, dynamic and Switch losses)": {
    over: {
      model: { kind: "smoe", init_std: 0.3 },
      router: { train: "top_p", p: 0.5 },
      loss: { dynamic: 0.1, load_balance: 0.1 },
    },
    broken: UNGATED,
  },
  "ReLU routing (λ 0.3, L1 and z losses)": {
    over: { model: { kind: "smoe" }, router: { train: "relu" }, loss: { l1: 0.3, z: 0.01 } },
    broken: RELU_STRAIGHT,
  },
  "shared and fine-grained experts (DS-MoE, 2 segments, 1 shared; MI loss)": {
    over: { model: { mlp: { experts: 2, hidden: 4, segments: 2, shared: 1 } }, loss: { mi: { mlp: 0.1 } } },
    broken: ADD_FIRST_ONLY,
  },
  "shared and fine-grained experts (top-1 of 3 × 2 segments, 2 shared; Switch loss)": {
    over: {
      model: { kind: "smoe", mlp: { experts: 3, hidden: 4, segments: 2, shared: 2 } },
      router: { train: "topk", k: 1 },
      loss: { load_balance: 0.1 },
    },
    broken: ADD_FIRST_ONLY,
  },
};

function checkModel(over: Record<string, Record<string, unknown>>, table?: OpTable): GradCheckResult {
  const c = tinyMoa(over, { seqLen: 5, dModel: 8, headsPerExpert: 1, headDim: 4, hidden: 4 });
  const m = buildModel(c, 2), fixed = idAndStateFeeds(m, new Rng(3));
  const feeds = randomFeeds(m.graph, 11, fixed, 0.5);
  return checkGradients(m.graph, m.loss, m.params.map((p) => p.value), feeds as Map<number, HostValue>, {
    samples: 3,
    floor: 1e-4,
    table,
  });
}

for (const [name, { over, broken }] of Object.entries(MODELS)) {
  Deno.test(`whole-model gradients of ${name} match float64 central differences`, () => {
    const r = checkModel(over);
    assert(r.worst < 1e-5, `worst relative error ${r.worst} at ${r.where}`);
    assert(r.checked >= 40, `${r.checked} entries checked`);
  });
  Deno.test(`whole-model gradients of ${name} under a broken rule fail the check`, () => {
    const r = checkModel(over, broken);
    assert(r.worst > 1e-2, `broken rule not caught: worst ${r.worst}`);
  });
}

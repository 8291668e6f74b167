import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import { ExperimentSchema } from "../config/schema.ts";
import { buildModel } from "../plan/model.ts";
import { gradients } from "./autodiff.ts";
import { GPU_IMPLS } from "../../gpu/graph_ops.ts";
import { CPU_OPS } from "./cpu_ops.ts";
import { attrsOf, Graph, isOp } from "./ir.ts";
import { apply1, OPS } from "./ops.ts";
import { schedule, shareBuffers } from "./schedule.ts";

Deno.test("ops refuse mismatched shapes with a message naming the values", () => {
  const g = new Graph();
  const a = g.leaf("param", "a", [3, 4]), b = g.leaf("param", "b", [5, 4]);
  throws(() => apply1(g, "matmul", [a, b]), /inner dims 4 vs 5 \(a · b\)/);
  assertEquals(apply1(g, "matmul", [a, b], { transB: true }).shape, [3, 5]);
  assertEquals(apply1(g, "matmul", [a, a], { transA: true }).shape, [4, 4]);
});

Deno.test("a node's attributes are read as its op's: attrsOf refuses a node of another op", () => {
  const g = new Graph();
  const a = g.leaf("param", "a", [3, 4]);
  const y = apply1(g, "matmul", [a, a], { transA: true });
  assertEquals(attrsOf(y.node, "matmul"), { transA: true });
  assert(isOp(y.node, "matmul") && !isOp(y.node, "add"));
  throws(() => attrsOf(y.node, "norm"), /Node 1 is a matmul node, not norm/);
});

Deno.test("the op tables name the same ops: shapes and gradients, the float64 twin, WebGPU", () => {
  const ops = Object.keys(OPS).sort();
  assertEquals(Object.keys(CPU_OPS).sort(), ops);
  assertEquals(Object.keys(GPU_IMPLS).sort(), ops);
});

Deno.test("gradients() sums contributions where a value fans out", () => {
  const g = new Graph();
  const x = g.leaf("param", "x", [2, 2]);
  const y = apply1(g, "add", [apply1(g, "mul", [x, x]), x]);
  const loss = apply1(g, "cross_entropy", [y, g.leaf("input", "t", [2], "u32")]);
  const [dx] = gradients(g, loss, [x]);
  // x is read three times (twice by mul, once by add): one add_n joins the three contributions.
  assertEquals(dx!.node.op, "add_n");
  assertEquals(dx!.node.inputs.length, 3);
});

Deno.test("gradients() stops at ops without a rule and refuses a loss that does not depend on wrt", () => {
  const g = new Graph();
  const s = g.leaf("param", "s", [4, 3]);
  const mask = apply1(g, "topk_mask", [s], { k: 1 });
  const loss = apply1(g, "mi_loss", [apply1(g, "mul", [s, mask])]);
  const [ds] = gradients(g, loss, [s]);
  assert(ds, "gradient flows through mul's probability input");
  const other = g.leaf("param", "o", [4, 3]);
  throws(() => gradients(g, apply1(g, "mi_loss", [other]), [s]), /does not depend/);
});

Deno.test("schedule() drops unneeded nodes and reuses buffers of dead values", () => {
  const g = new Graph();
  const x = g.leaf("input", "x", [8, 8]);
  let h = x;
  for (let i = 0; i < 6; i++) h = apply1(g, "activation", [h], { kind: "gelu" });
  apply1(g, "softmax", [x]); // not needed for h
  const s = schedule(g, [h]);
  assertEquals(s.nodes.length, 6);
  assertEquals(s.memory.withoutReuse, 6 * 64);
  // A chain needs only two ping-pong buffers besides the pinned output.
  assert(s.memory.totalElements <= 3 * 64, `total ${s.memory.totalElements}`);
});

Deno.test("graphs that never run at once share their unpinned buffers by size; pinned ones stay their own", () => {
  const g = new Graph();
  const x = g.leaf("input", "x", [8, 8]);
  let h = x;
  for (let i = 0; i < 4; i++) h = apply1(g, "activation", [h], { kind: "gelu" });
  const small = apply1(g, "softmax", [apply1(g, "activation", [x], { kind: "gelu" })]);
  const a = schedule(g, [h]), b = schedule(g, [small]);
  // Exactly the buffers of the requested outputs are pinned.
  for (const [s, out] of [[a, h], [b, small]] as const) {
    const pinned = s.memory.pinned.flatMap((p, i) => (p ? [i] : []));
    assertEquals(pinned, [s.memory.bufferOf.get(out.id)]);
  }
  const shared = shareBuffers([a.memory, b.memory]);
  // Each plan's unpinned buffers, largest first, take the shared buffers in turn; pinned ones get none.
  for (const [j, s] of [a, b].entries()) {
    const m = s.memory, slots = shared.slots[j]!;
    m.bufferSizes.forEach((n, i) => {
      if (m.pinned[i]) assertEquals(slots[i], null);
      else assert(shared.sizes[slots[i]!]! >= n);
    });
    const ranks = slots.filter((r) => r !== null);
    assertEquals(new Set(ranks).size, ranks.length, "one plan's buffers never share with each other");
  }
  const own = (s: typeof a) => s.memory.bufferSizes.reduce((n, x, i) => n + (s.memory.pinned[i] ? x : 0), 0);
  assertEquals(shared.totalElements, own(a) + own(b) + shared.sizes.reduce((n, x) => n + x, 0));
  assert(shared.totalElements < a.memory.totalElements + b.memory.totalElements);
  assertEquals(shared.totalElements, a.memory.totalElements + own(b), "b's unpinned buffers fit in a's");
});

Deno.test("buildModel() makes one router per routed layer and kind, and the losses the config asks for", () => {
  const c = ExperimentSchema.parse({
    data: { seq_len: 8 },
    model: {
      d_model: 16,
      layers: 2,
      attention: { kind: "moa", experts: 2, heads_per_expert: 2, head_dim: 4 },
    },
    loss: { mi: { attention: 1e-3, mlp: 1e-3 }, z: 1e-3, load_balance: 0.01 },
  });
  const m = buildModel(c, 2);
  assertEquals(m.routers.map((r) => `${r.layer}${r.kind}`), ["0attention", "0mlp", "1attention", "1mlp"]);
  assertEquals(m.miLoss.mlp.length, 2);
  assertEquals(m.auxLoss.z.length, 4);
  assertEquals(m.auxLoss.switch.length, 4);
  assertEquals(m.logits.shape, [16, 256]);
  // Every parameter gets a gradient of its own shape.
  const grads = gradients(m.graph, m.loss, m.params.map((p) => p.value));
  grads.forEach((d, i) => assertEquals(d.shape, m.params[i]!.value.shape));
  assert(grads.every((d) => d.node.op !== "fill"), "no parameter is cut off from the loss");
});

Deno.test("buildModel() for SMoE gates with the top-k mask, and refuses rope for now", () => {
  const c = ExperimentSchema.parse({
    model: { kind: "smoe", d_model: 16, layers: 1, attention: { kind: "mha", heads: 2, head_dim: 8 } },
    router: { train: "topk", k: 2 },
  });
  const m = buildModel(c, 1);
  assert(m.graph.nodes.some((n) => n.op === "topk_mask"));
  const rope = ExperimentSchema.parse({ model: { position: "rope" } });
  throws(() => buildModel(rope, 1), /rope: not supported yet/);
});

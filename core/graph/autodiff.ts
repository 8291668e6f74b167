/**
 * Reverse-mode differentiation of a graph: walks nodes in reverse creation order (a topological order),
 * asks the op table for each node's input gradients, and sums gradients where a value is used more than
 * once (an `add_n` node at each fan-out). Ops without a rule (a `NoGrad` reason in the table) stop gradients
 * (e.g. top-k selection).
 *
 * @module
 */
import type { Graph, Value } from "./ir.ts";
import { applyIn, gradRuleOf, OPS, type OpTable } from "./ops.ts";

/**
 * Gradient of `loss` for each value in `wrt` (same order; a zero-filled value when unreachable). The
 * backward pass starts from `seed` (a value of the loss's shape, e.g. the loss scale of mixed precision,
 * core/train/loss_scale.ts), by default a fill of 1: the gradients are then seed times the loss's.
 */
export function gradients(
  g: Graph,
  loss: Value,
  wrt: readonly Value[],
  table: OpTable = OPS,
  seed?: Value,
): Value[] {
  const needs = _requiresGrad(g, wrt, table);
  if (!needs.has(loss.id)) {
    throw new RangeError(`Cannot differentiate ${loss.name}: it does not depend on any of wrt`);
  }
  const contrib = new Map<number, Value[]>();
  const add = (v: Value, d: Value) => {
    const list = contrib.get(v.id);
    if (list) list.push(d);
    else contrib.set(v.id, [d]);
  };
  if (seed && (seed.shape.length !== loss.shape.length || seed.shape.some((d, i) => d !== loss.shape[i]))) {
    throw new RangeError(
      `Cannot seed the gradient of ${loss.name} [${loss.shape}] with ${seed.name} [${seed.shape}]`,
    );
  }
  add(loss, seed ?? applyIn(table, g, "fill", [], { shape: loss.shape, value: 1 })[0]!);
  const total = (v: Value): Value | null => {
    const list = contrib.get(v.id);
    if (!list || list.length === 0) return null;
    if (list.length === 1) return list[0]!;
    const sum = applyIn(table, g, "add_n", list, {})[0]!;
    contrib.set(v.id, [sum]);
    return sum;
  };
  for (let i = loss.node.id; i >= 0; i--) {
    const node = g.nodes[i]!;
    if (node.op === "leaf" || !node.outputs.some((o) => needs.has(o.id))) continue;
    const dOut = node.outputs.map(total);
    if (dOut.every((d) => d === null)) continue;
    const rule = gradRuleOf(table, node);
    if (typeof rule !== "function") {
      throw new TypeError(`No gradient rule for op "${node.op}" (node ${node.id})`);
    }
    const dIn = rule(g, node, dOut);
    node.inputs.forEach((inp, k) => {
      const d = dIn[k];
      if (d && needs.has(inp.id)) add(inp, d);
    });
  }
  return wrt.map((w) => total(w) ?? applyIn(table, g, "fill", [], { shape: w.shape, value: 0 })[0]!);
}

/** Values that depend on any of `wrt` through differentiable ops. */
function _requiresGrad(g: Graph, wrt: readonly Value[], table: OpTable): Set<number> {
  const needs = new Set(wrt.map((w) => w.id));
  for (const node of g.nodes) {
    if (node.op === "leaf" || typeof gradRuleOf(table, node) !== "function") continue;
    if (node.inputs.some((i) => needs.has(i.id))) { for (const o of node.outputs) needs.add(o.id); }
  }
  return needs;
}

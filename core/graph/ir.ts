/**
 * The graph IR: nodes at layer granularity (matmul, attention, norm, softmax, cross-entropy, router
 * scaling, MI loss …), not per scalar. A node has inputs (values), attributes and one or more outputs.
 * Graphs are built by {@linkcode GraphBuilder}, differentiated by core/graph/autodiff.ts, and executed by a
 * backend (the float64 CPU reference or WebGPU) in the order core/graph/schedule.ts gives.
 *
 * @module
 */
import type { LeafKind, OpAttrs, OpName } from "./op_types.ts";

/** Element type of a value. */
export type DType = "f32" | "u32";

/** One tensor-valued output of a node. */
export interface Value {
  readonly id: number;
  readonly node: Node;
  readonly index: number; // which output of `node`
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly name: string;
}

/** One operation of kind `K`: its attributes are those {@linkcode OpAttrs} lists for `K`. */
export interface OpNode<K extends OpName> {
  readonly id: number;
  readonly op: K;
  readonly inputs: readonly Value[];
  readonly attrs: OpAttrs[K];
  readonly outputs: Value[];
}

/**
 * One operation. `op` keys the op tables (core/graph/ops.ts, cpu_ops.ts, gpu/graph_ops.ts); its attributes
 * are read through {@linkcode isOp} or {@linkcode attrsOf}, which give them their op's type.
 */
export type Node = OpNode<OpName>;

/** True when `node` is an `op` node (and its attributes are then `op`'s). */
export function isOp<K extends OpName>(node: Node, op: K): node is OpNode<K> {
  return node.op === op;
}

/** The attributes of `node`, which must be an `op` node (a TypeError otherwise). */
export function attrsOf<K extends OpName>(node: Node, op: K): OpAttrs[K] {
  if (!isOp(node, op)) throw new TypeError(`Node ${node.id} is a ${node.op} node, not ${op}`);
  return node.attrs;
}

/** Kinds of leaf (defined with the op list, core/graph/op_types.ts). */
export type { LeafKind };

/** A graph under construction or finished. */
export class Graph {
  readonly nodes: Node[] = [];
  readonly leaves = new Map<number, { kind: LeafKind; value: Value }>(); // by value id
  readonly outputs = new Map<string, Value>(); // named results (loss, logits, grads …)
  #nextValue = 0;

  /** Adds a node and returns it (outputs created from `outShapes`). */
  addNode<K extends OpName>(
    op: K,
    inputs: readonly Value[],
    attrs: OpAttrs[K],
    outShapes: readonly { shape: readonly number[]; dtype?: DType; name?: string }[],
  ): OpNode<K> {
    const node: OpNode<K> = { id: this.nodes.length, op, inputs: [...inputs], attrs, outputs: [] };
    outShapes.forEach((o, index) => {
      node.outputs.push({
        id: this.#nextValue++,
        node,
        index,
        shape: Object.freeze([...o.shape]),
        dtype: o.dtype ?? "f32",
        name: o.name ?? `${op}${node.id}${outShapes.length > 1 ? `.${index}` : ""}`,
      });
    });
    this.nodes.push(node);
    return node;
  }

  /** Adds a leaf value (parameter, per-step input, or constant). */
  leaf(kind: LeafKind, name: string, shape: readonly number[], dtype: DType = "f32"): Value {
    const v = this.addNode("leaf", [], { kind }, [{ shape, dtype, name }]).outputs[0]!;
    this.leaves.set(v.id, { kind, value: v });
    return v;
  }

  /** Parameters in creation order. */
  params(): Value[] {
    return [...this.leaves.values()].filter((l) => l.kind === "param").map((l) => l.value);
  }

  /** Per-step inputs in creation order. */
  inputs(): Value[] {
    return [...this.leaves.values()].filter((l) => l.kind === "input").map((l) => l.value);
  }
}

/** Number of elements of a shape. */
export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Throws a RangeError naming the node if two shapes differ. */
export function assertSameShape(what: string, a: readonly number[], b: readonly number[]): void {
  if (a.length !== b.length || a.some((d, i) => d !== b[i])) {
    throw new RangeError(`Shape mismatch in ${what}: [${a}] vs [${b}]`);
  }
}

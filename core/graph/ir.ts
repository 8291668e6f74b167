/**
 * The graph IR: nodes at layer granularity (matmul, attention, norm, softmax, cross-entropy, router
 * scaling, MI loss …), not per scalar. A node has inputs (values), attributes and one or more outputs.
 * Graphs are built by {@linkcode GraphBuilder}, differentiated by core/graph/autodiff.ts, and executed by a
 * backend (the float64 CPU reference or WebGPU) in the order core/graph/schedule.ts gives.
 *
 * @module
 */

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

/** Attributes are plain data (numbers, strings, booleans, arrays of them). */
export type Attrs = Readonly<Record<string, number | string | boolean | readonly number[]>>;

/** One operation. `op` keys the op table (core/graph/ops.ts). */
export interface Node {
  readonly id: number;
  readonly op: string;
  readonly inputs: readonly Value[];
  readonly attrs: Attrs;
  readonly outputs: Value[];
}

/**
 * Kinds of leaf: parameters are trained, inputs are fed each step, constants never change, and state
 * (a decoder's KV cache) persists between executions and is changed in place by the ops that own it.
 */
export type LeafKind = "param" | "input" | "const" | "state";

/** A graph under construction or finished. */
export class Graph {
  readonly nodes: Node[] = [];
  readonly leaves = new Map<number, { kind: LeafKind; value: Value }>(); // by value id
  readonly outputs = new Map<string, Value>(); // named results (loss, logits, grads …)
  #nextValue = 0;

  /** Adds a node and returns it (outputs created from `outShapes`). */
  addNode(
    op: string,
    inputs: readonly Value[],
    attrs: Attrs,
    outShapes: readonly { shape: readonly number[]; dtype?: DType; name?: string }[],
  ): Node {
    const node: Node = { id: this.nodes.length, op, inputs: [...inputs], attrs, outputs: [] };
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

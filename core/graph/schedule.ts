/**
 * Schedule and memory plan: the nodes needed for the requested outputs, in creation order (topological),
 * and a buffer assignment that reuses a freed buffer for a later value once its last reader has run.
 * Pinned values (parameters, inputs, requested outputs) never share.
 *
 * @module
 */
import { type Graph, type Node, numel, type Value } from "./ir.ts";

/** Where each value lives: a buffer index, and the buffers' sizes in elements. */
export interface MemoryPlan {
  bufferOf: Map<number, number>; // value id → buffer index
  bufferSizes: number[]; // elements per buffer
  totalElements: number;
  withoutReuse: number; // elements if every value had its own buffer
}

/** The schedule of a graph for some outputs. */
export interface Schedule {
  nodes: Node[]; // to execute, in order (leaves excluded)
  memory: MemoryPlan;
}

/** Nodes needed to compute `outputs`, in order, plus the memory plan. */
export function schedule(g: Graph, outputs: readonly Value[]): Schedule {
  const needed = new Set<number>();
  const stack = outputs.map((o) => o.node);
  while (stack.length > 0) {
    const n = stack.pop()!;
    if (needed.has(n.id)) continue;
    needed.add(n.id);
    for (const i of n.inputs) stack.push(i.node);
  }
  const nodes = g.nodes.filter((n) => needed.has(n.id) && n.op !== "leaf");
  const pinned = new Set<number>([...g.leaves.keys(), ...outputs.map((o) => o.id)]);
  return { nodes, memory: planMemory(nodes, pinned) };
}

/** Greedy liveness-based buffer reuse: a value takes the smallest free buffer that fits, or a new one. */
export function planMemory(nodes: readonly Node[], pinned: ReadonlySet<number>): MemoryPlan {
  const lastUse = new Map<number, number>();
  nodes.forEach((n, step) => n.inputs.forEach((i) => lastUse.set(i.id, step)));
  const bufferOf = new Map<number, number>(), bufferSizes: number[] = [];
  const free: number[] = [];
  let withoutReuse = 0;
  nodes.forEach((n, step) => {
    for (const out of n.outputs) {
      const size = numel(out.shape);
      withoutReuse += size;
      let pick = -1;
      if (!pinned.has(out.id)) {
        for (const b of free) {
          if (bufferSizes[b]! >= size && (pick < 0 || bufferSizes[b]! < bufferSizes[pick]!)) pick = b;
        }
      }
      if (pick >= 0) free.splice(free.indexOf(pick), 1);
      else pick = bufferSizes.push(size) - 1;
      bufferOf.set(out.id, pick);
    }
    // Release values whose last reader is this node (and outputs nobody reads), after outputs are placed.
    for (const v of [...n.inputs, ...n.outputs]) {
      const b = bufferOf.get(v.id);
      const dead = (lastUse.get(v.id) ?? -1) <= step;
      if (b !== undefined && dead && !pinned.has(v.id) && !free.includes(b) && _ownedBy(bufferOf, b, v.id)) {
        free.push(b);
      }
    }
  });
  return { bufferOf, bufferSizes, totalElements: bufferSizes.reduce((a, b) => a + b, 0), withoutReuse };
}

function _ownedBy(bufferOf: Map<number, number>, buffer: number, valueId: number): boolean {
  let owner = -1;
  for (const [v, b] of bufferOf) if (b === buffer) owner = v; // latest value placed in the buffer
  return owner === valueId;
}

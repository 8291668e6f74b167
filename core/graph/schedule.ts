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
  pinned: boolean[]; // per buffer: it holds a pinned value (read after the run), so it is never shared
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
  const bufferOf = new Map<number, number>(), bufferSizes: number[] = [], pinnedBuffers: boolean[] = [];
  const free: number[] = [];
  let withoutReuse = 0;
  nodes.forEach((n, step) => {
    for (const out of n.outputs) {
      const size = numel(out.shape);
      withoutReuse += size;
      const pick = _take(bufferSizes, pinned.has(out.id) ? [] : free, size);
      bufferOf.set(out.id, pick);
      pinnedBuffers[pick] = pinned.has(out.id);
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
  return {
    bufferOf,
    bufferSizes,
    pinned: pinnedBuffers,
    totalElements: bufferSizes.reduce((a, b) => a + b, 0),
    withoutReuse,
  };
}

/** Buffers of several memory plans whose graphs never run at once: {@linkcode shareBuffers}. */
export interface SharedBuffers {
  sizes: number[]; // elements of each shared buffer
  slots: (number | null)[][]; // per plan, per buffer: its shared buffer, or null (pinned: its own)
  totalElements: number; // the shared buffers and every plan's own, together
}

/**
 * Lets the memory plans of graphs that never run at once (a training step, its evaluation, its router
 * statistics pass) share their buffers: only values read within a run live in an unpinned buffer, so the
 * i-th largest unpinned buffer of every plan can be one buffer of the largest of their sizes. Pinned
 * buffers (outputs read after the run) stay each plan's own.
 *
 * @example
 * ```ts
 * import { shareBuffers } from "./schedule.ts";
 * const plan = (sizes: number[], pinned: boolean[]) =>
 *   ({ bufferOf: new Map(), bufferSizes: sizes, pinned, totalElements: 0, withoutReuse: 0 });
 * const s = shareBuffers([plan([10, 4, 6], [false, true, false]), plan([8, 9], [false, false])]);
 * console.log(s.sizes, s.slots, s.totalElements); // [10, 8] [[0, null, 1], [1, 0]] 22
 * ```
 */
export function shareBuffers(plans: readonly MemoryPlan[]): SharedBuffers {
  let own = 0;
  const { sizes, slots } = _shareByRank(plans.map((p) =>
    p.bufferSizes.map((n, i) => {
      if (p.pinned[i]) own += n;
      return p.pinned[i] ? null : n;
    })
  ));
  return { sizes, slots, totalElements: own + sizes.reduce((a, b) => a + b, 0) };
}

/**
 * Buffers of several lists (each list's buffers in use together, the lists never at once) matched by size
 * rank: the i-th largest of every list shares shared buffer i, of the largest of their sizes. A null size is a
 * buffer that shares nothing (slot null).
 */
function _shareByRank(lists: readonly (number | null)[][]): { sizes: number[]; slots: (number | null)[][] } {
  const sizes: number[] = [];
  const slots = lists.map((list) => {
    const slot: (number | null)[] = list.map(() => null);
    const ranked = list.flatMap((n, i) => (n === null ? [] : [[n, i] as const]));
    ranked.sort((a, b) => b[0] - a[0] || a[1] - b[1]).forEach(([n, i], rank) => {
      slot[i] = rank;
      sizes[rank] = Math.max(sizes[rank] ?? 0, n);
    });
    return slot;
  });
  return { sizes, slots };
}

/**
 * The smallest buffer of `free` that holds `size` (taken out of `free`), else a new buffer of `size` appended
 * to `sizes`: its index.
 */
function _take(sizes: number[], free: number[], size: number): number {
  let pick = -1;
  for (const b of free) if (sizes[b]! >= size && (pick < 0 || sizes[b]! < sizes[pick]!)) pick = b;
  if (pick < 0) return sizes.push(size) - 1;
  free.splice(free.indexOf(pick), 1);
  return pick;
}

function _ownedBy(bufferOf: Map<number, number>, buffer: number, valueId: number): boolean {
  let owner = -1;
  for (const [v, b] of bufferOf) if (b === buffer) owner = v; // latest value placed in the buffer
  return owner === valueId;
}

/** Where the half precision copies of matmul operands live: {@linkcode planMatmulCopies}. */
export interface CopyPlan {
  words: number[]; // 32-bit words of each copy buffer
  slots: Map<number, number>[]; // per schedule: value id → the buffer of its copy
  totalWords: number;
}

/**
 * Buffers for the f16 copies of every value a matmul reads (two halves to a 32-bit word), in schedules that
 * never run at once. Within a schedule a copy lives from the first matmul that reads its value to the last,
 * and a copy takes the smallest freed buffer that holds it, else a new one (as {@linkcode planMemory} does
 * for values); the buffers of all schedules are then shared by size rank (as {@linkcode shareBuffers}).
 *
 * @example
 * ```ts
 * import { Graph } from "./ir.ts";
 * import { apply1 } from "./ops.ts";
 * import { planMatmulCopies, schedule } from "./schedule.ts";
 * const g = new Graph();
 * const x = g.leaf("input", "x", [4, 8]), w1 = g.leaf("param", "w1", [8, 8]), w2 = g.leaf("param", "w2", [8, 8]);
 * const y = apply1(g, "matmul", [apply1(g, "matmul", [x, w1]), w2]);
 * const p = planMatmulCopies([schedule(g, [y])]);
 * console.log(p.words, p.totalWords); // [32, 16] 48: the second product's copies reuse the first's buffers
 * ```
 */
export function planMatmulCopies(schedules: readonly Schedule[]): CopyPlan {
  const local = schedules.map((s) => {
    const last = new Map<number, number>();
    s.nodes.forEach((n, i) => {
      if (n.op === "matmul") { for (const v of n.inputs) last.set(v.id, i); }
    });
    const words: number[] = [], slot = new Map<number, number>(), free: number[] = [];
    s.nodes.forEach((n, i) => {
      if (n.op !== "matmul") return;
      for (const v of n.inputs) {
        if (slot.has(v.id)) continue;
        slot.set(v.id, _take(words, free, Math.ceil(numel(v.shape) / 2)));
      }
      for (const v of n.inputs) {
        const b = slot.get(v.id)!;
        if (last.get(v.id) === i && !free.includes(b)) free.push(b);
      }
    });
    return { words, slot };
  });
  const shared = _shareByRank(local.map((l) => l.words));
  const slots = local.map((l, j) => new Map([...l.slot].map(([v, i]) => [v, shared.slots[j]![i]!])));
  return { words: shared.sizes, slots, totalWords: shared.sizes.reduce((a, b) => a + b, 0) };
}

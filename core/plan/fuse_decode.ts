/**
 * The decoder's fusions (docs/performance.md "Dispatches per decoded token"): a rewrite of the one-token
 * decoding graph (`buildDecoder`) into fewer ops, each of which runs as one dispatch, computing the same
 * values to float tolerance. The unfused graph stays the float64 reference (core/bench/decode.ts, tests).
 *
 * - A norm and the products that read it become one `fused_gemv` (the norm recomputed inside, every
 *   product of that row in the one op: Q, K and V; K and V; the MLP's W1), which also writes the normalized
 *   row when other ops (the sparse experts) read it.
 * - A router's logits product and its `route_gate` become one `fused_route_gate`; where the norm has no
 *   other product (the MoE MLP's norm), the router takes the norm too.
 * - A product read only by an activation takes it as its epilogue (W1 then GELU).
 * - A product, MoE MLP or MoA read only by a residual add takes the add as its epilogue (Wo, W2, the
 *   experts' down projections).
 * - The token and position embeddings and their sum become one `embedding_pair`.
 *
 * Only one-row products of a parameter are fused (a transposed one, the tied LM head, alone); anything else
 * is copied as it is. The batched decoder's graph (B rows, docs/design.md §10 "Batched decoding") takes the
 * fusions whose kernels handle B rows: the routers (with their norms), the sparse experts' residual adds
 * (into their gather), the embeddings, and a product's activation or residual add as the matmul's epilogue
 * (`fused_matmul`).
 *
 * @module
 */
import { Graph, type Node, type Value } from "../graph/ir.ts";
import type { OpAttrs, OpName } from "../graph/op_types.ts";
import type { DecoderGraph } from "./model.ts";

/** A fused op to add in place of some nodes: its inputs and which original value each output stands for. */
interface Emit {
  op: OpName;
  inputs: Value[];
  attrs: OpAttrs[OpName];
  /** Per output: the original value it replaces, or a shape for an output with no original. */
  outputs: (Value | { shape: readonly number[] })[];
}

/** The decoder graph `dec` with its fusions, and `outputs` (values of `dec`) as values of the new graph. */
export function fuseDecoder(
  dec: DecoderGraph,
  outputs: readonly Value[],
): { model: DecoderGraph; outputs: Value[] } {
  const f = new _Fuser(dec.graph, new Set(outputs.map((v) => v.id)));
  f.plan();
  const map = f.rebuild();
  const to = (v: Value): Value => {
    const m = map.get(v.id);
    if (!m) throw new Error(`Decoder fusion lost value ${v.name}`);
    return m;
  };
  return {
    model: {
      graph: f.out,
      params: dec.params.map((p) => ({ ...p, value: to(p.value) })),
      ids: to(dec.ids),
      pos: to(dec.pos),
      logits: to(dec.logits),
      caches: dec.caches.map(to),
      routers: dec.routers.map((r) => ({
        ...r,
        logits: to(r.logits),
        probs: to(r.probs),
        ...(r.mask ? { mask: to(r.mask) } : {}),
        ...(r.trainGate ? { trainGate: to(r.trainGate) } : {}),
      })),
    },
    outputs: outputs.map(to),
  };
}

class _Fuser {
  readonly out = new Graph();
  readonly #consumers = new Map<number, Node[]>();
  readonly #absorbed = new Set<number>();
  readonly #emits = new Map<number, Emit[]>();

  constructor(readonly g: Graph, readonly pinned: ReadonlySet<number>) {
    for (const n of g.nodes) {
      for (const v of n.inputs) {
        const c = this.#consumers.get(v.id);
        if (c) { if (!c.includes(n)) c.push(n); }
        else this.#consumers.set(v.id, [n]);
      }
    }
  }

  /** Decides every fusion: norms with their products and routers first, then epilogues. */
  plan(): void {
    for (const n of this.g.nodes) if (n.op === "add") this.#fuseEmbeddings(n);
    for (const n of this.g.nodes) if (n.op === "norm") this.#fuseNorm(n);
    for (const n of this.g.nodes) {
      if (this.#absorbed.has(n.id)) continue;
      if (this.#isRowProduct(n)) this.#fuseEpilogue(n, false);
      else if (this.#isRowsProduct(n)) this.#fuseEpilogue(n, true);
      else if (
        n.op === "moe_mlp" || n.op === "moa_attention_batch" ||
        (n.op === "moa_attention" && n.inputs[0]!.shape[0] === 1)
      ) {
        this.#fuseExpertResidual(n);
      }
    }
  }

  /** The new graph, and original value id → its value there. */
  rebuild(): Map<number, Value> {
    const map = new Map<number, Value>(), g = this.out;
    const m = (v: Value) => map.get(v.id)!;
    // Leaves first: a fused op may read a weight that the original graph declares after its position.
    for (const { kind, value: v } of this.g.leaves.values()) {
      map.set(v.id, g.leaf(kind, v.name, v.shape, v.dtype));
    }
    for (const n of this.g.nodes) {
      if (n.op === "leaf") continue;
      for (const e of this.#emits.get(n.id) ?? []) {
        const node = g.addNode(
          e.op,
          e.inputs.map(m),
          e.attrs as never,
          e.outputs.map((o) =>
            "id" in o ? { shape: o.shape, dtype: o.dtype, name: o.name } : { shape: o.shape }
          ),
        );
        e.outputs.forEach((o, i) => {
          if ("id" in o) map.set(o.id, node.outputs[i]!);
        });
      }
      if (this.#absorbed.has(n.id)) continue;
      const node = g.addNode(
        n.op,
        n.inputs.map(m),
        n.attrs as never,
        n.outputs.map((o) => ({ shape: o.shape, dtype: o.dtype, name: o.name })),
      );
      n.outputs.forEach((o, i) => map.set(o.id, node.outputs[i]!));
    }
    return map;
  }

  #users(v: Value): Node[] {
    return this.#consumers.get(v.id) ?? [];
  }

  /** The one node reading `v` when `v` is not a requested output and nothing else reads it. */
  #soleUser(v: Value): Node | undefined {
    const u = this.#users(v);
    return u.length === 1 && !this.pinned.has(v.id) ? u[0] : undefined;
  }

  /** A product x · W (or x · Wᵀ) of a parameter W, A not transposed, not yet fused. */
  #isParamProduct(n: Node): boolean {
    if (n.op !== "matmul" || this.#absorbed.has(n.id)) return false;
    return !(n.attrs as OpAttrs["matmul"]).transA && this.g.leaves.get(n.inputs[1]!.id)?.kind === "param";
  }

  /** A one-row product x · W (or x · Wᵀ) of a parameter W, not yet fused. */
  #isRowProduct(n: Node): boolean {
    return this.#isParamProduct(n) && n.inputs[0]!.shape[0] === 1;
  }

  /** A product x · W of a parameter W over more than one row (batched decoding), not yet fused. */
  #isRowsProduct(n: Node): boolean {
    return this.#isParamProduct(n) && !this.#transB(n) && n.inputs[0]!.shape[0]! > 1;
  }

  /** Whether product `n` reads its weight transposed (the tied LM head). */
  #transB(n: Node): boolean {
    return !!(n.attrs as OpAttrs["matmul"]).transB;
  }

  /** The route_gate reading product `mm` alone (a router's logits), if any. */
  #routerOf(mm: Node): Node | undefined {
    const u = this.#soleUser(mm.outputs[0]!);
    return u?.op === "route_gate" ? u : undefined;
  }

  /** A router's logits: x · W of a parameter (any number of rows) read only by a route_gate. */
  #routerProduct(n: Node): Node | undefined {
    return this.#isParamProduct(n) && !this.#transB(n) ? this.#routerOf(n) : undefined;
  }

  #emit(at: Node, e: Emit): void {
    const list = this.#emits.get(at.id);
    if (list) list.push(e);
    else this.#emits.set(at.id, [e]);
  }

  #absorb(...nodes: Node[]): void {
    for (const n of nodes) this.#absorbed.add(n.id);
  }

  /**
   * A norm, the one-row products reading it (one fused_gemv) and its routers (fused_route_gate, one row or
   * the batched decoder's B).
   */
  #fuseNorm(norm: Node): void {
    const [h, mean, rstd] = norm.outputs;
    if ([h!, mean!, rstd!].some((v) => this.pinned.has(v.id))) return;
    if (this.#users(mean!).length + this.#users(rstd!).length > 0) return;
    const a = norm.attrs as OpAttrs["norm"], users = this.#users(h!);
    const normInputs = norm.inputs.slice();
    const products: Node[] = [], routers: [Node, Node][] = [], others: Node[] = [];
    for (const u of users) {
      const row = this.#isRowProduct(u) && u.inputs[0] === h;
      const router = u.inputs[0] === h ? this.#routerProduct(u) : undefined;
      if (router) routers.push([u, router]);
      else if (row) products.push(u);
      else others.push(u);
    }
    // A transposed weight is fused alone (the final norm and the tied LM head); beside others it reads h.
    if (products.length > 1) {
      others.push(...products.filter((p) => this.#transB(p)));
      products.splice(0, products.length, ...products.filter((p) => !this.#transB(p)));
    }
    if (products.length > 0) {
      const normOut = routers.length + others.length > 0;
      this.#emit(norm, this.#gemv(normInputs, a, products, normOut ? h! : undefined));
      this.#absorb(norm);
      for (const [mm, gate] of routers) this.#router(gate, [h!], { kind: "none", eps: a.eps }, mm, undefined);
      return;
    }
    if (routers.length === 0) return;
    const [[mm, gate], ...rest] = routers as [[Node, Node], ...[Node, Node][]];
    const normOut = rest.length + others.length > 0;
    this.#router(norm, normInputs, a, mm, gate, normOut ? h! : undefined);
    this.#absorb(norm);
    for (const [m2, g2] of rest) this.#router(g2, [h!], { kind: "none", eps: a.eps }, m2, undefined);
  }

  /**
   * One fused_gemv of `products` (all reading the norm of `normInputs`), emitted at the first's norm;
   * a lone product read only by an activation takes it as its epilogue.
   */
  #gemv(normInputs: Value[], a: OpAttrs["norm"], products: Node[], h: Value | undefined): Emit {
    let activation: OpAttrs["fused_gemv"]["activation"] = "none";
    let ys = products.map((p) => p.outputs[0]!);
    const act = products.length === 1 ? this.#soleUser(ys[0]!) : undefined;
    if (act?.op === "activation") {
      activation = (act.attrs as OpAttrs["activation"]).kind;
      ys = [act.outputs[0]!];
      this.#absorb(act);
    }
    this.#absorb(...products);
    return {
      op: "fused_gemv",
      inputs: [...normInputs, ...products.map((p) => p.inputs[1]!)],
      attrs: {
        norm: a.kind,
        eps: a.eps,
        weights: products.length,
        activation,
        residual: false,
        normOut: h !== undefined,
        ...(this.#transB(products[0]!) ? { transB: true } : {}),
      },
      outputs: [...(h ? [h] : []), ...ys],
    };
  }

  /**
   * A fused_route_gate in place of product `mm` and its `gate` (route_gate), emitted at `at`, reading
   * `inputs` (the row, and the norm's weights when `norm` is one); writes the normalized row as `h`.
   */
  #router(
    at: Node,
    inputs: Value[],
    norm: OpAttrs["norm"] | { kind: "none"; eps: number },
    mm: Node,
    gate: Node | undefined,
    h?: Value,
  ): void {
    const routeGate = gate ?? at;
    const rule = routeGate.attrs as OpAttrs["route_gate"];
    this.#emit(at, {
      op: "fused_route_gate",
      inputs: [...inputs, mm.inputs[1]!],
      attrs: { ...rule, norm: norm.kind, eps: norm.eps, normOut: h !== undefined },
      outputs: [...routeGate.outputs, mm.outputs[0]!, ...(h ? [h] : [])],
    });
    this.#absorb(mm, routeGate);
  }

  /**
   * A product whose only reader is a residual add or an activation takes it as its epilogue: one
   * fused_gemv (a one-row product) or fused_matmul (`rows`: the batched decoder's products).
   */
  #fuseEpilogue(mm: Node, rows: boolean): void {
    const y = mm.outputs[0]!, user = this.#soleUser(y);
    if (!user || this.#absorbed.has(user.id)) return;
    let inputs = [mm.inputs[0]!, mm.inputs[1]!], activation: OpAttrs["fused_matmul"]["activation"] = "none";
    if (user.op === "add") {
      const r = user.inputs[0] === y ? user.inputs[1]! : user.inputs[0]!;
      if (r === y) return;
      inputs = [...inputs, r];
    } else if (user.op === "activation") {
      activation = (user.attrs as OpAttrs["activation"]).kind;
    } else {
      return;
    }
    const residual = user.op === "add";
    this.#emit(user, {
      op: rows ? "fused_matmul" : "fused_gemv",
      inputs,
      attrs: rows ? { activation, residual } : {
        norm: "none",
        eps: 0,
        weights: 1,
        normOut: false,
        ...(this.#transB(mm) ? { transB: true } : {}),
        activation,
        residual,
      },
      outputs: [user.outputs[0]!],
    });
    this.#absorb(mm, user);
  }

  /** The sum of two embeddings read only by it (token and position): one embedding_pair. */
  #fuseEmbeddings(add: Node): void {
    const [a, b] = add.inputs.map((v) => v.node);
    const lone = (n: Node) => n.op === "embedding" && this.#soleUser(n.outputs[0]!) === add;
    if (!a || !b || a === b || !lone(a) || !lone(b)) return;
    this.#emit(add, {
      op: "embedding_pair",
      inputs: [...a.inputs, ...b.inputs],
      attrs: {},
      outputs: [add.outputs[0]!],
    });
    this.#absorb(a, b, add);
  }

  /**
   * A one-token MoE MLP or MoA, or the batched decoder's MoE MLP or MoA, read only by a residual add adds the
   * residual itself (the one-token kernels' epilogue; the pair pipeline's gather).
   */
  #fuseExpertResidual(n: Node): void {
    const y = n.outputs[0]!, user = this.#soleUser(y);
    if (user?.op !== "add" || this.#absorbed.has(user.id) || (n.attrs as { residual?: boolean }).residual) {
      return;
    }
    const r = user.inputs[0] === y ? user.inputs[1]! : user.inputs[0]!;
    if (r === y) return;
    this.#emit(user, {
      op: n.op,
      inputs: [...n.inputs, r],
      attrs: { ...n.attrs, residual: true } as OpAttrs[OpName],
      outputs: [user.outputs[0]!],
    });
    this.#absorb(n, user);
  }
}

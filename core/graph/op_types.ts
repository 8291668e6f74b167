/**
 * The parameters of graph ops that the float64 references (core/ref), the CPU executor (cpu_ops.ts) and the
 * GPU kernels (gpu/) all take: the routing rule of a `route_mask` node and the reductions. It imports
 * nothing, so that every one of them may import it.
 *
 * @module
 */

/** A routing rule; only the field its kind names is read. */
export interface RouteRule {
  kind: "threshold" | "topk" | "threshold_topk" | "top_p" | "dense";
  epsilon: number;
  k: number;
  p: number;
}

/** The rule stored in a `route_mask` node's attributes. */
export function routeRuleOf(n: { attrs: Readonly<Record<string, unknown>> }): RouteRule {
  const a = n.attrs;
  return {
    kind: a.kind as RouteRule["kind"],
    epsilon: a.epsilon as number,
    k: a.k as number,
    p: a.p as number,
  };
}

/** A reduction. */
export type ReduceOp = "sum" | "mean" | "max";

/**
 * Inference rules written as text, the same in `--rule` flags and in files: `threshold:0.5`, `topk:2`,
 * `threshold_topk:0.5`, `top_p:0.9`, `dense`, or `mlp=RULE,attention=RULE` to set the two router kinds apart.
 * Parameters left out take the defaults below. Bad text is a `RangeError` that says what was expected.
 *
 * @module
 */
import type { InferRules } from "../plan/model.ts";
import type { RouteRule } from "../graph/op_types.ts";
import { ruleParam } from "../ref/routing.ts";

/** Rule parameters not written. */
export const RULE_DEFAULTS: Omit<RouteRule, "kind"> = { epsilon: 0.5, k: 2, p: 0.9 };
/** The rule kinds. */
export const RULE_KINDS = ["threshold", "topk", "threshold_topk", "top_p", "dense"] as const;

/** Every expert, for both router kinds. */
export function denseRules(): InferRules {
  return { mlp: { ...RULE_DEFAULTS, kind: "dense" }, attention: { ...RULE_DEFAULTS, kind: "dense" } };
}

/**
 * Parses a rule pair.
 *
 * @example
 * ```ts
 * import { parseRuleSpec } from "./rule_spec.ts";
 * const r = parseRuleSpec("mlp=threshold:1,attention=topk:1");
 * console.log(r.mlp.epsilon, r.attention.k); // 1 1
 * ```
 */
export function parseRuleSpec(spec: string): InferRules {
  if (!spec.includes("=")) {
    const r = _one(spec);
    return { mlp: r, attention: { ...r } };
  }
  const out: Partial<InferRules> = {};
  for (const part of spec.split(",")) {
    const [side, rule] = part.split("=", 2) as [string, string | undefined];
    if ((side !== "mlp" && side !== "attention") || rule === undefined) {
      throw new RangeError(`${spec}: expected mlp=RULE,attention=RULE`);
    }
    out[side] = _one(rule);
  }
  const dense = denseRules();
  return { mlp: out.mlp ?? dense.mlp, attention: out.attention ?? dense.attention };
}

/** A rule parameter from text, in the range its field allows (the same for `--k 2` and `topk:2`). */
export function ruleParamValue(field: "epsilon" | "k" | "p", text: string, what: string): number {
  const v = Number(text);
  const ok = field === "k" ? Number.isSafeInteger(v) && v >= 1 : field === "p" ? v > 0 && v <= 1 : v >= 0;
  if (!ok || text.trim() === "" || !Number.isFinite(v)) {
    const want = field === "k" ? "an integer ≥ 1" : field === "p" ? "a number in (0, 1]" : "a number ≥ 0";
    throw new RangeError(`${what}: expected ${want}`);
  }
  return v;
}

function _one(spec: string): RouteRule {
  const [kind, param] = spec.split(":", 2) as [string, string | undefined];
  if (!(RULE_KINDS as readonly string[]).includes(kind)) {
    throw new RangeError(`${spec}: unknown rule "${kind}"; expected one of ${RULE_KINDS.join(", ")}`);
  }
  const r: RouteRule = { ...RULE_DEFAULTS, kind: kind as RouteRule["kind"] };
  if (param !== undefined) {
    const field = ruleParam(r.kind);
    if (!field) throw new RangeError(`${spec}: ${kind} takes no parameter`);
    r[field] = ruleParamValue(field, param, spec);
  }
  return r;
}

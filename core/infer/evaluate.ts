/**
 * Evaluation of a trained model under inference routing rules (docs/design.md §5):
 * validation loss and perplexity, and the experts each rule really activates, measured per token and
 * per layer, turned into active parameters and hidden % with the definitions of core/plan/counts.ts.
 *
 * Each rule's graph gates every routed layer by S ⊙ mask (raw probabilities, not renormalized) and runs it
 * sparsely: MoE MLPs through `moe_mlp`, attention experts through `moa_attention` (only routed (token,
 * expert) pairs compute; keys and values are shared). With `diagnostics`, each rule's routing is also
 * measured (core/infer/diagnostics.ts): load, entropy, co-activation and, where the validation tokens carry
 * domain labels (`synthetic:multidomain`), the mutual information of top-1 expert and domain.
 *
 * @module
 */
import { fmtLoss, fmtPct, fmtPpl } from "../util/quantities.js";
import type { Experiment } from "../config/schema.ts";
import type { Dataset } from "../data/dataset.ts";
import { numel } from "../graph/ir.ts";
import { activeOfLayers, layerShape } from "../plan/counts.ts";
import { type InferRules, type ParamSpec, type RouterTap, tapExperts } from "../plan/model.ts";
import { plan } from "../plan/plan.ts";
import type { RouteRule } from "../graph/op_types.ts";
import { ruleParam } from "../ref/routing.ts";
import { type RouterDiagnostics, RoutingTally, top1Changed } from "./diagnostics.ts";
import { createTensor, type GpuTensor, readTensor, writeTensor } from "../../gpu/buffers.ts";
import type { GpuContext } from "../../gpu/device.ts";
import { GraphExecutor } from "../../gpu/executor.ts";

/** Experts run per token in one routed layer, averaged over the evaluated tokens. */
export interface LayerActivity {
  layer: number;
  kind: "attention" | "mlp";
  experts: number; // mean experts per token
  of: number; // experts in the layer
}

/** What one rule gives on the validation batches. */
export interface RuleResult {
  rule: string;
  loss: number; // mean cross-entropy, nats per token
  ppl: number;
  /**
   * Bits per UTF-8 byte of the validation text: loss × tokens / bytes / ln 2 with the validation split's
   * tokens and the bytes they came from (`Dataset.valTokens`, `Dataset.valBytes`), comparable across tokenizers.
   */
  bpb: number;
  activeParams: number; // mean per token, docs/design.md §5 definition (embeddings, norms, LM head excluded)
  activePct: number; // of the same count with every expert active
  hiddenPct: number; // attention and MLP weights run / all attention and MLP weights × 100 (docs/design.md §5)
  activePctAll: number; // (all parameters − skipped expert parameters) / all parameters × 100, embeddings in
  layers: LayerActivity[];
  tokens: number;
  /**
   * Wall seconds of the validation batches (compiled graph; each batch uploaded, run and its loss and masks
   * read back), for the sparse evaluation's tokens per second: `tokens / seconds`.
   */
  seconds: number;
  /** With `diagnostics`: each router's routing diagnostics and each token's top-1 expert. */
  routing?: RuleRouting;
}

/** The routing diagnostics of one rule's evaluation (core/infer/diagnostics.ts). */
export interface RuleRouting {
  /** Names of the domain labels the MI is over (empty: the tokens carry none). */
  domains: readonly string[];
  routers: RouterDiagnostics[]; // in the model's router order (layer, then attention before MLP)
  top1: Uint16Array[]; // per router, each evaluated token's top-1 expert, in evaluation order
}

/**
 * Routing stability: sets each router's `top1_changed` of `a` to the share of tokens whose top-1 expert
 * differs in `b`, an evaluation of the same tokens under the same rule by another checkpoint of the same
 * model shape. A RangeError when the two do not match router for router.
 */
export function compareRouting(a: RuleRouting, b: RuleRouting): void {
  const same = a.routers.length === b.routers.length && a.routers.every((r, j) => {
    const o = b.routers[j]!;
    return r.layer === o.layer && r.kind === o.kind && r.experts === o.experts && r.tokens === o.tokens;
  });
  if (!same) {
    throw new RangeError("Cannot compare routing: the two evaluations have different routers or tokens");
  }
  for (const [j, r] of a.routers.entries()) r.top1_changed = top1Changed(a.top1[j]!, b.top1[j]!);
}

/** A short stable name of a rule pair: `threshold@0.5`, `topk@2`, or `mlp:…,attention:…` when they differ. */
export function ruleName(r: InferRules, routed: { mlp: boolean; attention: boolean }): string {
  const one = (x: RouteRule) => {
    const param = ruleParam(x.kind);
    return param ? `${x.kind}@${x[param]}` : x.kind;
  };
  const m = one(r.mlp), a = one(r.attention);
  // Name only the side a model routes; both sides when they differ.
  if (m === a || (routed.mlp && !routed.attention)) return m;
  if (!routed.mlp) return a;
  return `mlp:${m},attention:${a}`;
}

/**
 * Evaluates `params` (name → values, as in a checkpoint) under each rule pair on `batches` validation
 * batches of `c.train.batch` sequences, each window a distinct one: `batches` must lie within 1 …
 * `dataset.maxValBatches(c.train.batch)` (a RangeError otherwise), so the work is bounded by the data.
 * `progress` receives a line per rule.
 */
export async function evaluateRules(
  ctx: GpuContext,
  c: Readonly<Experiment>,
  params: ReadonlyMap<string, Float32Array>,
  dataset: Dataset,
  rules: readonly InferRules[],
  o: { batches: number; progress?: (line: string) => void; diagnostics?: boolean },
): Promise<RuleResult[]> {
  const most = dataset.maxValBatches(c.train.batch);
  if (!Number.isSafeInteger(o.batches) || o.batches < 1 || o.batches > most) {
    throw new RangeError(
      `Cannot evaluate ${o.batches} validation batches: the split holds ${most} batches of ${c.train.batch} ` +
        `distinct windows`,
    );
  }
  const shape = layerShape(c);
  const routed = { mlp: shape.routedMlp, attention: shape.routedAtt };
  const tensors = new Map<string, GpuTensor>();
  const results: RuleResult[] = [];
  try {
    for (const rule of rules) {
      const p = plan(c, "infer-sparse", { rules: rule, routerProbs: o.diagnostics }), m = p.model;
      uploadParams(ctx, m.params, params, tensors, "evaluate");
      const leaves = [...m.graph.leaves.values()].map((l) => l.value);
      const shared = new Map(m.params.map((p) => [p.value.id, tensors.get(p.value.name)!]));
      const masks = m.routers.filter((r) => r.mask);
      const exec = new GraphExecutor(ctx, p.schedule, leaves, shared);
      try {
        await exec.check();
        let lossSum = 0;
        const active = m.routers.map(() => 0);
        const started = performance.now();
        const domains = dataset.domainNames;
        const tallies = o.diagnostics
          ? m.routers.map((r) => new RoutingTally(r.layer, r.kind, r.probs.shape[1]!, domains.length))
          : null;
        for (let i = 0; i < o.batches; i++) {
          const batch = dataset.valBatch(i, o.batches, c.train.batch);
          writeTensor(ctx, exec.tensor(m.ids), batch.inputs);
          writeTensor(ctx, exec.tensor(m.targets), batch.targets);
          exec.run();
          // All readbacks queued behind the batch's submit at once: one wait for the GPU, not one each.
          const probs = tallies ? m.routers.map((r) => r.probs) : [];
          const [loss, ...values] = await Promise.all(
            [m.lmLoss, ...masks.map((r) => r.mask!), ...probs].map((v) => readTensor(ctx, exec.tensor(v))),
          );
          const maskValues = values.slice(0, masks.length);
          lossSum += loss![0]!;
          tallies?.forEach((t, j) => {
            const r = m.routers[j]!;
            const mask = r.mask ? maskValues[masks.indexOf(r)]! : null;
            t.add(values[masks.length + j]!, routerMaskOfAll(r, mask), batch.inputDomains ?? null);
          });
          for (const [j, r] of m.routers.entries()) {
            if (!r.mask) {
              active[j]! += tapExperts(r);
              continue;
            }
            let on = 0;
            for (const v of maskValues[masks.indexOf(r)]!) on += v;
            active[j]! += on / r.mask.shape[0]!;
          }
        }
        const layers = m.routers.map((r, j) => ({
          layer: r.layer,
          kind: r.kind,
          experts: active[j]! / o.batches,
          of: tapExperts(r),
        }));
        const loss = lossSum / o.batches;
        const res = activity(c, layers);
        const tokens = o.batches * c.train.batch * c.data.seq_len;
        const bpb = dataset.bitsPerByte(loss);
        const result = {
          rule: ruleName(rule, routed),
          loss,
          ppl: Math.exp(loss),
          bpb,
          ...res,
          layers,
          tokens,
          seconds: (performance.now() - started) / 1000,
          ...(tallies
            ? {
              routing: {
                domains,
                routers: tallies.map((t) => t.finish()),
                top1: tallies.map((t) => t.top1()),
              },
            }
            : {}),
        };
        results.push(result);
        o.progress?.(
          `${result.rule}: val loss ${fmtLoss(loss)}  ppl ${fmtPpl(result.ppl)}  hidden ${
            fmtPct(result.hiddenPct)
          }`,
        );
      } finally {
        exec.destroy();
      }
    }
  } finally {
    for (const t of tensors.values()) t.buffer.destroy();
  }
  return results;
}

/**
 * A router's run mask over all the experts it scores, for the diagnostics: the recorded mask (`null`: every
 * real expert runs) and, where the router also scores null experts (router.null_experts, docs/design.md §16),
 * zero columns for them after the real ones (a null expert computes nothing). `null` when that is every
 * expert.
 */
export function routerMaskOfAll(
  r: Pick<RouterTap, "experts" | "probs">,
  mask: ArrayLike<number> | null,
): ArrayLike<number> | null {
  const E = r.probs.shape[1]!, n = tapExperts(r);
  if (n === E) return mask;
  const T = r.probs.shape[0]!, out = new Float32Array(T * E);
  for (let t = 0; t < T; t++) for (let i = 0; i < n; i++) out[t * E + i] = mask ? mask[t * n + i]! : 1;
  return out;
}

/**
 * Uploads the model's parameters `specs` from `params` (name → values) into `into` (by name; ones already
 * there are kept) and returns it. A missing or mis-sized parameter is a RangeError naming it.
 */
export function uploadParams(
  ctx: GpuContext,
  specs: readonly ParamSpec[],
  params: ReadonlyMap<string, Float32Array>,
  into: Map<string, GpuTensor>,
  what: string,
): Map<string, GpuTensor> {
  for (const p of specs) {
    const data = params.get(p.value.name);
    if (!data) throw new RangeError(`Cannot ${what}: the checkpoint has no parameter "${p.value.name}"`);
    if (data.length !== numel(p.value.shape)) {
      throw new RangeError(
        `Cannot ${what}: parameter "${p.value.name}" has ${data.length} values, the config's model needs ` +
          `[${p.value.shape}]`,
      );
    }
    if (!into.has(p.value.name)) {
      into.set(p.value.name, createTensor(ctx, p.value.shape, "f32", data, p.value.name));
    }
  }
  return into;
}

/**
 * Active parameters, hidden % and the share of all parameters from the measured experts per layer: the one
 * definition of docs/design.md §5 ({@linkcode activeOfLayers} in core/plan/counts.ts).
 */
export function activity(
  c: Readonly<Experiment>,
  layers: readonly LayerActivity[],
): Pick<RuleResult, "activeParams" | "activePct" | "hiddenPct" | "activePctAll"> {
  const a = activeOfLayers(c, layers);
  return {
    activeParams: a.active,
    activePct: a.activePct,
    hiddenPct: a.hiddenPct,
    activePctAll: a.activePctAll,
  };
}

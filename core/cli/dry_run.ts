/**
 * `run --dry-run`: the resolved config of every point with its parameter counts, active-parameter
 * estimate, FLOPs per token, batch split (gradient accumulation) and memory: the estimate of
 * core/plan/counts.ts and the buffers of the training plan itself (core/plan/plan.ts) — nothing allocated.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import { AUX_FREE_BIAS_RATE, parseByteSize, routerSetting } from "../config/schema.ts";
import type { LoadedExperiment } from "../config/mod.ts";
import { experimentToYaml } from "../config/mod.ts";
import {
  accumulationOf,
  activeParams,
  countParams,
  estimateMemory,
  flopsPerToken,
  hasBatchRouterLoss,
  layerShape,
} from "../plan/counts.ts";
import { configRules, trainMemoryEstimate } from "../plan/plan.ts";
import { expertChoiceTokens } from "../plan/router_zoo.ts";
import { ruleName } from "../infer/evaluate.ts";
import { fmtBytes, fmtCount, table } from "../util/format.ts";
import { describeData } from "../data/prepare.ts";

/** What a dry run reports for one point (also the `--json` shape, one entry of `points`). */
export interface PointSummary {
  name: string;
  params: Record<string, unknown>;
  params_total: number;
  params_active: number;
  params_active_exact: boolean;
  active_pct: number; // docs/design.md §5 (core/plan/counts.ts activeWith), as eval reports it
  hidden_pct: number; // of the attention and MLP weights, routed or not (docs/design.md §5)
  active_pct_all: number; // share of all parameters, embeddings included
  flops_per_token_train: number;
  flops_per_token_infer: number;
  flops_per_token_infer_dense: number;
  batch: number; // train.batch: sequences per optimizer step
  micro_batch: number; // train.micro_batch: sequences per graph execution
  accumulation_steps: number; // micro-steps per optimizer step (1: no accumulation)
  router_stats_pass: boolean; // one more forward per micro-batch for the batch-level router losses
  /** What training allocates (its plan's, as run and resume check it); the estimate where it cannot be planned. */
  memory_train_bytes: number;
  memory_weights_bytes: number; // parameters and both Adam moments (part of memory_train_bytes)
  memory_grad_accum_bytes: number; // gradient accumulators (part of memory_train_bytes; 0 without accumulation)
  /** The planned buffers of the step, evaluation and statistics graphs (part of memory_train_bytes); null unplanned. */
  memory_graph_bytes: number | null;
  memory_activations_bytes: number; // an estimate of one micro-batch's saved activations (in memory_graph_bytes)
  memory_f16_copies_bytes: number; // f16 copies of matmul operands (part of memory_train_bytes; 0 in f32)
  /** The training plan's bytes (equal to memory_train_bytes); null when the config cannot be planned yet (rope). */
  memory_train_planned_bytes: number | null;
  memory_infer_bytes: number;
  memory_budget_bytes: number;
  fits_budget: boolean; // memory_train_bytes is within the budget
  components: Record<string, number>;
  /** How the routers train and which rule runs them at inference; null for a model without routers. */
  router: string | null;
  /** The MLP experts when some are shared or fine-grained (docs/design.md §16), else null. */
  experts: string | null;
}

/** Computes the summary of one validated config. */
export function summarizePoint(
  name: string,
  params: Record<string, unknown>,
  c: Readonly<Experiment>,
): PointSummary {
  const p = countParams(c), a = activeParams(c), f = flopsPerToken(c), m = estimateMemory(c);
  const budget = parseByteSize(c.hardware.memory_budget), acc = accumulationOf(c);
  const train = trainMemoryEstimate(c), planned = train.planned;
  const { total: _total, experts: _experts, ...components } = p;
  return {
    name,
    params,
    params_total: p.total,
    params_active: a.active,
    params_active_exact: a.exact,
    active_pct: a.activePct,
    hidden_pct: a.hiddenPct,
    active_pct_all: a.activePctAll,
    flops_per_token_train: f.train,
    flops_per_token_infer: f.infer,
    flops_per_token_infer_dense: f.inferDense,
    batch: acc.batch,
    micro_batch: acc.microBatch,
    accumulation_steps: acc.steps,
    router_stats_pass: acc.steps > 1 && hasBatchRouterLoss(c),
    memory_train_bytes: train.bytes,
    memory_weights_bytes: planned?.weights ?? m.parts.weights + m.parts.optimizer,
    memory_grad_accum_bytes: planned?.gradAccum ?? m.parts.gradAccum,
    memory_graph_bytes: planned?.graphs ?? null,
    memory_activations_bytes: m.parts.activations,
    memory_f16_copies_bytes: planned?.f16Copies ?? 0,
    memory_train_planned_bytes: planned?.total ?? null,
    memory_infer_bytes: m.infer,
    memory_budget_bytes: budget,
    fits_budget: train.bytes <= budget,
    components,
    router: routerSummary(c),
    experts: expertsSummary(c),
  };
}

/**
 * One line on shared and fine-grained MLP experts (docs/design.md §16), null without either: the routed
 * experts with their segments and width, and the shared ones, which every token runs.
 */
export function expertsSummary(c: Readonly<Experiment>): string | null {
  const s = layerShape(c), m = c.model.mlp;
  if (s.segments === 1 && s.sharedExperts === 0) return null;
  const routed = s.segments > 1
    ? `${m.experts} experts × ${s.segments} segments = ${s.mlpExperts} routed of width ${s.hidden}`
    : `${s.mlpExperts} routed of width ${s.hidden}`;
  const k = c.router.train === "topk"
    ? `, ${c.router.k} × ${s.segments} = ${c.router.k * s.segments} active`
    : "";
  const shared = s.sharedExperts > 0
    ? `; ${s.sharedExperts} shared of width ${s.sharedHidden}, always on (gate 1, at inference too)`
    : "";
  return `MLP ${routed}${s.segments > 1 ? k : ""}${shared}`;
}

/**
 * One line on the routers of `c` (docs/design.md §3, §16): the training rule with its parameters and options, and the
 * inference rule (`router.infer`), which every training rule hands over to at inference. Null without
 * routers.
 */
export function routerSummary(c: Readonly<Experiment>): string | null {
  const s = layerShape(c), r = c.router;
  if (!s.routedMlp && !s.routedAtt) return null;
  const infer = ruleName(configRules(c), { mlp: s.routedMlp, attention: s.routedAtt });
  const jitter = r.jitter > 0 ? `; jitter ${r.jitter}` : "";
  switch (r.train) {
    case "dense":
      return `train dense (every expert, DS-MoE); inference ${infer}`;
    case "topk":
      return `train topk (k ${r.k}${tokenChoiceOptions(c)}); inference ${infer}`;
    case "expert_choice": {
      const T = accumulationOf(c).microBatch * c.data.seq_len;
      const takes = (kind: string, n: number, m: number) =>
        `${kind}: each of ${n} experts takes C = ${
          expertChoiceTokens(T, n, routerSetting(r, "capacity") * m)
        }`;
      const parts = [
        ...(s.routedMlp ? [takes("MLP", s.mlpExperts, s.segments)] : []),
        ...(s.routedAtt ? [takes("attention", s.attExperts, 1)] : []),
      ];
      return `train expert_choice (capacity ${routerSetting(r, "capacity")}; ${
        parts.join(", ")
      } of the ${T} tokens of a ` +
        `micro-batch${jitter}) — training only (it sees the whole batch); inference uses router.infer: ${infer}`;
    }
    case "top_p":
      return `train top_p (each token keeps its fewest experts whose probability mass reaches ${
        routerSetting(r, "p")
      }` +
        `${
          c.loss.dynamic > 0 ? `; dynamic loss ${c.loss.dynamic}` : ""
        }${jitter}); inference uses router.infer: ${infer}`;
    case "relu":
      return `train relu (gates ReLU(s), L1 weight λ from ${c.loss.l1} adapted ×/÷ ${
        routerSetting(r, "l1_rate")
      } per step ` +
        `toward ${
          routerSetting(r, "target_sparsity")
        } zero gates${jitter}); inference runs the experts with a gate above 0 that ` +
        `router.infer selects: ${infer}`;
    default:
      return r.train satisfies never;
  }
}

/**
 * The top-k token-choice options of `c` that are set (docs/design.md §16), each as `; …`: expert capacity,
 * jitter, renormalised gates, softmax after top-k, null experts, the aux-free bias.
 *
 * @example
 * ```ts ignore
 * tokenChoiceOptions(c); // "; capacity factor 1.25; 2 null experts; aux-free bias γ 0.001"
 * ```
 */
export function tokenChoiceOptions(c: Readonly<Experiment>): string {
  const r = c.router;
  return [
    ...(r.capacity_factor > 0 ? [`capacity factor ${r.capacity_factor}`] : []),
    ...(r.jitter > 0 ? [`jitter ${r.jitter}`] : []),
    ...(r.renormalize ? ["renormalised gates"] : []),
    ...(r.softmax_order === "after" ? ["softmax after top-k"] : []),
    ...(r.null_experts > 0 ? [`${r.null_experts} null experts`] : []),
    ...(r.balance === "aux_free" ? [`aux-free bias γ ${r.bias_rate ?? AUX_FREE_BIAS_RATE}`] : []),
  ].map((o) => `; ${o}`).join("");
}

/**
 * The data lines of every point (core/data/prepare.ts `describeData`): the source (a corpus's size,
 * documents and licence; files' formats and sizes), the tokenizer and whether the shards are prepared in
 * `cacheDir`. Points with the same data share their lines. Bad data throws (exit 2), as a run would.
 */
export async function describePointsData(
  loaded: LoadedExperiment,
  cacheDir: string,
): Promise<Map<string, string[]>> {
  const baseDir = loaded.file.includes("/") ? loaded.file.slice(0, loaded.file.lastIndexOf("/")) : ".";
  const byData = new Map<string, string[]>(), out = new Map<string, string[]>();
  for (const p of loaded.points) {
    const key = JSON.stringify([p.config.data, p.config.seed]);
    let lines = byData.get(key);
    if (!lines) byData.set(key, lines = await describeData(p.config, { baseDir, cacheDir }));
    out.set(p.name, lines);
  }
  return out;
}

/** Text report of a loaded experiment: resolved config, then one block per point, then a table. */
export function formatDryRun(
  loaded: LoadedExperiment,
  points: readonly PointSummary[],
  data?: ReadonlyMap<string, readonly string[]>,
): string {
  const out: string[] = [];
  out.push(
    `# ${loaded.file}: resolved config${
      loaded.sweepId ? ` (sweep ${loaded.sweepId}, ${points.length} points)` : ""
    }`,
  );
  out.push(experimentToYaml(loaded.config).trimEnd(), "");
  for (const s of points) {
    const params = Object.entries(s.params).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ");
    out.push(`## ${s.name}${params ? `  (${params})` : ""}`);
    out.push(...(data?.get(s.name) ?? []));
    const comp = Object.entries(s.components).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${fmtCount(v)}`);
    out.push(`  params        ${fmtCount(s.params_total)} total: ${comp.join(", ")}`);
    out.push(
      `  active        ${fmtCount(s.params_active)} per token (${
        s.active_pct.toFixed(1)
      }% of non-embedding, ` +
        `${s.active_pct_all.toFixed(1)}% of all, hidden ${s.hidden_pct.toFixed(1)}% of attention and MLP)${
          s.params_active_exact ? "" : " — upper bound; deno task eval measures it"
        }`,
    );
    if (s.router) out.push(`  router        ${s.router}`);
    if (s.experts) out.push(`  experts       ${s.experts}`);
    out.push(
      `  FLOPs/token   train ${fmtCount(s.flops_per_token_train)}, inference ${
        fmtCount(s.flops_per_token_infer)
      }` +
        ` (dense execution ${fmtCount(s.flops_per_token_infer_dense)})`,
    );
    out.push(
      `  batch         ${s.batch} sequences per step` +
        (s.accumulation_steps > 1
          ? `: ${s.accumulation_steps} micro-steps of ${s.micro_batch} (gradient accumulation${
            s.router_stats_pass ? "; one more forward per micro-batch for the batch-level router losses" : ""
          })`
          : ", one micro-batch"),
    );
    const seqs = `${s.micro_batch} sequences`;
    out.push(
      `  memory        train ${fmtBytes(s.memory_train_bytes)}${
        s.memory_graph_bytes === null ? " (estimated: not planned yet)" : ""
      }, inference ${fmtBytes(s.memory_infer_bytes)}` +
        ` (budget ${fmtBytes(s.memory_budget_bytes)}${s.fits_budget ? "" : ": DOES NOT FIT"})`,
      `                train = weights and optimizer ${fmtBytes(s.memory_weights_bytes)}` +
        (s.memory_grad_accum_bytes > 0
          ? `, gradient accumulators ${fmtBytes(s.memory_grad_accum_bytes)}`
          : "") +
        (s.memory_graph_bytes === null
          ? `, activations of ${seqs} ${fmtBytes(s.memory_activations_bytes)}`
          : `, graph buffers of ${seqs} ${fmtBytes(s.memory_graph_bytes)} (saved activations about ${
            fmtBytes(s.memory_activations_bytes)
          }; evaluation shares them)`) +
        (s.memory_f16_copies_bytes > 0
          ? `, f16 copies of matmul operands ${fmtBytes(s.memory_f16_copies_bytes)}`
          : ""),
      "",
    );
  }
  out.push(table(
    ["point", "params", "active", "hidden%", "train FLOPs/tok", "infer FLOPs/tok", "train mem"],
    points.map((s) => [
      s.name,
      fmtCount(s.params_total),
      `${s.params_active_exact ? "" : "≤"}${fmtCount(s.params_active)}`,
      s.hidden_pct.toFixed(1),
      fmtCount(s.flops_per_token_train),
      fmtCount(s.flops_per_token_infer),
      fmtBytes(s.memory_train_bytes),
    ]),
    ["left", "right", "right", "right", "right", "right", "right"],
  ));
  return out.join("\n");
}

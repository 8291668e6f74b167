/**
 * A run as a row of the runs table: its record without the config text, the key hyperparameters read from
 * its resolved config, and its headline metrics (last training loss, best validation loss, last validation
 * perplexity).
 *
 * @module
 */
import { parse } from "yaml";
import type { RunRecord, RunStore } from "../runs/store.ts";

/** Key hyperparameters of a run (null where its config does not say). */
export interface Hyperparameters {
  kind: string | null; // model.kind: dense | smoe | dsmoe
  d_model: number | null;
  layers: number | null;
  attention_experts: number | null; // null for plain multi-head attention
  mlp_experts: number | null;
  router_train: string | null; // "dense", "topk 2", "topk 2 cf 1.25 +4 null aux-free", "expert_choice c 2"…
  router_infer: string | null; // the inference rule: "threshold 0.5", "topk 2", "dense"… (MLP; "; attn …" if it differs)
  lr: number | null;
  steps: number | null;
  seed: number | null;
}

/** One row of the runs table. */
export interface RunSummary extends Omit<RunRecord, "config_yaml"> {
  hyper: Hyperparameters;
  last_train_loss: number | null;
  best_val_loss: number | null;
  best_val_loss_step: number | null;
  last_val_ppl: number | null;
  last_val_bpb: number | null; // bits per byte: compares runs of different tokenizers
  last_train_step: number | null; // step of the newest train/loss point: where a running run is now
  /** Its config's scalar leaves by dotted path (`model.kind`, `loss.mi.mlp`), for grouping the runs table. */
  config: Record<string, ConfigScalar>;
}

/** A leaf of a config. */
export type ConfigScalar = string | number | boolean | null;

/** Most config leaves kept per run (a resolved config has about 60). */
export const MAX_CONFIG_KEYS = 200;

/**
 * The hyperparameter columns of a resolved config; a config that does not parse gives nulls.
 *
 * @example
 * ```ts
 * import { hyperparameters } from "./run_summary.ts";
 * const h = hyperparameters("model: { kind: dsmoe, d_model: 64 }\ntrain: { optimizer: { lr: 0.003 } }\n");
 * console.log(h.kind, h.d_model, h.lr); // "dsmoe" 64 0.003
 * ```
 */
export function hyperparameters(configYaml: string): Hyperparameters {
  let c: unknown;
  try {
    c = parse(configYaml);
  } catch {
    c = null;
  }
  const num = (...path: string[]) => {
    const v = _at(c, path);
    return typeof v === "number" && Number.isFinite(v) ? v : null;
  };
  const str = (...path: string[]) => {
    const v = _at(c, path);
    return typeof v === "string" ? v : null;
  };
  const attentionKind = str("model", "attention", "kind");
  const kind = str("model", "kind");
  const routed = kind !== "dense" && _at(c, ["router"]) !== undefined;
  const train = str("router", "train") ?? "dense";
  const mlpRule = _rule(_at(c, ["router", "infer"]));
  const attRule = _at(c, ["router", "infer_attention"]) === undefined
    ? mlpRule
    : _rule(_at(c, ["router", "infer_attention"]));
  return {
    kind,
    d_model: num("model", "d_model"),
    layers: num("model", "layers"),
    attention_experts: attentionKind === "moa" ? num("model", "attention", "experts") : null,
    mlp_experts: num("model", "mlp", "experts"),
    router_train: routed ? _trainText(train, num, str) : null,
    router_infer: routed ? (attRule === mlpRule ? mlpRule : `${mlpRule}; attn ${attRule}`) : null,
    lr: num("train", "optimizer", "lr") ?? num("train", "lr"),
    steps: num("train", "steps"),
    seed: num("seed"),
  };
}

/**
 * How a config trains its routers, with the settings that tell the routers of the literature apart
 * (docs/design.md §16): `dense`, `topk 2` (with `cf 1.25` capacity factor, `+4 null` null experts,
 * `aux-free` balancing), `expert_choice c 2`, `top_p 0.4`, `relu s 0.75` (target sparsity); shared and
 * fine-grained MLP experts as `+1 shared`, `×2 seg`.
 */
function _trainText(
  train: string,
  num: (...path: string[]) => number | null,
  str: (...path: string[]) => string | null,
): string {
  const parts = [train];
  if (train === "topk") parts.push(String(num("router", "k") ?? 2));
  if (train === "expert_choice") parts.push(`c ${num("router", "capacity") ?? 2}`);
  if (train === "top_p") parts.push(String(num("router", "p") ?? 0.4));
  if (train === "relu") parts.push(`s ${num("router", "target_sparsity") ?? 0.75}`);
  const cf = num("router", "capacity_factor"), nulls = num("router", "null_experts");
  if (cf !== null && cf > 0) parts.push(`cf ${cf}`);
  if (nulls !== null && nulls > 0) parts.push(`+${nulls} null`);
  if (str("router", "balance") === "aux_free") parts.push("aux-free");
  const shared = num("model", "mlp", "shared"), seg = num("model", "mlp", "segments");
  if (shared !== null && shared > 0) parts.push(`+${shared} shared`);
  if (seg !== null && seg > 1) parts.push(`×${seg} seg`);
  return parts.join(" ");
}

/** An inference rule as "threshold 0.5", "topk 2", "top_p 0.9" or "dense" (the schema's defaults fill in). */
function _rule(r: unknown): string {
  const o = (typeof r === "object" && r !== null && !Array.isArray(r) ? r : {}) as Record<string, unknown>;
  const n = (k: string, d: number) => (typeof o[k] === "number" ? o[k] as number : d);
  const kind = typeof o.kind === "string" ? o.kind : "threshold";
  if (kind === "topk") return `topk ${n("k", 2)}`;
  if (kind === "top_p") return `top_p ${n("p", 0.9)}`;
  if (kind === "threshold" || kind === "threshold_topk") return `${kind} ${n("epsilon", 0.5)}`;
  return kind;
}

/**
 * The scalar leaves of a config by dotted path, in document order (at most {@linkcode MAX_CONFIG_KEYS});
 * lists are kept whole as compact JSON text.
 *
 * @example
 * ```ts
 * import { flatConfig } from "./run_summary.ts";
 * console.log(flatConfig("model: { kind: dsmoe, mlp: { experts: 8 } }\nloss: { mi: { mlp: 0.001 } }\n"));
 * // { "model.kind": "dsmoe", "model.mlp.experts": 8, "loss.mi.mlp": 0.001 }
 * ```
 */
export function flatConfig(configYaml: string): Record<string, ConfigScalar> {
  let c: unknown;
  try {
    c = parse(configYaml);
  } catch {
    return {};
  }
  const out: Record<string, ConfigScalar> = {};
  let n = 0;
  const walk = (v: unknown, path: string) => {
    if (n >= MAX_CONFIG_KEYS) return;
    if (typeof v === "object" && v !== null && !Array.isArray(v)) {
      for (const [k, x] of Object.entries(v)) walk(x, path ? `${path}.${k}` : k);
    } else if (path) {
      n++;
      out[path] = v === null || ["string", "number", "boolean"].includes(typeof v)
        ? v as ConfigScalar
        : JSON.stringify(v) ?? null;
    }
  };
  walk(c, "");
  return out;
}

function _at(v: unknown, path: readonly string[]): unknown {
  for (const k of path) {
    if (typeof v !== "object" || v === null || Array.isArray(v)) return undefined;
    v = (v as Record<string, unknown>)[k];
  }
  return v;
}

/** The runs-table row of `run`. */
export async function summarizeRun(store: RunStore, run: RunRecord): Promise<RunSummary> {
  const [last, best] = await Promise.all([
    store.lastMetrics(run.id, ["train/loss", "val/ppl", "val/bpb"]),
    store.bestMetrics(run.id, ["val/loss"]),
  ]);
  const { config_yaml, ...rest } = run;
  const hyper = hyperparameters(config_yaml);
  hyper.seed ??= run.seed;
  const bestVal = best.get("val/loss");
  return {
    ...rest,
    hyper,
    last_train_loss: last.get("train/loss")?.value ?? null,
    best_val_loss: bestVal?.value ?? null,
    best_val_loss_step: bestVal?.step ?? null,
    last_val_ppl: last.get("val/ppl")?.value ?? null,
    last_val_bpb: last.get("val/bpb")?.value ?? null,
    last_train_step: last.get("train/loss")?.step ?? null,
    config: flatConfig(config_yaml),
  };
}

/** Runs-table rows of `runs`, in their order. */
export function summarizeRuns(store: RunStore, runs: readonly RunRecord[]): Promise<RunSummary[]> {
  return Promise.all(runs.map((r) => summarizeRun(store, r)));
}

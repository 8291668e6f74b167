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
  router_train: string | null;
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
}

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
  return {
    kind: str("model", "kind"),
    d_model: num("model", "d_model"),
    layers: num("model", "layers"),
    attention_experts: attentionKind === "moa" ? num("model", "attention", "experts") : null,
    mlp_experts: num("model", "mlp", "experts"),
    router_train: str("router", "train"),
    lr: num("train", "optimizer", "lr") ?? num("train", "lr"),
    steps: num("train", "steps"),
    seed: num("seed"),
  };
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
  };
}

/** Runs-table rows of `runs`, in their order. */
export function summarizeRuns(store: RunStore, runs: readonly RunRecord[]): Promise<RunSummary[]> {
  return Promise.all(runs.map((r) => summarizeRun(store, r)));
}

/**
 * `run --dry-run`: the resolved config of every point with its parameter counts, active-parameter
 * estimate, FLOPs per token and memory estimate — computed by core/plan, nothing allocated.
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import { parseByteSize } from "../config/schema.ts";
import type { LoadedExperiment } from "../config/mod.ts";
import { experimentToYaml } from "../config/mod.ts";
import { activeParams, countParams, estimateMemory, flopsPerToken } from "../plan/counts.ts";
import { fmtBytes, fmtCount, table } from "../util/format.ts";

/** What a dry run reports for one point (also the `--json` shape, one entry of `points`). */
export interface PointSummary {
  name: string;
  params: Record<string, unknown>;
  params_total: number;
  params_active: number;
  params_active_exact: boolean;
  active_pct: number;
  hidden_pct: number;
  flops_per_token_train: number;
  flops_per_token_infer: number;
  flops_per_token_infer_dense: number;
  memory_train_bytes: number;
  memory_infer_bytes: number;
  memory_budget_bytes: number;
  fits_budget: boolean;
  components: Record<string, number>;
}

/** Computes the summary of one validated config. */
export function summarizePoint(
  name: string,
  params: Record<string, unknown>,
  c: Readonly<Experiment>,
): PointSummary {
  const p = countParams(c), a = activeParams(c), f = flopsPerToken(c), m = estimateMemory(c);
  const budget = parseByteSize(c.hardware.memory_budget);
  const { total: _total, experts: _experts, ...components } = p;
  return {
    name,
    params,
    params_total: p.total,
    params_active: a.active,
    params_active_exact: a.exact,
    active_pct: (100 * a.active) / a.all,
    hidden_pct: a.hiddenPct,
    flops_per_token_train: f.train,
    flops_per_token_infer: f.infer,
    flops_per_token_infer_dense: f.inferDense,
    memory_train_bytes: m.train,
    memory_infer_bytes: m.infer,
    memory_budget_bytes: budget,
    fits_budget: m.train <= budget,
    components,
  };
}

/** Text report of a loaded experiment: resolved config, then one block per point, then a table. */
export function formatDryRun(loaded: LoadedExperiment, points: readonly PointSummary[]): string {
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
    const comp = Object.entries(s.components).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${fmtCount(v)}`);
    out.push(`  params        ${fmtCount(s.params_total)} total: ${comp.join(", ")}`);
    out.push(
      `  active        ${fmtCount(s.params_active)} per token (${
        s.active_pct.toFixed(1)
      }% of non-embedding, ` +
        `hidden ${s.hidden_pct.toFixed(1)}%)${
          s.params_active_exact ? "" : " — upper bound; deno task eval measures it"
        }`,
    );
    out.push(
      `  FLOPs/token   train ${fmtCount(s.flops_per_token_train)}, inference ${
        fmtCount(s.flops_per_token_infer)
      }` +
        ` (dense execution ${fmtCount(s.flops_per_token_infer_dense)})`,
    );
    out.push(
      `  memory        train ${fmtBytes(s.memory_train_bytes)}, inference ${fmtBytes(s.memory_infer_bytes)}` +
        ` (budget ${fmtBytes(s.memory_budget_bytes)}${s.fits_budget ? "" : ": DOES NOT FIT"})`,
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

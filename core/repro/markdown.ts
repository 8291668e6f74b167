/**
 * The reproduction report as Markdown (`runs/repro/REPORT.md`, also stored with the report). Every number is
 * a field of the {@linkcode ReproReport}, formatted here and nowhere else.
 *
 * @module
 */
import { fmtBpb, fmtChange, fmtPpl } from "../util/quantities.js";
import { fmtCount } from "../util/format.ts";
import type { ReproReport } from "./report.ts";

const _ROLE_NAMES: Record<string, string> = {
  dense: "Dense",
  smoe: "SMoE (top-2, Switch loss)",
  dsmoe: "DS-MoE (MoA + MoE, MI loss)",
  alpha0: "DS-MoE, α = 0",
  "alpha-3x": "DS-MoE, α = 3× paper",
  "alpha-large": "DS-MoE, α = 10× paper",
};

/** Formats a perplexity, a percentage and a ratio as the report shows them. */
export const fmt = {
  ppl: (x: number | null) => fmtPpl(x),
  bpb: (x: number | null) => fmtBpb(x),
  pct: (x: number | null) => (x === null || !Number.isFinite(x) ? "—" : x.toFixed(1)),
  signedPct: (x: number) => fmtChange(x),
  count: (x: number | null) => (x === null || !Number.isFinite(x) ? "—" : fmtCount(x)),
  num: (x: number, digits: number) => (Number.isFinite(x) ? x.toFixed(digits) : "—"),
};

/** The role's display name. */
export function roleName(role: string): string {
  return _ROLE_NAMES[role] ?? role;
}

function _table(head: string[], rows: string[][], right: boolean[]): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(head), line(head.map((_, i) => (right[i] ? "---:" : "---"))), ...rows.map(line)].join("\n");
}

/** Renders the report. */
export function renderReproMarkdown(r: ReproReport, o: { store: string }): string {
  const out: string[] = [];
  out.push(`# DS-MoE reproduction (scale: ${r.scale})`, "");
  // Stated before anything else: a smoke-test scale's claims mean nothing (report.ts SMOKE_TEST_NOTE).
  if (r.caveat) out.push(`> **Smoke test: these claims mean nothing.** ${r.caveat}`, "");
  out.push(
    `Report \`${r.id}\`, made ${r.created_at} from the run store \`${o.store}\` (every number below is read ` +
      `from it). Claims are checked under the rule \`${r.claim_rule}\` for DS-MoE and each other model's own ` +
      "inference rule.",
    "",
  );
  out.push("## Claims", "");
  out.push(_table(
    ["#", "claim", "test", "held", "measured"],
    r.claims.map((c) => [
      String(c.id),
      c.claim,
      c.test,
      c.held === null ? "not measured" : c.held ? "**yes**" : "**no**",
      c.evidence,
    ]),
    [false, false, false, false, false],
  ));
  out.push("", "## Models", "");
  out.push(
    "Shares by one definition for every model (docs/design.md §5): **hidden %** is the share of a model's " +
      "hidden parameters — the weights of its attention and MLP blocks (Q, K, V, O projections and MLP " +
      "w1/w2), routed or not (" +
      r.models.map((m) => `${roleName(m.role)}: ${fmt.count(m.hidden_params)}`).join("; ") +
      ") — that run per token under its rule, averaged over tokens; blocks without a router always run, so " +
      "the dense model is at 100%. **active %** is the share of its parameters outside the embeddings, norms " +
      "and LM head (routers included); **all %** the share of all its parameters, embeddings included.",
    "",
  );
  out.push(_table(
    [
      "model",
      "run",
      "status",
      "rule",
      "total params",
      "active params",
      "active %",
      "hidden %",
      "all %",
      "val ppl",
      "val bpb",
    ],
    r.models.map((m) => [
      roleName(m.role),
      `\`${m.run_id}\``,
      m.status,
      m.rule,
      fmt.count(m.params_total),
      fmt.count(m.active_params),
      fmt.pct(m.active_pct),
      fmt.pct(m.hidden_pct),
      fmt.pct(m.active_pct_all),
      fmt.ppl(m.ppl),
      fmt.bpb(m.bpb),
    ]),
    [false, false, false, false, true, true, true, true, true, true, true],
  ));
  out.push("", "## Sparsity frontier", "");
  for (const f of r.frontier) {
    if (f.rows.length <= 1) continue;
    out.push(`### ${roleName(f.role)}`, "");
    out.push(_table(
      ["rule", "active params", "active %", "hidden %", "all %", "ppl", "bpb", "Δppl vs dense eval"],
      f.rows.map((x) => [
        x.rule,
        fmt.count(x.active_params),
        fmt.pct(x.active_pct),
        fmt.pct(x.hidden_pct),
        fmt.pct(x.active_pct_all),
        fmt.ppl(x.ppl),
        fmt.bpb(x.bpb),
        fmt.signedPct(x.dppl_pct),
      ]),
      [false, true, true, true, true, true, true, true],
    ));
    out.push("");
  }
  if (r.mi.length > 0) _miSection(r, out);
  out.push("## Router balance and sharpness", "");
  out.push(
    "At the last validation of each run: probability CV is the coefficient of variation across experts of " +
      "the mean router probability, top-1 CV the same of the share of tokens whose most probable expert it " +
      "is (0 = perfectly balanced); entropy is the mean per-token routing entropy in nats (lower = sharper).",
    "",
  );
  const layer = (y: ReproReport["routers"][number]["rows"][number]) =>
    `L${y.layer} ${y.kind}: ${fmt.num(y.prob_cv, 3)} / ${fmt.num(y.load_cv, 3)} / ${fmt.num(y.entropy, 3)}`;
  out.push(_table(
    [
      "model",
      "step",
      "probability CV",
      "top-1 CV",
      "entropy",
      "per layer (probability CV / top-1 CV / entropy)",
    ],
    r.routers.map((x) => [
      roleName(x.role),
      String(x.step),
      fmt.num(x.mean_prob_cv, 3),
      fmt.num(x.mean_load_cv, 3),
      fmt.num(x.mean_entropy, 3),
      x.rows.map(layer).join("; "),
    ]),
    [false, true, true, true, true, false],
  ));
  out.push("", "## Decoding speed", "");
  out.push(
    "Greedy decoding, one token at a time with a KV cache on the sparse engine (only the selected experts " +
      "compute), each token read back as `generate` does.",
    "",
  );
  out.push(_table(
    ["model", "rule", "tokens/s", "vs dense"],
    r.decode.map((d) => [
      roleName(d.role),
      d.rule,
      fmt.num(d.tokens_per_s, 1),
      d.vs_dense === null ? "—" : `${fmt.num(d.vs_dense, 2)}×`,
    ]),
    [false, false, true, true],
  ));
  out.push("");
  return out.join("\n");
}

/** The MI-weight sweep: how quality, routing and the sparsity budget move with the weight. */
function _miSection(r: ReproReport, out: string[]): void {
  const dense = r.models.find((m) => m.role === "dense");
  out.push("## MI loss weight", "");
  out.push(
    `DS-MoE at each mutual-information weight (attention / MLP routers), under \`${r.claim_rule}\`. ` +
      '"Within 5% of dense" is the fewest hidden parameters active on the model\'s frontier at a perplexity ' +
      `at most 5% above the dense model's (${
        fmt.ppl(dense?.ppl ?? null)
      }): the budget DS-MoE needs to match it.`,
    "",
  );
  out.push(_table(
    [
      "model",
      "MI weight",
      "dense-eval ppl",
      "ppl",
      "bpb",
      "hidden %",
      "entropy",
      "probability CV",
      "within 5% of dense",
    ],
    r.mi.map((m) => [
      roleName(m.role),
      `${m.mi_attention} / ${m.mi_mlp}`,
      fmt.ppl(m.dense_ppl),
      fmt.ppl(m.ppl),
      fmt.bpb(m.bpb),
      fmt.pct(m.hidden_pct),
      fmt.num(m.mean_entropy ?? NaN, 3),
      fmt.num(m.mean_prob_cv ?? NaN, 3),
      m.within
        ? `${fmt.pct(m.within.hidden_pct)}% hidden (${m.within.rule}, ppl ${fmt.ppl(m.within.ppl)})`
        : "none",
    ]),
    [false, true, true, true, true, true, true, true, false],
  ));
  out.push("");
}

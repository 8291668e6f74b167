/**
 * The router study's report as Markdown (`<runs-dir>/study/<name>/REPORT.md`, also stored with the report).
 * Every number is a field of the {@linkcode StudyReport}, written by the quantity formats of
 * core/util/quantities.js (as the dashboard writes them).
 *
 * @module
 */
import { fmtChange } from "../util/quantities.js";
import type { StudyCell, StudyReport } from "../runs/study_types.ts";
import { fmtBpb, fmtCount, fmtNum, fmtPct, fmtPpl, NONE } from "../util/quantities.js";
import { SPEED_NOTE } from "./study_report.ts";

function _table(head: string[], rows: string[][], right: boolean[]): string {
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(head), line(head.map((_, i) => (right[i] ? "---:" : "---"))), ...rows.map(line)].join("\n");
}

/** "+1.23%" / "-0.50%", or the missing mark (core/util/quantities.js's relative change). */
export function signedPct(x: number | null): string {
  return fmtChange(x);
}

/** The cell of `model` under column `rule`. */
export function cellOf(r: StudyReport, model: string, rule: string): StudyCell | undefined {
  return r.cells.find((c) => c.model === model && c.rule === rule);
}

/** One matrix: rows the models, columns the rules, each cell written by `f` (n/a cells as a dash). */
function _matrix(r: StudyReport, f: (c: StudyCell) => string): string {
  return _table(
    ["model", ...r.rules.map((x) => x.label)],
    r.models.map((m) => [
      `**${m.name}**`,
      ...r.rules.map((x) => {
        const c = cellOf(r, m.name, x.spec);
        return !c || c.na !== null ? NONE : f(c);
      }),
    ]),
    [false, ...r.rules.map(() => true)],
  );
}

/** Renders the report. */
export function renderStudyMarkdown(r: StudyReport, o: { store: string }): string {
  const out: string[] = [];
  out.push(`# Router study ${r.name} (scale: ${r.scale})`, "");
  if (r.caveat) out.push(`> **Smoke test: these numbers mean nothing.** ${r.caveat}`, "");
  out.push(
    `Report \`${r.id}\`, made ${r.created_at} from the run store \`${o.store}\` (every number below is read ` +
      `from it; runs of sweep \`${r.sweep_id}\`). Rows are the training routers and the dense baseline, ` +
      "columns the inference rules each was evaluated under on the same validation batches.",
    "",
  );
  _models(r, out);
  out.push("## Matrix", "");
  out.push(
    `Perplexity, and in brackets against the baseline's dense ${fmtPpl(r.baseline_ppl)} (+ worse). A dash: ` +
      "the baseline has no routers (every rule runs the whole model), or the cell was not measured.",
    "",
  );
  out.push(_matrix(r, (c) => `${fmtPpl(c.ppl)} (${signedPct(c.dppl_pct)})`), "");
  out.push("### Bits per byte", "", _matrix(r, (c) => fmtBpb(c.bpb)), "");
  out.push(
    "### Hidden % / active %",
    "",
    "Measured per token on the validation batches (docs/design.md §5): hidden % is the share of the attention " +
      "and MLP weights that run (the same weights for every model), active % the share of the non-embedding " +
      "parameters.",
    "",
    _matrix(r, (c) => `${fmtPct(c.hidden_pct)} / ${fmtPct(c.active_pct)}`),
    "",
  );
  out.push("### Tokens per second", "", SPEED_NOTE, "", _matrix(r, (c) => fmtNum(c.tokens_per_s)), "");
  _frontier(r, out);
  _diagnostics(r, out);
  if (r.decode.length > 0) {
    out.push("## Decoding", "");
    out.push(
      "Greedy decoding, one token at a time with a KV cache on the sparse engine, under each model's own rule.",
      "",
    );
    out.push(_table(
      ["model", "rule", "tokens/s"],
      r.decode.map((d) => [d.model, d.rule, fmtNum(d.tokens_per_s)]),
      [false, false, true],
    ));
    out.push("");
  }
  return out.join("\n");
}

function _models(r: StudyReport, out: string[]): void {
  out.push("## Models", "");
  const size = new Map(r.size.rows.map((x) => [x.name, x]));
  out.push(_table(
    ["model", "run", "status", "training", "own rule", "total params", "vs baseline size"],
    r.models.map((m) => {
      const s = size.get(m.name);
      return [
        m.name,
        m.run_id ? `\`${m.run_id}\`` : NONE,
        m.status ?? "not trained",
        m.train,
        m.infer,
        m.run_id ? fmtCount(m.params_total) : NONE,
        s ? `${signedPct(s.rel_diff * 100)}${s.within ? "" : " **beyond tolerance**"}` : NONE,
      ];
    }),
    [false, false, false, false, false, true, true],
  ));
  const beyond = r.size.rows.filter((x) => !x.within).map((x) => x.name);
  out.push(
    "",
    `Equal total size: every model within ${(r.size.tolerance * 100).toFixed(2)}% of the baseline's ` +
      `${fmtCount(r.size.baseline_params)} parameters (embeddings included)? ` +
      (r.size.within
        ? "**yes**."
        : `**no**: ${beyond.join(", ")} (size.on_mismatch: ${r.size.on_mismatch}; compare them with care).`),
    "",
  );
}

function _frontier(r: StudyReport, out: string[]): void {
  out.push("## Frontier", "");
  out.push(
    "Each router's quality against its measured active parameters per token, one point per rule (a column " +
      "that names the same rule as another, such as own, shares its point). ★ marks the Pareto points: no other rule of the " +
      `router has as few active parameters and a perplexity as low. The baseline: ${
        fmtPpl(r.baseline_ppl)
      } ` +
      "with every parameter active.",
    "",
  );
  for (const f of r.frontier) {
    out.push(`### ${f.model}`, "");
    out.push(_table(
      ["rule", "active params", "active %", "hidden %", "ppl", "bpb", "Pareto"],
      f.points.map((p) => [
        p.rule_name,
        fmtCount(p.active_params),
        fmtPct(p.active_pct),
        fmtPct(p.hidden_pct),
        fmtPpl(p.ppl),
        fmtBpb(p.bpb),
        p.pareto ? "★" : "",
      ]),
      [false, true, true, true, true, true, false],
    ));
    out.push("");
  }
}

function _diagnostics(r: StudyReport, out: string[]): void {
  out.push("## Routing diagnostics", "");
  out.push(
    "Per routed block at the last validation of training: the load of each expert (share of validation " +
      "tokens whose most probable expert it is), its coefficient of variation (0 = balanced) and largest " +
      "share, and the mean per-token routing entropy in nats (lower = sharper).",
    "",
  );
  const routed = r.diagnostics.filter((d) => d.layers.length > 0);
  out.push(_table(
    ["model", "step", "load CV", "entropy", "per block: load per expert (entropy)"],
    routed.map((d) => [
      d.model,
      d.step === null ? NONE : String(d.step),
      fmtNum(d.mean_load_cv),
      fmtNum(d.mean_entropy),
      d.layers.map((l) =>
        `L${l.layer} ${l.kind}: ${l.load.map((x) => fmtPct(x * 100)).join(" ")} (${fmtNum(l.entropy)})`
      ).join("; "),
    ]),
    [false, true, true, true, false],
  ));
  out.push("");
  out.push(
    "From the study's evaluation of each final checkpoint on the validation batches: routing entropy (nats, " +
      "mean over tokens and routers), mutual information between the top-1 expert and the domain of the token " +
      "(bits, mean over routers; at most the domain entropy; only on data with domain labels, " +
      "synthetic:multidomain), and routing stability: the share of tokens whose top-1 expert changed since the " +
      "previous checkpoint (mean over routers; lower = more stable).",
    "",
  );
  out.push(_table(
    ["model", "entropy", "MI(expert; domain)", "stability: top-1 changed", "since step"],
    routed.map((d) => [
      d.model,
      fmtNum(d.eval_entropy),
      d.mi_domain_bits === null
        ? NONE
        : `${fmtNum(d.mi_domain_bits)} of ${fmtNum(d.domain_entropy_bits)} bits`,
      d.top1_changed === null ? NONE : fmtPct(d.top1_changed * 100),
      d.stability_against === null ? NONE : String(d.stability_against),
    ]),
    [false, true, true, true, true],
  ));
  out.push("");
  const ids = Object.keys(r.diagnostic_labels);
  if (ids.length > 0) {
    out.push("### Per router and rule", "");
    out.push(_table(
      ["model", "rule", ...ids.map((id) => r.diagnostic_labels[id]!)],
      routed.flatMap((d) =>
        d.cells.map((c) => [d.model, c.rule, ...ids.map((id) => fmtNum(c.values[id] ?? null))])
      ),
      [false, false, ...ids.map(() => true)],
    ));
    out.push("");
  }
}

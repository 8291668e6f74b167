import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { type Experiment, ExperimentSchema } from "../config/schema.ts";
import type { MetricRow } from "../runs/store.ts";
import { openSqliteStore } from "../runs/sqlite_store.ts";
import { renderReproMarkdown } from "./markdown.ts";
import {
  buildReproReport,
  CV_SLACK,
  ENTROPY_MARGIN,
  judgeClaims,
  type ModelRow,
  type ReproReport,
  ruleShares,
  SMOKE_TEST_NOTE,
  WORSE_MARGIN,
} from "./report.ts";
import { loadReproSpec, type Role } from "./spec.ts";

function _row(role: Role, ppl: number, hidden = 40): ModelRow {
  return {
    role,
    run_id: `run-${role}`,
    name: role,
    status: "finished",
    step: 80,
    rule: role === "smoe" ? "topk@2" : "threshold@0.5",
    params_total: 1000,
    active_params: 500,
    active_pct: 50,
    hidden_pct: hidden,
    active_pct_all: 60,
    hidden_params: 800,
    ppl,
    bpb: 1,
  };
}

function _router(role: Role, entropy: number, cv: number): ReproReport["routers"][number] {
  return {
    role,
    run_id: `run-${role}`,
    step: 80,
    mean_prob_cv: cv,
    mean_load_cv: cv,
    mean_entropy: entropy,
    rows: [],
  };
}

/** The claims for a DS-MoE at ppl 10 against an SMoE at `smoe` and MI entropy `mi` against α = 0's 1.0. */
function _claims(smoe: number, mi: number, cv = 0.2) {
  const rows = new Map<Role, ModelRow>([
    ["dense", _row("dense", 10, 100)],
    ["smoe", _row("smoe", smoe, 25)],
    ["dsmoe", _row("dsmoe", 10)],
  ]);
  return judgeClaims(rows, [_router("dsmoe", mi, cv), _router("alpha0", 1.0, 0.2)]);
}

Deno.test("claim 3 needs SMoE worse than DS-MoE by more than WORSE_MARGIN; claim 4 entropy lower by ENTROPY_MARGIN", () => {
  assertEquals([WORSE_MARGIN, ENTROPY_MARGIN], [0.01, 0.01]);
  // Within the margin: a difference that decides nothing.
  assertEquals(_claims(10 * (1 + WORSE_MARGIN / 2), 1 - ENTROPY_MARGIN / 2).map((c) => c.held), [
    true,
    true,
    false,
    false,
  ]);
  // Past it.
  assertEquals(_claims(10 * (1 + 2 * WORSE_MARGIN), 1 - 2 * ENTROPY_MARGIN).map((c) => c.held), [
    true,
    true,
    true,
    true,
  ]);
  // Sharper but less balanced than CV_SLACK allows.
  assertEquals(_claims(11, 0.9, 0.2 + 2 * CV_SLACK)[3]!.held, false);
  const [, , c3, c4] = _claims(11, 0.9);
  assert(c3!.test.includes(`× ${1 + WORSE_MARGIN}`), c3!.test);
  assert(c4!.test.includes(`× ${1 - ENTROPY_MARGIN} (lower by at least 1%)`), c4!.test);
});

Deno.test("the micro scale's report says first that it is a smoke test whose claims mean nothing; small's does not", async () => {
  const dir = await Deno.makeTempDir();
  const store = openSqliteStore(`${dir}/runs.db`);
  try {
    const claimRule = (await loadReproSpec("configs/repro/repro.yaml")).claimRule.rules;
    const micro = await buildReproReport(store, "repro-micro-x", { scale: "micro", claimRule });
    assertEquals(micro.caveat, SMOKE_TEST_NOTE);
    assert(micro.claims.every((c) => c.held === null), "nothing measured in an empty store");
    const md = renderReproMarkdown(micro, { store: "sqlite:x" }).split("\n");
    assertEquals(md[0], "# DS-MoE reproduction (scale: micro)");
    assert(md[2]!.startsWith("> **Smoke test: these claims mean nothing.** This is a smoke test"), md[2]);
    assert(md.indexOf("## Claims") > 2, "before the claims");

    const small = await buildReproReport(store, "repro-small-x", { scale: "small", claimRule });
    assertEquals(small.caveat, null);
    assert(!renderReproMarkdown(small, { store: "sqlite:x" }).includes("Smoke test"));
  } finally {
    store.close();
    await Deno.remove(dir, { recursive: true });
  }
});

/** A tiny config written out (d 128, 4 layers, 256 bytes, seq_len 128), as in core/plan/counts_test.ts. */
function _cfg(model: Record<string, unknown>, router: Record<string, unknown>): Experiment {
  return ExperimentSchema.parse({
    data: { seq_len: 128 },
    model: { d_model: 128, layers: 4, norm: "layernorm", position: "learned", ...model },
    router,
    train: { batch: 16 },
  });
}

/** Stored points of `infer/<rule>/…`: each field's value, and each routed layer's experts per token. */
function _stored(rule: string, fields: Record<string, number>, layers: [string, number][]) {
  const rows = new Map<string, MetricRow>();
  const put = (key: string, value: number) =>
    rows.set(key, { key, step: 80, tokens: 0, time: 0, value, seq: rows.size + 1 });
  for (const [k, v] of Object.entries(fields)) put(`infer/${rule}/${k}`, v);
  for (const [i, [kind, experts]] of layers.entries()) {
    put(`infer/${rule}/layer/${i % 4}/${kind}/experts`, experts);
  }
  return rows;
}

Deno.test("ruleShares() recomputes every model's shares by docs/design.md §5 from its stored experts per layer", () => {
  const smoe = _cfg(
    {
      kind: "smoe",
      attention: { kind: "mha", heads: 8, kv_heads: 2, head_dim: 16 },
      mlp: { experts: 8, hidden: 128 },
    },
    { train: "topk", k: 2, infer: { kind: "topk", k: 2 } },
  );
  const dsmoe = _cfg(
    {
      kind: "dsmoe",
      attention: { kind: "moa", experts: 4, heads_per_expert: 2, head_dim: 16 },
      mlp: { experts: 8, hidden: 128 },
    },
    { train: "dense" },
  );
  // Both have 1,212,416 hidden parameters (attention Q/K/V/O and MLP weights, 4 × 303,104).
  // SMoE top-2 of 8 MLP experts (786,432 skipped of 1,267,968): its dense attention runs whole, 425,984 hidden
  // parameters run (13/37). The stored hidden % (25, its MLP experts only, as an eval before 2026-12-06
  // wrote it) is not taken.
  const mlp2: [string, number][] = [0, 1, 2, 3].map(() => ["mlp", 2]);
  const s = ruleShares(_stored("topk@2", { ppl: 5, hidden_pct: 25, active_pct: 1 }, mlp2), "topk@2", smoe);
  assertEquals(s.hidden_pct, (100 * 425_984) / 1_212_416);
  assertEquals(s.active_params, 32768 + 131072 + 262144 + 4096);
  assertEquals(s.active_pct_all, (100 * (1_267_968 - 786_432)) / 1_267_968);
  // DS-MoE with 1 of 4 attention and 2 of 8 MLP experts per token: 884,736 skipped, 327,680 hidden run (10/37;
  // 25% of its routed experts under the earlier definition).
  const att1: [string, number][] = [0, 1, 2, 3].map(() => ["attention", 1]);
  const d = ruleShares(_stored("t", { ppl: 5 }, [...att1, ...mlp2]), "t", dsmoe);
  assertEquals(d.hidden_pct, (100 * 327_680) / 1_212_416);
  assertEquals(d.active_pct_all, (100 * (1_270_016 - 884_736)) / 1_270_016);
  // Without stored layers (an older eval): the skipped parameters from its stored active parameters (1,218,560
  // non-embedding less 884,736), not its stored hidden %; the same shares as from the layers.
  const old = { ppl: 5, hidden_pct: 25, active_pct: 27, active_params: 333_824 };
  assertEquals(ruleShares(_stored("t", old, mlp2), "t", dsmoe), d);
  // Neither layers nor active parameters, or not evaluated: nothing.
  assertEquals(ruleShares(_stored("t", { ppl: 5, hidden_pct: 40 }, mlp2), "t", dsmoe).hidden_pct, null);
  assertEquals(ruleShares(_stored("t", { hidden_pct: 40 }, []), "t", dsmoe).hidden_pct, null);
});

Deno.test("claims 2 and 3 quote each model's hidden % of its attention and MLP weights beside its share of all", () => {
  const [, c2, c3] = _claims(11, 0.9);
  assertEquals(c2!.claim, "… with at most half of its hidden parameters (attention and MLP weights) active");
  assertEquals(
    c2!.evidence,
    "40.0% of its 800 attention and MLP parameters active (60.0% of all parameters, 50.0% of the " +
      "non-embedding ones)",
  );
  assert(
    c3!.evidence.startsWith(
      "SMoE 11.00 (hidden 25.0% of 800 attention and MLP parameters; 60.0% of all parameters",
    ),
    c3!.evidence,
  );
  assert(
    c3!.evidence.includes("vs DS-MoE 10.00 (hidden 40.0% of 800 attention and MLP parameters"),
    c3!.evidence,
  );
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { openSqliteStore } from "../runs/sqlite_store.ts";
import { renderReproMarkdown } from "./markdown.ts";
import {
  buildReproReport,
  CV_SLACK,
  ENTROPY_MARGIN,
  judgeClaims,
  type ModelRow,
  type ReproReport,
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

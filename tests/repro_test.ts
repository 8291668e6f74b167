import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { createApp } from "../core/dashboard/app.ts";
import { fmt } from "../core/repro/markdown.ts";
import { buildReproReport, type ReproReport, SMOKE_TEST_NOTE } from "../core/repro/report.ts";
import { reproSummary } from "../core/cli/repro_cmd.ts";
import { loadReproSpec } from "../core/repro/spec.ts";
import { closeRunStores, openRunStore } from "../core/runs/open_store.ts";
import { cli } from "./helpers/cli.ts";

/** The rows of the Markdown table under `heading` (up to the next heading), as cells. */
function tableAfter(md: string, heading: string): string[][] {
  const start = md.indexOf(`\n${heading}\n`);
  assert(start >= 0, `no section ${heading}`);
  const rest = md.slice(start + heading.length + 2);
  const end = rest.search(/\n#{2,3} /);
  const lines = (end < 0 ? rest : rest.slice(0, end)).split("\n").filter((l) => l.startsWith("|"));
  return lines.slice(2).map((l) => l.slice(1, -1).split("|").map((c) => c.trim()));
}

Deno.test("repro --scale micro trains five models, writes a report whose every number is in the run store, and reuses them on rerun", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const r = await cli("repro", "--scale", "micro", "--runs-dir", dir, "--no-dashboard", "--json");
    assertEquals(r.code, 0, r.err.join("\n"));
    const j = r.json();
    const md = await Deno.readTextFile(`${dir}/repro/REPORT.md`);
    assert(
      md.split("\n")[2]!.startsWith("> **Smoke test"),
      "micro's report says first that it is a smoke test",
    );
    assert(!r.out.join("\n").includes("## Models"), "the terminal gets a summary, not the whole report");
    assert(r.out.some((l) => l.startsWith("Claims (scale micro): ")), r.out.join("\n"));
    assert(r.out.some((l) => l.includes(`${dir}/repro/REPORT.md`)), "the summary names the report");
    for (
      const h of [
        "## Claims",
        "## Models",
        "## Sparsity frontier",
        "## Router balance and sharpness",
        "## Decoding speed",
      ]
    ) {
      assert(md.includes(`\n${h}\n`), `section ${h}`);
    }
    assertEquals(j.claims.map((c: { id: number }) => c.id), [1, 2, 3, 4]);
    for (const c of j.claims) assert(typeof c.held === "boolean", `claim ${c.id} measured`);

    const store = await openRunStore(dir);
    const stored = (await store.getReport(j.id))!;
    assertEquals(stored.markdown, md, "the report in the store is the file");
    // Rebuilt from the store alone, the report has the same numbers.
    const spec = await loadReproSpec("configs/repro/repro.yaml");
    const rebuilt = await buildReproReport(store, j.id, { scale: "micro", claimRule: spec.claimRule.rules });
    const data = stored.data as unknown as ReproReport;
    assertEquals({ ...rebuilt, created_at: "" }, { ...data, created_at: "" });

    // Each number of the models and decode tables is a stored metric of the run it names, formatted.
    const models = tableAfter(md, "## Models");
    assertEquals(models.length, 5);
    for (const row of models) {
      const [, run, status, rule, , , activePct, hiddenPct, allPct, ppl] = row;
      const id = run!.replaceAll("`", "");
      const last = await store.lastMetrics(id);
      assertEquals((await store.getRun(id))!.status, status);
      assertEquals(ppl, fmt.ppl(last.get(`infer/${rule}/ppl`)!.value));
      assertEquals(hiddenPct, fmt.pct(last.get(`infer/${rule}/hidden_pct`)!.value));
      assertEquals(activePct, fmt.pct(last.get(`infer/${rule}/active_pct`)!.value));
      assertEquals(allPct, fmt.pct(last.get(`infer/${rule}/active_pct_all`)!.value));
    }
    const byRole = new Map(data.models.map((m) => [m.role, m.run_id]));
    const decode = tableAfter(md, "## Decoding speed");
    assertEquals(decode.length, 3);
    for (const [i, role] of ["dense", "smoe", "dsmoe"].entries()) {
      const [, rule, speed] = decode[i]!;
      const stored = (await store.lastMetrics(byRole.get(role as never)!)).get(
        `generate/${rule}/tokens_per_s`,
      )!;
      assertEquals(speed, fmt.num(stored.value, 1));
    }
    // The claims' evidence quotes the models table.
    const ds = data.models.find((m) => m.role === "dsmoe")!,
      dense = data.models.find((m) => m.role === "dense")!;
    assert(
      data.claims[0]!.evidence.startsWith(`DS-MoE ${ds.ppl!.toFixed(2)} vs dense ${dense.ppl!.toFixed(2)}`),
    );
    assertEquals(data.claims[1]!.held, ds.hidden_pct! <= 50);

    // The dashboard's sweep page shows the same report.
    const page = await (await createApp({ store }).request(`http://localhost/sweeps/${j.id}`)).text();
    assert(
      page.includes("DS-MoE reproduction (scale: micro)") && page.includes(ds.run_id),
      "report on the sweep page",
    );

    // Again: every model is reused, nothing is trained or evaluated twice.
    const runs = (await store.listRuns({ sweepId: j.id })).length;
    const points = (await store.metrics(ds.run_id)).length;
    const again = await cli("repro", "--scale", "micro", "--runs-dir", dir, "--no-dashboard", "--json");
    assertEquals(again.code, 0, again.err.join("\n"));
    assertEquals((await store.listRuns({ sweepId: j.id })).length, runs);
    assertEquals((await store.metrics(ds.run_id)).length, points);
    assertEquals(again.json().models, j.models);
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("repro refuses an unknown scale and stray arguments with usage errors", async () => {
  const r = await cli("repro", "--scale", "huge");
  assertEquals(r.code, 2);
  assert(
    r.err.join("\n").includes("micro, small") || r.err.join("\n").includes("small, micro"),
    r.err.join("\n"),
  );
  assertEquals((await cli("repro", "extra")).code, 2);
});

Deno.test("repro prints a short summary: micro's smoke-test caveat first, each claim held or not, the report's path", () => {
  const claim = (id: number, held: boolean | null) => ({
    id,
    claim: `claim ${id}`,
    test: "t",
    held,
    evidence: `numbers ${id}`,
  });
  const report = {
    id: "repro-micro-abc",
    scale: "micro",
    caveat: SMOKE_TEST_NOTE,
    claims: [claim(1, true), claim(2, false), claim(3, null), claim(4, true)],
  } as unknown as ReproReport;
  const lines = reproSummary(report, "/tmp/r/repro/REPORT.md");
  assert(lines[0]!.startsWith("Smoke test (--scale micro): This is a smoke test of the pipeline"), lines[0]);
  assertEquals(lines.slice(2), [
    "Claims (scale micro): 2 of 4 held",
    "  1. held         claim 1: numbers 1",
    "  2. did not hold claim 2: numbers 2",
    "  3. not measured claim 3: numbers 3",
    "  4. held         claim 4: numbers 4",
    "Report repro-micro-abc: /tmp/r/repro/REPORT.md (also in the run store; deno task dashboard → /sweeps/repro-micro-abc)",
  ]);
  const small = reproSummary({ ...report, scale: "small", caveat: null }, "REPORT.md");
  assertEquals(small[0], "Claims (scale small): 2 of 4 held");
  assert(!small.join("\n").includes("Smoke test"));
});

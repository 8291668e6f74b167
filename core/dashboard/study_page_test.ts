import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { openSqliteStore } from "../runs/sqlite_store.ts";
import { asStudyReport, type StudyCell, type StudyReport } from "../runs/study_types.ts";
import { createApp } from "./app.ts";
import { HEAT_BUCKETS, heatClass, studyPage } from "./study_page.ts";

const HOSTILE = `"><img src=x onerror=alert(1)></script>`;

function _cell(
  model: string,
  rule: string,
  runId: string | null,
  ppl: number | null,
  dppl: number | null,
): StudyCell {
  return {
    model,
    rule,
    rule_name: ppl === null ? null : rule.replace(":", "@"),
    run_id: runId,
    ppl,
    bpb: ppl === null ? null : 1.5,
    loss: ppl === null ? null : Math.log(ppl),
    active_params: ppl === null ? null : 1000,
    active_pct: ppl === null ? null : 50,
    hidden_pct: ppl === null ? null : 37.5,
    tokens_per_s: ppl === null ? null : 1234,
    dppl_pct: dppl,
    na: ppl === null ? "no routers" : null,
  };
}

/** A report of a baseline and one router (named `v`), under dense and `rule`. */
function _report(v: string, rule = "topk:1"): StudyReport {
  return {
    id: "study-x-micro",
    name: v,
    scale: "micro",
    caveat: v,
    created_at: "2026-12-06T00:00:00Z",
    sweep_id: "study-x-micro",
    baseline: "baseline",
    baseline_ppl: 10,
    rules: [{ spec: "dense", label: "dense" }, { spec: rule, label: rule }],
    models: [
      {
        name: "baseline",
        run_id: "run-b",
        status: "finished",
        step: 1,
        train: "dense model",
        infer: "dense",
        routed: false,
        params_total: 9,
      },
      {
        name: v,
        run_id: "run-r",
        status: "finished",
        step: 1,
        train: v,
        infer: v,
        routed: true,
        params_total: 9,
      },
    ],
    cells: [
      _cell("baseline", "dense", "run-b", 10, 0),
      _cell("baseline", rule, "run-b", null, null),
      _cell(v, "dense", "run-r", 9.5, -5),
      _cell(v, rule, "run-r", 13, 30),
    ],
    size: { tolerance: 0.02, on_mismatch: "refuse", baseline_params: 9, within: true, rows: [] },
    frontier: [],
    diagnostics: [],
    diagnostic_labels: {},
    decode: [],
  };
}

Deno.test("heat classes: better, within half a percent, worse by bucket; none without a value", () => {
  assertEquals(
    [-30, -5, -4, -1, 0, 0.5, 1, 3, 7, 20, 26, null, NaN].map(heatClass),
    [
      "heat-b3",
      "heat-b3",
      "heat-b2",
      "heat-b1",
      "heat-0",
      "heat-0",
      "heat-w1",
      "heat-w2",
      "heat-w3",
      "heat-w4",
      "heat-w5",
      "heat-na",
      "heat-na",
    ],
  );
  // Every bucket has a rule in the stylesheet.
  const css = Deno.readTextFileSync(new URL("./static/dashboard.css", import.meta.url));
  for (const [, cls] of HEAT_BUCKETS) assert(css.includes(`.heat-${cls} {`), `.heat-${cls}`);
});

Deno.test("the study page: a heatmap cell per (model, rule) linking to its run, coloured, with ppl and hidden %", () => {
  const page = studyPage(_report("router-a"), "# T\n\n## Models\n\n| a |\n| --- |\n| b |\n");
  const cells = [...page.matchAll(/<td class="heat ([^"]+)"[^>]*>(.*?)<\/td>/g)].map((m) => [m[1], m[2]]);
  assertEquals(cells.length, 4);
  assertEquals(cells.map((c) => c[0]), ["heat-0", "heat-na", "heat-b3", "heat-w5"]);
  assert(
    cells[2]![1]!.startsWith(
      '<a href="/runs/run-r"><span class="ppl">9.50</span><small>hidden 37.5%</small>',
    ),
  );
  assert(cells[1]![1] === "—", "a cell without numbers is a dash and links nowhere");
  assert(page.includes('href="/sweeps/study-x-micro"'), "links the study's sweep");
  assert(
    page.includes("<h3>Models</h3>") && !page.includes(">T</h2>"),
    "the report from its first section",
  );
});

Deno.test("the study page escapes every value from the store", () => {
  const page = studyPage(_report(HOSTILE, HOSTILE), `## ${HOSTILE}\n\n${HOSTILE}`);
  assert(!page.includes("<img"), "no markup from the report");
  assert(!page.includes("onerror=alert(1)>"), "no attribute broken out of");
  assert(page.includes("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;&lt;/script&gt;"));
});

Deno.test("/studies/:id serves a stored study; 404 for another report or none, 500 for one it cannot read", async () => {
  const store = openSqliteStore(":memory:");
  try {
    const app = createApp({ store });
    const save = (id: string, kind: string, data: Record<string, unknown>) =>
      store.saveReport({
        id,
        kind,
        sweep_id: id,
        created_at: "2026-12-06T00:00:00Z",
        markdown: "## M",
        data,
      });
    await save("study-x-micro", "study", _report("r") as unknown as Record<string, unknown>);
    await save("repro-x", "repro", {});
    await save("study-old", "study", { matrix: 1 });
    const page = await app.request("http://localhost/studies/study-x-micro");
    assertEquals(page.status, 200);
    assert((await page.text()).includes('id="study-heatmap"'));
    const api = await app.request("http://localhost/api/studies/study-x-micro");
    const j = await api.json();
    assertEquals(j.report.cells.length, 4);
    assertEquals(j.sweep_id, "study-x-micro");
    assertEquals((await app.request("http://localhost/studies/repro-x")).status, 404);
    assertEquals((await app.request("http://localhost/studies/none")).status, 404);
    assertEquals((await app.request("http://localhost/api/studies/study-old")).status, 500);
    assertEquals((await app.request("http://localhost/studies/a..b")).status, 400);
    assertEquals(asStudyReport(await store.getReport("repro-x")), null);
  } finally {
    store.close();
  }
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { createApp } from "../core/dashboard/app.ts";
import { buildStudyReport } from "../core/repro/study_report.ts";
import { studyPointName } from "../core/repro/run_study.ts";
import { loadStudySpec, resolveStudy } from "../core/repro/study_spec.ts";
import { closeRunStores, openRunStore } from "../core/runs/open_store.ts";
import type { StudyCell, StudyReport } from "../core/runs/study_types.ts";
import { fmtPpl } from "../core/util/quantities.js";
import { cli } from "./helpers/cli.ts";

const MANIFEST = "configs/study/routers.yaml";

Deno.test("study --scale micro: every (router, rule) cell measured, the report in the store and on the dashboard, models reused on rerun and when a router is added", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const r = await cli("study", MANIFEST, "--scale", "micro", "--runs-dir", dir, "--no-dashboard", "--json");
    assertEquals(r.code, 0, r.err.join("\n"));
    const j = r.json();
    const spec = await loadStudySpec(MANIFEST);
    const rules = spec.rules.map((x) => x.spec);
    assertEquals(j.rules.map((x: { spec: string }) => x.spec), rules);
    const names = ["baseline", ...spec.routers.map((x) => x.name)], routers = names.slice(1);
    assertEquals(j.models.map((m: { name: string }) => m.name), names);
    // The manifest holds every router of the literature (docs/design.md §16), beside DS-MoE and SMoE.
    assertEquals(routers, [
      "dsmoe",
      "smoe",
      "topk-capacity",
      "topk-seq-balance",
      "expert-choice",
      "top-p",
      "relu",
      "null-experts",
      "shared-fine",
      "aux-free",
    ]);
    assert(j.size.within, "the shipped models are of equal size");

    // The matrix: every router under every rule, with finite numbers; the dense column runs every expert.
    const cells = j.cells as StudyCell[];
    assertEquals(cells.length, names.length * rules.length);
    for (const router of routers) {
      for (const rule of rules) {
        const c = cells.find((x) => x.model === router && x.rule === rule);
        assert(c && c.na === null && c.run_id !== null, `${router} × ${rule}: ${JSON.stringify(c)}`);
        assert(Number.isFinite(c.ppl) && c.ppl! > 1 && Number.isFinite(c.bpb), `${router} × ${rule} ppl`);
        assert(c.hidden_pct! >= 0 && c.hidden_pct! <= 100, `${router} × ${rule} hidden ${c.hidden_pct}`);
        assert(c.active_pct! > 0 && c.active_pct! <= 100, `${router} × ${rule} active ${c.active_pct}`);
        assert(c.tokens_per_s! > 0, `${router} × ${rule} tokens/s`);
      }
      const dense = cells.find((x) => x.model === router && x.rule === "dense")!;
      if (router === "relu") {
        // ReLU routing runs only the experts whose gate is above zero, under every rule (docs/design.md §16).
        assert(dense.hidden_pct! < 100, `relu skips its zero gates: ${dense.hidden_pct}`);
      } else {
        // Dense: no hidden (expert) parameter is skipped — 100% of them run (docs/design.md §5's hidden %).
        assertEquals([dense.hidden_pct, dense.active_pct], [100, 100], router);
      }
      const topk1 = cells.find((x) => x.model === router && x.rule === "topk:1")!;
      assert(topk1.hidden_pct! < 50, `topk:1 skips experts on ${router}`);
    }
    const own = cells.find((x) => x.model === "smoe" && x.rule === "own")!;
    assertEquals(own.rule_name, "topk@2", "own is the router's router.infer");
    const base = cells.filter((x) => x.model === "baseline");
    assertEquals(
      base.filter((x) => x.na === null).map((x) => x.rule),
      ["dense"],
      "the baseline has one rule",
    );

    // The terminal gets a summary, not the report.
    const out = r.out.join("\n");
    assert(
      out.includes(`Study routers (scale micro): ${routers.length} routers and the baseline × 11 rules`),
      out,
    );
    assert(out.includes(`${dir}/study/routers/REPORT.md`) && out.includes(`/studies/${j.id}`), out);
    assert(!out.includes("## Matrix"), "not the whole report");
    assert(r.out[0]!.startsWith("Smoke test (--scale micro)"), r.out[0]);

    // The report: in the store and as REPORT.md, rebuilt from the store alone with the same numbers.
    const md = await Deno.readTextFile(`${dir}/study/routers/REPORT.md`);
    assert(
      md.split("\n")[2]!.startsWith("> **Smoke test"),
      "micro's report says first that it is a smoke test",
    );
    for (const h of ["## Models", "## Matrix", "## Frontier", "## Routing diagnostics", "## Decoding"]) {
      assert(md.includes(`\n${h}\n`), `section ${h}`);
    }
    const store = await openRunStore(dir);
    const stored = (await store.getReport(j.id))!;
    assertEquals([stored.kind, stored.sweep_id, stored.markdown], ["study", j.id, md]);
    const { models } = await resolveStudy(spec, "micro");
    const rebuilt = await buildStudyReport(store, j.id, {
      name: spec.name,
      scale: "micro",
      models: models.map((m) => ({ name: m.entry.name, pointName: studyPointName(spec.name, m) })),
      rules: spec.rules,
      size: spec.size,
    });
    const data = stored.data as unknown as StudyReport;
    assertEquals({ ...rebuilt, created_at: "" }, { ...data, created_at: "" });
    // Each cell is the stored metric of the run it names.
    for (const c of data.cells.filter((x) => x.na === null)) {
      const last = await store.lastMetrics(c.run_id!);
      assertEquals(c.ppl, last.get(`infer/${c.rule_name}/ppl`)!.value);
      assertEquals(c.hidden_pct, last.get(`infer/${c.rule_name}/hidden_pct`)!.value);
    }
    // The frontier of each router has a point per distinct rule, Pareto points marked; diagnostics per router.
    assertEquals(data.frontier.map((f) => f.model), routers);
    for (const f of data.frontier) {
      assert(f.points.length >= 5 && f.points.some((p) => p.pareto), JSON.stringify(f));
    }
    const diag = data.diagnostics.find((d) => d.model === "dsmoe")!;
    assertEquals(diag.layers.map((l) => [l.kind, l.load.length]), [["attention", 4], ["mlp", 8]]);
    for (const l of diag.layers) {
      assert(Math.abs(l.load.reduce((a, b) => a + b, 0) - 1) < 1e-6 && l.entropy > 0);
    }
    // Evaluation diagnostics of every router: entropy, MI(expert; domain) on the multidomain corpus (at most the
    // domain entropy), stability against the checkpoint at step 30, co-activation per rule (0 under top-1: one
    // expert per token; 1 under dense: every expert runs).
    for (const d of data.diagnostics.filter((x) => x.model !== "baseline")) {
      const at = `${d.model}: ${JSON.stringify({ ...d, layers: undefined, cells: undefined })}`;
      // ReLU routing's gates may all be zero after 60 micro steps (its L1 weight overshoots: docs/design.md §16):
      // entropy 0 there; every other router has a softmax over at most 14 experts (segments, null experts).
      assert(d.eval_entropy! >= 0 && d.eval_entropy! <= Math.log(14) + 1e-9, at);
      if (d.model !== "relu") assert(d.eval_entropy! > 0, at);
      assert(d.mi_domain_bits! >= 0 && d.mi_domain_bits! <= d.domain_entropy_bits! + 1e-9, at);
      assert(d.domain_entropy_bits! > 1, at); // several domains, none dominant
      assert(d.top1_changed! >= 0 && d.top1_changed! <= 1 && d.stability_against === 30, at);
      const co = (rule: string) => d.cells.find((c) => c.rule === rule)!.values.coactivation;
      // Under top-1 one expert runs per token: no pair runs together — but for segmented experts, where top-1
      // means the m = 2 best segments (docs/design.md §16).
      if (d.model === "shared-fine") assert(co("topk@1")! > 0, d.model);
      else assertEquals(co("topk@1"), 0, d.model);
      if (d.model !== "relu") assertEquals(co("dense"), 1, d.model);
    }

    // The dashboard: the study page's heatmap (a cell per (model, rule), each measured one linking to its
    // run), its data, and the study's sweep page (linking to it, every router's frontier for the overlay).
    const app = createApp({ store });
    const page = await (await app.request(`http://localhost/studies/${j.id}`)).text();
    const heat = [...page.matchAll(/<td class="heat ([^"]+)"[^>]*>(.*?)<\/td>/g)];
    assertEquals(heat.length, names.length * rules.length);
    for (const c of data.cells.filter((x) => x.na === null)) {
      const td = heat.find((m) => m[0].includes(`data-model="${c.model}" data-rule="${c.rule}"`));
      assert(td, `${c.model} × ${c.rule} in the heatmap`);
      assert(td[1] !== "heat-na" && td[2]!.includes(`href="/runs/${c.run_id}"`), td[0]);
      assert(td[2]!.includes(`>${fmtPpl(c.ppl)}<`), td[0]);
    }
    const api = await (await app.request(`http://localhost/api/studies/${j.id}`)).json();
    assertEquals(api.report.cells.length, names.length * rules.length);
    const sweepPage = await (await app.request(`http://localhost/sweeps/${j.id}`)).text();
    assert(sweepPage.includes(`href="/studies/${j.id}"`), "the sweep page links the study page");
    const sweep = await (await app.request(`http://localhost/api/sweeps/${j.id}`)).json();
    const frontiers = new Map<string, unknown[]>(
      sweep.runs.map((x: { sweep_params: { router: string }; frontier: unknown[] }) => [
        x.sweep_params.router,
        x.frontier,
      ]),
    );
    assertEquals(frontiers.get("baseline")!.length, 1);
    assert(frontiers.get("dsmoe")!.length >= 5 && frontiers.get("smoe")!.length >= 5, "frontier curves");

    // Again: every model reused, nothing trained or evaluated twice.
    const runs = (await store.listRuns({ sweepId: j.id })).length;
    const points = await Promise.all(data.models.map(async (m) => (await store.metrics(m.run_id!)).length));
    const again = await cli(
      "study",
      MANIFEST,
      "--scale",
      "micro",
      "--runs-dir",
      dir,
      "--no-dashboard",
      "--json",
    );
    assertEquals(again.code, 0, again.err.join("\n"));
    assert(
      again.err.filter((l) => l.includes("finished earlier in run")).length === names.length,
      again.err.join("\n"),
    );
    assertEquals((await store.listRuns({ sweepId: j.id })).length, runs);
    assertEquals(
      await Promise.all(data.models.map(async (m) => (await store.metrics(m.run_id!)).length)),
      points,
    );
    assertEquals(again.json().cells, j.cells);

    // A new router is a new entry in the manifest: only it trains.
    const text = await Deno.readTextFile(MANIFEST);
    const cfg = `${Deno.cwd()}/configs/study`;
    const added = text.replaceAll(/: (\w+\.yaml)/g, `: ${cfg}/$1`).replace(
      "  smoe: ",
      `  smoe-k1: { extends: ${cfg}/smoe.yaml, set: [router.k=1, router.infer.k=1] }\n  smoe: `,
    );
    await Deno.writeTextFile(`${dir}/routers.yaml`, added);
    const more = await cli(
      "study",
      `${dir}/routers.yaml`,
      "--scale",
      "micro",
      "--runs-dir",
      dir,
      "--no-dashboard",
      "--json",
    );
    assertEquals(more.code, 0, more.err.join("\n"));
    assertEquals((await store.listRuns({ sweepId: j.id })).length, runs + 1);
    assertEquals(more.json().models.map((m: { name: string }) => m.name), [
      "baseline",
      "dsmoe",
      "smoe-k1",
      ...routers.slice(1),
    ]);
    assertEquals(
      more.json().cells.filter((c: StudyCell) => c.model === "smoe-k1" && c.na === null).length,
      rules.length,
    );
    assertEquals(
      await Promise.all(data.models.map(async (m) => (await store.metrics(m.run_id!)).length)),
      points,
    );
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("study refuses an unknown scale, two manifests and a missing manifest with usage or config errors", async () => {
  const r = await cli("study", MANIFEST, "--scale", "huge");
  assertEquals(r.code, 2);
  assert(r.err.join("\n").includes("defines real, small, micro"), r.err.join("\n"));
  assertEquals((await cli("study", MANIFEST, MANIFEST)).code, 2);
  const missing = await cli("study", "configs/study/none.yaml");
  assertEquals(missing.code, 2);
  assert(missing.err.join("\n").includes("no such file: configs/study/none.yaml"), missing.err.join("\n"));
  const help = await cli("study", "--help");
  assertEquals(help.code, 0);
  assert(help.out.join("\n").includes("Usage: deno task study"));
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import type { RunStatus } from "../runs/run_types.ts";
import { openSqliteStore } from "../runs/sqlite_store.ts";
import type { ReportRecord, RunRecord, SweepRecord } from "../runs/store.ts";
import { createApp } from "./app.ts";
import { markup, safeJson } from "./html.ts";
import { errorPage, runPage, runsPage, sweepPage } from "./pages.ts";
import { reportHtml } from "./report_html.ts";
import type { RunSummary } from "./run_summary.ts";

/** Values that would be markup, or end the JSON block, if a page interpolated them as they are. */
const HOSTILE = [
  "<script>alert(1)</script>",
  `"><img src=x onerror=alert(1)>`,
  `'><img onerror=x>`,
  "</script><script>alert(1)</script>",
  "a\u2028b\u2029</script><img onerror=x>",
  "&lt;b&gt; & &amp;",
];

/** A value that is plain text: pages built from it have the markup that pages built from any value must have. */
const PLAIN = "plain";

function _run(id: string, v: string): RunRecord {
  return {
    id,
    name: v,
    status: v as RunStatus, // a damaged or hostile store may hold anything
    seed: 1,
    git_commit: v,
    adapter: v,
    started_at: v,
    ended_at: v,
    sweep_id: v,
    sweep_params: { [v]: v, [`${v}-n`]: 0.5 },
    error: v,
    step: 40,
    config_yaml: v,
    host: v,
    pid: 1,
    heartbeat_at: v,
  };
}

function _summary(run: RunRecord, v: string): RunSummary {
  const { config_yaml: _, ...rest } = run;
  return {
    ...rest,
    hyper: {
      kind: v,
      d_model: 64,
      layers: 2,
      attention_experts: 4,
      mlp_experts: 8,
      router_train: v,
      router_infer: v,
      lr: 0.003,
      steps: 800,
      seed: 1,
    },
    last_train_loss: 1.25,
    best_val_loss: 1.5,
    best_val_loss_step: 30,
    last_val_ppl: 4.48,
    last_val_bpb: 0.75,
    last_train_step: 41,
    config: { [v]: v, "model.kind": v, [`${v}.n`]: 2 },
  };
}

/** A report with `v` in each place its Markdown puts text: headings, paragraphs, bold, code and tables. */
function _markdown(v: string): string {
  return [
    `# ${v}`,
    "",
    `## ${v}`,
    "",
    `${v} **${v}** \`${v}\` and **\`${v}\`**`,
    `${v}`,
    "",
    `| ${v} | b |`,
    "| --- | ---: |",
    `| **${v}** | \`${v}\` |`,
  ].join("\n");
}

/** Every page builder (and the report renderer), with `v` in every field a user or a store controls. */
function _pages(v: string): Record<string, string> {
  const a = _run("run-a", v), b = _run(v, v);
  const sweep: SweepRecord = { id: v, name: v, config_yaml: v, created_at: v };
  const report: ReportRecord = {
    id: v,
    kind: v,
    sweep_id: v,
    created_at: v,
    markdown: _markdown(v),
    data: { [v]: v },
  };
  return {
    runs: runsPage([_summary(a, v), _summary(b, v)]),
    run: runPage(a, [b]),
    sweep: sweepPage(v, sweep, [_summary(a, v), _summary(b, v)], [v, `${v}-n`], report),
    "sweep without record": sweepPage(v, null, [_summary(b, v)], [v], null),
    error: errorPage(500, v),
    report: String(reportHtml(_markdown(v))),
  };
}

/** The tags of a page in order, each as its name and its attributes' names: what data must not change. */
function _skeleton(page: string): string[] {
  return [...page.matchAll(/<(\/?[a-zA-Z0-9!]+)([^<>]*)>/g)].map(([, name, attrs]) =>
    [name, ...[...attrs!.matchAll(/\s([^\s="']+)(?:="[^"]*")?/g)].map((m) => m[1])].join(" ")
  );
}

/** The JSON block of a page, checked to hold nothing that could end it or read as markup. */
function _data(page: string, where: string): unknown {
  const blocks = [...page.matchAll(/<script type="application\/json" id="data">([\s\S]*?)<\/script>/g)];
  assertEquals(blocks.length, 1, `${where}: one JSON block`);
  const text = blocks[0]![1]!;
  assert(!/[<>&\u2028\u2029]/.test(text), `${where}: the JSON block holds < > & U+2028 or U+2029: ${text}`);
  return JSON.parse(text);
}

/**
 * Markup that data could have made: an `<img>`, a `<script>` with no attributes (the pages' own have some),
 * an event-handler attribute. Quoted attribute values, where escaped data sits, are blanked first.
 */
function _injections(page: string): string[] {
  const blanked = page.replace(/="[^"]*"/g, '=""');
  return [...blanked.matchAll(/<img\b[^<>]*>?|<script>|<[^<>]*\son[a-z]+\s*=[^<>]*>?/gi)].map((m) => m[0]);
}

function _assertEscaped(page: string, plainPage: string, v: string, where: string) {
  assertEquals(_injections(page), [], `${where}: data became markup`);
  assertEquals(_skeleton(page), _skeleton(plainPage), `${where}: data changed the page's tags`);
  const scripts = [...page.matchAll(/<script\b[^>]*>/g)].map((m) => m[0]);
  for (const s of scripts) {
    assert(
      s === '<script type="application/json" id="data">' ||
        /^<script (type="module" )?src="\/static\/[a-z_]+\.js">$/.test(s),
      `${where}: unexpected script tag ${s}`,
    );
  }
  if (v.includes("alert(1)")) assert(page.includes("alert(1)"), `${where}: the value is shown, escaped`);
}

Deno.test("every page escapes every value a user controls", () => {
  const plain = _pages(PLAIN);
  for (const v of HOSTILE) {
    const pages = _pages(v);
    for (const [name, page] of Object.entries(pages)) {
      _assertEscaped(page, plain[name]!, v, `${name} page with ${JSON.stringify(v)}`);
    }
    for (const name of ["runs", "run", "sweep", "sweep without record"]) {
      _data(pages[name]!, `${name} page with ${JSON.stringify(v)}`);
    }
    const run = _data(pages.run!, "run page") as { names: string[]; status: string };
    assertEquals([run.names, run.status], [[v, v], v], "the JSON block reads back the values as they are");
    const sweep = _data(pages.sweep!, "sweep page") as { sweep_id: string };
    assertEquals(sweep.sweep_id, v);
  }
});

Deno.test("markup (Hono's html) escapes text in content and attributes, keeps its own markup, and safeJson reads back", () => {
  const v = `"><img onerror=x>'&`;
  const inner = markup`<b title="${v}">${v}</b>`;
  assertEquals(
    String(markup`<p>${inner}${[v, 1, null, false, markup`<i></i>`]}</p>`),
    '<p><b title="&quot;&gt;&lt;img onerror=x&gt;&#39;&amp;">&quot;&gt;&lt;img onerror=x&gt;&#39;&amp;</b>' +
      "&quot;&gt;&lt;img onerror=x&gt;&#39;&amp;1<i></i></p>",
  );
  for (const s of [...HOSTILE, { k: HOSTILE }, "\u2028\u2029", null]) {
    const text = safeJson(s);
    assert(!/[<>&\u2028\u2029]/.test(text), text);
    assertEquals(JSON.parse(text), s);
  }
});

Deno.test("a report line starting with # that is no heading is a paragraph (it hung the renderer)", () => {
  assertEquals(
    String(reportHtml("#### four\n#tag\n\n# a\u2028b")),
    "<p>#### four</p>\n<p>#tag</p>\n<h2>a\u2028b</h2>",
  );
});

Deno.test("the served pages escape a stored run's text and a request's path", async () => {
  const store = openSqliteStore(":memory:");
  try {
    const v = HOSTILE[1]!;
    const meta = _run("run-x", v);
    await store.importRun({ ...meta, status: "failed", sweep_id: null, sweep_params: { [v]: v } }, v);
    const app = createApp({ store });
    for (const path of ["/", "/runs/run-x", `/${encodeURIComponent(HOSTILE[0]!)}`, "/sweeps/%3Cscript%3E"]) {
      const res = await app.request(`http://localhost${path}`);
      const page = await res.text();
      assert(res.headers.get("Content-Type")?.startsWith("text/html"), `${path}: ${res.status}`);
      assertEquals(_injections(page), [], `${path}: data became markup`);
      assert(page.includes("onerror=alert(1)") || res.status !== 200, `${path}: the value is shown, escaped`);
    }
  } finally {
    store.close();
  }
});

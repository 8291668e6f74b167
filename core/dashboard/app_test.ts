import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import type { MetricPoint, RunMeta } from "../runs/run_types.ts";
import { openSqliteStore } from "../runs/sqlite_store.ts";
import type { RunStore } from "../runs/store.ts";
import { createApp } from "./app.ts";

const TOKEN = "test-token-0123456789";
const HOSTS = ["localhost", "127.0.0.1:8000"];
const BASE = "http://localhost";

const DSMOE_YAML = `name: dsmoe-tiny
seed: 1
model:
  kind: dsmoe
  d_model: 64
  layers: 2
  attention: { kind: moa, experts: 4 }
  mlp: { experts: 8 }
router: { train: dense }
train: { steps: 800, optimizer: { lr: 0.003 } }
`;

function _meta(id: string, o: Partial<RunMeta> = {}): RunMeta {
  return {
    id,
    name: id.replace(/^run-/, ""),
    status: "finished",
    seed: 1,
    git_commit: null,
    adapter: "test",
    started_at: "2026-11-25T10:00:00.000Z",
    ended_at: null,
    sweep_id: null,
    sweep_params: {},
    error: null,
    step: 0,
    ...o,
  };
}

function _pt(key: string, step: number, value: number): MetricPoint {
  return { key, step, tokens: step * 1024, time: step * 0.5, value };
}

/** A store with a DS-MoE run (training, validation, router and eval metrics) and a dense run, in a sweep. */
async function _seeded(): Promise<RunStore> {
  const store = openSqliteStore(":memory:");
  await store.createSweep({
    id: "sw-1",
    name: "sweep-mi",
    config_yaml: "sweep: {}",
    created_at: "2026-11-25T09:00:00Z",
  });
  await store.importRun(
    _meta("run-a", { step: 40, sweep_id: "sw-1", sweep_params: { "loss.mi.mlp": 0.001 } }),
    DSMOE_YAML,
  );
  await store.importRun(
    _meta("run-b", {
      started_at: "2026-11-25T11:00:00.000Z",
      sweep_id: "sw-1",
      sweep_params: { "loss.mi.mlp": 0 },
    }),
    "model: { kind: dense, attention: { kind: mha, experts: 4 }, mlp: { experts: 1 } }\nseed: 2\n",
  );
  const pts: MetricPoint[] = [];
  for (let s = 1; s <= 40; s++) pts.push(_pt("train/loss", s, 5 - s / 10), _pt("train/lr", s, 0.003));
  for (const s of [10, 20, 30, 40]) {
    pts.push(_pt("val/loss", s, s === 30 ? 1.5 : 2), _pt("val/ppl", s, s === 30 ? 4.48 : 7.39));
    for (const layer of [0, 1]) {
      for (let e = 0; e < 8; e++) pts.push(_pt(`router/${layer}/mlp/load/${e}`, s, (e + 1) / 36));
      for (let e = 0; e < 4; e++) pts.push(_pt(`router/${layer}/attention/load/${e}`, s, 0.25));
      pts.push(_pt(`router/${layer}/mlp/entropy`, s, 1.9));
    }
  }
  for (
    const [rule, pct, ppl] of [["dense", 100, 4.4], ["threshold@0.5", 42, 4.6], ["topk@1", 30, 5.2]] as const
  ) {
    pts.push(_pt(`infer/${rule}/ppl`, 40, ppl), _pt(`infer/${rule}/active_pct`, 40, pct));
  }
  await store.logMetrics("run-a", pts);
  await store.logMetrics("run-b", [_pt("train/loss", 1, 6), _pt("train/loss", 2, 5.5)]);
  return store;
}

function _app(store: RunStore, o: { token?: string; bodyLimit?: number } = {}) {
  return createApp({
    store,
    token: o.token ?? TOKEN,
    allowedHosts: HOSTS,
    pollMs: 20,
    bodyLimit: o.bodyLimit,
  });
}

function _post(path: string, body: unknown, token: string | null = TOKEN): Request {
  const headers: Record<string, string> = { "Content-Type": "application/json" };
  if (token !== null) headers.Authorization = `Bearer ${token}`;
  return new Request(BASE + path, {
    method: "POST",
    headers,
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

Deno.test("GET /api/runs lists runs newest first with config columns and headline metrics", async () => {
  const store = await _seeded();
  const res = await _app(store).request(`${BASE}/api/runs`);
  assertEquals(res.status, 200);
  const { runs } = await res.json();
  assertEquals(runs.map((r: { id: string }) => r.id), ["run-b", "run-a"]);
  const a = runs[1];
  assertEquals(a.hyper, {
    kind: "dsmoe",
    d_model: 64,
    layers: 2,
    attention_experts: 4,
    mlp_experts: 8,
    router_train: "dense",
    router_infer: "threshold 0.5",
    lr: 0.003,
    steps: 800,
    seed: 1,
  });
  assertEquals(a.last_train_loss, 1);
  assertEquals([a.best_val_loss, a.best_val_loss_step, a.last_val_ppl], [1.5, 30, 7.39]);
  assertEquals(runs[0].hyper.attention_experts, null, "plain attention has no experts");
  assertEquals(runs[0].hyper.seed, 2);
  assertEquals(
    [runs[0].hyper.router_train, runs[0].hyper.router_infer],
    [null, null],
    "a dense model has no router",
  );
  assertEquals([a.last_train_step, runs[0].last_train_step], [40, 2]);
  assertEquals(a.config["model.kind"], "dsmoe");
  assertEquals(a.config["model.attention.experts"], 4);
  assert(!("config_yaml" in a), "the list leaves the config text out");
  store.close();
});

Deno.test("GET /api/runs/:id/metrics downsamples each series to at most max points", async () => {
  const store = await _seeded();
  const many = Array.from(
    { length: 5000 },
    (_, i) => _pt("train/grad_norm", i + 1, i === 2500 ? 99 : 1 + (i % 7)),
  );
  await store.logMetrics("run-a", many);
  const app = _app(store);
  const res = await app.request(
    `${BASE}/api/runs/run-a/metrics?keys=train/grad_norm,train/loss&x=tokens&max=100`,
  );
  assertEquals(res.status, 200);
  const body = await res.json();
  const g = body.series["train/grad_norm"];
  assert(g.value.length <= 100 && g.value.length >= 90, `${g.value.length} points`);
  assertEquals(g.count, 5000);
  assertEquals([g.step[0], g.step.at(-1)], [1, 5000]);
  assertEquals(g.tokens[0], 1024);
  assert(g.value.includes(99), "the spike is kept");
  assertEquals(body.series["train/loss"].value.length, 40, "a short series is sent whole");
  assertEquals(Object.keys(body.series).sort(), ["train/grad_norm", "train/loss"]);
  const capped = await (await app.request(`${BASE}/api/runs/run-a/metrics?keys=train/grad_norm&max=999999`))
    .json();
  assertEquals(capped.max, 2000);
  assert(capped.series["train/grad_norm"].value.length <= 2000);
  const prefixed = await (await app.request(`${BASE}/api/runs/run-a/metrics?prefix=val/`)).json();
  assertEquals(Object.keys(prefixed.series).sort(), ["val/loss", "val/ppl"]);
  assertEquals((await app.request(`${BASE}/api/runs/run-a/metrics?x=epoch`)).status, 400);
  store.close();
});

Deno.test("GET /api/runs/:id/heatmap gives each layer an experts × steps matrix", async () => {
  const store = await _seeded();
  const app = _app(store);
  const mlp = await (await app.request(`${BASE}/api/runs/run-a/heatmap?kind=mlp`)).json();
  assertEquals(mlp.kind, "mlp");
  assertEquals(mlp.steps, [10, 20, 30, 40]);
  assertEquals(mlp.layers.map((l: { layer: number }) => l.layer), [0, 1]);
  assertEquals(mlp.layers[0].experts, 8);
  assertEquals(mlp.layers[0].values.length, 8);
  assertEquals(mlp.layers[0].values[7], [8 / 36, 8 / 36, 8 / 36, 8 / 36]);
  assertEquals(mlp.layers[1].entropy, [1.9, 1.9, 1.9, 1.9]);
  const att = await (await app.request(`${BASE}/api/runs/run-a/heatmap?kind=attention`)).json();
  assertEquals(att.layers[1].values, Array.from({ length: 4 }, () => [0.25, 0.25, 0.25, 0.25]));
  const none = await (await app.request(`${BASE}/api/runs/run-b/heatmap?kind=mlp`)).json();
  assertEquals(none.layers, []);
  assertEquals((await app.request(`${BASE}/api/runs/run-a/heatmap?kind=moe`)).status, 400);
  store.close();
});

Deno.test("GET /api/runs/:id/frontier lists each rule's ppl and active % by active %", async () => {
  const store = await _seeded();
  const { points } = await (await _app(store).request(`${BASE}/api/runs/run-a/frontier`)).json();
  assertEquals(
    points.map((p: { rule: string; active_pct: number; ppl: number }) => [p.rule, p.active_pct, p.ppl]),
    [["topk@1", 30, 5.2], ["threshold@0.5", 42, 4.6], ["dense", 100, 4.4]],
  );
  store.close();
});

Deno.test("GET /api/sweeps/:id compares the sweep's points with their params and frontiers", async () => {
  const store = await _seeded();
  const body = await (await _app(store).request(`${BASE}/api/sweeps/sw-1`)).json();
  assertEquals(body.sweep.name, "sweep-mi");
  assertEquals(body.params, ["loss.mi.mlp"]);
  assertEquals(body.runs.map((r: { id: string }) => r.id), ["run-b", "run-a"]);
  assertEquals(body.runs[1].frontier.length, 3);
  assertEquals(body.runs[1].sweep_params, { "loss.mi.mlp": 0.001 });
  assertEquals((await _app(store).request(`${BASE}/api/sweeps/nope`)).status, 404);
  store.close();
});

Deno.test("a remote writer creates a run, logs points and finishes it with the token", async () => {
  const store = openSqliteStore(":memory:");
  const app = _app(store);
  const created = await app.request(
    _post("/api/runs", { id: "remote-1", name: "remote", config_yaml: DSMOE_YAML, seed: 3 }),
  );
  assertEquals(created.status, 201);
  assertEquals(await created.json(), { id: "remote-1", url: "/runs/remote-1" });
  assertEquals((await store.getRun("remote-1"))?.status, "running");
  const logged = await app.request(_post("/api/runs/remote-1/metrics", {
    points: [{ key: "train/loss", step: 1, tokens: 512, time: 0.5, value: 4.5 }, {
      key: "train/loss",
      step: 2,
      value: 4,
    }],
  }));
  assertEquals(logged.status, 200);
  assertEquals(await logged.json(), { logged: 2, step: 2 });
  const rows = await store.metrics("remote-1");
  assertEquals(rows.map((r) => [r.step, r.tokens, r.value]), [[1, 512, 4.5], [2, 0, 4]]);
  const finished = await app.request(_post("/api/runs/remote-1/finish", { status: "finished" }));
  assertEquals(finished.status, 200);
  const run = await store.getRun("remote-1");
  assertEquals([run?.status, run?.step, run?.seed], ["finished", 2, 3]);
  assert(run?.ended_at);
  assertEquals((await store.events("remote-1")).map((e) => e.kind), ["start", "finish"]);
  const again = await app.request(_post("/api/runs", { id: "remote-1", name: "remote", config_yaml: "" }));
  assertEquals(again.status, 409);
  const generated = await (await app.request(_post("/api/runs", { name: "no id", config_yaml: "" }))).json();
  assert(/^\d{8}-\d{6}-no_id-[0-9a-f]{4}$/.test(generated.id), generated.id);
  store.close();
});

Deno.test("writes without a token are 401, with a wrong one 403, and refused when none is configured", async () => {
  const store = await _seeded();
  const body = { points: [{ key: "train/loss", step: 50, value: 1 }] };
  const missing = await _app(store).request(_post("/api/runs/run-a/metrics", body, null));
  assertEquals(missing.status, 401);
  assert((await missing.json()).error.includes("Missing bearer token"));
  assertEquals(missing.headers.get("WWW-Authenticate"), 'Bearer realm="dsmoe"');
  const wrong = await _app(store).request(_post("/api/runs/run-a/metrics", body, "not-the-token"));
  assertEquals(wrong.status, 403);
  assertEquals(await wrong.json(), { error: "Wrong bearer token" });
  const off = createApp({ store, allowedHosts: HOSTS }).request(_post("/api/runs/run-a/metrics", body));
  assertEquals((await off).status, 403);
  assertEquals((await store.metrics("run-a", { keys: ["train/loss"] })).length, 40, "nothing was written");
  store.close();
});

Deno.test("a request with a Host outside the allowlist is refused with 403", async () => {
  const store = await _seeded();
  const app = _app(store);
  const evil = await app.request(`${BASE}/api/runs`, { headers: { Host: "evil.example:8000" } });
  assertEquals(evil.status, 403);
  assert((await evil.json()).error.includes("evil.example"));
  assertEquals((await app.request(`${BASE}/`, { headers: { Host: "127.0.0.1:8000" } })).status, 200);
  assertEquals((await app.request(`${BASE}/`, { headers: { Host: "127.0.0.1:9999" } })).status, 403);
  store.close();
});

Deno.test("an oversized body is refused with 413 before it is parsed, with or without Content-Length", async () => {
  const store = await _seeded();
  const app = _app(store, { bodyLimit: 1000 });
  const big = JSON.stringify({
    points: Array.from({ length: 100 }, (_, i) => ({ key: "train/loss", step: 100 + i, value: 1 })),
  });
  assert(big.length > 1000);
  const declared = await app.request(_post("/api/runs/run-a/metrics", big));
  assertEquals(declared.status, 413);
  assert((await declared.json()).error.includes("1000 bytes"));
  // Streamed in chunks without a Content-Length: the bytes are counted as they arrive.
  const bytes = new TextEncoder().encode(big);
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      for (let i = 0; i < bytes.length; i += 256) c.enqueue(bytes.slice(i, i + 256));
      c.close();
    },
  });
  const req = new Request(`${BASE}/api/runs/run-a/metrics`, {
    method: "POST",
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
    body: stream,
  });
  assertEquals(req.headers.get("content-length"), null);
  assertEquals((await app.request(req)).status, 413);
  assertEquals((await store.metrics("run-a", { keys: ["train/loss"] })).length, 40, "nothing was written");
  store.close();
});

Deno.test("non-finite values, bad JSON and bad run ids are 400 with an error naming the problem", async () => {
  const store = await _seeded();
  const app = _app(store);
  const cases: [unknown, string][] = [
    [
      { points: [{ key: "train/loss", step: 1, value: "NaN" }] },
      'points[0].value: expected a finite number, got string "NaN"',
    ],
    [
      '{"points":[{"key":"train/loss","step":1,"value":1e999}]}',
      "points[0].value: expected a finite number, got Infinity",
    ],
    [{ points: [{ key: "a", step: 1, value: 1 }, { key: "b", step: 1.5, value: 1 }] }, "points[1].step"],
    [{ points: [{ key: "a", step: 1, value: 1, extra: 1 }] }, "points[0]"],
    ["{not json", "Invalid JSON body"],
  ];
  for (const [body, expected] of cases) {
    const res = await app.request(_post("/api/runs/run-a/metrics", body));
    assertEquals(res.status, 400, String(expected));
    const { error } = await res.json();
    assert(error.includes(expected), `${error} lacks ${expected}`);
  }
  // ("/api/runs/.." never reaches the app: URL parsing resolves dot segments.)
  for (const id of ["a..b", "..%2F..", "bad id", "x".repeat(129), "semi;colon"]) {
    const res = await app.request(`${BASE}/api/runs/${encodeURIComponent(id)}`);
    assertEquals(res.status, 400, id);
    assert((await res.json()).error.startsWith("Invalid run id"), id);
  }
  const badCreate = await app.request(_post("/api/runs", { id: "../etc", name: "x", config_yaml: "" }));
  assertEquals(badCreate.status, 400);
  assert((await badCreate.json()).error.includes("id:"));
  assertEquals((await app.request(`${BASE}/api/runs/no-such-run`)).status, 404);
  assertEquals((await store.metrics("run-a", { keys: ["a", "b"] })).length, 0, "nothing was written");
  store.close();
});

Deno.test("every response carries the CSP and the other security headers, errors included", async () => {
  const store = await _seeded();
  const app = _app(store);
  for (
    const path of [
      "/",
      "/runs/run-a",
      "/sweeps/sw-1",
      "/api/runs",
      "/api/runs/..",
      "/nope",
      "/static/common.js",
    ]
  ) {
    const res = await app.request(BASE + path);
    await res.body?.cancel();
    const csp = res.headers.get("Content-Security-Policy") ?? "";
    assert(csp.includes("default-src 'self'") && csp.includes("script-src 'self'"), `${path}: ${csp}`);
    assertEquals(res.headers.get("X-Content-Type-Options"), "nosniff", path);
    assertEquals(res.headers.get("Referrer-Policy"), "no-referrer", path);
  }
  const evil = await app.request(`${BASE}/`, { headers: { Host: "evil.example" } });
  assert(evil.headers.get("Content-Security-Policy"));
  await evil.body?.cancel();
  store.close();
});

Deno.test("pages render runs, a run with overlays and a sweep, with no inline script", async () => {
  const store = await _seeded();
  const app = _app(store);
  const home = await (await app.request(`${BASE}/`)).text();
  assert(home.includes('href="/runs/run-a"') && home.includes('href="/sweeps/sw-1"'));
  assert(home.includes('data-v="1.5"'), "best val loss is a sortable cell");
  const page = await (await app.request(`${BASE}/runs/run-a?compare=run-b`)).text();
  const data = JSON.parse(/<script type="application\/json" id="data">(.*?)<\/script>/s.exec(page)![1]!);
  assertEquals(data.ids, ["run-a", "run-b"]);
  const scripts = [...page.matchAll(/<script([^>]*)>([\s\S]*?)<\/script>/g)];
  for (const [, attrs, body] of scripts) {
    assert(attrs!.includes("src=") ? body === "" : attrs!.includes("application/json"));
  }
  const sweep = await (await app.request(`${BASE}/sweeps/sw-1`)).text();
  assert(sweep.includes("loss.mi.mlp") && sweep.includes("sweep.js"));
  const compare = await app.request(`${BASE}/compare?ids=run-a,run-b`);
  assertEquals([compare.status, compare.headers.get("Location")], [302, "/runs/run-a?compare=run-b"]);
  assertEquals((await app.request(`${BASE}/runs/missing`)).status, 404);
  assertEquals((await app.request(`${BASE}/runs/run-a?compare=..`)).status, 400);
  store.close();
});

Deno.test("static files are served from a fixed table, uPlot from node_modules", async () => {
  const store = openSqliteStore(":memory:");
  const app = _app(store);
  const js = await app.request(`${BASE}/static/run.js`);
  assertEquals(js.headers.get("Content-Type"), "text/javascript; charset=utf-8");
  assert((await js.text()).includes("MetricsView"));
  // format.js is the one quantity-format module, core/util/quantities.js, whole (not the re-export on disk).
  const format = await (await app.request(`${BASE}/static/format.js`)).text();
  assertEquals(format, await Deno.readTextFile(new URL("../util/quantities.js", import.meta.url)));
  const uplot = await app.request(`${BASE}/static/uplot.js`);
  const text = await uplot.text();
  assert(uplot.status === 200 ? text.includes("uPlot") : text.includes("deno install"));
  for (const path of ["/static/app.ts", "/static/..%2Fapp.ts", "/static/%2E%2E%2Fapp.ts"]) {
    const res = await app.request(BASE + path);
    assertEquals(res.status, 404, path);
    await res.body?.cancel();
  }
  store.close();
});

async function _readUntil(reader: ReadableStreamDefaultReader<Uint8Array>, needle: string, ms: number) {
  const dec = new TextDecoder();
  let text = "";
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), ms)));
  try {
    while (!text.includes(needle)) {
      const chunk = await Promise.race([reader.read(), timeout]);
      if (chunk === null || chunk.done) break;
      text += dec.decode(chunk.value, { stream: true });
    }
  } finally {
    clearTimeout(timer);
  }
  return text;
}

Deno.test("the SSE stream delivers a point logged after the client connected", async () => {
  const store = await _seeded();
  const res = await _app(store).request(`${BASE}/api/runs/run-a/stream`);
  assertEquals(res.status, 200);
  assertEquals(res.headers.get("Content-Type"), "text/event-stream; charset=utf-8");
  const reader = res.body!.getReader();
  await store.logMetrics("run-a", [_pt("train/loss", 41, 0.75)]);
  const text = await _readUntil(reader, "event: metrics", 3000);
  await reader.cancel();
  const msg = /event: metrics\ndata: (.*)\n/.exec(text);
  assert(msg, text);
  const rows = JSON.parse(msg[1]!);
  assertEquals(rows.map((r: { key: string; step: number; value: number }) => [r.key, r.step, r.value]), [[
    "train/loss",
    41,
    0.75,
  ]]);
  assert(text.includes("event: run") && text.includes('"status":"finished"'), "the run's status is sent");
  store.close();
});

Deno.test("the SSE stream resumes after the Last-Event-ID it is sent", async () => {
  const store = await _seeded();
  const seq = await store.lastSeq();
  await store.logMetrics("run-a", [_pt("val/loss", 50, 1.25), _pt("val/loss", 60, 1.125)]);
  await store.logEvent("run-a", { kind: "checkpoint", message: "step 60", step: 60 });
  const res = await _app(store).request(`${BASE}/api/runs/run-a/stream`, {
    headers: { "Last-Event-ID": `${seq}:0` },
  });
  const reader = res.body!.getReader();
  const text = await _readUntil(reader, "event: metrics", 3000);
  await reader.cancel();
  const rows = JSON.parse(/event: metrics\ndata: (.*)\n/.exec(text)![1]!);
  assertEquals(rows.map((r: { step: number }) => r.step), [50, 60]);
  assert(text.includes(`id: ${seq + 2}:`), "the id carries the last seq sent");
  assert(
    text.includes("event: events") && text.includes('"message":"step 60"'),
    "events after seq 0 are sent",
  );
  store.close();
});

Deno.test("points posted to a run marked interrupted bring it back to running", async () => {
  const store = openSqliteStore(":memory:");
  await store.importRun(
    _meta("run-r", { status: "interrupted", error: "Interrupted: no heartbeat", step: 5 }),
    "",
  );
  const res = await _app(store).request(
    _post("/api/runs/run-r/metrics", { points: [{ key: "train/loss", step: 6, value: 2 }] }),
  );
  assertEquals(res.status, 200);
  const run = await store.getRun("run-r");
  assertEquals([run?.status, run?.error, run?.step], ["running", null, 6]);
  assertEquals((await store.events("run-r")).map((e) => e.kind), ["resume"]);
  store.close();
});

/** The `<th data-col>` ids of the runs table, in order. */
function _columns(page: string): string[] {
  const head = /<table class="runs" id="runs"><thead>([\s\S]*?)<\/thead>/.exec(page)![1]!;
  return [...head.matchAll(/<th[^>]*data-col="([^"]+)"/g)].map((m) => m[1]!);
}

/** The `data-color` of each run's swatch on a page: the row's (`tr data-id`), the heading's or a chip's. */
function _swatches(page: string): Record<string, string> {
  const out: Record<string, string> = {};
  const re = /data-id="([^"]+)"(?:(?!data-id=)[\s\S])*?<span class="swatch" data-color="([^"]+)"/g;
  for (const m of page.matchAll(re)) out[m[1]!] = m[2]!;
  return out;
}

function _pageData(page: string) {
  return JSON.parse(/<script type="application\/json" id="data">(.*?)<\/script>/s.exec(page)![1]!);
}

Deno.test("the runs table puts the metric columns first, with a column picker, group-by and the router rule", async () => {
  const store = await _seeded();
  await store.importRun(
    _meta("run-c", { name: "smoe-topk", started_at: "2026-11-25T12:00:00.000Z" }),
    "model: { kind: smoe, mlp: { experts: 8 } }\nrouter: { train: topk, k: 2, infer: { kind: topk, k: 2 } }\n",
  );
  const page = await (await _app(store).request(`${BASE}/`)).text();
  const cols = _columns(page);
  assertEquals(cols.slice(0, 6), ["select", "name", "best_val_loss", "val_ppl", "val_bpb", "train_loss"]);
  for (const c of ["status", "step", "sweep", "started", "kind", "router", "lr", "seed"]) {
    assert(cols.includes(c), c);
  }
  // The picker offers every column but the checkbox and the name.
  const picker = /<details class="picker" id="column-picker">([\s\S]*?)<\/details>/.exec(page)![1]!;
  assertEquals([...picker.matchAll(/data-col="([^"]+)"/g)].map((m) => m[1]), cols.slice(2));
  // Group by: the config keys present, those that differ between runs first.
  const select = /<select id="group-by">([\s\S]*?)<\/select>/.exec(page)![1]!;
  const differ = /<optgroup label="config: differs between runs">([\s\S]*?)<\/optgroup>/.exec(select)![1]!;
  assert(differ.includes('<option value="model.kind">model.kind</option>'), differ);
  assert(differ.includes('value="router.train"'), differ);
  assert(select.includes('value=":sweep"') && select.includes('value=":status"'));
  assertEquals(
    _pageData(page).configs["run-a"]["model.kind"],
    "dsmoe",
    "the page holds each run's config keys",
  );
  // Router: training mode → inference rule.
  assert(page.includes('data-v="dense → threshold 0.5"'), "DS-MoE: dense → threshold");
  assert(page.includes('data-v="topk 2 → topk 2"'), "SMoE: topk 2 → topk 2");
  // One format per quantity: losses 4 decimals, ppl 2, learning rate in exponent form.
  assert(page.includes('data-v="1.5" class="num">1.5000 <small>@30</small>'), "best val loss");
  assert(page.includes('data-v="7.39" class="num">7.39</td>'), "val ppl");
  assert(page.includes('data-v="1" class="num">1.0000</td>'), "train loss");
  assert(page.includes('data-v="0.003" class="num">3.0e-3</td>'), "lr");
  // The step is where the run is now (its newest training point), not its last checkpoint.
  assert(/<tr data-id="run-b">[\s\S]*?data-col="step" data-v="2"/.test(page), "run-b is at step 2");
  // Timestamps in UTC for the browser to localise, the ISO as a tooltip.
  assert(
    page.includes(
      '<time datetime="2026-11-25T10:00:00.000Z" title="2026-11-25T10:00:00.000Z (UTC)">2026-11-25 10:00 UTC</time>',
    ),
  );
  // Sweep parameters as key=value.
  assert(page.includes("<code>loss.mi.mlp=1.0e-3</code>") && page.includes("<code>loss.mi.mlp=0</code>"));
  store.close();
});

Deno.test("a run has the same colour on the runs table, its page, an overlay and its sweep page", async () => {
  const { runColor } = await import("./static/format.js");
  const store = await _seeded();
  const app = _app(store);
  const home = _swatches(await (await app.request(`${BASE}/`)).text());
  const runA = await (await app.request(`${BASE}/runs/run-a`)).text();
  const overlay = await (await app.request(`${BASE}/runs/run-b?compare=run-a`)).text();
  const sweep = await (await app.request(`${BASE}/sweeps/sw-1`)).text();
  for (const id of ["run-a", "run-b"]) assertEquals(home[id], runColor(id), id);
  assertEquals(_swatches(runA)["run-a"], home["run-a"]);
  assertEquals(_swatches(overlay), { "run-b": home["run-b"], "run-a": home["run-a"] });
  assertEquals(_pageData(overlay).colors, [home["run-b"], home["run-a"]], "the charts' colours");
  assertEquals(_swatches(sweep), { "run-a": home["run-a"], "run-b": home["run-b"] });
  assertEquals(_pageData(sweep).colors, [home["run-b"], home["run-a"]]);
  assert(home["run-a"] !== home["run-b"]);
  store.close();
});

Deno.test("the run page shows sweep params as key=value and times as <time>, not raw JSON", async () => {
  const store = await _seeded();
  const page = await (await _app(store).request(`${BASE}/runs/run-a`)).text();
  assert(page.includes("<code>loss.mi.mlp=1.0e-3</code>"), "key=value");
  assert(!page.includes("{&quot;loss.mi.mlp") && !page.includes('{"loss.mi.mlp'), "no raw JSON");
  assert(page.includes('<time datetime="2026-11-25T10:00:00.000Z"'));
  store.close();
});

Deno.test("the sweep page offers a metric-vs-hyperparameter scatter with its points in the page", async () => {
  const { scatterData } = await import("./static/scatter.js");
  const store = await _seeded();
  await store.logMetrics("run-b", [_pt("val/loss", 2, 2.5), _pt("val/ppl", 2, 12.18)]);
  const page = await (await _app(store).request(`${BASE}/sweeps/sw-1`)).text();
  const metric = /<select id="scatter-metric">([\s\S]*?)<\/select>/.exec(page)![1]!;
  assertEquals([...metric.matchAll(/value="([^"]+)"/g)].map((m) => m[1]), [
    "best_val_loss",
    "last_val_ppl",
    "last_val_bpb",
    "last_train_loss",
  ]);
  assert(/<select id="scatter-param"><option value="loss.mi.mlp">loss.mi.mlp<\/option><\/select>/.test(page));
  const data = _pageData(page);
  assertEquals(data.params, ["loss.mi.mlp"]);
  const d = scatterData(data.points, "best_val_loss", "loss.mi.mlp");
  assertEquals(d.x, [0, 0.001]);
  assertEquals(d.categories, null);
  assertEquals(d.series.map((s) => [s.id, s.values]), [
    ["run-b", [2.5, null]],
    ["run-a", [null, 1.5]],
  ]);
  // The API's sweep points carry the same fields, for the live redraw.
  const api = await (await _app(store).request(`${BASE}/api/sweeps/sw-1`)).json();
  assertEquals(scatterData(api.runs, "last_val_ppl", "loss.mi.mlp").series.map((s) => s.value), [
    12.18,
    7.39,
  ]);
  // In the sweep table, parameter values are plain values under their key, not JSON.
  assert(page.includes('data-v="0.001" class="num">1.0e-3</td>'), "a numeric param cell");
  store.close();
});

Deno.test("the sweep page lists every planned point, pending ones included, with the whole sweep's ETA", async () => {
  const store = openSqliteStore(":memory:");
  await store.createSweep({
    id: "sw-2",
    name: "mi",
    config_yaml: "name: mi\ntrain: {steps: 100, schedule: {warmup: 10}}\n" +
      "sweep: {grid: {loss.mi.mlp: [0, 0.001, 0.002, 0.003]}}\n",
    created_at: "2026-11-25T09:00:00Z",
  });
  const now = Date.now();
  const iso = (secondsAgo: number) => new Date(now - secondsAgo * 1000).toISOString();
  // Point 1 finished its 100 steps in 200 s (2 s/step); point 2 runs, at step 25 of 100; 3 and 4 wait.
  await store.importRun(
    _meta("run-f", {
      name: "mi.mlp=0",
      status: "finished",
      step: 100,
      started_at: iso(600),
      ended_at: iso(400),
      sweep_id: "sw-2",
      sweep_params: { "loss.mi.mlp": 0 },
    }),
    "train: {steps: 100}\n",
  );
  await store.importRun(
    _meta("run-r", {
      name: "mi.mlp=0.001",
      status: "running",
      step: 25,
      started_at: iso(50),
      sweep_id: "sw-2",
      sweep_params: { "loss.mi.mlp": 0.001 },
    }),
    "train: {steps: 100}\n",
  );
  const page = await (await _app(store).request(`${BASE}/sweeps/sw-2`)).text();
  assert(page.includes("4 points: 1 finished, 1 running, 2 pending"), page.slice(0, 2000));
  const pendingRows = [...page.matchAll(/<tr class="pending">([\s\S]*?)<\/tr>/g)].map((m) => m[1]!);
  assertEquals(pendingRows.length, 2);
  assert(pendingRows[0]!.includes("mi.mlp=0.002") && pendingRows[0]!.includes("0/100"));
  assert(pendingRows[1]!.includes("mi.mlp=0.003") && pendingRows[1]!.includes("status-pending"));
  // 75 + 100 + 100 steps left at 2 s/step (measured on the finished point), one point training: 550 s.
  assert(
    page.includes("ETA 9m10s for the whole sweep: 275 steps left at 2 s/step, 1 point training at once"),
    page,
  );
  const api = await (await _app(store).request(`${BASE}/api/sweeps/sw-2`)).json();
  assertEquals(api.progress.pending.map((p: { name: string }) => p.name), [
    "mi.mlp=0.002",
    "mi.mlp=0.003",
  ]);
  assertEquals([api.progress.remaining_steps, api.progress.seconds_per_step, api.progress.eta_seconds], [
    275,
    2,
    550,
  ]);
  store.close();
});

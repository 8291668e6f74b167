/**
 * `eval --diagnostics` on a tiny trained model (tests/fixtures/micro.yaml, synthetic:multidomain): routing
 * diagnostics per rule in the table, in `--json` and in the run store, checked against the float64 model on
 * the same validation tokens and their domain labels, and routing stability against another checkpoint.
 *
 * @module
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { cli, trainMicro } from "./helpers/cli.ts";
import { closeRunStores, openRunStore } from "../core/runs/open_store.ts";
import { parseExperimentText } from "../core/config/mod.ts";
import { loadDataset } from "../core/data/dataset.ts";
import { DOMAINS } from "../core/data/synthetic.ts";
import { evaluateGraph, type HostValue } from "../core/graph/cpu_executor.ts";
import { CPU_OPS } from "../core/graph/cpu_ops.ts";
import { schedule } from "../core/graph/schedule.ts";
import { buildModel } from "../core/plan/model.ts";
import { denseRules } from "../core/infer/rule_spec.ts";
import { type RouterDiagnostics, RoutingTally } from "../core/infer/diagnostics.ts";
import { readRoutingDiagnostics } from "../core/infer/record.ts";
import { checkpointFileName, ckptDir, latestCheckpoint } from "../core/runs/checkpoints.ts";
import { paramsFromTensors } from "../core/train/trainer.ts";

const BATCHES = 2;

/** The float64 model's routing diagnostics of the dense rule on the first `BATCHES` validation batches. */
async function float64Dense(dir: string, id: string): Promise<RouterDiagnostics[]> {
  const c = parseExperimentText(await Deno.readTextFile(`${dir}/${id}/config.yaml`), "config.yaml").points[0]!
    .config;
  const params = paramsFromTensors((await latestCheckpoint(`${dir}/${id}`))!.file.tensors);
  const m = buildModel(c, c.train.batch, denseRules());
  const probs = m.routers.map((r) => r.probs), sched = schedule(m.graph, probs);
  const dataset = await loadDataset(c);
  const tallies = m.routers.map((r) => new RoutingTally(r.layer, r.kind, r.probs.shape[1]!, DOMAINS.length));
  for (let i = 0; i < BATCHES; i++) {
    const b = dataset.valBatch(i, BATCHES, c.train.batch);
    assert(b.inputDomains && b.domains, "synthetic data labels every token with its domain");
    // Input t + 1 is target t: their labels line up, row by row.
    const T = c.data.seq_len;
    for (let k = 0; k < b.inputs.length; k++) {
      if (k % T !== T - 1) assertEquals(b.inputDomains[k + 1], b.domains[k], `label of token ${k + 1}`);
    }
    const feeds = new Map<number, HostValue>([[m.ids.id, b.inputs], [m.targets.id, b.targets]]);
    for (const p of m.params) feeds.set(p.value.id, Float64Array.from(params.get(p.value.name)!.data));
    const out = evaluateGraph(sched.nodes, feeds, probs, CPU_OPS);
    tallies.forEach((t, j) => t.add(out[j] as Float64Array, null, b.inputDomains!));
  }
  return tallies.map((t) => t.finish());
}

Deno.test("eval --diagnostics: load, entropy, co-activation and MI(expert; domain) match the float64 model; --against gives routing stability; stored as diag/…", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const { id } = await trainMicro(
      dir,
      ...["--set", "train.steps=20", "--set", "train.eval_every=20", "--set", "train.checkpoint_every=10"],
    );
    const earlier = `${ckptDir(`${dir}/${id}`)}/${checkpointFileName(10)}`;
    const args = ["--rule", "topk:1", "--batches", String(BATCHES), "--diagnostics", "--runs-dir", dir];
    const r = await cli("eval", id, ...args, "--against", earlier, "--json");
    assertEquals(r.code, 0, r.err.join("\n"));
    const j = r.json();
    assertEquals(j.against, { target: earlier, step: 10 });
    const [dense, top1] = j.rules as {
      rule: string;
      diagnostics: { routers: RouterDiagnostics[] } & object;
    }[];
    assertEquals([dense!.rule, top1!.rule], ["dense", "topk@1"]);

    // The dense rule against the float64 model on the same tokens: routing entropy to f32 rounding; top-1
    // loads and the MI may differ by a near-tie flipped between f32 and float64 (one token of 512 ≈ 0.002).
    const want = await float64Dense(dir, id);
    const got = dense!.diagnostics.routers;
    assertEquals(
      got.map((d) => [d.layer, d.kind, d.experts, d.tokens]),
      want.map((d) => [d.layer, d.kind, d.experts, d.tokens]),
    );
    for (const [i, d] of got.entries()) {
      const w = want[i]!, at = `L${d.layer} ${d.kind}`;
      assert(Math.abs(d.entropy - w.entropy) < 1e-4, `${at} entropy ${d.entropy} vs ${w.entropy}`);
      d.load_top1.forEach((v, e) => assert(Math.abs(v - w.load_top1[e]!) <= 2 / d.tokens, `${at} load ${e}`));
      assert(
        Math.abs(d.mi_domain_bits! - w.mi_domain_bits!) < 0.01,
        `${at} MI ${d.mi_domain_bits} vs ${w.mi_domain_bits}`,
      );
      assert(Math.abs(d.domain_entropy_bits! - w.domain_entropy_bits!) < 1e-12, `${at} H(domain)`);
      // Four domains in roughly equal shares: H(domain) near 2 bits, and the MI at most that.
      assert(
        d.domain_entropy_bits! > 1.5 && d.domain_entropy_bits! <= 2,
        `${at} H(domain) ${d.domain_entropy_bits}`,
      );
      assert(d.mi_domain_bits! >= 0 && d.mi_domain_bits! <= d.domain_entropy_bits!, `${at} MI in range`);
      // Dense: every expert runs for every token.
      assertEquals(d.load_active, new Array(d.experts).fill(1));
      assertEquals(d.coactivation.flat(), new Array(d.experts * d.experts).fill(1));
    }
    // Top-1: exactly one expert per token, the most probable one; none ever active together.
    for (const d of top1!.diagnostics.routers) {
      assertEquals(d.load_active, d.load_top1);
      assert(Math.abs(d.load_active.reduce((a, b) => a + b, 0) - 1) < 1e-12);
      d.coactivation.forEach((row, i) =>
        row.forEach((v, k) => assertEquals(v, i === k ? d.load_active[i] : 0))
      );
    }
    // Ten steps apart the routing moved; every router reports its share of changed top-1 experts.
    const changed = got.map((d) => d.top1_changed!);
    assert(changed.every((x) => x >= 0 && x <= 1) && changed.some((x) => x > 0), `${changed}`);
    assert(
      r.out.some((l) => l.startsWith("topk@1: entropy ") && l.includes("top-1 changed")),
      r.out.join("\n"),
    );

    // The store holds the same numbers for a later study to read back.
    const store = await openRunStore(dir);
    const last = await store.lastMetrics(id);
    for (const rule of [dense!, top1!]) {
      assertEquals(readRoutingDiagnostics(last.values(), rule.rule), rule.diagnostics.routers);
    }
    assertEquals(last.get("diag/dense/against_step")?.value, 10);

    // Against itself: the same routing, token for token.
    const same = await cli("eval", id, ...args, "--against", id, "--json");
    assertEquals(same.code, 0, same.err.join("\n"));
    for (const rule of same.json().rules) {
      for (const d of rule.diagnostics.routers) {
        assertEquals(d.top1_changed, 0, `${rule.rule} L${d.layer} ${d.kind}`);
      }
    }
    // --against needs --diagnostics and a model of the same shape.
    const alone = await cli("eval", id, "--against", earlier, "--runs-dir", dir);
    assertEquals(alone.code, 2);
    assert(
      alone.err.join("\n").includes("--against compares routing: it needs --diagnostics"),
      alone.err.join("\n"),
    );
    const { id: wider } = await trainMicro(dir, "--set", "train.steps=10", "--set", "model.d_model=16");
    const other = await cli("eval", id, ...args, "--against", wider);
    assertEquals(other.code, 2, other.err.join("\n"));
    assert(
      other.err.join("\n").includes(`--against ${wider}: not a checkpoint of the same model shape`),
      other.err.join("\n"),
    );
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import { cli } from "./helpers/cli.ts";
import { closeRunStores } from "../core/runs/open_store.ts";
import { evalBatches, parseRules } from "../core/cli/eval_cmd.ts";
import { Dataset, loadDataset } from "../core/data/dataset.ts";
import { DataError } from "../core/data/sources.ts";
import { UsageError } from "../core/cli/errors.ts";
import { parseExperimentText } from "../core/config/mod.ts";
import { countParams } from "../core/plan/counts.ts";
import { RunDir } from "../core/runs/run_dir.ts";
import { generateMultidomain } from "../core/data/synthetic.ts";

const close = (a: number, b: number, rel: number) => Math.abs(a - b) <= rel * Math.abs(b);

Deno.test("eval measures ppl and active parameters per rule on a trained micro run and logs infer/ metrics", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sets = [
      "--set",
      "train.steps=20",
      "--set",
      "train.eval_every=20",
      "--set",
      "train.checkpoint_every=20",
    ];
    const trained = await cli("run", "tests/fixtures/micro.yaml", ...sets, "--runs-dir", dir, "--json");
    assertEquals(trained.code, 0, trained.err.join("\n"));
    const id = trained.json().run_id;
    const r = await cli(
      "eval",
      id,
      "--rule",
      "threshold",
      "--epsilon",
      "0",
      "--rule",
      "topk:1",
      "--batches",
      "4",
      "--runs-dir",
      dir,
      "--json",
    );
    assertEquals(r.code, 0, r.err.join("\n"));
    const j = r.json();
    // The dense rule on the training's own validation batches (eval_batches: 4) is the training's val ppl.
    assert(
      close(j.dense_ppl, trained.json().final["val/ppl"], 1e-4),
      `${j.dense_ppl} vs ${trained.json().final["val/ppl"]}`,
    );
    assertEquals(j.rules.map((x: { rule: string }) => x.rule), ["dense", "threshold@0", "topk@1"]);
    const [dense, eps0, top1] = j.rules;
    assert(close(eps0.ppl, dense.ppl, 1e-6), "threshold ε = 0 runs every expert");
    assertEquals([eps0.active_pct, eps0.hidden_pct, eps0.active_pct_all], [100, 100, 100]);
    // topk 1: one of 2 attention experts and one of 4 MLP experts per layer, exactly.
    const c =
      parseExperimentText(await Deno.readTextFile("tests/fixtures/micro.yaml"), "micro.yaml").points[0]!
        .config;
    const p = countParams(c);
    // Hidden % (docs/design.md §5): of all attention and MLP weights, the shared K/V always run, half the
    // attention experts' Q/O and a quarter of the MLP experts.
    const hidden = p.attention_qo + p.attention_kv + p.mlp_experts;
    assert(
      close(
        top1.hidden_pct,
        (100 * (p.attention_kv + p.attention_qo / 2 + p.mlp_experts / 4)) / hidden,
        1e-9,
      ),
      `${top1.hidden_pct}`,
    );
    // Of all parameters (embeddings included), the skipped half of the attention experts' Q/O and three
    // quarters of the MLP experts are missing (docs/design.md §5).
    const skipped = p.attention_qo / 2 + (3 * p.mlp_experts) / 4;
    assert(close(top1.active_pct_all, (100 * (p.total - skipped)) / p.total, 1e-9), `${top1.active_pct_all}`);
    assert(top1.layers.every((l: { experts: number }) => l.experts === 1));
    assert(Math.abs(top1.ppl - dense.ppl) > 1e-6, "leaving experts out changes the loss");
    assert(r.out.join("\n").split("\n").some((l) => l.startsWith("topk@1")), "table row printed");
    const m = await (await RunDir.open(dir, id)).readMetrics();
    for (
      const key of [
        "infer/topk@1/ppl",
        "infer/threshold@0/hidden_pct",
        "infer/topk@1/active_pct_all",
        "infer/dense/active_params",
        "infer/topk@1/layer/1/mlp/experts",
      ]
    ) {
      assert(m.some((x) => x.key === key && x.step === 20), `metric ${key}`);
    }
    // Past the validation split's distinct windows: refused before the GPU is opened, naming the maximum.
    const max = (await loadDataset(c)).maxValBatches(c.train.batch);
    const over = await cli("eval", id, "--batches", String(max + 1), "--runs-dir", dir);
    assertEquals(over.code, 2, over.err.join("\n"));
    assert(
      over.err.join("\n").includes(`--batches ${max + 1}: the validation split holds `) &&
        over.err.join("\n").includes(`${max} batches of 8; use --batches ${max} or fewer`),
      over.err.join("\n"),
    );
    assertEquals((await (await RunDir.open(dir, id)).readMetrics()).length, m.length);

    // --text scores any file with the model's tokenizer, recording nothing: text like the training data
    // scores about as the validation split does, printable characters drawn uniformly far worse, and for
    // bytes (one token a byte) bpb = loss / ln 2.
    const like = generateMultidomain(7, 40_000).bytes, uniform = new Uint8Array(40_000);
    for (let i = 0, x = 12345; i < uniform.length; i++) {
      x = (x * 1103515245 + 12345) % 2 ** 31;
      uniform[i] = 32 + (x >> 8) % 95;
    }
    await Deno.writeFile(`${dir}/like.txt`, like);
    await Deno.writeFile(`${dir}/uniform.txt`, uniform);
    const score = async (file: string) => {
      const t = await cli(
        "eval",
        id,
        "--text",
        `${dir}/${file}`,
        "--batches",
        "4",
        "--runs-dir",
        dir,
        "--json",
      );
      assertEquals(t.code, 0, t.err.join("\n"));
      assertEquals([t.json().text, t.json().bytes, t.json().tokens], [`${dir}/${file}`, 40_000, 40_000]);
      return t.json().rules[0];
    };
    const [a, b] = [await score("like.txt"), await score("uniform.txt")];
    const val = trained.json().final["val/ppl"];
    assert(close(a.ppl, val, 0.25) && b.ppl > 1.5 * a.ppl, `like ${a.ppl} (val ${val}) vs uniform ${b.ppl}`);
    assert(close(a.bpb, a.loss / Math.LN2, 1e-12), `${a.bpb} vs ${a.loss / Math.LN2}`);
    assertEquals(
      (await (await RunDir.open(dir, id)).readMetrics()).length,
      m.length,
      "--text records nothing",
    );
    await Deno.writeTextFile(`${dir}/short.txt`, "too short");
    const short = await cli("eval", id, "--text", `${dir}/short.txt`, "--runs-dir", dir);
    assertEquals(short.code, 2, short.err.join("\n"));
    assert(short.err.join("\n").includes(`--text "${dir}/short.txt": 9 tokens`), short.err.join("\n"));
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("eval refuses bad rules and missing runs with exit code 2", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (
      const [args, msg] of [
        [["nope"], /No run "nope"|No run store at .*: nothing was trained into/],
        [["x", "--epsilon", "0.5"], /--epsilon must follow the --rule/],
        [["x", "--rule", "sometimes"], /unknown rule "sometimes"/],
        [["x", "--rule", "topk", "--k", "0"], /--k 0: expected an integer/],
        [["x", "--rule", "topk:1.5"], /--rule topk:1.5: expected an integer/],
        [["x", "--rule", "dense:2"], /dense takes no parameter/],
        [["x", "--rule", "mlp=topk:2,expert=dense"], /expected mlp=RULE,attention=RULE/],
        [
          ["x", "--batches", "1000000000000"],
          /--batches expects a whole number from 1 to 100000, got "1000000000000"/,
        ],
        [["x", "--batches=0"], /--batches expects a whole number from 1 to 100000, got "0"/],
        [["x", "--batches=-2"], /--batches expects a whole number from 1 to 100000, got "-2"/],
        [["x", "--batches", "2.5"], /--batches expects a whole number from 1 to 100000, got "2\.5"/],
      ] as const
    ) {
      const r = await cli("eval", ...args, "--runs-dir", dir);
      assertEquals(r.code, 2, `${args}: ${r.err.join("\n")}`);
      assert(msg.test(r.err.join("\n")), `${args}: ${r.err.join("\n")}`);
    }
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseRules pairs each --rule with the parameters after it, and splits mlp= / attention=", () => {
  const tok = (name: string, value?: string) => ({ kind: "option", name, value });
  const rules = parseRules([
    tok("rule", "threshold"),
    tok("epsilon", "0.3"),
    tok("rule", "topk:3"),
    tok("rule", "mlp=top_p:0.8,attention=dense"),
  ]);
  assertEquals(rules.map((r) => [r.mlp.kind, r.mlp.epsilon, r.mlp.k, r.mlp.p, r.attention.kind]), [
    ["threshold", 0.3, 2, 0.9, "threshold"],
    ["topk", 0.5, 3, 0.9, "topk"],
    ["top_p", 0.5, 2, 0.8, "dense"],
  ]);
});

Deno.test("evalBatches() keeps --batches within the distinct validation windows: refuses, lowers the default", () => {
  const parts = (val: number) => ({
    train: new Uint32Array(100),
    val: new Uint32Array(val),
    trainDomains: null,
    valDomains: null,
  });
  const notes: string[] = [];
  const note = (l: string) => notes.push(l);
  // 16 + 4·20 tokens: 84 windows of 17 tokens (seq_len 16), so 4 batches of 20.
  const ds = new Dataset(parts(100), { seqLen: 16, seed: 1, domainNames: [] });
  assertEquals([evalBatches(3, ds, 20, note), evalBatches(4, ds, 20, note)], [3, 4]);
  assert(notes.length === 0);
  assertEquals(evalBatches(undefined, ds, 20, note), 4);
  assertEquals(notes, [
    "Note: the validation split holds 84 distinct windows of seq_len + 1 = 17 tokens: evaluating 4 batches " +
    "of 20 instead of the default 32",
  ]);
  assertThrows(
    () => evalBatches(5, ds, 20, note),
    (e: Error) =>
      e instanceof UsageError &&
      e.message ===
        "--batches 5: the validation split holds 84 distinct windows of seq_len + 1 = 17 tokens, " +
          "4 batches of 20; use --batches 4 or fewer",
  );
  assertThrows(
    () => evalBatches(undefined, ds, 85, note),
    (e: Error) => e instanceof DataError && e.message.includes("fewer than one batch of train.batch = 85"),
  );
  const big = new Dataset(parts(10_000), { seqLen: 16, seed: 1, domainNames: [] });
  assertEquals(evalBatches(undefined, big, 8, note), 32);
});

/**
 * Every way a config can be wrong, each checked for the exact `file:line:col: key.path: message` line a
 * user sees. Positions: a value issue points at the value, an unknown key at the key, an issue about an
 * unwritten key at its nearest written parent; `--set` issues name the file `--set`, line 1, and the column
 * inside the argument.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { ConfigError, loadExperiment, parseExperimentText } from "../core/config/mod.ts";
import { cli } from "./helpers/cli.ts";

const FIX = "tests/fixtures/config";

function errorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error("expected a ConfigError, but the config was accepted");
}

async function errorOfAsync(fn: () => Promise<unknown>): Promise<ConfigError> {
  try {
    await fn();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error("expected a ConfigError, but the config was accepted");
}

/** The message lines of parsing `text` as `t.yaml` (with optional --set arguments). */
function linesOf(text: string, sets: string[] = []): string[] {
  return errorOf(() => parseExperimentText(text, "t.yaml", { sets })).message.split("\n");
}

Deno.test("parseExperimentText() names file:line:col and a suggestion for an unknown key", () => {
  const e = errorOf(() => parseExperimentText("name: t\nmodel:\n  mlp:\n    expert: 4\n", "t.yaml"));
  assertEquals(e.name, "ConfigError");
  assertEquals(e.issues, [{
    file: "t.yaml",
    line: 4,
    col: 5,
    keyPath: "model.mlp.expert",
    message: 'unknown key "expert" (did you mean "experts"?)',
  }]);
  assertEquals(e.message, 't.yaml:4:5: model.mlp.expert: unknown key "expert" (did you mean "experts"?)');
});

Deno.test("parseExperimentText() lists the valid keys when no key is close to an unknown one", () => {
  assertEquals(linesOf("hardware:\n  zzzzzz: 1\n"), [
    't.yaml:2:3: hardware.zzzzzz: unknown key "zzzzzz" (expected one of: backend, power_preference, ' +
    "memory_budget, validation, precision)",
  ]);
});

Deno.test("parseExperimentText() reports every wrong type, with expected vs got, at the value", () => {
  assertEquals(linesOf("model:\n  d_model: abc\ntrain:\n  steps: 1.5\n  optimizer: { kind: sgd }\n"), [
    't.yaml:2:12: model.d_model: expected an integer, got "abc"',
    "t.yaml:4:10: train.steps: expected an integer, got 1.5",
    't.yaml:5:22: train.optimizer.kind: expected one of "adamw", got "sgd"',
  ]);
});

Deno.test("parseExperimentText() reports an out-of-range value and suggests a near enum value", () => {
  assertEquals(linesOf("data:\n  seq_len: 1\nmodel:\n  norm: rmsnrom\n"), [
    "t.yaml:2:12: data.seq_len: must be ≥ 2, got 1",
    't.yaml:4:9: model.norm: expected one of "layernorm", "rmsnorm", got "rmsnrom" (did you mean "rmsnorm"?)',
  ]);
});

Deno.test("parseExperimentText() reports router.k above the expert count at router.k", () => {
  const text = "model:\n  kind: smoe\n  attention: { kind: mha }\n  mlp: { experts: 4 }\n" +
    "router:\n  train: topk\n  k: 6\n";
  assertEquals(linesOf(text), ["t.yaml:7:6: router.k: k (6) exceeds experts (4) at model.mlp"]);
});

Deno.test("parseExperimentText() reports heads not divisible by kv_heads at kv_heads", () => {
  const text =
    "model:\n  kind: dense\n  attention: { kind: mha, heads: 6, kv_heads: 4 }\n  mlp: { experts: 1 }\n";
  assertEquals(linesOf(text), [
    "t.yaml:3:47: model.attention.kv_heads: heads (6) is not divisible by kv_heads (4)",
  ]);
});

Deno.test("parseExperimentText() points a cross-field issue on an unwritten key at its nearest parent", () => {
  // router.k is the default (2), so the issue falls back to the `router:` key that is written.
  const text =
    "model:\n  kind: smoe\n  attention: { kind: mha }\n  mlp: { experts: 1 }\nrouter:\n  train: topk\n";
  assertEquals(linesOf(text), [
    "t.yaml:4:19: model.mlp.experts: model.kind smoe needs mlp.experts > 1",
    "t.yaml:5:1: router.k: k (2) exceeds experts (1) at model.mlp",
  ]);
});

Deno.test("parseExperimentText() refuses a duplicate key at the second occurrence", () => {
  assertEquals(linesOf("seed: 1\nmodel:\n  layers: 2\n  layers: 3\n"), [
    't.yaml:4:3: model.layers: duplicate key "layers"',
  ]);
});

Deno.test("parseExperimentText() treats an unknown YAML tag as an error, not a string", () => {
  assertEquals(linesOf("name: t\ndescription: !!python/object foo\n"), [
    't.yaml:2:14: description: unknown YAML tag "!!python/object"; configs use plain YAML 1.2 values',
  ]);
});

Deno.test("parseExperimentText() explains YAML 1.1 booleans such as no for model.tie_embeddings", () => {
  assertEquals(linesOf("model:\n  tie_embeddings: no\nhardware:\n  validation: On\n"), [
    't.yaml:2:19: model.tie_embeddings: "no" is a string in YAML 1.2; write false',
    't.yaml:4:15: hardware.validation: "On" is a string in YAML 1.2; write true',
  ]);
});

Deno.test("parseExperimentText() refuses non-finite numbers (.inf, .nan, 1e400)", () => {
  assertEquals(linesOf("train:\n  grad_clip: .inf\n  steps: 1e400\nloss:\n  z: .nan\n"), [
    "t.yaml:2:14: train.grad_clip: .inf is not a finite number",
    "t.yaml:3:10: train.steps: 1e400 is not a finite number",
    "t.yaml:5:6: loss.z: .nan is not a finite number",
  ]);
});

Deno.test("parseExperimentText() refuses a 20-digit integer and one just above 2^53", () => {
  assertEquals(linesOf("seed: 12345678901234567890\ntrain:\n  steps: 9007199254740993\n"), [
    "t.yaml:1:7: seed: integer 12345678901234567890 has more digits than a number can hold exactly " +
    "(it would read as 12345678901234567000)",
    "t.yaml:3:10: train.steps: integer 9007199254740993 has more digits than a number can hold exactly " +
    "(it would read as 9007199254740992)",
  ]);
});

Deno.test("parseExperimentText() refuses a float beyond 2^53", () => {
  assertEquals(linesOf("train:\n  grad_clip: 1.0e20\n"), [
    "t.yaml:2:14: train.grad_clip: 1.0e20 is too large: numbers must lie within ±2^53",
  ]);
});

Deno.test("parseExperimentText() stops an alias bomb at the first alias", () => {
  const rows = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]'];
  for (let i = 1; i < 9; i++) {
    const prev = String.fromCharCode(96 + i), me = String.fromCharCode(97 + i);
    rows.push(`${me}: &${me} [${Array(9).fill(`*${prev}`).join(", ")}]`);
  }
  const start = performance.now();
  assertEquals(linesOf(rows.join("\n") + "\n"), [
    "t.yaml:2:8: b[0]: aliases expand too much (an alias bomb?): more than 100 expansions",
  ]);
  assert(performance.now() - start < 2000, "the alias bomb must be refused quickly");
});

Deno.test("parseExperimentText() refuses an alias that contains itself", () => {
  assertEquals(linesOf("description: &d [1, *d]\n"), [
    't.yaml:1:21: description[1]: alias "*d" refers to a collection that contains it',
  ]);
});

Deno.test("parseExperimentText() refuses 10,000 nested [ without exhausting the stack", () => {
  // The 65th bracket is the first one too deep: "description: " is 13 characters, so column 13 + 65.
  assertEquals(linesOf("description: " + "[".repeat(10_000) + "\n"), [
    "t.yaml:1:78: description: nesting deeper than 64 levels",
  ]);
});

Deno.test("parseExperimentText() refuses block maps nested deeper than 64 levels", () => {
  const rows = Array.from({ length: 70 }, (_, i) => `${"  ".repeat(i)}k${i}:`);
  const lines = linesOf(rows.join("\n") + " 1\n");
  // Depth 65 is the 66th key (k65), on line 66 after 2·65 spaces.
  assertEquals(lines, ["t.yaml:66:131: k0: nesting deeper than 64 levels"]);
});

Deno.test("loadExperiment() refuses a file over 1 MiB before parsing it", async () => {
  const file = await Deno.makeTempFile({ suffix: ".yaml" });
  try {
    await Deno.writeTextFile(file, "name: big\n" + "#".repeat(1 << 20) + "\n");
    const e = await errorOfAsync(() => loadExperiment(file));
    assertEquals(
      e.message,
      `${file}:1:1: (root): file is too large: 1048587 bytes; the limit is 1 MiB (1048576 bytes)`,
    );
  } finally {
    await Deno.remove(file);
  }
  assertEquals(linesOf("#".repeat((1 << 20) + 1)), [
    "t.yaml:1:1: (root): file is too large: the limit is 1 MiB (1048576 bytes)",
  ]);
});

Deno.test("loadExperiment() names a missing config file", async () => {
  const e = await errorOfAsync(() => loadExperiment(`${FIX}/nope.yaml`));
  assertEquals(e.message, `no such file: ${Deno.cwd()}/${FIX}/nope.yaml`);
});

Deno.test("loadExperiment() reports a missing extends target at that list element", async () => {
  const e = await errorOfAsync(() => loadExperiment(`${FIX}/missing_extends.yaml`));
  assertEquals(
    e.message,
    `${FIX}/missing_extends.yaml:4:5: extends[1]: no such file: ${Deno.cwd()}/${FIX}/no_such_base.yaml (written "no_such_base.yaml")`,
  );
});

Deno.test("loadExperiment() names the chain of an extends cycle", async () => {
  const e = await errorOfAsync(() => loadExperiment(`${FIX}/cycle_a.yaml`));
  assertEquals(
    e.message,
    `${FIX}/cycle_b.yaml:2:10: extends: extends cycle: ${FIX}/cycle_a.yaml → ${FIX}/cycle_b.yaml → ${FIX}/cycle_a.yaml`,
  );
});

Deno.test("loadExperiment() points issues into the file that wrote the key, base or extending", async () => {
  const e = await errorOfAsync(() => loadExperiment(`${FIX}/child_of_bad.yaml`));
  assertEquals(e.message.split("\n"), [
    `${FIX}/child_of_bad.yaml:3:11: model.layers: expected an integer, got "lots"`,
    `${FIX}/bad_base.yaml:5:13: model.mlp.hidden: must be ≥ 1, got -3`,
  ]);
});

Deno.test("parseExperimentText() refuses an extends that is not a path", () => {
  assertEquals(linesOf("extends: 3\n"), ["t.yaml:1:10: extends: expected a path or a list of paths, got 3"]);
});

Deno.test("parseExperimentText() reports a bad --set key at its column with a suggestion", () => {
  assertEquals(linesOf("name: t\n", ["seed=2", "model.mlp.expert=8", "modle.d_model=3"]), [
    '--set:1:11: model.mlp.expert: unknown key "expert" (did you mean "experts"?)',
    '--set:1:1: modle: unknown key "modle" (did you mean "model"?)',
  ]);
  assertEquals(linesOf("", ["seed"]), [
    '--set:1:1: (root): expected key=value (e.g. model.mlp.experts=8), got "seed"',
  ]);
  assertEquals(linesOf("", ["train.optimizer.betas.0=0.8"]), [
    "--set:1:23: train.optimizer.betas.0: train.optimizer.betas is a list; give the whole list, " +
    "e.g. train.optimizer.betas=[…]",
  ]);
});

Deno.test("parseExperimentText() reports a bad --set value at its column inside the argument", () => {
  assertEquals(linesOf("name: t\n", ["model.mlp.experts=abc", "train.optimizer.betas=[0.9, 1.5]"]), [
    '--set:1:19: model.mlp.experts: expected an integer, got "abc"',
    "--set:1:29: train.optimizer.betas[1]: must be < 1, got 1.5",
  ]);
  assertEquals(linesOf("", ["model.tie_embeddings=no"]), [
    '--set:1:22: model.tie_embeddings: "no" is a string in YAML 1.2; write false',
  ]);
  assertEquals(linesOf("", ["seed=1e400"]), ["--set:1:6: seed: 1e400 is not a finite number"]);
});

Deno.test("parseExperimentText() reports a bad sweep value at that list element", () => {
  const text = "name: s\nsweep:\n  grid:\n    model.mlp.experts: [4, 0]\n    seed: [1, 2]\n";
  assertEquals(linesOf(text), [
    "t.yaml:4:28: model.mlp.experts: must be ≥ 1, got 0 (point s.experts=0.seed=1)",
  ]);
});

Deno.test("parseExperimentText() reports an unknown sweep key with a suggestion", () => {
  const text =
    "sweep:\n  grid:\n    model.mlp.expert: [4, 8]\n  random:\n    params:\n      train.lr: { min: 1, max: 2 }\n";
  assertEquals(linesOf(text), [
    't.yaml:3:5: sweep.grid["model.mlp.expert"]: unknown key "expert" (did you mean "experts"?)',
    't.yaml:6:7: sweep.random.params["train.lr"]: unknown key "lr" (expected one of: steps, batch, micro_batch, optimizer, ' +
    "schedule, grad_clip, eval_every, eval_batches, checkpoint_every, log_every)",
  ]);
});

Deno.test("parseExperimentText() refuses a random range whose min exceeds its max", () => {
  const text = "sweep:\n  random:\n    n: 2\n    params:\n      train.optimizer.lr: { min: 2, max: 1 }\n";
  assertEquals(linesOf(text), [
    't.yaml:5:27: sweep.random.params["train.optimizer.lr"]: min (2) exceeds max (1)',
  ]);
});

Deno.test("parseExperimentText() reports YAML syntax errors with their position", () => {
  assertEquals(linesOf("model:\n  d_model: 1\n layers: 2\n"), [
    "t.yaml:3:1: layers: all mapping items must start at the same column",
  ]);
});

Deno.test("parseExperimentText() refuses a document that is not a map", () => {
  assertEquals(linesOf("- 1\n- 2\n"), ["t.yaml:1:1: (root): expected a map of settings, got a list of 2"]);
});

/** Seeded mutations of a YAML text: deleted lines, values of another type, stray bytes, huge numbers. */
function mutate(text: string, seed: number): string {
  let r = seed >>> 0;
  const next = () => (r = (Math.imul(r, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(next() * xs.length)]!;
  const lines = text.split("\n");
  const i = Math.floor(next() * lines.length);
  const values = [
    '"text"',
    "-7",
    "1e308",
    "99999999999999999999999",
    "[1, [2]]",
    "{a: {b: c}}",
    "~",
    "true",
    ".nan",
    "0x1F",
  ];
  switch (seed % 6) {
    case 0: // delete a line
      lines.splice(i, 1);
      break;
    case 1: // replace a value with one of another type
      lines[i] = lines[i]!.replace(/:\s*(.+)$/, `: ${pick(values)}`);
      break;
    case 2: { // insert random bytes
      const at = Math.floor(next() * text.length);
      const junk = String.fromCharCode(
        ...Array.from({ length: 1 + Math.floor(next() * 4) }, () => Math.floor(next() * 128)),
      );
      return text.slice(0, at) + junk + text.slice(at);
    }
    case 3: // re-indent a line
      lines[i] = pick(["", " ", "    ", "\t"]) + lines[i]!.trimStart();
      break;
    case 4: // a huge or negative number in every numeric value of a line
      lines[i] = lines[i]!.replace(
        /\b\d+(\.\d+)?(e-?\d+)?\b/g,
        pick(["1e400", "-1", "123456789012345678901234567890", "0"]),
      );
      break;
    default: // duplicate a line
      lines.splice(i, 0, lines[i]!);
  }
  return lines.join("\n");
}

Deno.test("every shipped config under 150 seeded mutations each: a valid config or a located ConfigError, quickly, never anything else", async () => {
  const files = [
    ...[...Deno.readDirSync("configs")].map((e) => `configs/${e.name}`),
    ...[...Deno.readDirSync("configs/repro")].map((e) => `configs/repro/${e.name}`),
  ].filter((f) => f.endsWith(".yaml") && !f.endsWith("repro/repro.yaml")).sort();
  assert(files.length >= 9, `${files}`);
  let refused = 0, accepted = 0, slowest = 0;
  for (const file of files) {
    const text = await Deno.readTextFile(file);
    for (let seed = 0; seed < 150; seed++) {
      const bad = mutate(text, seed * 7919 + file.length);
      const t0 = performance.now();
      try {
        parseExperimentText(bad, file);
        accepted++;
      } catch (e) {
        assert(
          e instanceof ConfigError,
          `${file} seed ${seed}: ${(e as Error).name}: ${(e as Error).message}`,
        );
        for (const issue of e.issues) {
          // The file itself, or a shipped file it extends.
          assert(
            files.includes(issue.file) && issue.line >= 1 && issue.col >= 1,
            `${file} seed ${seed}: ${JSON.stringify(issue)}`,
          );
        }
        assert(/^[^\n]+:\d+:\d+: /.test(e.message), e.message);
        refused++;
      }
      slowest = Math.max(slowest, performance.now() - t0);
    }
  }
  // Many mutations are harmless (a deleted comment, a repeated blank line); most of the rest must be refused.
  assert(refused > 400 && accepted > 0, `refused ${refused}, accepted ${accepted}`);
  assert(slowest < 2000, `slowest parse ${slowest.toFixed(0)} ms`);
});

Deno.test("deno task run on mutated configs exits 2 with file:line:col, never a stack trace", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const text = await Deno.readTextFile("configs/quickstart.yaml");
    let checked = 0;
    for (let seed = 1; checked < 8 && seed < 200; seed++) {
      const bad = mutate(text, seed);
      try {
        parseExperimentText(bad, "q.yaml");
        continue; // harmless mutation
      } catch {
        // a refused one: run it through the CLI
      }
      const path = `${dir}/q${seed}.yaml`;
      await Deno.writeTextFile(path, bad);
      const r = await cli("run", path, "--dry-run");
      const err = r.err.join("\n");
      assertEquals(r.code, 2, `seed ${seed}: ${err}`);
      assert(err.includes(`${path}:`) && /:\d+:\d+: /.test(err), `seed ${seed}: ${err}`);
      assert(!/\n\s+at /.test(err), `seed ${seed}: stack trace in ${err}`);
      checked++;
    }
    assertEquals(checked, 8);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("files that are not YAML configs are refused without echoing them (a .env, binary, non-UTF-8)", async () => {
  const secret = "sk-live-0a1b2c3d4e5f6a7b8c9d";
  const dir = await Deno.makeTempDir();
  const write = (name: string, data: string | Uint8Array) =>
    typeof data === "string"
      ? Deno.writeTextFile(`${dir}/${name}`, data)
      : Deno.writeFile(`${dir}/${name}`, data);
  try {
    await write(".env", `API_KEY=${secret}\nDB_PASSWORD=${secret}\n`);
    await write("env.yaml", `API_KEY=${secret}\nDB_PASSWORD=${secret}\n`);
    await write("kv.yaml", `SECRET_KEY=abc: ${secret}\n`);
    await write("nul.yaml", new Uint8Array([0x61, 0x3a, 0x20, 0x00, 0x62]));
    await write("latin1.yaml", new Uint8Array([0x61, 0x3a, 0x20, 0xe9, 0x0a]));
    const cases: [string, string][] = [
      ["extends: .env\n", `${dir}/top.yaml:1:10: extends: ".env" is not a .yaml or .yml file`],
      [
        "extends: [base.yml, x.json]\n",
        `${dir}/top.yaml:1:21: extends[1]: "x.json" is not a .yaml or .yml file`,
      ],
      [
        "extends: env.yaml\n",
        `${dir}/env.yaml:1:1: (root): expected a map of settings, got a single text value of 77 characters ` +
        "(not shown): this is not a YAML config",
      ],
      [
        "extends: kv.yaml\n",
        `${dir}/kv.yaml:1:1: […]: unknown key: a key of 14 characters (not shown) (expected one of: name, ` +
        "description, seed, data, model, router, loss, train, hardware, store, sweep)",
      ],
      [
        "extends: nul.yaml\n",
        `${dir}/top.yaml:1:10: extends: "${dir}/nul.yaml" is not a YAML text file: it holds a NUL byte at ` +
        "offset 3 (a binary file?)",
      ],
      [
        "extends: latin1.yaml\n",
        `${dir}/top.yaml:1:10: extends: "${dir}/latin1.yaml" is not a YAML text file: it is not valid UTF-8`,
      ],
      [
        `extends: [${Array(17).fill("a.yaml").join(", ")}]\n`,
        `${dir}/top.yaml:1:10: extends: 17 paths; an extends list holds at most 16`,
      ],
    ];
    for (const [top, expected] of cases) {
      await write("top.yaml", top);
      const e = await errorOfAsync(() => loadExperiment(`${dir}/top.yaml`));
      assertEquals(e.message, expected);
    }
    // The top-level file itself, and a value or key far too long to quote.
    const env = await errorOfAsync(() => loadExperiment(`${dir}/.env`));
    assert(!env.message.includes(secret) && env.message.includes("(not shown)"), env.message);
    assertEquals(linesOf(`name: "${"word ".repeat(60)}"\n`), [
      "t.yaml:1:7: name: use letters, digits, '.', '_', '-' and '=', got \"word word word word word word word word…\" " +
      "(300 characters)",
    ]);
    assertEquals(linesOf(`description: *${"a".repeat(100)}\n`)[0]!.length < 200, true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a --set argument over 16 KiB is refused at its key, without quoting it", () => {
  const lines = linesOf("", [`description=${"z".repeat(20_000)}`]);
  assertEquals(lines, [
    "--set:1:13: description: the value is too long: the argument has 20012 characters; a --set argument " +
    "holds at most 16384 (write long values into the config file)",
  ]);
  assertEquals(
    linesOf("", [`${"q".repeat(300)}=1`])[0]!.split(" (expected")[0],
    "--set:1:1: […]: unknown key: a key of 300 characters (not shown)",
  );
});

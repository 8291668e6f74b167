/**
 * Hostile data and tokenizer settings (issue 19's bad-input list), each through the CLI as a user runs it
 * (a separate process): `deno task prepare` and, where the problem shows without tokenizing, `run --dry-run`
 * must exit 2 with a message naming the source, file or key, print no stack trace, and leave the temp
 * directory that holds the config, the data and the `--runs-dir` exactly as it was (no cache folder, no
 * tokenizer, no half shard set). `run` itself is not used: it opens the run store (runs.db) for the live
 * dashboard before it loads the data. A tampered shard is the one case that succeeds: it is prepared again.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { parquetWriteBuffer } from "hyparquet-writer";
import { assertNoStack, assertTreeUnchanged, runCliProcess, snapshotTree } from "./helpers/hostile.ts";

/** One case: `setup` writes its files under `root` and returns the config's data block (YAML flow map). */
interface DataCase {
  name: string;
  setup: (root: string) => Promise<string>;
  message: RegExp;
  /** Also refused by `run --dry-run` (problems found without tokenizing). */
  dryRun: boolean;
}

const PROSE = "Call me Ishmael. Some years ago, never mind how long precisely, I went to sea. ".repeat(400);

const CASES: DataCase[] = [
  {
    name: "an unknown corpus (the available ones are listed)",
    setup: () => Promise.resolve(`{ source: "corpus:war-and-peace" }`),
    message:
      /data\.source "corpus:war-and-peace": unknown corpus \(available: corpus:moby-dick, corpus:sotu\)/,
    dryRun: true,
  },
  {
    name: "a JSON Lines file without the text field (its fields are named)",
    setup: async (root) => {
      await Deno.writeTextFile(`${root}/d.jsonl`, `{"id": 1, "body": "some text"}\n`.repeat(50));
      return `{ source: d.jsonl }`;
    },
    message:
      /data\.source "d\.jsonl" \(.*\/d\.jsonl\):1: no "text" field \(the line has fields "id", "body"\); set data\.text_field/,
    dryRun: true,
  },
  {
    name: "a Parquet file without the text column (its columns are named)",
    setup: async (root) => {
      const columnData = [
        { name: "id", data: [1, 2], type: "INT32" as const },
        { name: "body", data: ["a", "b"], type: "STRING" as const },
      ];
      await Deno.writeFile(`${root}/d.parquet`, new Uint8Array(parquetWriteBuffer({ columnData })));
      return `{ source: d.parquet, text_field: content }`;
    },
    message: /d\.parquet\): no column "content" \(columns: id, body\); set data\.text_field/,
    dryRun: true,
  },
  {
    name: "data.vocab_size below 257",
    setup: () => Promise.resolve(`{ source: "corpus:moby-dick", tokenizer: bpe, vocab_size: 100 }`),
    message: /config\.yaml:\d+:\d+: data\.vocab_size: must be ≥ 257, got 100/,
    dryRun: true,
  },
  {
    name: "data.vocab_size larger than the corpus supports (the number possible is named)",
    setup: async (root) => {
      await Deno.writeTextFile(`${root}/small.txt`, PROSE);
      return `{ source: small.txt, tokenizer: bpe, vocab_size: 1000000 }`;
    },
    message:
      /small\.txt.*data\.vocab_size 1000000 is larger than the training text supports: .*so at most \d+ tokens/,
    dryRun: false,
  },
  {
    name: "a corpus shorter than seq_len + 1 tokens after bpe (long enough in bytes)",
    setup: async (root) => {
      await Deno.writeTextFile(`${root}/short.txt`, PROSE);
      return `{ source: short.txt, tokenizer: bpe, vocab_size: 300, seq_len: 8000, val_fraction: 0.5 }`;
    },
    message:
      /data\.source "short\.txt" .* is too short: its \d+ tokens \(data\.tokenizer bpe 300, from 31600 bytes\) .*fewer than data\.seq_len \+ 1 = 8001/,
    dryRun: false,
  },
  {
    name: "a file: tokenizer that does not exist",
    setup: () => Promise.resolve(`{ source: "corpus:moby-dick", tokenizer: "file:nope/tokenizer.json" }`),
    message: /data\.tokenizer "file:nope\/tokenizer\.json" \(.*\/nope\/tokenizer\.json\) does not exist/,
    dryRun: true,
  },
  {
    name: "a file: tokenizer that is not BPE",
    setup: async (root) => {
      const wordPiece = { model: { type: "WordPiece", vocab: { "[UNK]": 0, a: 1 }, unk_token: "[UNK]" } };
      await Deno.writeTextFile(`${root}/wp.json`, JSON.stringify(wordPiece));
      return `{ source: "corpus:moby-dick", tokenizer: "file:wp.json" }`;
    },
    message: /data\.tokenizer "file:wp\.json".*wp\.json: model type "WordPiece" is not supported/,
    dryRun: true,
  },
  {
    name: "a corrupt file: tokenizer",
    setup: async (root) => {
      await Deno.writeTextFile(`${root}/bad.json`, `{"model": {"type": "BPE", "vocab": {"a": 0}`);
      return `{ source: "corpus:moby-dick", tokenizer: "file:bad.json" }`;
    },
    message: /data\.tokenizer "file:bad\.json".*bad\.json.*not valid JSON/,
    dryRun: true,
  },
  {
    name: "data.vocab_size with a tokenizer whose vocabulary is fixed",
    setup: () => Promise.resolve(`{ source: "corpus:moby-dick", tokenizer: gpt2, vocab_size: 4096 }`),
    message: /data\.vocab_size: data\.vocab_size applies to data\.tokenizer bpe only; gpt2 has a fixed/,
    dryRun: true,
  },
  {
    name: "a data source that is a FIFO (never opened)",
    setup: async (root) => {
      const fifo = await new Deno.Command("mkfifo", { args: [`${root}/pipe.jsonl`] }).output();
      assertEquals(fifo.code, 0);
      return `{ source: pipe.jsonl }`;
    },
    message: /data\.source "pipe\.jsonl" \(.*\/pipe\.jsonl\) is a FIFO \(named pipe\), not a regular file/,
    dryRun: true,
  },
];

/** Writes `config.yaml` (the micro fixture with `data`) under `root`. */
async function writeConfig(root: string, data: string): Promise<string> {
  const path = `${root}/config.yaml`;
  await Deno.writeTextFile(path, `extends: ${Deno.cwd()}/tests/fixtures/micro.yaml\ndata: ${data}\n`);
  return path;
}

for (const c of CASES) {
  Deno.test(`hostile data: ${c.name} — exit 2, named, nothing written`, async () => {
    const root = await Deno.makeTempDir();
    try {
      const config = await writeConfig(root, await c.setup(root));
      const commands = [["prepare", config, "--runs-dir", `${root}/runs`]];
      if (c.dryRun) commands.push(["run", config, "--dry-run", "--runs-dir", `${root}/runs`]);
      for (const args of commands) {
        const before = await snapshotTree(root);
        const r = await runCliProcess(args, { timeoutMs: 60_000 });
        const what = `${args[0]}${args.includes("--dry-run") ? " --dry-run" : ""}`;
        assertEquals(r.code, 2, `${what}: exit ${r.code}\n${r.stderr}`);
        assert(c.message.test(r.stderr), `${what}: ${r.stderr}`);
        assertNoStack(r.stderr);
        assertTreeUnchanged(before, await snapshotTree(root), [], what);
      }
    } finally {
      await Deno.remove(root, { recursive: true });
    }
  });
}

Deno.test("hostile data: a tampered shard is prepared again, named, and never used", async () => {
  const root = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${root}/text.txt`, PROSE);
    const config = await writeConfig(root, `{ source: text.txt }`);
    const args = ["prepare", config, "--runs-dir", `${root}/runs`, "--json"];
    const first = await runCliProcess(args);
    assertEquals(first.code, 0, first.stderr);
    const dir = JSON.parse(first.stdout.trim().split("\n").at(-1)!).prepared[0].dir as string;
    const shard = `${dir}/train-00000.bin`, good = await Deno.readFile(shard);
    const bad = good.slice();
    bad[10]! ^= 0xff;
    await Deno.writeFile(shard, bad);
    const again = await runCliProcess(args);
    assertEquals(again.code, 0, again.stderr);
    assert(
      new RegExp(`Preparing ${dir} again: shard train-00000\\.bin does not match its SHA-256`).test(
        again.stderr,
      ),
      again.stderr,
    );
    assertEquals(JSON.parse(again.stdout.trim().split("\n").at(-1)!).prepared[0].reused, false);
    assertEquals(await Deno.readFile(shard), good);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

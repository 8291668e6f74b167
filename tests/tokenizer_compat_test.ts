/**
 * Our byte-level BPE against `@huggingface/tokenizers`: the tokenizer.json we write loads in the library
 * and encodes every corpus and tricky string to the same ids; our pre-tokenizer splits as the library's
 * ByteLevel pre-tokenizer; the library decodes our ids back to the text.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { ByteLevelPreTokenizer, Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { type TokenizerBenchRow, tokenizerCorpus, TRICKY_TEXTS } from "../core/bench/tokenizer.ts";
import { benchCommand } from "../core/cli/bench_cmd.ts";
import { preTokenizeFast, trainBpe } from "../core/data/bpe.ts";
import { generateMultidomain } from "../core/data/synthetic.ts";
import { ByteTokenizer } from "../core/data/tokenizer.ts";
import { tokenName } from "../core/data/tokenizer_json.ts";
import { BpeTokenizer } from "../core/data/tokenizers.ts";
import { Rng } from "../core/util/rng.ts";

// Moby-Dick then State of the Union addresses; the library encodes about 0.5 MB/s, so samples are small.
const ENGLISH = tokenizerCorpus(1_400_000);
const CORPORA = {
  "moby-dick": ENGLISH.slice(0, 60_000),
  "sotu": ENGLISH.slice(1_300_000, 1_360_000),
  "synthetic": new TextDecoder().decode(generateMultidomain(11, 60_000).bytes),
};

/** Seeded strings over hard characters (no lone surrogates: UTF-8 cannot hold them). */
function fuzz(seed: number, n: number): string[] {
  const alphabet = [
    ..."aZé'sStTmdlrv 09.,!?-\t\n\r",
    "\u00a0",
    "\u2028",
    "\u3000",
    "\u0301",
    "😀",
    "𝟙",
    "東",
    "\u0085",
  ];
  const rng = new Rng(seed);
  return Array.from(
    { length: n },
    () => Array.from({ length: rng.int(50) }, () => rng.pick(alphabet)).join(""),
  );
}

const SAMPLES = [...Object.values(CORPORA), ...TRICKY_TEXTS, ...fuzz(7, 300)];

Deno.test("our pre-tokenizer splits as the library's ByteLevel pre-tokenizer", () => {
  const lib = new ByteLevelPreTokenizer({ type: "ByteLevel", add_prefix_space: false, use_regex: true });
  const enc = new TextEncoder();
  for (const t of SAMPLES) {
    const ours = preTokenizeFast(t).map((w) => tokenName(enc.encode(w)));
    assertEquals(ours, lib.pre_tokenize_text(t), JSON.stringify(t.slice(0, 60)));
  }
});

Deno.test("our tokenizer.json loads in @huggingface/tokenizers and encodes identically", async () => {
  for (const vocabSize of [300, 1000]) {
    const ours = new BpeTokenizer(await trainBpe(ENGLISH.slice(0, 400_000), { vocabSize }));
    const lib = new HfTokenizer(JSON.parse(ours.toJSON()), {});
    assertEquals(lib.get_vocab(true).size, vocabSize);
    for (const t of SAMPLES) {
      const ids = Array.from(ours.encode(t));
      const theirs = t.length === 0 ? [] : lib.encode(t, { add_special_tokens: false }).ids;
      assertEquals(ids, theirs, `vocab ${vocabSize}: ${JSON.stringify(t.slice(0, 60))}`);
      if (ids.length > 0) {
        const text = lib.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
        assertEquals(text, t, "the library decodes our ids to the text");
      }
    }
    const english = CORPORA["moby-dick"];
    // Characters per token on Moby-Dick: 1.42 at 300 tokens, 2.56 at 1000 (measured).
    const ratio = english.length / ours.encode(english).length;
    assert(ratio > (vocabSize > 500 ? 2.4 : 1.35), `compression ${ratio.toFixed(3)} at ${vocabSize}`);
  }
});

Deno.test("the byte tokenizer's tokenizer.json encodes to the bytes in the library", () => {
  const lib = new HfTokenizer(JSON.parse(new ByteTokenizer().toJSON()), {});
  for (const t of SAMPLES.filter((s) => s.length > 0).slice(0, 40)) {
    assertEquals(lib.encode(t, { add_special_tokens: false }).ids, Array.from(new TextEncoder().encode(t)));
  }
});

Deno.test("bench --suite tokenizer --quick --json: training and checked encode rates, summary last", async () => {
  const out: string[] = [], err: string[] = [];
  const code = await benchCommand(["--suite", "tokenizer", "--quick", "--json"], {
    out: (l) => out.push(l),
    err: (l) => err.push(l),
    write: () => {},
  });
  assertEquals(code, 0, err.join("\n"));
  const objects = out.map((l) => JSON.parse(l)), summary = objects.at(-1);
  const rows: TokenizerBenchRow[] = objects.slice(0, -1);
  assertEquals([summary.suite, summary.rows, summary.errors, summary.adapter], ["tokenizer", 4, 0, "cpu"]);
  // A CPU benchmark names its host: the CPU model and threads (no llvmpipe threads: no adapter).
  assert(typeof summary.cpu === "string" && summary.cpu.length > 0 && summary.llvmpipe_threads === null);
  assertEquals(rows.map((r) => r.impl), ["dsmoe", "dsmoe", "hf-tokenizers", "gpt-tokenizer"]);
  const [train, ours, lib, gpt2] = rows as [
    TokenizerBenchRow,
    TokenizerBenchRow,
    TokenizerBenchRow,
    TokenizerBenchRow,
  ];
  assert(train.case.startsWith("train bpe 512") && train.seconds! > 0 && train.mb_per_s === null);
  for (const r of [ours, lib, gpt2]) {
    assert(r.error === undefined && r.seconds! > 0, `${r.impl}: ${r.error}`);
    assert(Math.abs(r.mb_per_s! - r.bytes / 1e6 / r.seconds!) < 1e-9 * r.mb_per_s!, `${r.impl} rate`);
  }
  assertEquals(ours.tokens, lib.tokens, "the library encodes our tokenizer.json to the same ids");
  assertEquals(gpt2.vocab_size, 50257);
  console.log(
    `quick bench: ours ${ours.mb_per_s!.toFixed(2)} MB/s, library ${lib.mb_per_s!.toFixed(2)} MB/s`,
  );
  assert(
    err.some((l) => l.startsWith("bpe: merging pairs") && l.includes("100%")),
    "the progress bar reaches 100%",
  );
  await assertRejectsUsage(() => benchCommand(["--suite", "nope"], { out() {}, err() {}, write() {} }));
});

async function assertRejectsUsage(f: () => Promise<number>): Promise<void> {
  try {
    await f();
  } catch (e) {
    assert((e as Error).message.includes("tokenizer"), "the usage error lists the tokenizer suite");
    return;
  }
  throw new Error("expected a usage error");
}

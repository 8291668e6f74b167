/**
 * Token shards end to end (core/data/prepare.ts): the byte split and batches are today's, bpe shards hold
 * exactly the tokenizer's encoding of each split, preparing twice does nothing, a tampered shard is
 * prepared again and never read, JSON Lines and Parquet sources, and the `prepare` and `--dry-run` CLI.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { parquetWriteBuffer } from "hyparquet-writer";
import { ExperimentSchema } from "../core/config/schema.ts";
import { loadDataset, splitTokens, unigramLoss } from "../core/data/dataset.ts";
import { prepareData } from "../core/data/prepare.ts";
import { forgetVerifiedShards, ShardTokenStore, type SplitIndex } from "../core/data/shards.ts";
import { readSource } from "../core/data/sources.ts";
import { TextSplitter } from "../core/data/split.ts";
import { cli } from "./helpers/cli.ts";
import { snapshotTree } from "./helpers/hostile.ts";

const WORDS = "the whale sea ship captain white deep water harpoon voyage crew sail storm island".split(" ");

/** `n` bytes of pseudo-English (ASCII words). */
function prose(n: number, seed: number): string {
  let s = "", x = seed;
  while (s.length < n) {
    x = (x * 1103515245 + 12345) >>> 0;
    s += WORDS[x % WORDS.length] + ((x >> 8) % 11 === 0 ? ".\n" : " ");
  }
  return s.slice(0, n);
}

function config(data: Record<string, unknown>) {
  return ExperimentSchema.parse({ seed: 2, data: { seq_len: 32, val_fraction: 0.1, ...data } });
}

/** Every token of a shard split. */
function shardTokens(dir: string, split: SplitIndex, dtype: "uint16") {
  const store = new ShardTokenStore(dir, split, dtype), out = new Uint32Array(store.length);
  store.read(0, out);
  store.close();
  return out;
}

Deno.test("byte shards hold today's split: the same batches as in memory, bytes recorded, a second prepare does nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/text.txt`, prose(120_000, 1));
    const c = config({ source: "text.txt" });
    const bytes = await Deno.readFile(`${dir}/text.txt`);
    const old = splitTokens(Uint32Array.from(bytes), null, { valFraction: 0.1, seed: 2 });
    const memory = await loadDataset(c, dir);
    assertEquals([memory.train, memory.val], [old.train, old.val]);
    const cacheDir = `${dir}/cache`;
    const first = await prepareData(c, { baseDir: dir, cacheDir });
    assertEquals(first.reused, false);
    const ds = await loadDataset(c, dir, { cacheDir });
    assert(ds.prepared !== null && ds.prepared.dir === first.dir);
    assertEquals([ds.trainTokens, ds.valTokens], [old.train.length, old.val.length]);
    assertEquals([ds.trainBytes, ds.valBytes], [old.train.length, old.val.length]); // bpb inputs
    for (const step of [0, 5, 100, 1000]) assertEquals(ds.trainBatch(step, 8), memory.trainBatch(step, 8));
    for (let i = 0; i < 3; i++) assertEquals(ds.valBatch(i, 3, 8), memory.valBatch(i, 3, 8));
    const u = unigramLoss(old.train, old.val, 256);
    assert(Math.abs(ds.unigramLoss() - u) < 1e-9 && Math.abs(memory.unigramLoss() - u) < 1e-9, `${u}`);
    ds.close();
    assertEquals(first.index.dtype, "uint16");
    assertEquals(first.index.splits.train.text_bytes + first.index.splits.val.text_bytes, bytes.length);

    const before = await snapshotTree(cacheDir);
    forgetVerifiedShards(); // as a new process: hashes again
    const again = await prepareData(c, { baseDir: dir, cacheDir });
    assertEquals([again.reused, again.dir], [true, first.dir]);
    assertEquals(await snapshotTree(cacheDir), before); // nothing written, not even a time changed

    // A flipped byte in a shard: prepared again (with the reason), never read as data.
    const shard = `${first.dir}/train-00000.bin`, raw = await Deno.readFile(shard);
    raw[1001]! ^= 0x40;
    await Deno.writeFile(shard, raw);
    const log: string[] = [];
    const fresh = await loadDataset(c, dir, { cacheDir, progress: (l) => log.push(l) });
    assert(
      log.some((l) => /again: shard train-00000\.bin does not match its SHA-256/.test(l)),
      log.join("\n"),
    );
    for (const step of [0, 5, 100]) assertEquals(fresh.trainBatch(step, 8), memory.trainBatch(step, 8));
    assertEquals(fresh.train, old.train);
    fresh.close();
    const left = [...(await snapshotTree(cacheDir)).keys()].filter((k) => k.includes(".tmp-"));
    assertEquals(left, []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bpe shards of corpus:moby-dick are the tokenizer's encoding of each split; the tokenizer is cached", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const c = config({ source: "corpus:moby-dick", tokenizer: "bpe", vocab_size: 512, seq_len: 64 });
    const log: string[] = [];
    const p = await prepareData(c, { cacheDir: dir, log: (l) => log.push(l) });
    const t0 = performance.now();
    assertEquals([p.tokenizer.kind, p.tokenizer.vocabSize, p.index.dtype], ["bpe", 512, "uint16"]);
    // The split made on the text, then each split encoded whole.
    const text = (await readSource("corpus:moby-dick", { seed: 2, syntheticBytes: 0 })).bytes;
    const parts = { train: [] as Uint8Array[], val: [] as Uint8Array[] };
    const s = new TextSplitter({
      seed: 2,
      valFraction: 0.1,
      snap: true,
      emit: (v, b) => parts[v ? "val" : "train"].push(b.slice()),
    });
    s.push(text);
    s.end();
    const utf8 = new TextDecoder("utf-8", { fatal: true });
    for (const split of ["train", "val"] as const) {
      const joined = new Uint8Array(parts[split].reduce((n, b) => n + b.length, 0));
      let at = 0;
      for (const b of parts[split]) joined.set(b, at), at += b.length;
      const expected = p.tokenizer.encode(utf8.decode(joined));
      const got = shardTokens(p.dir, p.index.splits[split], "uint16");
      assertEquals(got, expected, `${split} tokens`);
      assertEquals(p.index.splits[split].text_bytes, joined.length);
      assertEquals(p.tokenizer.decode(got), utf8.decode(joined));
    }
    const { train, val } = p.index.splits;
    console.log(
      `moby-dick bpe 512: ${train.tokens} train / ${val.tokens} val tokens, ` +
        `${(train.text_bytes / train.tokens).toFixed(2)} bytes/token; check ${
          (performance.now() - t0).toFixed(0)
        } ms`,
    );
    assert(train.text_bytes / train.tokens > 2, "bpe compresses English");
    const ds = await loadDataset(c, undefined, { cacheDir: dir });
    assertEquals([ds.tokenizer.fingerprint, ds.trainTokens], [p.tokenizer.fingerprint, train.tokens]);
    assert(ds.unigramLoss() > 3 && ds.unigramLoss() < Math.log(512), `${ds.unigramLoss()}`);
    ds.close();

    // Shards gone: prepared again, with the cached tokenizer (no training), to the same bytes.
    await Deno.remove(p.dir, { recursive: true });
    const again = await prepareData(c, { cacheDir: dir, log: (l) => log.push(l) });
    assert(log.some((l) => l.startsWith("Tokenizer bpe 512: from the cache")), log.join("\n"));
    assertEquals(again.tokenizer.fingerprint, p.tokenizer.fingerprint);
    assertEquals(again.index.splits.train.shards, train.shards);
    assertEquals(JSON.parse(await Deno.readTextFile(`${again.dir}/tokenizer.json`)).model.type, "BPE");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("JSON Lines and Parquet sources prepare: their documents joined by the separator, split and tokenized", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const docs = [prose(9000, 2), prose(7000, 3), prose(11000, 4)];
    await Deno.mkdir(`${dir}/mixed`);
    await Deno.writeTextFile(
      `${dir}/mixed/a.jsonl`,
      docs.slice(0, 2).map((d, i) => JSON.stringify({ id: i, body: d })).join("\n") + "\n",
    );
    await Deno.writeFile(
      `${dir}/mixed/b.parquet`,
      new Uint8Array(
        parquetWriteBuffer({ columnData: [{ name: "body", data: [docs[2]!], type: "STRING" }] }),
      ),
    );
    const c = config({ source: "mixed", text_field: "body" });
    const p = await prepareData(c, { baseDir: dir, cacheDir: `${dir}/cache` });
    const joined = new TextEncoder().encode(docs.join("\n\n"));
    const old = splitTokens(Uint32Array.from(joined), null, { valFraction: 0.1, seed: 2 });
    assertEquals(shardTokens(p.dir, p.index.splits.train, "uint16"), old.train);
    assertEquals(shardTokens(p.dir, p.index.splits.val, "uint16"), old.val);
    assertEquals([p.index.source.documents, p.index.source.text_field], [3, "body"]);
    assertEquals(p.index.source.files?.map((f) => f.format), ["jsonl", "parquet"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task prepare tokenizes once; run --dry-run shows the corpus, its licence, the tokenizer and the shards", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/moby.yaml`,
      `extends: ${Deno.cwd()}/tests/fixtures/micro.yaml\ndata: { source: "corpus:moby-dick", seq_len: 32 }\n`,
    );
    const dry = await cli("run", `${dir}/moby.yaml`, "--dry-run", "--runs-dir", `${dir}/runs`);
    assertEquals(dry.code, 0, dry.err.join("\n"));
    const text = dry.out.join("\n");
    assert(/data {10}corpus:moby-dick — Moby-Dick.*139 documents, 1\.2\d MB.*public domain/.test(text), text);
    assert(/tokenizer {5}byte \(256 tokens\)/.test(text) && /shards {8}not prepared/.test(text), text);
    const first = await cli("prepare", `${dir}/moby.yaml`, "--runs-dir", `${dir}/runs`, "--json");
    assertEquals(first.code, 0, first.err.join("\n"));
    const [point] = first.json().prepared;
    assertEquals([point.reused, point.tokenizer, point.vocab_size], [false, "byte", 256]);
    assertEquals(point.train_tokens + point.val_tokens, point.train_bytes + point.val_bytes);
    assert(point.dir.startsWith(`${dir}/runs/cache/`), point.dir);
    console.log(`prepare corpus:moby-dick (byte): ${point.tokens_per_s.toFixed(0)} tokens/s`);
    const second = await cli("prepare", `${dir}/moby.yaml`, "--runs-dir", `${dir}/runs`, "--json");
    assertEquals([second.code, second.json().prepared[0].reused], [0, true]);
    assert(second.out.some((l) => l.startsWith("Prepared already: ")), second.out.join("\n"));
    const after = await cli("run", `${dir}/moby.yaml`, "--dry-run", "--runs-dir", `${dir}/runs`);
    assert(
      after.out.some((l) => l.startsWith(`  shards        prepared in ${point.dir}`)),
      after.out.join("\n"),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

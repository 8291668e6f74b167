import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import { createHash } from "node:crypto";
import { Rng } from "../util/rng.ts";
import { Dataset } from "./dataset.ts";
import {
  ArrayTokenStore,
  dtypeFor,
  forgetVerifiedShards,
  indexProblem,
  SHARD_FORMAT,
  type ShardIndex,
  ShardTokenStore,
  ShardWriter,
  verifyShards,
} from "./shards.ts";
import { SPLIT_BLOCK, splitTokens, TextSplitter } from "./split.ts";

/** Runs `bytes` through a TextSplitter in pieces of random sizes; returns each split's bytes. */
function splitStream(bytes: Uint8Array, o: { seed: number; valFraction: number; snap: boolean }, pieces = 7) {
  const train: number[] = [], val: number[] = [];
  const s = new TextSplitter({ ...o, emit: (v, b) => (v ? val : train).push(...b) });
  const rng = new Rng(pieces);
  for (let at = 0; at < bytes.length;) {
    const n = 1 + rng.int(3 * SPLIT_BLOCK);
    s.push(bytes.subarray(at, at + n));
    at += n;
  }
  const counts = s.end();
  return { train: Uint8Array.from(train), val: Uint8Array.from(val), counts };
}

Deno.test("the streamed text split equals the token-level split of the byte tokenizer, in any pieces", () => {
  const rng = new Rng(5);
  const cases: [number, number][] = [
    [100_003, 0.1], // many blocks, a partial last one
    [3 * SPLIT_BLOCK, 0.05],
    [SPLIT_BLOCK + 1, 0.5], // two blocks
    [SPLIT_BLOCK, 0.5], // one block: no at-least-one rule
    [20 * SPLIT_BLOCK + 17, 1e-9], // nothing drawn for validation: the last block is
    [20 * SPLIT_BLOCK + 17, 0.999999999], // everything drawn for validation: the first block trains
  ];
  for (const [n, valFraction] of cases) {
    const bytes = Uint8Array.from({ length: n }, () => rng.int(256));
    const old = splitTokens(Uint32Array.from(bytes), null, { valFraction, seed: 3 });
    for (const pieces of [1, 2, 3]) {
      const got = splitStream(bytes, { seed: 3, valFraction, snap: false }, pieces);
      assertEquals(Array.from(got.train), Array.from(old.train), `train of ${n} at ${valFraction}`);
      assertEquals(Array.from(got.val), Array.from(old.val), `val of ${n} at ${valFraction}`);
      assertEquals(got.counts.blocks, Math.ceil(n / SPLIT_BLOCK));
    }
  }
});

Deno.test("with snapping the split never cuts a UTF-8 character and keeps every byte", () => {
  const text = "naïve café — 東京 😀 ".repeat(3000);
  const bytes = new TextEncoder().encode(text);
  const got = splitStream(bytes, { seed: 1, valFraction: 0.2, snap: true });
  assertEquals(got.train.length + got.val.length, bytes.length);
  const fatal = new TextDecoder("utf-8", { fatal: true });
  const t = fatal.decode(got.train), v = fatal.decode(got.val); // throws on a cut character
  assert(t.length > 0 && v.length > 0);
  assertEquals(got.counts.blocks, Math.ceil(bytes.length / SPLIT_BLOCK));
  assertEquals([got.counts.trainBytes, got.counts.valBytes], [got.train.length, got.val.length]);
});

/** Writes `tokens` as one split of a shard folder in `dir`; returns the index's split entry. */
function writeSplit(dir: string, tokens: Uint32Array, vocab: number, shardTokens: number) {
  const w = new ShardWriter(dir, "train", dtypeFor(vocab), shardTokens);
  for (let at = 0; at < tokens.length; at += 777) w.write(tokens.subarray(at, at + 777));
  return {
    tokens: w.tokens,
    text_bytes: tokens.length,
    shards: w.finish(),
    unigram: new Array(vocab).fill(0),
  };
}

Deno.test("shards round-trip through positioned reads across shard edges, uint16 or uint32 by vocabulary", async () => {
  const dir = await Deno.makeTempDir();
  try {
    assertEquals([dtypeFor(256), dtypeFor(65536), dtypeFor(65537), dtypeFor(50257)], [
      "uint16",
      "uint16",
      "uint32",
      "uint16",
    ]);
    for (const vocab of [4096, 100_000]) {
      await Deno.remove(dir, { recursive: true });
      await Deno.mkdir(dir);
      const rng = new Rng(vocab);
      const tokens = Uint32Array.from({ length: 10_000 }, () => rng.int(vocab));
      const split = writeSplit(dir, tokens, vocab, 3000);
      const width = vocab > 65536 ? 4 : 2;
      assertEquals(split.shards.map((s) => [s.file, s.tokens, s.bytes]), [
        ["train-00000.bin", 3000, 3000 * width],
        ["train-00001.bin", 3000, 3000 * width],
        ["train-00002.bin", 3000, 3000 * width],
        ["train-00003.bin", 1000, 1000 * width],
      ]);
      for (const s of split.shards) {
        const bytes = await Deno.readFile(`${dir}/${s.file}`);
        assertEquals(bytes.length, s.bytes);
        assertEquals(createHash("sha256").update(bytes).digest("hex"), s.sha256);
      }
      if (vocab > 65536) assert(tokens.some((t) => t > 65535), "ids above uint16 survive");
      const store = new ShardTokenStore(dir, split, dtypeFor(vocab));
      const all = new Uint32Array(tokens.length);
      store.read(0, all);
      assertEquals(all, tokens);
      for (const start of [0, 2990, 2999, 3000, 5999, 8995]) {
        const out = new Uint32Array(Math.min(20, tokens.length - start));
        store.read(start, out);
        assertEquals(out, tokens.subarray(start, start + out.length), `from ${start}`);
      }
      throws(() => store.read(9_990, new Uint32Array(20)), RangeError);
      store.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("verifyShards() refuses a shard with one flipped byte, a wrong size and a missing file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const tokens = Uint32Array.from({ length: 5000 }, (_, i) => (i * 31) % 256);
    const split = writeSplit(dir, tokens, 256, 2048);
    const val = { ...split, shards: [] as typeof split.shards, tokens: 0 };
    const index = {
      format: SHARD_FORMAT,
      key: dir.slice(dir.lastIndexOf("/") + 1),
      dtype: "uint16",
      tokenizer: { vocab_size: 256 },
      splits: { train: split, val },
    } as unknown as ShardIndex;
    assertEquals(indexProblem(index, index.key), null);
    assertEquals(await verifyShards(dir, index), null);
    // Flip one byte in place: same size, new ctime; the once-per-process memo must not hide it.
    // (A few ms apart, so the file's times differ at the millisecond resolution Deno reports.)
    await new Promise((r) => setTimeout(r, 5));
    const path = `${dir}/train-00001.bin`, bytes = await Deno.readFile(path);
    bytes[100]! ^= 0x01;
    await Deno.writeFile(path, bytes);
    assert((await verifyShards(dir, index))?.startsWith("shard train-00001.bin does not match its SHA-256"));
    bytes[100]! ^= 0x01;
    await Deno.writeFile(path, bytes);
    forgetVerifiedShards();
    assertEquals(await verifyShards(dir, index), null);
    await Deno.writeFile(path, bytes.subarray(2));
    assertEquals(await verifyShards(dir, index), "shard train-00001.bin has 4094 bytes, the index says 4096");
    await Deno.remove(path);
    assertEquals(await verifyShards(dir, index), "shard train-00001.bin is missing");
    const lying = { ...index, splits: { ...index.splits, train: { ...split, tokens: 4999 } } };
    assertEquals(indexProblem(lying, index.key), "train split: shards hold 5000 tokens, the index says 4999");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a Dataset over shards gives the same training and validation batches as over arrays", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const rng = new Rng(11);
    const train = Uint32Array.from({ length: 9_001 }, () => rng.int(4096));
    const val = Uint32Array.from({ length: 2_000 }, () => rng.int(4096));
    const w = {
      train: new ShardWriter(dir, "train", "uint16", 1000),
      val: new ShardWriter(dir, "val", "uint16", 1000),
    };
    w.train.write(train), w.val.write(val);
    const split = (tokens: Uint32Array, s: ShardWriter) => ({
      tokens: tokens.length,
      text_bytes: 0,
      shards: s.finish(),
      unigram: [],
    });
    const shards = { train: split(train, w.train), val: split(val, w.val) };
    const options = { seqLen: 16, seed: 4, domainNames: [] };
    const memory = new Dataset({ train, val, trainDomains: null, valDomains: null }, options);
    const onDisk = new Dataset({
      train: new ShardTokenStore(dir, shards.train, "uint16"),
      val: new ShardTokenStore(dir, shards.val, "uint16"),
      trainDomains: null,
      valDomains: null,
    }, options);
    assertEquals([onDisk.trainTokens, onDisk.valTokens], [train.length, val.length]);
    for (const step of [0, 1, 17, 70, 71, 140, 1000]) {
      assertEquals(onDisk.trainBatch(step, 8), memory.trainBatch(step, 8), `step ${step}`);
    }
    for (let i = 0; i < 4; i++) assertEquals(onDisk.valBatch(i, 4, 8), memory.valBatch(i, 4, 8));
    assertEquals(onDisk.train, train); // small enough to load whole
    assertEquals(new ArrayTokenStore(train).length, train.length);
    onDisk.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

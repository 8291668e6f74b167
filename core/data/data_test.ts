import { deepStrictEqual as assertEquals, ok as assert, rejects } from "node:assert/strict";
import { ExperimentSchema } from "../config/schema.ts";
import {
  DataError,
  Dataset,
  decodeText,
  DOMAINS,
  encodeText,
  firstInvalidUtf8,
  generateMultidomain,
  globToRegExp,
  loadDataset,
  MAX_SOURCE_BYTES,
  readSource,
  splitTokens,
  unigramLoss,
} from "./mod.ts";

Deno.test("generateMultidomain() is deterministic and mixes all four domains", () => {
  const a = generateMultidomain(7, 50_000),
    b = generateMultidomain(7, 50_000),
    c = generateMultidomain(8, 50_000);
  assertEquals(a.bytes, b.bytes);
  assert(a.bytes.some((v, i) => v !== c.bytes[i]), "another seed gives another corpus");
  const counts = new Array(DOMAINS.length).fill(0);
  for (const d of a.domains) counts[d]++;
  for (const n of counts) assert(n > 50_000 / 10, `each domain has a fair share: ${counts}`);
  const text = new TextDecoder().decode(a.bytes);
  assert(/\d+\+\d+=\d+/.test(text) && text.includes("def f") && text.includes('"name": '));
});

Deno.test("the arithmetic in the synthetic corpus is correct", () => {
  const text = new TextDecoder().decode(generateMultidomain(3, 20_000).bytes);
  let checked = 0;
  for (const m of text.matchAll(/(?:^|\n)(\d+)([+*-])(\d+)=(-?\d+)\n/g)) {
    const [a, op, b, r] = [Number(m[1]), m[2], Number(m[3]), Number(m[4])];
    assertEquals(op === "+" ? a + b : op === "-" ? a - b : a * b, r);
    checked++;
  }
  assert(checked > 20, `checked ${checked} equations`);
});

Deno.test("splitTokens() is deterministic, disjoint, complete and near the requested fraction", () => {
  const tokens = Uint32Array.from({ length: 400_000 }, (_, i) => i % 256);
  const s = splitTokens(tokens, null, { valFraction: 0.1, seed: 1 });
  assertEquals(s.train.length + s.val.length, tokens.length);
  const frac = s.val.length / tokens.length;
  assert(frac > 0.04 && frac < 0.2, `validation fraction ${frac}`);
  assertEquals(splitTokens(tokens, null, { valFraction: 0.1, seed: 1 }).val, s.val);
});

Deno.test("Dataset batches are seeded by step: the same step gives the same batch, targets shift by one", () => {
  const tokens = Uint32Array.from({ length: 100_000 }, (_, i) => (i * 7) % 251);
  const parts = splitTokens(tokens, null, { valFraction: 0.05, seed: 3 });
  const ds = new Dataset(parts, { seqLen: 16, seed: 3, domainNames: [] });
  const a = ds.trainBatch(5, 4), b = ds.trainBatch(5, 4), c = ds.trainBatch(6, 4);
  assertEquals(a.inputs, b.inputs);
  assert(a.inputs.some((v, i) => v !== c.inputs[i]));
  for (let r = 0; r < 4; r++) {
    for (let t = 0; t < 15; t++) assertEquals(a.targets[r * 16 + t], a.inputs[r * 16 + t + 1]);
  }
  assertEquals(ds.valBatch(0, 2, 4).inputs, ds.valBatch(0, 2, 4).inputs);
});

Deno.test("an epoch visits every non-overlapping training window once, in a seeded order per epoch", () => {
  const tokens = Uint32Array.from({ length: 30_000 }, (_, i) => i % 65_521);
  const parts = {
    train: Uint32Array.from({ length: 2_000 }, (_, i) => i),
    val: tokens,
    trainDomains: null,
    valDomains: null,
  };
  const ds = new Dataset(parts, { seqLen: 16, seed: 9, domainNames: [] });
  const W = ds.windowsPerEpoch, batch = 4;
  assertEquals(W, Math.floor(1_999 / 16)); // 124 windows, slack 15 tokens
  // Token i is i, so a window's first input is its start. Steps 0 … 2W/4 − 1 cover exactly two epochs.
  const starts: number[] = [];
  for (let step = 0; step < (2 * W) / batch; step++) {
    const b = ds.trainBatch(step, batch);
    for (let r = 0; r < batch; r++) starts.push(b.inputs[r * 16]!);
  }
  for (const epoch of [starts.slice(0, W), starts.slice(W)]) {
    const phase = Math.min(...epoch);
    assert(phase >= 0 && phase <= 15, `phase ${phase}`);
    assertEquals([...epoch].sort((a, b) => a - b), Array.from({ length: W }, (_, k) => phase + 16 * k));
  }
  assert(starts.slice(0, W).some((s, i) => s - Math.min(...starts.slice(0, W)) !== 16 * i), "shuffled");
  assert(
    starts.slice(0, W).some((s, i) => s % 16 !== starts[W + i]! % 16 || s !== starts[W + i]),
    "the second epoch has its own order",
  );
  assertEquals(ds.epochAt(2 * W / batch, batch), 2);
  // Addressable by step: a fresh dataset (a resumed run) asked for a step mid-epoch gives the same batch.
  const fresh = new Dataset(parts, { seqLen: 16, seed: 9, domainNames: [] });
  assertEquals(fresh.trainBatch(37, batch).inputs, ds.trainBatch(37, batch).inputs);
  assertEquals(fresh.trainBatch(24, 5).inputs, ds.trainBatch(24, 5).inputs); // windows 120–124: epochs 0|1
  assertEquals(
    ds.trainBatch(24, 5).inputs.subarray(4 * 16, 4 * 16 + 16),
    ds.trainBatch(31, 4).inputs.subarray(0, 16),
  );
});

Deno.test("Dataset refuses a split shorter than one window with a clear message", () => {
  const parts = {
    train: new Uint32Array(10),
    val: new Uint32Array(100),
    trainDomains: null,
    valDomains: null,
  };
  try {
    new Dataset(parts, { seqLen: 16, seed: 1, domainNames: [] });
    throw new Error("expected a DataError");
  } catch (e) {
    assert(e instanceof DataError && e.message.includes("train split"), String(e));
  }
});

Deno.test("byte tokenizer round-trips any text", () => {
  for (const s of ["", "abc", "héllo wörld", "日本語 ✓ 🎉"]) assertEquals(decodeText(encodeText(s)), s);
});

Deno.test("firstInvalidUtf8() finds the offset of bad bytes, overlongs and surrogates", () => {
  assertEquals(firstInvalidUtf8(new TextEncoder().encode("ok ✓ 🎉")), -1);
  assertEquals(firstInvalidUtf8(new Uint8Array([0x61, 0x62, 0xff])), 2);
  assertEquals(firstInvalidUtf8(new Uint8Array([0xc0, 0x80])), 0); // overlong NUL
  assertEquals(firstInvalidUtf8(new Uint8Array([0x61, 0xed, 0xa0, 0x80])), 1); // surrogate
  assertEquals(firstInvalidUtf8(new Uint8Array([0x61, 0xe2, 0x9c])), 1); // truncated
});

Deno.test("readSource() reads files, directories and globs, and reports invalid UTF-8 with file and offset", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/a/b`, { recursive: true });
    await Deno.writeTextFile(`${dir}/a/one.txt`, "one\n");
    await Deno.writeTextFile(`${dir}/a/b/two.txt`, "two\n");
    await Deno.writeTextFile(`${dir}/a/b/skip.md`, "skip\n");
    const opts = { seed: 1, syntheticBytes: 1024 };
    const all = await readSource(`${dir}/a`, opts);
    assertEquals(all.files.length, 3);
    const glob = await readSource(`${dir}/a/**/*.txt`, opts);
    // Each plain-text file is one document; documents are joined with DOCUMENT_SEPARATOR ("\n\n").
    assertEquals(new TextDecoder().decode(glob.bytes), "two\n\n\none\n");
    await Deno.writeFile(`${dir}/a/bad.txt`, new Uint8Array([0x68, 0x69, 0xfe]));
    await rejects(
      readSource(`${dir}/a/bad.txt`, opts),
      (e: Error) => e instanceof DataError && /bad\.txt": invalid UTF-8 at byte 2 \(0xfe\)/.test(e.message),
    );
    await rejects(
      readSource(`${dir}/nope`, opts),
      (e: Error) => e instanceof DataError && e.message.endsWith(`: no such file: ${dir}/nope`),
    );
    await rejects(readSource("synthetic:nothing", opts), DataError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("globToRegExp() handles *, ** and ?", () => {
  assert(globToRegExp("data/**/*.txt").test("data/x.txt"));
  assert(globToRegExp("data/**/*.txt").test("data/a/b/x.txt"));
  assert(!globToRegExp("data/*.txt").test("data/a/x.txt"));
  assert(globToRegExp("f?.md").test("f1.md"));
});

Deno.test("loadDataset() on the synthetic source: the unigram baseline is well above a trivial loss", async () => {
  const c = ExperimentSchema.parse({ data: { seq_len: 64, synthetic_bytes: 200_000 } });
  const ds = await loadDataset(c);
  const u = unigramLoss(ds.train, ds.val, 256);
  // Bytes of mixed text: entropy of the unigram distribution is a few nats, well below log(256) = 5.55.
  assert(u > 2 && u < Math.log(256), `unigram loss ${u}`);
  assert(ds.trainDomains !== null && ds.trainDomains.length === ds.train.length);
});

/** The DataError message of reading `source`, or a failure when it is read or fails otherwise. */
async function refusal(source: string): Promise<string> {
  try {
    await readSource(source, { seed: 1, syntheticBytes: 1024 });
  } catch (e) {
    assert(e instanceof DataError, `${source}: ${(e as Error).name}: ${(e as Error).message}`);
    return e.message;
  }
  throw new Error(`${source} was read`);
}

Deno.test("readSource() refuses what is not a regular file or directory from stat alone, never reading it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const fifo = `${dir}/pipe.txt`;
    assertEquals((await new Deno.Command("mkfifo", { args: [fifo] }).output()).code, 0);
    await Deno.symlink("/dev/zero", `${dir}/zero.txt`);
    await Deno.mkdir(`${dir}/withpipe/sub`, { recursive: true });
    await Deno.writeTextFile(`${dir}/withpipe/a.txt`, "text\n");
    assertEquals((await new Deno.Command("mkfifo", { args: [`${dir}/withpipe/sub/p`] }).output()).code, 0);
    await Deno.mkdir(`${dir}/loop`);
    await Deno.writeTextFile(`${dir}/loop/a.txt`, "text\n");
    await Deno.symlink(`${dir}/loop`, `${dir}/loop/again`);
    await Deno.symlink(`${dir}/self`, `${dir}/self`);
    const t0 = performance.now();
    const cases: [string, RegExp][] = [
      [fifo, /pipe\.txt" is a FIFO \(named pipe\), not a regular file or directory$/],
      ["/dev/zero", /^data\.source "\/dev\/zero" is a character device, not a regular file or directory$/],
      ["/dev/urandom", /"\/dev\/urandom" is a character device/],
      [`${dir}/zero.txt`, /zero\.txt" is a symlink to a character device/],
      ["/proc/self/environ", /"\/proc\/self\/environ" is a kernel pseudo-file under \/proc/],
      [`${dir}/withpipe`, /withpipe": .*withpipe\/sub\/p is a FIFO \(named pipe\).*only regular files/],
      [`${dir}/loop`, /loop": .*loop\/again is a symlink loop \(back to /],
      [`${dir}/self`, /self" is a symlink loop$/],
      [`${dir}/*.md`, /^No files match data\.source ".*\/\*\.md" \(\d+ entries looked at under /],
      [`${dir}/pipe.*`, /pipe\.txt is a FIFO \(named pipe\).*a glob may match only regular files/],
    ];
    for (const [source, re] of cases) {
      const msg = await refusal(source);
      assert(re.test(msg), `${source}: ${msg}`);
    }
    // Nothing above opened the FIFO (which would block) or read a device; a generous liveness bound.
    const ms = performance.now() - t0;
    console.log(`${cases.length} refusals in ${ms.toFixed(0)} ms`);
    assert(ms < 10_000, `${ms} ms`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readSource() refuses an empty file, a NUL byte and a source over 1 GiB, naming the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/empty.txt`, "");
    assertEquals(
      await refusal(`${dir}/empty.txt`),
      `data.source "${dir}/empty.txt" holds no text: the file is empty`,
    );
    await Deno.mkdir(`${dir}/d`);
    await Deno.writeTextFile(`${dir}/d/a.txt`, "ok\n");
    // Valid UTF-8, but binary: NUL bytes are refused.
    await Deno.writeFile(`${dir}/d/b.bin`, new Uint8Array([0x61, 0x62, 0x00, 0x01, 0x00]));
    assertEquals(
      await refusal(`${dir}/d`),
      `data.source "${dir}/d": ${dir}/d/b.bin: a NUL byte at byte 2: a binary file, not text; give UTF-8 text files`,
    );
    // A sparse file: its size is refused from stat, before a byte is read.
    const big = await Deno.open(`${dir}/big.txt`, { write: true, create: true });
    await big.truncate(MAX_SOURCE_BYTES + 1);
    big.close();
    assertEquals(
      await refusal(`${dir}/big.txt`),
      `data.source "${dir}/big.txt": ${MAX_SOURCE_BYTES + 1} bytes in 1 file(s); the limit is 1 GiB ` +
        `(${MAX_SOURCE_BYTES} bytes) of text per source: use a smaller selection of files`,
    );
    // Relative sources are named as written and as resolved.
    await rejects(
      readSource("nope.txt", { seed: 1, syntheticBytes: 1024, baseDir: dir }),
      (e: Error) => e.message === `data.source "nope.txt" (${dir}/nope.txt): no such file: ${dir}/nope.txt`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadDataset() refuses a source too short for seq_len + 1 tokens per split with its numbers", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/short.txt`, "x".repeat(3000));
    const c = ExperimentSchema.parse({ data: { source: "short.txt", seq_len: 64 } });
    await rejects(loadDataset(c, dir), (e: Error) => {
      assert(e instanceof DataError, String(e));
      assert(
        e.message.startsWith(`data.source "short.txt" (${dir}/short.txt) is too short: its 3000 tokens`),
        e.message,
      );
      assert(
        /split has 0, fewer than data\.seq_len \+ 1 = 65; .*more than 4096 tokens/.test(e.message),
        e.message,
      );
      return true;
    });
    await Deno.writeTextFile(`${dir}/ten.txt`, "y".repeat(10 * 4096));
    const long = ExperimentSchema.parse({ data: { source: `${dir}/ten.txt`, seq_len: 8192 } });
    await rejects(
      loadDataset(long),
      (e: Error) =>
        e instanceof DataError &&
        /is too short: .*fewer than data\.seq_len \+ 1 = 8193; use more text, a smaller/
          .test(e.message),
    );
    const syn = ExperimentSchema.parse({ data: { seq_len: 4096, synthetic_bytes: 8192 } });
    await rejects(
      loadDataset(syn),
      (e: Error) =>
        e instanceof DataError && e.message.startsWith('data.source "synthetic:multidomain" is too short') &&
        e.message.includes("data.synthetic_bytes"),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Dataset.maxValBatches() counts the batches of distinct validation windows", () => {
  const val = Uint32Array.from({ length: 50 }, (_, i) => i); // token i is i: a window's first input is its start
  const parts = { train: new Uint32Array(100), val, trainDomains: null, valDomains: null };
  const ds = new Dataset(parts, { seqLen: 9, seed: 1, domainNames: [] });
  // 50 − 9 = 41 windows of 10 tokens (starts 0 … 40): 10 batches of 4, every window distinct.
  assertEquals(ds.maxValBatches(4), 10);
  const starts = new Set<number>();
  for (let i = 0; i < 10; i++) {
    const b = ds.valBatch(i, 10, 4);
    for (let r = 0; r < 4; r++) starts.add(b.inputs[r * 9]!);
  }
  assertEquals(starts.size, 40);
  assert(Math.max(...starts) === 40 && Math.min(...starts) === 0);
  assertEquals([ds.maxValBatches(41), ds.maxValBatches(42)], [1, 0]);
});

Deno.test("bits per byte: loss × tokens / bytes / ln 2 over the validation split, the same for any tokenizer", () => {
  const tokens = Uint32Array.from({ length: 1000 }, (_, i) => i % 7);
  const ds = (valBytes: number) =>
    new Dataset(
      { train: tokens, val: tokens.subarray(0, 400), trainDomains: null, valDomains: null },
      { seqLen: 16, seed: 1, domainNames: [], valBytes },
    );
  // One byte a token (the default): bpb is the loss in bits.
  const bytes = ds(400);
  if (Math.abs(bytes.bitsPerByte(Math.LN2) - 1) > 1e-15) throw new Error(`${bytes.bitsPerByte(Math.LN2)}`);
  // 400 tokens from 1,720 bytes of text (4.3 bytes a token): 4.3 times fewer bits per byte than per token.
  const bpe = ds(1720);
  const want = (3 * 400) / 1720 / Math.LN2;
  if (Math.abs(bpe.bitsPerByte(3) - want) > 1e-15) throw new Error(`${bpe.bitsPerByte(3)} vs ${want}`);
});

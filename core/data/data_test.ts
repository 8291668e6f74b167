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
    throw new Error("expected a RangeError");
  } catch (e) {
    assert(e instanceof RangeError && e.message.includes("train split"), String(e));
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
    assertEquals(new TextDecoder().decode(glob.bytes), "two\none\n");
    await Deno.writeFile(`${dir}/a/bad.txt`, new Uint8Array([0x68, 0x69, 0xfe]));
    await rejects(
      readSource(`${dir}/a/bad.txt`, opts),
      (e: Error) => e instanceof DataError && /bad\.txt: invalid UTF-8 at byte 2/.test(e.message),
    );
    await rejects(
      readSource(`${dir}/nope`, opts),
      (e: Error) => e instanceof DataError && e.message.includes("does not exist"),
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

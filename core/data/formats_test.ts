import { deepStrictEqual as assertEquals, ok as assert, rejects, throws } from "node:assert/strict";
import { gzipSync, zstdCompressSync } from "node:zlib";
import { parquetWriteBuffer } from "hyparquet-writer";
import {
  checkRowGroupText,
  CHUNK_BYTES,
  completeUtf8Length,
  DOCUMENT_SEPARATOR,
  formatOfPath,
  inspectTextSource,
  MAX_ROW_GROUP_TEXT_BYTES,
  openTextSource,
  type TextChunk,
  type TextFormat,
  type TextSource,
  utf8Length,
  withSeparators,
} from "./formats.ts";
import { DataError } from "./sources.ts";

const enc = new TextEncoder();

async function collect(src: TextSource): Promise<TextChunk[]> {
  const out: TextChunk[] = [];
  for await (const c of src) out.push(c);
  return out;
}

async function texts(format: TextFormat, path: string, textField?: string): Promise<string[]> {
  return (await collect(openTextSource(format, path, { textField }))).map((c) => c.text);
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "dsmoe_formats_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function dataError(pattern: RegExp): (e: Error) => boolean {
  return (e: Error) => {
    assert(e instanceof DataError, `expected a DataError, got ${e.name}: ${e.message}`);
    assert(pattern.test(e.message), `"${e.message}" does not match ${pattern}`);
    return true;
  };
}

/** Deterministic English-like text of about `bytes` bytes (words from a fixed list, seeded LCG). */
function words(bytes: number, seed: number): string {
  const list = [
    "the",
    "whale",
    "sea",
    "ship",
    "captain",
    "harpoon",
    "naïve",
    "café",
    "€",
    "ocean",
    "deep",
    "and",
  ];
  let s = seed >>> 0, out = "";
  const parts: string[] = [];
  let n = 0;
  while (n < bytes) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const w = list[s % list.length]! + (s % 17 === 0 ? ".\n" : " ");
    parts.push(w), n += utf8Length(w);
    if (parts.length === 4096) out += parts.join(""), parts.length = 0;
  }
  return out + parts.join("");
}

/** Random lowercase letters and spaces: text that snappy barely compresses, so the file is as big as it. */
function letters(n: number, seed: number): string {
  let s = seed >>> 0;
  const codes = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const r = s >>> 24;
    codes[i] = r < 40 ? 0x20 : 0x61 + (r % 26);
  }
  return String.fromCharCode(...codes);
}

function rate(bytes: number, ms: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB in ${ms.toFixed(0)} ms = ${
    (bytes / 1e6 / (ms / 1e3)).toFixed(0)
  } MB/s`;
}

// ---------------------------------------------------------------------------------------------------------
// Helpers

Deno.test("formatOfPath() picks the format from the extension", () => {
  assertEquals(
    ["a.jsonl", "b.NDJSON", "c.parquet", "d.txt", "e.json", "f"].map(formatOfPath),
    ["jsonl", "jsonl", "parquet", "text", "text", "text"],
  );
});

Deno.test("utf8Length() and completeUtf8Length() agree with TextEncoder", () => {
  for (const s of ["", "abc", "héllo", "€uro", "😀x", "a\ud800b"]) {
    assertEquals(utf8Length(s), enc.encode(s).length);
  }
  const b = enc.encode("a€😀"); // 61 | e2 82 ac | f0 9f 98 80
  assertEquals([1, 2, 3, 4, 5, 6, 7, 8].map((n) => completeUtf8Length(b.subarray(0, n))), [
    1,
    1,
    1,
    4,
    4,
    4,
    4,
    8,
  ]);
  assertEquals(completeUtf8Length(new Uint8Array([0x80, 0x80])), 2, "stray continuation bytes are left in");
});

Deno.test("withSeparators() puts the separator between documents only", async () => {
  async function* chunks() {
    yield { text: "a", documentStart: true };
    yield { text: "b", documentStart: false };
    yield { text: "c", documentStart: true };
  }
  let all = "";
  for await (const s of withSeparators(chunks())) all += s;
  assertEquals(all, `ab${DOCUMENT_SEPARATOR}c`);
  assertEquals(DOCUMENT_SEPARATOR, "\n\n");
});

Deno.test("openTextSource() refuses an unknown format, and every reader refuses non-regular files", async () => {
  throws(() => openTextSource("csv" as TextFormat, "x.csv"), dataError(/Unknown text format "csv".*jsonl/));
  throws(() => openTextSource("toString" as TextFormat, "x"), dataError(/Unknown text format "toString"/));
  await withTempDir(async (dir) => {
    const fifo = `${dir}/fifo`;
    const made = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    assert(made.success, "mkfifo");
    for (const format of ["text", "jsonl", "parquet"] as const) {
      await rejects(collect(openTextSource(format, dir)), dataError(/ is a directory, not a regular file/));
      await rejects(
        collect(openTextSource(format, fifo)),
        dataError(/fifo is a FIFO \(named pipe\), not a regular file/),
      );
      await rejects(collect(openTextSource(format, `${dir}/nope`)), dataError(/nope does not exist/));
    }
    await rejects(inspectTextSource("parquet", fifo), dataError(/not a regular file/));
    await rejects(
      collect(openTextSource("jsonl", fifo, { label: 'data.source "in/"' })),
      dataError(/^data\.source "in\/" is a FIFO/),
    );
  });
});

// ---------------------------------------------------------------------------------------------------------
// Plain text

Deno.test("plain text: chunks never split a character and rejoin to the file; a BOM is dropped", async () => {
  await withTempDir(async (dir) => {
    const text = "\ufeffhéllo wörld € 😀 — the end\n".repeat(5);
    const path = `${dir}/a.txt`;
    await Deno.writeFile(path, new Uint8Array([0xef, 0xbb, 0xbf, ...enc.encode(text)]));
    for (const chunkBytes of [1, 2, 3, 5, 7, 64, CHUNK_BYTES]) {
      const src = openTextSource("text", path, { chunkBytes });
      const chunks = await collect(src);
      assertEquals(
        chunks.map((c) => c.text).join(""),
        text,
        `chunkBytes ${chunkBytes}: only the BOM is dropped`,
      );
      assert(chunks.every((c) => !c.text.includes("\ufffd") && c.text.length > 0));
      assert(chunks.every((c) => utf8Length(c.text) <= chunkBytes + 3), "chunks stay near the block size");
      assertEquals(chunks.map((c) => c.documentStart), chunks.map((_, i) => i === 0));
      assertEquals(src.stats.documents, 1);
      assertEquals(src.stats.bytesRead, utf8Length(text) + 3, "the BOM was read");
      assertEquals(src.stats.textBytes, utf8Length(text));
      assert(src.stats.done);
    }
    // A U+FEFF inside the text stays, even at the start of a block.
    await Deno.writeFile(path, enc.encode("ab\ufeffcd"));
    assertEquals((await texts("text", path)).join(""), "ab\ufeffcd");
    assertEquals(
      (await collect(openTextSource("text", path, { chunkBytes: 2 }))).map((c) => c.text).join(""),
      "ab\ufeffcd",
    );
    await Deno.writeFile(path, new Uint8Array());
    assertEquals(await texts("text", path), [], "an empty file has no documents");
  });
});

Deno.test("plain text: invalid UTF-8 reports the file and absolute byte offset, across blocks too", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/bad.txt`;
    await Deno.writeFile(path, new Uint8Array([...enc.encode("hello wörld"), 0xff, 0x61]));
    for (const chunkBytes of [3, 4, CHUNK_BYTES]) {
      await rejects(
        collect(openTextSource("text", path, { chunkBytes })),
        dataError(/bad\.txt: invalid UTF-8 at byte 12 \(0xff\); re-encode the file as UTF-8/),
      );
    }
    // A character cut off by the end of the file.
    await Deno.writeFile(path, new Uint8Array([0x61, 0x62, 0xe2, 0x82]));
    await rejects(
      collect(openTextSource("text", path, { chunkBytes: 3 })),
      dataError(/invalid UTF-8 at byte 2 \(0xe2\)/),
    );
    await Deno.writeFile(path, new Uint8Array([0x61, 0xed, 0xa0, 0x80, 0x62])); // an encoded surrogate
    await rejects(inspectTextSource("text", path), dataError(/bad\.txt: invalid UTF-8 at byte 1 \(0xed\)/));
    await Deno.writeFile(path, new Uint8Array([...enc.encode("text then"), 0, 0x61]));
    for (const format of ["text", "jsonl"] as const) {
      await rejects(
        collect(openTextSource(format, path, { chunkBytes: 4, label: "bin" })),
        dataError(/^bin: a NUL byte at byte 9: a binary file, not text/),
      );
    }
    await Deno.writeTextFile(path, "a real \ufffd replacement character is fine");
    assertEquals((await texts("text", path)).join(""), "a real \ufffd replacement character is fine");
  });
});

Deno.test("plain text streams a multi-MB file in ~1 MiB chunks and stops reading when asked", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/big.txt`;
    const text = words(8 << 20, 1);
    await Deno.writeTextFile(path, text);
    const src = openTextSource("text", path);
    let firstSeenAt = -1, maxChunk = 0, joinedBytes = 0;
    for await (const c of src) {
      if (firstSeenAt < 0) firstSeenAt = src.stats.bytesRead;
      maxChunk = Math.max(maxChunk, utf8Length(c.text)), joinedBytes += utf8Length(c.text);
    }
    assertEquals(firstSeenAt, CHUNK_BYTES, "the first chunk comes after reading one block, not the file");
    assert(maxChunk <= CHUNK_BYTES + 3, `max chunk ${maxChunk}`);
    assertEquals(joinedBytes, utf8Length(text));
    assertEquals(src.stats.chunks, Math.ceil(utf8Length(text) / CHUNK_BYTES));
    const t0 = performance.now();
    for await (const _ of src) { /* the reader alone, for the printed rate */ }
    console.log(`plain text reader: ${rate(src.stats.bytesRead, performance.now() - t0)}`);

    const controller = new AbortController();
    const aborted = openTextSource("text", path, { signal: controller.signal });
    await rejects(
      (async () => {
        for await (const _ of aborted) controller.abort();
      })(),
      (e: Error) => e.name === "AbortError",
    );
    assertEquals(aborted.stats.bytesRead, CHUNK_BYTES, "no block is read after the abort");
  });
});

// ---------------------------------------------------------------------------------------------------------
// JSON Lines

Deno.test("JSON Lines: one document per line; blank lines, CRLF, a BOM, nulls and empty strings handled", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/a.jsonl`;
    const lines = [
      '{"id": 1, "text": "first — é"}',
      "",
      '  {"id": 2, "text": "second\\nline"}  ',
      '{"id": 3, "text": null}',
      '{"id": 4, "text": ""}',
      "   ",
      '{"id": 5, "text": "😀 last"}',
    ];
    await Deno.writeFile(path, new Uint8Array([0xef, 0xbb, 0xbf, ...enc.encode(lines.join("\r\n"))]));
    const src = openTextSource("jsonl", path);
    const chunks = await collect(src);
    assertEquals(chunks.map((c) => c.text), ["first — é", "second\nline", "😀 last"]);
    assert(chunks.every((c) => c.documentStart));
    assertEquals(
      [src.stats.documents, src.stats.skipped, src.stats.fields, src.stats.done],
      [3, 2, ["id", "text"], true],
    );
    assertEquals(src.stats.bytesRead, (await Deno.stat(path)).size);
    assertEquals(
      src.stats.textBytes,
      utf8Length("first — é") + utf8Length("second\nline") + utf8Length("😀 last"),
    );
    // Lines split across tiny blocks reassemble, with or without a final newline.
    await Deno.writeTextFile(path, lines.join("\n") + "\n");
    const tiny = await collect(openTextSource("jsonl", path, { chunkBytes: 3 }));
    assertEquals(tiny.map((c) => c.text), ["first — é", "second\nline", "😀 last"]);
  });
});

Deno.test("JSON Lines: data.text_field names the field; a dotted name is a path unless the key exists", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/a.jsonl`;
    await Deno.writeTextFile(
      path,
      ['{"body": "b1", "meta": {"body": "m1"}}', '{"body": "b2", "meta": {"body": "m2"}, "meta.body": "k2"}']
        .join("\n"),
    );
    assertEquals(await texts("jsonl", path, "body"), ["b1", "b2"]);
    assertEquals(await texts("jsonl", path, "meta.body"), ["m1", "k2"]);
    await rejects(texts("jsonl", path, "meta.nope"), dataError(/a\.jsonl:1: no "meta\.nope" field/));
  });
});

Deno.test("JSON Lines: bad lines name the file, the line and the fields it has", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/bad.jsonl`;
    const cases: [string, RegExp][] = [
      [
        '{"text": "ok"}\n{"id": 7, "body": "x"}\n',
        /bad\.jsonl:2: no "text" field \(the line has fields "id", "body"\); set data\.text_field to the field/,
      ],
      [
        '{"text": "ok"}\n\n{"text": 42}\n',
        /bad\.jsonl:3: field "text" is a number, not a string; set data\.text_field/,
      ],
      ['{"text": ["a"]}\n', /bad\.jsonl:1: field "text" is an array, not a string/],
      ['{"text": "ok"}\n{"text": "unterminated}\n', /bad\.jsonl:2: invalid JSON \(/],
      ['["text"]\n', /bad\.jsonl:1: expected a JSON object with a "text" field, found an array/],
      ['"just a string"\n', /bad\.jsonl:1: expected a JSON object with a "text" field, found a string/],
      ["{}\n", /bad\.jsonl:1: no "text" field \(the line has no fields\)/],
    ];
    for (const [content, pattern] of cases) {
      await Deno.writeTextFile(path, content);
      await rejects(texts("jsonl", path), dataError(pattern));
    }
    await Deno.writeFile(
      path,
      new Uint8Array([...enc.encode('{"text": "a"}\n{"text": "'), 0xc3, 0x28, 0x22, 0x7d]),
    );
    await rejects(texts("jsonl", path), dataError(/bad\.jsonl: invalid UTF-8 at byte 24 \(0xc3\)/));
    await Deno.writeTextFile(path, `{"text": "${"x".repeat(100)}"}\n`);
    await rejects(
      collect(openTextSource("jsonl", path, { maxLineChars: 50, chunkBytes: 16 })),
      dataError(/bad\.jsonl:1: line longer than 50 characters/),
    );
  });
});

Deno.test("inspectTextSource() reads only the head of a JSON Lines file", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/a.jsonl`;
    await Deno.writeTextFile(path, '{"title": "t", "content": "c"}\n{"oops"\n');
    const info = await inspectTextSource("jsonl", path, { textField: "content" });
    assertEquals(info, {
      format: "jsonl",
      path,
      fileBytes: (await Deno.stat(path)).size,
      fields: ["title", "content"],
    });
    await rejects(
      inspectTextSource("jsonl", path),
      dataError(/a\.jsonl:1: no "text" field \(the line has fields "title", "content"\)/),
    );
  });
});

Deno.test("JSON Lines streams a multi-MB file line by line", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/big.jsonl`;
    const docs: string[] = [];
    for (let i = 0; i < 2000; i++) docs.push(words(3000 + (i % 7) * 100, i));
    await Deno.writeTextFile(path, docs.map((text, id) => JSON.stringify({ id, text })).join("\n") + "\n");
    const size = (await Deno.stat(path)).size;
    assert(size > 6e6, `file is ${size} bytes`);
    const src = openTextSource("jsonl", path);
    let firstSeenAt = -1, n = 0, same = true;
    const t0 = performance.now();
    for await (const c of src) {
      if (firstSeenAt < 0) firstSeenAt = src.stats.bytesRead;
      same &&= c.text === docs[n++];
    }
    const ms = performance.now() - t0;
    assert(same, "every document round-trips");
    assertEquals(n, docs.length);
    assertEquals(firstSeenAt, CHUNK_BYTES, "the first document comes after one block, not the whole file");
    assertEquals(src.stats.bytesRead, size);
    console.log(`JSON Lines reader: ${rate(size, ms)} (${n} documents)`);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Parquet

type ColumnData = Parameters<typeof parquetWriteBuffer>[0]["columnData"];

async function writeParquet(
  path: string,
  columnData: ColumnData,
  extra: Omit<Parameters<typeof parquetWriteBuffer>[0], "columnData"> = {},
): Promise<void> {
  await Deno.writeFile(path, new Uint8Array(parquetWriteBuffer({ columnData, ...extra })));
}

Deno.test("Parquet: reads the text column over several snappy row groups, skipping nulls and empty strings", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/a.parquet`;
    await writeParquet(path, [
      { name: "id", data: [1, 2, 3, 4, 5, 6, 7], type: "INT32" },
      { name: "text", data: ["alpha", null, "béta — 😀", "", "gamma", "delta", null], type: "STRING" },
    ], { rowGroupSize: 2 });
    const src = openTextSource("parquet", path);
    assertEquals((await collect(src)).map((c) => c.text), ["alpha", "béta — 😀", "gamma", "delta"]);
    assertEquals([src.stats.documents, src.stats.skipped, src.stats.fields, src.stats.done], [4, 3, [
      "id",
      "text",
    ], true]);
    const info = await inspectTextSource("parquet", path);
    assertEquals([info.rows, info.rowGroups, info.fields], [7, 4, ["id", "text"]]);
  });
});

Deno.test("Parquet: gzip and zstd pages decompress; data.text_field picks a column or a struct field", async () => {
  await withTempDir(async (dir) => {
    const data = ["one", "two", "three"];
    const gz = `${dir}/gz.parquet`, zst = `${dir}/zst.parquet`;
    await writeParquet(gz, [{ name: "content", data, type: "STRING" }], {
      codec: "GZIP",
      compressors: { GZIP: (b: Uint8Array) => new Uint8Array(gzipSync(b)) },
    });
    await writeParquet(zst, [{ name: "content", data, type: "STRING" }], {
      codec: "ZSTD",
      compressors: { ZSTD: (b: Uint8Array) => new Uint8Array(zstdCompressSync(b)) },
    });
    assertEquals(await texts("parquet", gz, "content"), data);
    assertEquals(await texts("parquet", zst, "content"), data);

    const nested = `${dir}/nested.parquet`;
    await writeParquet(nested, [
      { name: "id", data: [1, 2, 3] },
      { name: "meta", data: [{ body: "x" }, null, { body: "z" }] },
      { name: "tags", data: [["a"], ["b", "c"], []] },
    ], {
      schema: [
        { name: "root", num_children: 3 },
        { name: "id", type: "INT32", repetition_type: "REQUIRED" },
        { name: "meta", num_children: 1, repetition_type: "OPTIONAL" },
        { name: "body", type: "BYTE_ARRAY", converted_type: "UTF8", repetition_type: "OPTIONAL" },
        { name: "tags", num_children: 1, repetition_type: "OPTIONAL", converted_type: "LIST" },
        { name: "list", num_children: 1, repetition_type: "REPEATED" },
        { name: "element", type: "BYTE_ARRAY", converted_type: "UTF8", repetition_type: "OPTIONAL" },
      ],
    });
    assertEquals(await texts("parquet", nested, "meta.body"), ["x", "z"]);
    await rejects(
      texts("parquet", nested),
      dataError(/nested\.parquet: no column "text" \(columns: id, meta\.body, tags\); set data\.text_field/),
    );
    await rejects(
      texts("parquet", nested, "tags"),
      dataError(/column "tags" is a list, not a string column/),
    );
    await rejects(
      texts("parquet", nested, "meta"),
      dataError(/column "meta" is a struct, not a string column/),
    );
    await rejects(
      texts("parquet", nested, "id"),
      dataError(/column "id" is of type INT32, not a string column/),
    );
    await rejects(inspectTextSource("parquet", nested, { textField: "id" }), dataError(/of type INT32/));
  });
});

Deno.test("Parquet: corrupt files and invalid UTF-8 values are DataErrors naming the file", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/c.parquet`;
    await Deno.writeTextFile(path, "this is not parquet at all, just some text");
    await rejects(texts("parquet", path), dataError(/c\.parquet: not a readable Parquet file \(/));
    await Deno.writeFile(path, new Uint8Array());
    await rejects(texts("parquet", path), dataError(/c\.parquet: not a readable Parquet file/));

    // A valid footer over a damaged data page.
    const good = new Uint8Array(parquetWriteBuffer({
      columnData: [{ name: "text", data: [words(4000, 3), words(4000, 4)], type: "STRING" }],
    }));
    const bad = good.slice();
    for (let i = 20; i < 200; i++) bad[i] = 0xff;
    await Deno.writeFile(path, bad);
    await rejects(texts("parquet", path), dataError(/c\.parquet: row group 0: cannot read column "text" \(/));
    // Truncated: the footer is gone.
    await Deno.writeFile(path, good.subarray(0, good.length - 10));
    await rejects(texts("parquet", path), dataError(/c\.parquet: not a readable Parquet file/));

    // Raw bytes in an unannotated BYTE_ARRAY column are read as UTF-8, strictly.
    await writeParquet(path, [{
      name: "text",
      data: [enc.encode("fine"), new Uint8Array([0x61, 0xff, 0x62])],
      type: "BYTE_ARRAY",
    }]);
    await rejects(
      texts("parquet", path),
      dataError(/c\.parquet: row group 0: .*invalid UTF-8 at byte 1 of a value/),
    );
  });
});

Deno.test("Parquet streams row group by row group", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/big.parquet`;
    const docs: string[] = [];
    for (let i = 0; i < 1600; i++) docs.push(letters(2000, i + 100));
    await writeParquet(path, [{ name: "text", data: docs, type: "STRING" }], { rowGroupSize: 100 });
    const size = (await Deno.stat(path)).size;
    const src = openTextSource("parquet", path);
    let firstSeenAt = -1, n = 0, same = true;
    const t0 = performance.now();
    for await (const c of src) {
      if (firstSeenAt < 0) firstSeenAt = src.stats.bytesRead;
      same &&= c.text === docs[n++];
    }
    const ms = performance.now() - t0;
    assert(same && n === docs.length, "every document round-trips in order");
    assert(size > 2e6, `file is ${size} bytes`);
    assert(
      firstSeenAt < size / 2,
      `first document after ${firstSeenAt} of ${size} bytes: one row group, not all`,
    );
    assert(src.stats.bytesRead <= size + (512 << 10), `read ${src.stats.bytesRead} of ${size} bytes`);
    console.log(
      `Parquet reader: ${rate(src.stats.textBytes, ms)} of text from ${(size / 1e6).toFixed(1)} MB snappy, ` +
        `16 row groups`,
    );
  });
});

Deno.test("a Parquet row group whose text column would decompress past the limit is refused before it is read", () => {
  const group = (bytes: number) => ({
    columns: [
      { meta_data: { path_in_schema: ["id"], total_uncompressed_size: 10 ** 12 } },
      { meta_data: { path_in_schema: ["text"], total_uncompressed_size: BigInt(bytes) } },
    ],
  });
  checkRowGroupText(group(MAX_ROW_GROUP_TEXT_BYTES), ["text"], "f.parquet: row group 0"); // the id column is not read
  throws(
    () => checkRowGroupText(group(MAX_ROW_GROUP_TEXT_BYTES + 1), ["text"], "f.parquet: row group 3"),
    (e: Error) =>
      e instanceof DataError &&
      e.message.startsWith("f.parquet: row group 3: its text column decompresses to"),
  );
});

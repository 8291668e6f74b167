/**
 * Memory and throughput of the data side (not a test: run it by hand, one process per measurement so that
 * the peak resident set, VmHWM, is that step's own):
 *
 * ```sh
 * deno run -A core/data/memory_bench.ts make /tmp/big.txt 1000000000   # text from the corpora, with variations
 * deno run -A core/data/memory_bench.ts prepare /tmp/big.txt byte /tmp/cache
 * deno run -A core/data/memory_bench.ts prepare /tmp/big.txt bpe /tmp/cache     # bpe, vocab_size 4096
 * deno run -A core/data/memory_bench.ts train /tmp/big.txt byte /tmp/cache      # 1,000 batches + validation
 * ```
 *
 * `prepare` prints the preparation's throughput and the process's peak RSS; `train` opens the prepared
 * data as `run` does (verifying every shard), draws 1,000 training batches of 16 × 128 tokens and 64
 * validation batches, and prints the RSS before loading, after, and the peak. The source may also be a
 * `corpus:` name.
 *
 * @module
 */
import { ExperimentSchema } from "../config/schema.ts";
import { loadDataset } from "./dataset.ts";
import { readCorpus } from "./corpora.ts";
import { formatPrepareSummary, prepareData, progressPrinter } from "./prepare.ts";

/** `VmRSS` and `VmHWM` of this process in MiB (Linux). */
function memory(): { rss: number; hwm: number } {
  const status = Deno.readTextFileSync("/proc/self/status");
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? NaN);
  return { rss: kb("VmRSS") / 1024, hwm: kb("VmHWM") / 1024 };
}

function config(source: string, tokenizer: string) {
  return ExperimentSchema.parse({
    seed: 1,
    data: { source, tokenizer, ...(tokenizer === "bpe" ? { vocab_size: 4096 } : {}), seq_len: 128 },
  });
}

const _say = (line: string) => console.error(line);

/** Writes about `bytes` of text: both corpora's documents, repeated in a rotated order with a marker. */
async function make(path: string, bytes: number): Promise<void> {
  const docs: string[] = [];
  for (const name of ["sotu", "moby-dick"]) for await (const c of readCorpus(name)) docs.push(c.text);
  const utf8 = new TextEncoder();
  using f = await Deno.open(path, { write: true, create: true, truncate: true });
  let written = 0;
  for (let rep = 0; written < bytes; rep++) {
    for (let i = 0; i < docs.length && written < bytes; i++) {
      const doc = docs[(i * 7 + rep * 13) % docs.length]!;
      const text = `Part ${rep + 1}.${i + 1}\n\n${rep % 2 ? doc.toUpperCase() : doc}\n\n`;
      const b = utf8.encode(text).subarray(0, bytes - written);
      for (let at = 0; at < b.length;) at += await f.write(b.subarray(at));
      written += b.length;
    }
  }
  _say(`wrote ${written} bytes to ${path}`);
}

async function prepare(source: string, tokenizer: string, cacheDir: string): Promise<void> {
  const c = config(source, tokenizer), before = memory(), t0 = performance.now();
  const p = await prepareData(c, {
    cacheDir,
    onProgress: progressPrinter((t) => Deno.stderr.writeSync(new TextEncoder().encode(t)), false),
    log: _say,
  });
  const after = memory(), seconds = (performance.now() - t0) / 1000;
  for (const line of formatPrepareSummary(p)) console.log(line);
  const i = p.index, tokens = i.splits.train.tokens + i.splits.val.tokens;
  console.log(
    `prepare ${source} ${tokenizer}: ${seconds.toFixed(1)} s in all; tokenizing ${
      (i.prepare.tokens_per_s / 1e6).toFixed(2)
    }M tokens/s, ${(i.prepare.bytes_per_s / 1e6).toFixed(1)} MB/s of text; ${tokens} tokens; ` +
      `RSS ${before.rss.toFixed(0)} MiB before, peak ${after.hwm.toFixed(0)} MiB`,
  );
}

async function train(source: string, tokenizer: string, cacheDir: string): Promise<void> {
  const c = config(source, tokenizer), before = memory(), t0 = performance.now();
  const ds = await loadDataset(c, undefined, { cacheDir, progress: _say });
  const loaded = memory(), t1 = performance.now();
  let sum = 0;
  for (let step = 0; step < 1000; step++) sum += ds.trainBatch(step, 16).inputs[0]!;
  for (let i = 0; i < 64; i++) sum += ds.valBatch(i, 64, 16).inputs[0]!;
  const u = ds.unigramLoss();
  const after = memory(), t2 = performance.now();
  console.log(
    `train data ${source} ${tokenizer}: ${ds.trainTokens} train / ${ds.valTokens} val tokens, unigram ` +
      `${u.toFixed(4)}; open+verify ${((t1 - t0) / 1000).toFixed(2)} s, 1,000 + 64 batches ${
        ((t2 - t1) / 1000).toFixed(2)
      } s (${sum}); RSS ${before.rss.toFixed(0)} MiB before loading, ${loaded.rss.toFixed(0)} after, ` +
      `${after.rss.toFixed(0)} after the batches, peak ${after.hwm.toFixed(0)} MiB`,
  );
  ds.close();
}

if (import.meta.main) {
  const [mode, a, b, c] = Deno.args;
  if (mode === "make") await make(a!, Number(b));
  else if (mode === "prepare") await prepare(a!, b!, c!);
  else if (mode === "train") await train(a!, b!, c!);
  else throw new Error("usage: memory_bench.ts make PATH BYTES | prepare|train SOURCE byte|bpe CACHE_DIR");
}

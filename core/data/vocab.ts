/**
 * The model's vocabulary size from `data.tokenizer`, without loading a tokenizer: what the embedding and the
 * LM head are sized by (core/plan/counts.ts `vocabSize`).
 *
 * - `byte`: 256; `gpt2`: 50,257; `bpe`: `data.vocab_size` (default {@linkcode DEFAULT_BPE_VOCAB});
 * - `file:<path>`: the tokenizer.json's vocabulary (the largest id of its model vocabulary and added tokens,
 *   plus one). A relative path is relative to the config file's directory, which a config alone does not
 *   know: the data loader registers the size of every `file:` tokenizer it loads
 *   ({@linkcode rememberTokenizerVocab}), and an unregistered spec is read from the path as given (absolute,
 *   or relative to the working directory).
 *
 * @module
 */
import { DEFAULT_BPE_VOCAB, type Experiment } from "../config/schema.ts";
import { DataError } from "./errors.ts";

export { DEFAULT_BPE_VOCAB };

/** GPT-2's vocabulary (r50k_base: 50,256 ranks and the end-of-text token). */
export const GPT2_VOCAB = 50257;

const _known = new Map<string, number>();

/**
 * Records that the tokenizer of `spec` (a `data.tokenizer` value) has `size` tokens in this process, so the
 * planner sizes the model by the tokenizer actually loaded.
 */
export function rememberTokenizerVocab(spec: string, size: number): void {
  _known.set(spec, size);
}

/**
 * Vocabulary size of the tokenizer of `data` (see the module docs).
 *
 * @example
 * ```ts
 * import { tokenizerVocabSize } from "./vocab.ts";
 * if (tokenizerVocabSize({ tokenizer: "bpe", vocab_size: 512 }) !== 512) throw new Error("bpe");
 * ```
 */
export function tokenizerVocabSize(
  data: Pick<Experiment["data"], "tokenizer" | "vocab_size">,
  baseDir?: string,
): number {
  const spec = data.tokenizer;
  if (spec === "byte") return 256;
  if (spec === "gpt2") return GPT2_VOCAB;
  if (spec === "bpe") return data.vocab_size ?? DEFAULT_BPE_VOCAB;
  if (!spec.startsWith("file:")) throw new DataError(`Unknown data.tokenizer "${spec}"`);
  const known = _known.get(spec);
  if (known !== undefined && baseDir === undefined) return known;
  const path = spec.slice("file:".length);
  const resolved = baseDir && !path.startsWith("/") ? `${baseDir.replace(/\/+$/, "")}/${path}` : path;
  const name = `data.tokenizer "${spec}"${resolved === path ? "" : ` (${resolved})`}`;
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(resolved);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DataError(`${name} does not exist`);
    throw new DataError(`${name} cannot be read: ${(e as Error).message}`);
  }
  if (!info.isFile) throw new DataError(`${name} is not a regular file`); // a FIFO would block
  let text: string;
  try {
    text = Deno.readTextFileSync(resolved);
  } catch (e) {
    throw new DataError(`${name} cannot be read: ${(e as Error).message}`);
  }
  return tokenizerJsonVocabSize(text, name);
}

/**
 * Registers the vocabulary of every `file:` tokenizer of `points` (read relative to `baseDir`, the config
 * file's directory), so that planning sizes the model by it. A missing or unreadable file throws a
 * {@linkcode DataError} naming `data.tokenizer`.
 */
export function rememberFileTokenizers(
  points: readonly { config: Pick<Experiment, "data"> }[],
  baseDir: string,
): void {
  for (const p of points) {
    const spec = p.config.data.tokenizer;
    if (spec.startsWith("file:")) rememberTokenizerVocab(spec, tokenizerVocabSize(p.config.data, baseDir));
  }
}

/**
 * Vocabulary size of a tokenizer.json text: one more than the largest id in `model.vocab` and
 * `added_tokens`. A definition that is not such a file throws a {@linkcode DataError} naming `where`.
 */
export function tokenizerJsonVocabSize(text: string, where: string): number {
  let json: { model?: { vocab?: unknown }; added_tokens?: unknown; dsmoe_tokenizer?: unknown };
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new DataError(`${where}: not valid JSON (${(e as Error).message})`);
  }
  if (json?.dsmoe_tokenizer === "gpt2") return GPT2_VOCAB;
  let max = -1;
  const vocab = json?.model?.vocab;
  if (vocab && typeof vocab === "object" && !Array.isArray(vocab)) {
    for (const id of Object.values(vocab)) if (typeof id === "number" && id > max) max = id;
  }
  if (Array.isArray(json?.added_tokens)) {
    for (const t of json.added_tokens as { id?: unknown }[]) {
      if (typeof t?.id === "number" && t.id > max) max = t.id;
    }
  }
  if (max < 0) throw new DataError(`${where}: no model vocabulary (is it a tokenizer.json?)`);
  return max + 1;
}

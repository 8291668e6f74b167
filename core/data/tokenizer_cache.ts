/**
 * A cache of trained BPE tokenizers, so a second run on the same text with the same settings does not
 * train again. The directory is the caller's (integration puts it under the runs directory).
 *
 * An entry is `<cacheDir>/<key>/tokenizer.json` and `<cacheDir>/<key>/meta.json`, each written atomically
 * (core/util/atomic_write.ts), the meta last: it records the settings and the SHA-256 of the
 * tokenizer.json, so an entry counts only once both are complete. The key is the SHA-256 of the algorithm
 * version ({@linkcode BPE_ALGORITHM}), the training text's fingerprint, `vocab_size` and — when the text is
 * larger than `maxTrainBytes`, the only case where training samples and so uses the seed — the seed and
 * the cap. An entry that does not parse, does not match its meta or is not the model the key asks for is
 * reported (`onCache`) and trained again, never used.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { atomicWriteText } from "../util/atomic_write.ts";
import {
  type BpeModel,
  type BpeProgress,
  DEFAULT_MAX_TRAIN_BYTES,
  trainBpe,
  type TrainingText,
} from "./bpe.ts";
import { bpeTokenizerJson, parseTokenizerJson, plainByteLevelBpe } from "./tokenizer_json.ts";

/** Version of the training algorithm; a change that alters merges must bump it (old entries then miss). */
export const BPE_ALGORITHM = "dsmoe-bpe/1";

/** What a cache lookup did: served an entry, missed, or refused a damaged one (and why). */
export interface CacheEvent {
  hit: boolean;
  /** The entry's directory. */
  path: string;
  /** Why an existing entry was refused. */
  refused?: string;
}

/** Settings of a BPE training (the parts of the cache key besides the text). */
export interface BpeSettings {
  vocabSize: number;
  seed: number;
  /** Default {@linkcode DEFAULT_MAX_TRAIN_BYTES}. */
  maxTrainBytes?: number;
}

/** SHA-256 and UTF-8 size of a training text. */
export interface TextFingerprint {
  sha256: string;
  bytes: number;
}

/**
 * Fingerprint of a training text: SHA-256 over its parts, each prefixed by its byte length (parts are
 * pre-tokenized separately, so their boundaries belong to the text), and its total UTF-8 size.
 *
 * @example
 * ```ts
 * import { textFingerprint } from "./tokenizer_cache.ts";
 * const a = textFingerprint("héllo"), b = textFingerprint(new TextEncoder().encode("héllo"));
 * if (a.sha256 !== b.sha256 || a.bytes !== 6) throw new Error("same text, same fingerprint");
 * ```
 */
export function textFingerprint(text: TrainingText): TextFingerprint {
  const parts = typeof text === "string" || text instanceof Uint8Array ? [text] : text;
  const h = createHash("sha256"), utf8 = new TextEncoder();
  let bytes = 0;
  for (const p of parts) {
    const b = typeof p === "string" ? utf8.encode(p) : p;
    h.update(`${b.length}:`).update(b);
    bytes += b.length;
  }
  return { sha256: h.digest("hex"), bytes };
}

/** The cache key (hex SHA-256) of a training (see the module docs). */
export function bpeCacheKey(text: TextFingerprint, s: BpeSettings): string {
  const cap = s.maxTrainBytes ?? DEFAULT_MAX_TRAIN_BYTES;
  const sample = text.bytes > cap ? { seed: s.seed, max_train_bytes: cap } : null;
  const parts = { algorithm: BPE_ALGORITHM, text: text.sha256, vocab_size: s.vocabSize, sample };
  return createHash("sha256").update(JSON.stringify(parts)).digest("hex");
}

/** A model from the cache or from training, with its tokenizer.json text. */
export interface CachedBpe {
  model: BpeModel;
  json: string;
  hit: boolean;
  /** The entry's directory, or null without a cache. */
  path: string | null;
}

/** Options of {@linkcode cachedBpe}. */
export interface CachedBpeOptions {
  /** Without it, no cache: always trains. */
  cacheDir?: string;
  onProgress?: (p: BpeProgress) => void;
  onCache?: (event: CacheEvent) => void;
  /** The text's fingerprint when the caller has it already. */
  fingerprint?: TextFingerprint;
}

/**
 * The BPE model for `text` and `settings`: the cached entry when a valid one exists, else trained and
 * stored. Validation errors of training (bpe.ts `trainBpe`) propagate and nothing is written.
 *
 * @example
 * ```ts ignore
 * const { model, hit } = await cachedBpe(text, { vocabSize: 4096, seed: 0 }, { cacheDir: "runs/.tokenizers" });
 * ```
 */
export async function cachedBpe(
  text: TrainingText,
  settings: BpeSettings,
  o: CachedBpeOptions = {},
): Promise<CachedBpe> {
  const train = async () =>
    await trainBpe(text, {
      vocabSize: settings.vocabSize,
      seed: settings.seed,
      maxTrainBytes: settings.maxTrainBytes,
      onProgress: o.onProgress,
    });
  if (!o.cacheDir) {
    const model = await train();
    return { model, json: bpeTokenizerJson(model), hit: false, path: null };
  }
  const fp = o.fingerprint ?? textFingerprint(text);
  const key = bpeCacheKey(fp, settings), dir = `${o.cacheDir.replace(/\/+$/, "")}/${key}`;
  const found = await readCacheEntry(dir, settings.vocabSize);
  if (found.model) {
    o.onCache?.({ hit: true, path: dir });
    return { model: found.model, json: found.json!, hit: true, path: dir };
  }
  o.onCache?.({ hit: false, path: dir, refused: found.refused });
  const model = await train();
  const json = bpeTokenizerJson(model);
  await Deno.mkdir(dir, { recursive: true });
  await atomicWriteText(`${dir}/tokenizer.json`, json);
  const meta = {
    algorithm: BPE_ALGORITHM,
    text_sha256: fp.sha256,
    text_bytes: fp.bytes,
    vocab_size: settings.vocabSize,
    seed: settings.seed,
    max_train_bytes: settings.maxTrainBytes ?? DEFAULT_MAX_TRAIN_BYTES,
    tokenizer_sha256: _sha256(json),
  };
  await atomicWriteText(`${dir}/meta.json`, JSON.stringify(meta, null, 2) + "\n");
  return { model, json, hit: false, path: dir };
}

function _sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/**
 * The model of the cache entry in `dir` if it is complete and sound (meta present, tokenizer.json matching
 * its recorded SHA-256, a byte-level BPE in our numbering with `vocabSize` tokens); otherwise no model and,
 * for an entry that exists but fails a check, why.
 */
export async function readCacheEntry(
  dir: string,
  vocabSize: number,
): Promise<{ model?: BpeModel; json?: string; refused?: string }> {
  let metaText: string, json: string;
  try {
    metaText = await Deno.readTextFile(`${dir}/meta.json`);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return {};
    return { refused: `cannot read meta.json: ${(e as Error).message}` };
  }
  try {
    json = await Deno.readTextFile(`${dir}/tokenizer.json`);
  } catch (e) {
    return { refused: `cannot read tokenizer.json: ${(e as Error).message}` };
  }
  let meta: { tokenizer_sha256?: unknown };
  try {
    meta = JSON.parse(metaText);
  } catch {
    return { refused: "meta.json is not valid JSON" };
  }
  if (meta.tokenizer_sha256 !== _sha256(json)) {
    return { refused: "tokenizer.json does not match its SHA-256" };
  }
  try {
    const model = plainByteLevelBpe(parseTokenizerJson(json, `${dir}/tokenizer.json`), dir);
    if (!model?.isCanonical) return { refused: "tokenizer.json is not a byte-level BPE of ours" };
    if (model.vocabSize !== vocabSize) return { refused: `vocabulary ${model.vocabSize}, not ${vocabSize}` };
    return { model, json };
  } catch (e) {
    return { refused: (e as Error).message };
  }
}

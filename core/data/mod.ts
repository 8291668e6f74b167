/**
 * Data: sources (packaged corpora, synthetic, files, directories, globs; plain text, JSON Lines, Parquet),
 * the split on the text, tokenizers, token shards and their preparation, and seeded batching.
 *
 * @module
 */
export * from "./synthetic.ts";
export * from "./sources.ts";
export * from "./tokenizer.ts";
export * from "./dataset.ts";
export {
  isValBlock,
  shortSourceMessage,
  type SplitCounts,
  TextSplitter,
  type TextSplitterOptions,
} from "./split.ts";
export * from "./shards.ts";
export * from "./prepare.ts";
export * from "./vocab.ts";

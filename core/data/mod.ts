/**
 * Data: sources (synthetic, files, directories, globs), the byte tokenizer, split and seeded batching.
 *
 * @module
 */
export * from "./synthetic.ts";
export * from "./sources.ts";
export * from "./tokenizer.ts";
export * from "./dataset.ts";

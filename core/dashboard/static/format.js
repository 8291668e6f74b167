// The dashboard serves core/util/quantities.js under this name (static_files.ts); on disk this file
// re-exports it, so the page scripts import the same module in the browser and in Deno tests.
export * from "../../util/quantities.js";

/**
 * The error of bad data: a source, a file or a tokenizer that cannot be used. The CLI maps it to exit code 2
 * (nothing was written). In a module of its own so that every data module can import it without cycles.
 *
 * @module
 */

/** A data source could not be read; the message names the source and the problem. */
export class DataError extends Error {
  override name = "DataError";
}

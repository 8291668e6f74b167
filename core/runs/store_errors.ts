/**
 * Errors of the run store and of the runs it holds, each naming what it is about (the store's location, the
 * run id, the holder of a lease). The CLI maps {@linkcode StoreMissingError} and {@linkcode RunBusyError} to
 * exit code 2 (nothing was done), the others to 1.
 *
 * @module
 */

/** No store exists where a command that must not create one looked (`eval`, `generate`, `dashboard`). */
export class StoreMissingError extends Error {
  override name = "StoreMissingError";
}

/** The store was opened read-only (an archived, write-protected store): writes are refused. */
export class StoreReadOnlyError extends Error {
  override name = "StoreReadOnlyError";
}

/** The store failed its integrity check or is not a store at all: writes are refused. */
export class StoreDamagedError extends Error {
  override name = "StoreDamagedError";
}

/** A run (or a sweep point) is held by another live process; the message says which. */
export class RunBusyError extends Error {
  override name = "RunBusyError";
}

/**
 * What a command was told to use names no run of the store: no run has that id, id prefix or name (or, for a
 * name, none of its runs finished). The message starts `No run "<what was given>" in <store>`.
 */
export class NoSuchRunError extends Error {
  override name = "NoSuchRunError";
}

/** An id prefix that several runs start with; the message lists them. */
export class AmbiguousRunError extends Error {
  override name = "AmbiguousRunError";
}

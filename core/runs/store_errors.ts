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

/**
 * Which run a command means (`eval`, `generate`, `run --resume`, `runs show`, `runs rm`): what the user gives
 * is a run id, a run directory `<runs-dir>/<id>`, a run name or a unique prefix of an id, tried in that
 * order:
 *
 * - an id (or a run directory of the runs directory: {@linkcode runIdOf}) that the store has: that run;
 * - a run name: the newest finished run of that name for a command that reads a trained model (`eval`,
 *   `generate`); the newest run of that name, whatever its status, for the others (`run --resume`,
 *   `runs show`, `runs rm`);
 * - the start of exactly one run's id: that run; of several: {@linkcode AmbiguousRunError} listing them.
 *
 * Anything else is {@linkcode NoSuchRunError}, `No run "<given>" in <store>: …` in every command; both exit 2.
 * A name or a prefix is announced with `Using run <id> …` (to stderr).
 *
 * @module
 */
import { openRunStore } from "./open_store.ts";
import { runIdOf } from "./run_dir.ts";
import type { RunRecord } from "./store.ts";
import { AmbiguousRunError, NoSuchRunError } from "./store_errors.ts";

/** What the run is wanted for: its trained model (a name means a finished run), or anything (any run). */
export type RunRefPurpose = "read" | "any";

/** Options of {@linkcode resolveRunRef}. */
export interface ResolveRunOptions {
  /** Default "read": a name means the newest finished run of that name; "any": its newest run. */
  purpose?: RunRefPurpose;
  /** Told `Using run <id> (…)` when a name or a prefix was resolved. */
  notice?: (line: string) => void;
}

/** Most candidates an ambiguity or a "no finished run" message lists. */
export const MAX_LISTED_RUNS = 10;

/**
 * The run id that `ref` (an id, run directory, name or id prefix) means in the store of `runsDir`; see the
 * module doc. Opens the store without creating it (StoreMissingError where there is none).
 *
 * @example
 * ```ts ignore
 * const id = await resolveRunRef("runs", "dsmoe-tiny", { notice: console.error }); // the newest finished one
 * ```
 */
export async function resolveRunRef(
  runsDir: string,
  ref: string,
  o: ResolveRunOptions = {},
): Promise<string> {
  const asId = await runIdOf(runsDir, ref); // a path must be a run directory of runsDir; ".." is refused
  const store = await openRunStore(runsDir, { create: false });
  if (await store.getRun(asId)) return asId;
  if (ref.includes("/")) throw new NoSuchRunError(`No run "${asId}" in ${store.url}`);
  const runs = await store.listRuns(); // newest first
  const named = runs.filter((r) => r.name === ref);
  if (named.length > 0) {
    const any = o.purpose === "any";
    const pick = any ? named[0]! : named.find((r) => r.status === "finished");
    if (!pick) {
      throw new NoSuchRunError(
        `No run "${ref}" in ${store.url} that finished: the runs named so are ${_list(named)}; ` +
          `give one of their ids`,
      );
    }
    o.notice?.(
      `Using run ${pick.id} (the newest ${any ? "" : "finished "}run named "${ref}"` +
        `${named.length > 1 ? ` of ${named.length}` : ""})`,
    );
    return pick.id;
  }
  const prefixed = runs.filter((r) => r.id.startsWith(ref));
  if (prefixed.length === 1) {
    o.notice?.(`Using run ${prefixed[0]!.id} (the one run whose id starts with "${ref}")`);
    return prefixed[0]!.id;
  }
  if (prefixed.length > 1) {
    throw new AmbiguousRunError(
      `"${ref}" is the start of ${prefixed.length} run ids in ${store.url}: ${_list(prefixed)}; ` +
        `give more of the id`,
    );
  }
  throw new NoSuchRunError(
    `No run "${ref}" in ${store.url}: no run has that id, name or id prefix (deno task runs lists them)`,
  );
}

/** `id (status), …`, at most {@linkcode MAX_LISTED_RUNS}, then how many more. */
function _list(runs: readonly RunRecord[]): string {
  const shown = runs.slice(0, MAX_LISTED_RUNS).map((r) => `${r.id} (${r.status})`).join(", ");
  return runs.length > MAX_LISTED_RUNS ? `${shown} and ${runs.length - MAX_LISTED_RUNS} more` : shown;
}

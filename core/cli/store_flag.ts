/**
 * Which run store a command uses: `--store`, else `$DSMOE_STORE`, else the config's `store:`, else
 * `<runs-dir>/runs.db`. A `postgres://` (or `postgresql://`) URL is a Postgres database; anything else
 * names a SQLite file. Checkpoint files stay under `--runs-dir` whatever the store.
 *
 * @module
 */
import { selectRunStore } from "../runs/open_store.ts";
import { optionalEnv } from "../util/env.ts";
import { UsageError } from "./errors.ts";

/** The flags that choose a store. */
export interface StoreFlags {
  "runs-dir"?: string;
  store?: string;
}

/** Environment variable naming the default store of every command. */
export const STORE_ENV = "DSMOE_STORE";

/**
 * Help lines of `--runs-dir` and `--store`, their descriptions starting at column `col` as in the usage text
 * around them; `config`: the command reads a config, whose `store:` counts.
 */
export function storeUsage(col: number, config = false): string {
  const line = (flag: string, text: string) => `  ${flag}`.padEnd(col) + text;
  const more = (text: string) => " ".repeat(col) + text;
  return [
    line("--runs-dir DIR", "where runs are (default runs/): checkpoints, and runs.db by default"),
    line("--store URL", "the run store: postgres://user@host:port/db[?schema=NAME] (password in the"),
    more("URL or $PGPASSWORD) or a SQLite file; default $" + STORE_ENV + ","),
    more(config ? "else the config's store:, else DIR/runs.db" : "else DIR/runs.db"),
  ].join("\n");
}

/**
 * Points the runs directory at the chosen store (see the module doc) and returns the runs directory. A bad
 * location is a usage error that names where it came from.
 *
 * @example
 * ```ts
 * import { useStore } from "./store_flag.ts";
 * console.log(useStore({ "runs-dir": "/tmp/runs-x" })); // "/tmp/runs-x"
 * ```
 */
export function useStore(
  flags: StoreFlags,
  configStore?: { value: string | undefined; file: string },
): string {
  const runsDir = flags["runs-dir"] ?? "runs";
  const env = optionalEnv(STORE_ENV) || undefined; // set but empty: as if unset
  const [text, from] = flags.store !== undefined
    ? [flags.store, "--store"]
    : env
    ? [env, `$${STORE_ENV}`]
    : [configStore?.value ?? "", `store: in ${configStore?.file}`];
  try {
    selectRunStore(runsDir, text);
  } catch (e) {
    if (e instanceof TypeError) throw new UsageError(`${from}: ${e.message}`);
    throw e;
  }
  return runsDir;
}

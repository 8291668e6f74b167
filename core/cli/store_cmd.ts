/**
 * `deno task store check|rebuild [--runs-dir DIR] [--store URL] [--full] [--json]`: checks a run store
 * against its run directories (exit 0 when consistent, 1 otherwise, one line per problem), or rebuilds a
 * SQLite store from the run directories and what can be read of the old one, which it moves aside
 * (core/runs/store_repair.ts).
 *
 * @module
 */
import { selectedRunStore } from "../runs/open_store.ts";
import { storePath } from "../runs/sqlite_store.ts";
import { checkStore, rebuildSqliteStore, type RepairLocation } from "../runs/store_repair.ts";
import { parseCommandArgs } from "./args.ts";
import { EXIT_OK, EXIT_RUN_FAILURE, UsageError } from "./errors.ts";
import type { CliIo } from "./io.ts";
import { useStore } from "./store_flag.ts";
import { STORE_USAGE } from "./usage.ts";

/** Runs `deno task store …`; returns the exit code. */
export async function storeCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseCommandArgs("store", args, { full: { type: "boolean" } });
  if (values.help) {
    io.out(STORE_USAGE);
    return EXIT_OK;
  }
  const [what, ...more] = positionals;
  if (what !== "check" && what !== "rebuild") {
    throw new UsageError(
      what === undefined
        ? "store needs check or rebuild"
        : `store: unknown subcommand "${what}" (check or rebuild)`,
    );
  }
  if (more.length > 0) throw new UsageError(`store ${what} takes no arguments, got "${more[0]}"`);
  const runsDir = useStore(values);
  const loc = _location(runsDir);
  return what === "check"
    ? await _check(runsDir, loc, io, values.full ?? false, values.json ?? false)
    : await _rebuild(runsDir, loc, io, values.json ?? false);
}

function _location(runsDir: string): RepairLocation {
  const loc = selectedRunStore(runsDir);
  return loc.kind === "postgres" ? loc : { kind: "sqlite", path: loc.path ?? storePath(runsDir) };
}

async function _check(
  runsDir: string,
  loc: RepairLocation,
  io: CliIo,
  full: boolean,
  json: boolean,
): Promise<number> {
  const r = await checkStore(runsDir, loc, { full });
  io.out(
    `Store ${r.store}: ${full ? "integrity_check" : "quick_check"} ${
      r.integrity === "ok" ? "ok" : "failed"
    }; ` +
      `${r.runs} runs in the store, ${r.directories} run directories in ${runsDir}`,
  );
  for (const p of r.problems) io.out(p);
  io.out(
    r.problems.length === 0
      ? "Consistent: every run has its record and its files."
      : `${r.problems.length} problem${r.problems.length === 1 ? "" : "s"}` +
        (loc.kind === "sqlite"
          ? `; \`deno task store rebuild\` rebuilds the store from the run directories`
          : ""),
  );
  if (json) io.out(JSON.stringify(r));
  return r.problems.length === 0 ? EXIT_OK : EXIT_RUN_FAILURE;
}

async function _rebuild(runsDir: string, loc: RepairLocation, io: CliIo, json: boolean): Promise<number> {
  if (loc.kind === "postgres") {
    throw new UsageError(
      "store rebuild applies to SQLite stores only: a Postgres store is repaired with Postgres's own tools " +
        "(backups, pg_dump); `deno task store check` compares it with the run directories",
    );
  }
  const r = await rebuildSqliteStore(runsDir, loc.path);
  for (const l of r.lines) io.out(l);
  io.out(`New store: ${loc.path}; check it with: deno task store check --runs-dir ${runsDir}`);
  if (json) {
    io.out(
      JSON.stringify({ store: loc.path, moved_to: r.movedTo, runs: r.runs, points: r.points, lost: r.lost }),
    );
  }
  return EXIT_OK;
}

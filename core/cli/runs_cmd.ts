/**
 * `deno task runs [list] | show <run> | rm <run>…`: finds runs in the run store. `list` (the default) prints
 * runs newest first with their final validation numbers, filtered by name (a glob), status or sweep; `show`
 * prints one run's record, config, checkpoints and last metrics; `rm` removes runs (their store rows and run
 * directories) after asking on a terminal (`--yes` skips the question; without a terminal `--yes` is needed).
 * A run is named by id, name or unique id prefix (core/runs/resolve_run.ts).
 *
 * @module
 */
import { fmtBpb, fmtLoss, fmtMetric, fmtPpl, localTime, NONE, paramPairs } from "../util/quantities.js";
import { isRunId } from "../runs/checkpoints.ts";
import { openRunStore } from "../runs/open_store.ts";
import { resolveRunRef } from "../runs/resolve_run.ts";
import type { RunLease, RunRecord, RunStatus } from "../runs/store.ts";
import { fmtBytes, table } from "../util/format.ts";
import { parseCommandArgs, positiveInt } from "./args.ts";
import { EXIT_OK, EXIT_RUN_FAILURE, UsageError } from "./errors.ts";
import type { CliIo } from "./io.ts";
import { useStore } from "./store_flag.ts";
import { RUNS_USAGE } from "./usage.ts";

/** Runs `runs list` prints when `--limit` is not given. */
export const DEFAULT_RUNS_LIMIT = 50;

const _STATUSES: readonly RunStatus[] = ["running", "finished", "failed", "interrupted"];
/** The final validation metrics a listing shows. */
const _VAL_KEYS = ["val/loss", "val/ppl", "val/bpb"] as const;

/** Runs `deno task runs …`; returns the exit code. */
export async function runsCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseCommandArgs("runs", args, {
    name: { type: "string" },
    status: { type: "string" },
    sweep: { type: "string" },
    limit: { type: "string" },
    yes: { type: "boolean", short: "y" },
  });
  if (values.help) {
    io.out(RUNS_USAGE);
    return EXIT_OK;
  }
  const [what = "list", ...rest] = positionals;
  const listOnly = (["name", "status", "sweep", "limit"] as const).find((f) => values[f] !== undefined);
  if (what !== "list" && listOnly) throw new UsageError(`runs ${what}: --${listOnly} goes with runs list`);
  if (what !== "rm" && values.yes) throw new UsageError(`runs ${what}: --yes goes with runs rm`);
  const runsDir = useStore(values);
  const json = values.json ?? false;
  switch (what) {
    case "list": {
      if (rest.length > 0) throw new UsageError(`runs list takes no arguments, got "${rest[0]}"`);
      const status = values.status;
      if (status !== undefined && !_STATUSES.includes(status as RunStatus)) {
        throw new UsageError(`--status expects ${_STATUSES.join(", ")}, got "${status}"`);
      }
      const filter = {
        name: values.name,
        status: status as RunStatus | undefined,
        sweep: values.sweep,
        limit: positiveInt("limit", values.limit) ?? DEFAULT_RUNS_LIMIT,
      };
      return await _list(runsDir, filter, io, json);
    }
    case "show":
      if (rest.length !== 1) throw new UsageError(`runs show takes one run (id, name or id prefix)`);
      return await _show(runsDir, rest[0]!, io, json);
    case "rm":
      if (rest.length === 0) throw new UsageError("runs rm takes one or more runs (id, name or id prefix)");
      return await _rm(runsDir, rest, io, json, values.yes ?? false);
    default:
      throw new UsageError(`runs: unknown subcommand "${what}" (list, show or rm)`);
  }
}

/**
 * `--name` glob as a regular expression over the whole name: `*` any characters, `?` one, the rest literal.
 *
 * @example
 * ```ts
 * import { globRegExp } from "./runs_cmd.ts";
 * console.log(globRegExp("sweep-mi.*").test("sweep-mi.mlp=0")); // true
 * ```
 */
export function globRegExp(glob: string): RegExp {
  const body = [...glob].map((c) =>
    c === "*" ? ".*" : c === "?" ? "." : c.replace(/[.+^${}()|[\]\\]/g, "\\$&")
  )
    .join("");
  return new RegExp(`^${body}$`, "s");
}

interface _Filter {
  name?: string;
  status?: RunStatus;
  sweep?: string;
  limit: number;
}

/** A run as listed: its record and its final validation numbers (null where not measured). */
interface _Listed {
  id: string;
  name: string;
  status: RunStatus;
  step: number;
  started_at: string;
  ended_at: string | null;
  sweep_id: string | null;
  val_loss: number | null;
  val_ppl: number | null;
  val_bpb: number | null;
}

async function _list(runsDir: string, f: _Filter, io: CliIo, json: boolean): Promise<number> {
  const store = await openRunStore(runsDir, { create: false });
  const glob = f.name === undefined ? null : globRegExp(f.name);
  const all = (await store.listRuns({ status: f.status })).filter((r) =>
    (glob === null || glob.test(r.name)) &&
    (f.sweep === undefined || (r.sweep_id !== null && r.sweep_id.startsWith(f.sweep)))
  );
  const shown = all.slice(0, f.limit);
  const listed: _Listed[] = [];
  for (const r of shown) {
    const last = await store.lastMetrics(r.id, _VAL_KEYS);
    const v = (k: string) => last.get(k)?.value ?? null;
    listed.push({
      id: r.id,
      name: r.name,
      status: r.status,
      step: r.step,
      started_at: r.started_at,
      ended_at: r.ended_at,
      sweep_id: r.sweep_id,
      val_loss: v("val/loss"),
      val_ppl: v("val/ppl"),
      val_bpb: v("val/bpb"),
    });
  }
  if (listed.length === 0) {
    io.out(`No runs${f.name || f.status || f.sweep ? " match" : ""} in ${store.url}`);
  } else {
    io.out(table(
      ["id", "name", "status", "step", "started", "val loss", "val ppl", "val bpb"],
      listed.map((r) => [
        r.id,
        r.name,
        r.status,
        String(r.step),
        _time(r.started_at),
        fmtLoss(r.val_loss),
        fmtPpl(r.val_ppl),
        fmtBpb(r.val_bpb),
      ]),
      ["left", "left", "left", "right", "left", "right", "right", "right"],
    ));
    if (all.length > listed.length) {
      io.out(`… and ${all.length - listed.length} older (--limit ${all.length} lists them all)`);
    }
  }
  if (json) io.out(JSON.stringify({ store: store.url, total: all.length, runs: listed }));
  return EXIT_OK;
}

/** A stored timestamp in this machine's time zone, `2026-12-06 17:13`, as the dashboard shows it. */
function _time(iso: string | null): string {
  return iso === null ? NONE : localTime(iso);
}

async function _show(runsDir: string, ref: string, io: CliIo, json: boolean): Promise<number> {
  const id = await resolveRunRef(runsDir, ref, { purpose: "any", notice: io.err });
  const store = await openRunStore(runsDir, { create: false });
  const run = (await store.getRun(id))!;
  const { config_yaml: _c, ...record } = run;
  const dir = `${runsDir}/${id}`;
  const configPath = `${dir}/config.yaml`;
  const hasConfig = await Deno.lstat(configPath).then((i) => i.isFile, () => false);
  const checkpoints = await store.checkpoints(id);
  const last = await store.lastMetrics(id);
  const keys = [...last.keys()].sort();
  const main = keys.filter((k) => !k.startsWith("router/"));
  const rows: [string, string][] = [
    ["name", run.name],
    ["status", `${run.status}, step ${run.step}`],
    ["started", _time(run.started_at)],
    ["ended", _time(run.ended_at)],
    ["seed", String(run.seed)],
    ["adapter", run.adapter ?? NONE],
    ["git commit", run.git_commit ?? NONE],
    ...(run.sweep_id
      ? [["sweep", [run.sweep_id, ...paramPairs(run.sweep_params)].join(" ")] as [string, string]]
      : []),
    [
      "writer",
      run.host === null ? NONE : `pid ${run.pid} on ${run.host}, heartbeat ${_time(run.heartbeat_at)}`,
    ],
    ...(run.error ? [["error", run.error] as [string, string]] : []),
    ["directory", `${dir}/`],
    ["config", hasConfig ? configPath : `${configPath} (missing; the store holds it too)`],
  ];
  io.out(`Run ${id}`);
  for (const [k, v] of rows) io.out(`  ${k.padEnd(11)}${v}`);
  io.out("");
  if (checkpoints.length === 0) io.out("Checkpoints: none");
  else {
    io.out(`Checkpoints (${checkpoints.length}):`);
    io.out(table(
      ["step", "size", "file", "written"],
      checkpoints.map((c) => [String(c.step), fmtBytes(c.bytes), `${runsDir}/${c.path}`, c.time]),
      ["right", "right", "left", "left"],
    ));
  }
  io.out("");
  if (main.length === 0) io.out("Metrics: none");
  else {
    io.out("Last metrics:");
    io.out(table(
      ["key", "step", "value"],
      main.map((k) => [k, String(last.get(k)!.step), fmtMetric(k, last.get(k)!.value)]),
      ["left", "right", "right"],
    ));
  }
  const router = keys.length - main.length;
  if (router > 0) io.out(`(and ${router} router/… metrics${json ? "" : "; --json lists them"})`);
  if (json) {
    io.out(JSON.stringify({
      run: record,
      directory: dir,
      config_path: configPath,
      checkpoints,
      metrics: Object.fromEntries(
        keys.map((k) => [k, { step: last.get(k)!.step, value: last.get(k)!.value }]),
      ),
    }));
  }
  return EXIT_OK;
}

async function _rm(runsDir: string, refs: string[], io: CliIo, json: boolean, yes: boolean): Promise<number> {
  const ids: string[] = [];
  for (const ref of refs) {
    const id = await resolveRunRef(runsDir, ref, { purpose: "any", notice: io.err });
    if (!ids.includes(id)) ids.push(id);
  }
  const store = await openRunStore(runsDir, { create: false });
  const runs = (await Promise.all(ids.map((id) => store.getRun(id)))).filter((r): r is RunRecord =>
    r !== null
  );
  io.err(`${runs.length === 1 ? "This run" : `These ${runs.length} runs`} (store rows and run directory):`);
  for (const r of runs) io.err(`  ${r.id}  ${r.name}  ${r.status}, step ${r.step}  ${runsDir}/${r.id}/`);
  if (!yes) {
    if (!Deno.stdin.isTerminal()) {
      throw new UsageError(
        "runs rm: stdin is not a terminal, so nothing was asked and nothing removed; pass --yes to remove " +
          "without asking",
      );
    }
    const answer = prompt(`Remove ${runs.length === 1 ? "it" : `these ${runs.length} runs`}? [y/N]`);
    if (!/^\s*y(es)?\s*$/i.test(answer ?? "")) {
      io.err("Nothing removed.");
      return EXIT_OK;
    }
  }
  // Every run is taken first (a run a live process trains is refused: RunBusyError, exit 2), so that either
  // all of them are removed or none.
  const leases: RunLease[] = [];
  try {
    for (const r of runs) leases.push(await store.acquireRun(r.id));
  } catch (e) {
    for (const l of leases) await store.releaseRun(l).catch(() => {});
    throw e;
  }
  const removed: { id: string; dir: string; files: string }[] = [];
  for (const lease of leases) {
    const dir = `${runsDir}/${lease.run_id}`;
    if (!await store.deleteRun(lease)) {
      io.err(`${lease.run_id}: taken over by another process meanwhile; not removed`);
      continue;
    }
    const files = await removeRunDir(runsDir, lease.run_id);
    removed.push({ id: lease.run_id, dir, files });
    io.out(`Removed ${lease.run_id} (${files})`);
  }
  if (json) io.out(JSON.stringify({ removed }));
  return removed.length === leases.length ? EXIT_OK : EXIT_RUN_FAILURE;
}

/**
 * Removes run `id`'s directory `<runsDir>/<id>`, and nothing outside the runs directory: the id is one path
 * segment (never `..`); a symbolic link there is removed itself, never what it points to (nor does a
 * recursive removal follow links inside); a directory that holds neither `config.yaml` nor `ckpt/` is not a
 * run directory and is left alone, as is anything that is not a directory. Says what was done.
 */
export async function removeRunDir(runsDir: string, id: string): Promise<string> {
  if (!isRunId(id)) return `"${id}" is not a run id: no directory removed`;
  const dir = `${runsDir}/${id}`;
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(dir);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return `store rows; it had no directory ${dir}/`;
    throw e;
  }
  if (info.isSymlink) {
    await Deno.remove(dir); // the link, not its target
    return `store rows and the link ${dir} (not what it pointed to)`;
  }
  if (!info.isDirectory) return `store rows; ${dir} is not a directory and was left alone`;
  const has = async (p: string) => await Deno.lstat(`${dir}/${p}`).then(() => true, () => false);
  if (!await has("config.yaml") && !await has("ckpt")) {
    return `store rows; ${dir}/ holds no config.yaml or ckpt/, so it is not a run directory and was left alone`;
  }
  await Deno.remove(dir, { recursive: true });
  return `store rows and ${dir}/`;
}

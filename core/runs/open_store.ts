/**
 * The run store of a runs directory, opened once per process (one writer connection each): on first open it
 * imports run folders written before the store existed (`run.json` + `metrics.jsonl`), and marks runs whose
 * writer died (SIGKILL, power loss) as interrupted.
 *
 * @module
 */
import { syncCheckpoints } from "./checkpoints.ts";
import type { MetricPoint, RunMeta } from "./run_dir.ts";
import { openSqliteStore, storePath } from "./sqlite_store.ts";
import type { RunStore } from "./store.ts";

const _open = new Map<string, RunStore>();

/**
 * The store of `runsDir` (created if missing), shared by every caller in this process.
 *
 * @example
 * ```ts
 * const dir = await Deno.makeTempDir();
 * const store = await openRunStore(dir);
 * console.log((await store.listRuns()).length); // 0
 * closeRunStores();
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function openRunStore(runsDir: string): Promise<RunStore> {
  await Deno.mkdir(runsDir, { recursive: true });
  const key = await Deno.realPath(runsDir);
  let store = _open.get(key);
  if (!store) {
    store = openSqliteStore(storePath(runsDir));
    _open.set(key, store);
    await importRunFolders(store, runsDir);
    await store.markInterrupted();
  }
  return store;
}

/** Closes every store this process opened (tests; a process exiting closes them anyway). */
export function closeRunStores(): void {
  for (const s of _open.values()) s.close();
  _open.clear();
}

/**
 * Imports each `<runsDir>/<id>/run.json` run folder not yet in the store: its record, config.yaml, metrics
 * (a torn last line of a killed writer skipped) and checkpoints. The files are left as they are. Returns the
 * ids imported.
 */
export async function importRunFolders(store: RunStore, runsDir: string): Promise<string[]> {
  const imported: string[] = [];
  for await (const e of Deno.readDir(runsDir)) {
    if (!e.isDirectory) continue;
    const dir = `${runsDir}/${e.name}`;
    let meta: RunMeta;
    try {
      meta = JSON.parse(await Deno.readTextFile(`${dir}/run.json`)) as RunMeta;
    } catch {
      continue; // not an old run folder
    }
    if (meta.id !== e.name || await store.getRun(meta.id)) continue;
    const yaml = await Deno.readTextFile(`${dir}/config.yaml`).catch(() => "");
    // A run that was running when its writer stopped did not finish.
    const status = meta.status === "running" ? "interrupted" : meta.status;
    if (!await store.importRun({ ...meta, status }, yaml)) continue;
    const points = await _readJsonl(`${dir}/metrics.jsonl`);
    for (let i = 0; i < points.length; i += 5000) await store.logMetrics(meta.id, points.slice(i, i + 5000));
    await syncCheckpoints(store, meta.id, dir);
    await store.logEvent(meta.id, { kind: "info", message: `imported from ${dir}/run.json` });
    imported.push(meta.id);
  }
  return imported;
}

async function _readJsonl(path: string): Promise<MetricPoint[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    return [];
  }
  const out: MetricPoint[] = [];
  for (const line of text.split("\n")) {
    if (!line) continue;
    try {
      const p = JSON.parse(line) as MetricPoint;
      if ([p.step, p.tokens, p.time, p.value].every(Number.isFinite)) out.push(p);
    } catch {
      // A torn final line of an interrupted append.
    }
  }
  return out;
}

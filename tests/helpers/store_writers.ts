/**
 * Writer processes on one run store (tests/fixtures/store_writer.ts), for the concurrency and crash tests of
 * the store suite and of a runs directory's store: start several and check that no point was lost; kill one
 * mid-write and check that what it acknowledged is kept.
 *
 * @module
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import type { RunStore } from "../../core/runs/store.ts";

/** What one writer writes: run `id`, `batches` batches of `per` points, or batches until killed (`forever`). */
export interface WriterJob {
  id: string;
  batches: number;
  per: number;
  forever?: boolean;
}

/**
 * `tests/fixtures/store_writer.ts` writing `job` into `store` in a process of its own, its output piped.
 * `store` is a store location (`sqlite:PATH`, `postgres://…`) or a runs directory.
 */
export function spawnStoreWriter(store: string, job: WriterJob): Deno.ChildProcess {
  const args = [store, job.id, String(job.batches), String(job.per), ...(job.forever ? ["forever"] : [])];
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "tests/fixtures/store_writer.ts", ...args],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** Writers of runs `ids` into `store` at once, each `batches` batches of `per` points; fails unless each exits 0. */
export async function runStoreWriters(
  store: string,
  o: { ids: readonly string[]; batches: number; per: number },
): Promise<void> {
  const procs = o.ids.map((id) => spawnStoreWriter(store, { id, batches: o.batches, per: o.per }));
  const outs = await Promise.all(procs.map((p) => p.output()));
  for (const out of outs) assert(out.success, new TextDecoder().decode(out.stderr));
}

/**
 * Checks the runs `ids` of {@linkcode runStoreWriters} in its store `s`: each finished with its `points`
 * points, every value once, in commit order, and the store intact.
 */
export async function assertWritersKept(
  s: RunStore,
  o: { ids: readonly string[]; points: number },
): Promise<void> {
  for (const id of o.ids) {
    const m = await s.metrics(id);
    assertEquals(m.length, o.points);
    assertEquals(new Set(m.map((p) => p.value)).size, o.points);
    assert(m.every((p, i) => i === 0 || p.seq > m[i - 1]!.seq), `${id}: seq grows in commit order`);
    assertEquals((await s.getRun(id))!.status, "finished");
  }
  assertEquals(await s.integrityCheck(), "ok");
}

/**
 * Starts a writer of run `id` into `store` that writes batches of 50 points until killed, SIGKILLs it once it
 * has acknowledged `atLeast` points, and returns how many it acknowledged.
 */
export async function killWriterAfter(store: string, o: { id: string; atLeast: number }): Promise<number> {
  const p = spawnStoreWriter(store, { id: o.id, batches: 0, per: 50, forever: true });
  const reader = p.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let acked = 0, buf = "";
  while (acked < o.atLeast) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    for (const m of buf.matchAll(/ack (\d+)\n/g)) acked = Math.max(acked, Number(m[1]));
  }
  p.kill("SIGKILL");
  await p.status;
  reader.releaseLock();
  await p.stdout.cancel().catch(() => {});
  await p.stderr.cancel();
  assert(acked >= o.atLeast, `acknowledged ${acked}`);
  return acked;
}

/**
 * Checks run `id` of a writer killed by {@linkcode killWriterAfter} after `acked` points, once the store has
 * marked it: an intact store holding every acknowledged point and whole batches only, and the run
 * interrupted because its process is gone.
 */
export async function assertKilledWriterKept(s: RunStore, o: { id: string; acked: number }): Promise<void> {
  assertEquals(await s.integrityCheck(), "ok");
  const m = await s.metrics(o.id);
  assert(m.length >= o.acked, `${m.length} stored, ${o.acked} acknowledged`);
  assertEquals(m.length % 50, 0, "a batch is all or nothing");
  const run = (await s.getRun(o.id))!;
  assertEquals(run.status, "interrupted");
  assert(run.error?.includes("is gone"), run.error ?? "");
}

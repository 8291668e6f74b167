/**
 * SIGKILL at 20 points of training and of checkpoint writing (issue 18), each followed by the next command,
 * `run --resume`: a seeded order of kills inside every stage of a checkpoint write and its manifest
 * (`DSMOE_FAULT_KILL_AT`, core/util/atomic_write.ts), after training steps (`DSMOE_FAULT_KILL_AFTER_STEP`)
 * and at random wall-clock times. After each kill, every metric point the process acknowledged is in the
 * store and the newest checkpoint loads; the next command removes the temp files the kill left; the run,
 * resumed to its end, has logged the same loss at every step as an uninterrupted run and ends with the same
 * SHA-256 of parameters and Adam moments.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { latestCheckpoint, listCheckpoints, sha256Hex } from "../core/runs/checkpoints.ts";
import { TEMP_MARK } from "../core/util/atomic_write.ts";
import { closeRunStores, openRunStore } from "../core/runs/open_store.ts";

const STEPS = 40;
const CONFIG = `extends: ${Deno.cwd()}/tests/fixtures/micro.yaml
name: kill
data: { synthetic_bytes: 8192 }
train:
  steps: ${STEPS}
  log_every: 1
  eval_every: ${STEPS}
  checkpoint_every: 4
  schedule: { warmup: 4 }
`;

/** How one command is killed: at a named point of a write, after a step, or at a random time. */
type Kill =
  | { kind: "point"; point: string }
  | { kind: "after-step"; steps: number } // this many steps after the process's start
  | { kind: "time"; ms: number }; // after the process's first step line

const KILLS: Kill[] = [
  ...["opened", "half", "synced", "renamed"].map((s): Kill => ({ kind: "point", point: `checkpoint:${s}` })),
  ...["opened", "half", "synced", "renamed"].map((s): Kill => ({ kind: "point", point: `manifest:${s}` })),
  { kind: "point", point: "checkpoint:listed" },
  { kind: "point", point: "checkpoint:stored" },
  ...[1, 2, 3, 6].map((steps): Kill => ({ kind: "after-step", steps })),
];

/** The 20 kills in a seeded order, with 6 random wall-clock times among them. */
function killPlan(seed: number): Kill[] {
  let rng = seed;
  const next = () => (rng = (Math.imul(rng, 1103515245) + 12345) >>> 0) / 2 ** 32;
  const plan: Kill[] = [...KILLS, ...Array.from({ length: 6 }, (): Kill => ({ kind: "time", ms: 0 }))];
  for (const k of plan) if (k.kind === "time") k.ms = Math.round(next() * 1500);
  for (let i = plan.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [plan[i], plan[j]] = [plan[j]!, plan[i]!];
  }
  return plan;
}

/** `deno run mod.ts <args>` with stderr captured; `killMs`: SIGKILL that long after its first step line. */
async function dsmoe(args: string[], env: Record<string, string> = {}, killMs?: number) {
  const p = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "mod.ts", ...args],
    env: { NO_COLOR: "1", ...env },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const kill = () => {
    try {
      p.kill("SIGKILL");
    } catch {
      // already gone
    }
  };
  const guard = setTimeout(kill, 180_000);
  let text = "", timer: ReturnType<typeof setTimeout> | undefined;
  for await (const chunk of p.stderr.pipeThrough(new TextDecoderStream())) {
    text += chunk;
    if (killMs !== undefined && timer === undefined && /^step \d+\//m.test(text)) {
      timer = setTimeout(kill, killMs);
    }
  }
  const status = await p.status;
  clearTimeout(guard), clearTimeout(timer);
  return { status, stderr: text };
}

/** Steps whose metric points the process acknowledged: before "step n" printed, steps < n were committed. */
function acknowledged(stderr: string): number {
  let n = 0;
  for (const m of stderr.matchAll(/^step (\d+)\//gm)) n = Math.max(n, Number(m[1]));
  return n - 1;
}

/** Temp files in the run directory and its ckpt/. */
function temps(run: string): string[] {
  const names = (dir: string) => {
    try {
      return [...Deno.readDirSync(dir)].map((e) => `${dir}/${e.name}`);
    } catch {
      return [];
    }
  };
  return [...names(run), ...names(`${run}/ckpt`)].filter((p) => p.includes(TEMP_MARK));
}

/** train/loss by step (every copy: a step redone after a kill is logged again). */
async function losses(dir: string, id: string): Promise<Map<number, number[]>> {
  const out = new Map<number, number[]>();
  for (const p of await (await openRunStore(dir)).metrics(id, { keys: ["train/loss"] })) {
    out.set(p.step, [...(out.get(p.step) ?? []), p.value]);
  }
  return out;
}

/** SHA-256 of the newest checkpoint's tensors whose names start with `prefix`, in name order. */
async function stateSha256(run: string, prefix: string): Promise<string> {
  const ck = (await latestCheckpoint(run))!;
  assertEquals(ck.entry.step, STEPS);
  const names = [...ck.file.tensors.keys()].filter((n) => n.startsWith(prefix)).sort();
  const parts = names.map((n) => ck.file.tensors.get(n)!.data);
  const all = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  parts.reduce((at, p) => (all.set(p, at), at + p.length), 0);
  return await sha256Hex(all);
}

Deno.test("SIGKILL at 20 points of training and checkpoint writing, each followed by run --resume: no acknowledged point lost, no temp file left, resume exact", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cfg = `${dir}/kill.yaml`;
    await Deno.writeTextFile(cfg, CONFIG);
    const common = ["--runs-dir", dir, "--no-dashboard"];
    const straight = await dsmoe(["run", cfg, ...common]);
    assertEquals(straight.status.code, 0, straight.stderr);
    const straightId = /^run (\S+) →/m.exec(straight.stderr)![1]!;

    let id = "", killed = 0, ackLost = 0, tempsLeft = 0, start = 0, midWrite = 0;
    const acked = new Set<number>();
    let left: string[] = [];
    const counts = { point: 0, "after-step": 0, time: 0 };
    for (const [i, k] of killPlan(18).entries()) {
      const env: Record<string, string> = k.kind === "point"
        ? { DSMOE_FAULT_KILL_AT: k.point }
        : k.kind === "after-step"
        ? { DSMOE_FAULT_KILL_AFTER_STEP: String(start + k.steps) }
        : {};
      const args = i === 0 ? ["run", cfg, ...common] : ["run", "--resume", id, ...common];
      const r = await dsmoe(args, env, k.kind === "time" ? k.ms : undefined);
      const what = `kill ${i} (${JSON.stringify(k)})`;
      assertEquals(r.status.signal, "SIGKILL", `${what}: ${r.stderr}`);
      killed++, counts[k.kind]++;
      if (i === 0) id = /^run (\S+) →/m.exec(r.stderr)![1]!;
      // The temp files the previous kill left are gone: this command removed them before writing.
      tempsLeft += left.filter((p) => temps(`${dir}/${id}`).includes(p)).length;
      for (let s = start + 1; s <= acknowledged(r.stderr); s++) acked.add(s);
      const stored = await losses(dir, id);
      ackLost += [...acked].filter((s) => !stored.has(s)).length;
      const ck = await latestCheckpoint(`${dir}/${id}`);
      start = ck?.entry.step ?? 0;
      left = temps(`${dir}/${id}`);
      if (left.length > 0) midWrite++;
      closeRunStores();
    }
    const last = await dsmoe(["run", "--resume", id, ...common]);
    assertEquals(last.status.code, 0, last.stderr);
    tempsLeft += temps(`${dir}/${id}`).length;
    const stored = await losses(dir, id);
    ackLost += [...acked].filter((s) => !stored.has(s)).length;
    console.log(
      `  ${killed} kills (${counts.point} inside checkpoint writes, ${counts["after-step"]} after steps, ` +
        `${counts.time} at random times; ${midWrite} left a temp file): ${acked.size} acknowledged steps, ` +
        `${ackLost} lost, ${tempsLeft} temp files left after the next command; resumed from step ${start}`,
    );
    assertEquals([killed, ackLost, tempsLeft], [20, 0, 0]);
    assert(midWrite >= 4, `${midWrite} kills hit a write in progress`);
    // Nothing unlisted stays in ckpt/: the newest 3 checkpoints and the manifest.
    const files = [...Deno.readDirSync(`${dir}/${id}/ckpt`)].map((e) => e.name).sort();
    assertEquals(
      files,
      ["manifest.json", ...(await listCheckpoints(`${dir}/${id}`)).map((e) => e.file)].sort(),
    );
    // Resume exact: every step's loss (each copy of a redone step) and the final state are the straight run's.
    const want = await losses(dir, straightId);
    assertEquals(want.size, STEPS);
    for (const [step, [value]] of want) {
      for (const got of stored.get(step) ?? []) {
        assert(Object.is(got, value), `step ${step}: ${got} vs ${value}`);
      }
      assert(stored.has(step), `step ${step} logged`);
    }
    for (const prefix of ["param/", "adam_m/", "adam_v/"]) {
      assertEquals(
        await stateSha256(`${dir}/${id}`, prefix),
        await stateSha256(`${dir}/${straightId}`, prefix),
        `${prefix} SHA-256`,
      );
    }
  } finally {
    await closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

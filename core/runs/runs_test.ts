import { deepStrictEqual as assertEquals, ok as assert, rejects, throws } from "node:assert/strict";
import { atomicWrite, cleanTempFiles, TEMP_MARK } from "../util/atomic_write.ts";
import {
  CheckpointError,
  checkpointRecordPath,
  cleanCheckpointTemps,
  cleanRunLeftovers,
  latestCheckpoint,
  listCheckpoints,
  sha256Hex,
  writeCheckpoint,
} from "./checkpoints.ts";
import { checkCheckpointContent, checkMemoryBudget, type CheckpointPurpose } from "./stored_run.ts";
import { loadExperiment } from "../config/mod.ts";
import { buildModel } from "../plan/model.ts";
import { initParams } from "../train/init.ts";
import { stateToTensors } from "../train/trainer.ts";
import type { TrainState } from "../train/backend.ts";
import { summarizePoint } from "../cli/dry_run.ts";
import {
  f32Tensor,
  readSafeTensors,
  readSafeTensorsMetadata,
  type SafeTensor,
  SafeTensorsError,
  tensorToF32,
  writeSafeTensors,
} from "./safetensors.ts";

function sample(): Map<string, SafeTensor> {
  return new Map([
    ["embed", f32Tensor([2, 3], new Float32Array([1, 2, 3, 4, 5, 6]))],
    ["bias", f32Tensor([1], new Float32Array([-0.5]))],
  ]);
}

/** A file with a hand-written header, to feed the reader malformed input. */
function handMade(header: unknown, dataBytes: number): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

Deno.test("safetensors round-trips tensors, shapes and metadata, with an 8-byte aligned header", () => {
  const bytes = writeSafeTensors(sample(), { step: "7", config: "name: x" });
  const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assertEquals(headerLen % 8, 0);
  const f = readSafeTensors(bytes);
  assertEquals(f.metadata, { step: "7", config: "name: x" });
  assertEquals(f.tensors.get("embed")!.shape, [2, 3]);
  assertEquals(Array.from(tensorToF32(f.tensors.get("embed")!)), [1, 2, 3, 4, 5, 6]);
  assertEquals(Array.from(tensorToF32(f.tensors.get("bias")!)), [-0.5]);
});

Deno.test("readSafeTensors() rejects gaps, overlaps, wrong sizes, trailing bytes and huge headers", () => {
  const e = (re: RegExp) => (err: Error) => err instanceof SafeTensorsError && re.test(err.message);
  const t = (begin: number, end: number, shape = [2]) => ({
    dtype: "F32",
    shape,
    data_offsets: [begin, end],
  });
  throws(() => readSafeTensors(handMade({ a: t(0, 8), b: t(12, 20) }, 20)), e(/contiguous/)); // gap
  throws(() => readSafeTensors(handMade({ a: t(0, 8), b: t(4, 12) }, 12)), e(/contiguous/)); // overlap
  throws(() => readSafeTensors(handMade({ a: t(0, 12) }, 12)), e(/needs 8/)); // size vs shape
  throws(() => readSafeTensors(handMade({ a: t(0, 8) }, 9)), e(/cover 8/)); // trailing bytes
  throws(
    () => readSafeTensors(handMade({ a: { dtype: "Q4", shape: [1], data_offsets: [0, 1] } }, 1)),
    e(/dtype/),
  );
  throws(() => readSafeTensors(handMade({ __metadata__: { step: 3 } }, 0)), e(/not a string/));
  const big = new Uint8Array(16);
  new DataView(big.buffer).setBigUint64(0, 200_000_000n, true);
  throws(() => readSafeTensors(big), e(/exceeds/));
  const past = new Uint8Array(16);
  new DataView(past.buffer).setBigUint64(0, 1000n, true);
  throws(() => readSafeTensors(past), e(/past the end/));
});

Deno.test("writeSafeTensors() with requireFinite refuses NaN and Infinity", () => {
  const bad = new Map([["w", f32Tensor([3], new Float32Array([1, NaN, 2]))]]);
  throws(() => writeSafeTensors(bad, {}, { requireFinite: true }), /non-finite value \(NaN\) at index 1/);
  const inf = new Map([["w", f32Tensor([1], new Float32Array([Infinity]))]]);
  throws(() => writeSafeTensors(inf, {}, { requireFinite: true }), /non-finite/);
});

Deno.test("checkpoints: the manifest lists complete files and resume takes the newest intact one", async () => {
  const run = await Deno.makeTempDir();
  try {
    await writeCheckpoint(run, 10, sample(), { config: "a" });
    await writeCheckpoint(run, 20, sample(), { config: "a" });
    assertEquals((await listCheckpoints(run)).map((c) => c.step), [10, 20]);
    assertEquals((await latestCheckpoint(run))!.entry.step, 20);
    // Damage the newest: resume falls back to step 10 and says why.
    await Deno.writeFile(`${run}/ckpt/step-20.safetensors`, new Uint8Array([1, 2, 3]));
    const skipped: number[] = [];
    const latest = await latestCheckpoint(run, (e) => skipped.push(e.step));
    assertEquals(latest!.entry.step, 10);
    assertEquals(latest!.file.metadata.step, "10");
    assertEquals(skipped, [20]);
  } finally {
    await Deno.remove(run, { recursive: true });
  }
});

Deno.test("checkpoints: keep prunes old files, and a non-finite model is never written", async () => {
  const run = await Deno.makeTempDir();
  try {
    for (const s of [1, 2, 3]) await writeCheckpoint(run, s, sample(), {}, { keep: 2 });
    assertEquals((await listCheckpoints(run)).map((c) => c.step), [2, 3]);
    const files = [...Deno.readDirSync(`${run}/ckpt`)].map((e) => e.name).sort();
    assertEquals(files, ["manifest.json", "step-2.safetensors", "step-3.safetensors"]);
    const nan = new Map([["w", f32Tensor([1], new Float32Array([NaN]))]]);
    let threw = false;
    await writeCheckpoint(run, 4, nan, {}).catch(() => threw = true);
    assert(threw);
    assertEquals((await latestCheckpoint(run))!.entry.step, 3);
  } finally {
    await Deno.remove(run, { recursive: true });
  }
});

Deno.test("atomicWrite() replaces the file whole and cleanTempFiles() removes leftovers", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await atomicWrite(`${dir}/f.bin`, new Uint8Array([1, 2, 3]));
    await atomicWrite(`${dir}/f.bin`, new Uint8Array([4, 5]));
    assertEquals(Array.from(await Deno.readFile(`${dir}/f.bin`)), [4, 5]);
    await Deno.writeFile(`${dir}/f.bin${TEMP_MARK}123-abc`, new Uint8Array([9]));
    assertEquals(await cleanTempFiles(dir), 1);
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["f.bin"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readSafeTensors() refuses duplicate names, uncountable shapes and non-UTF-8 headers with typed errors", () => {
  const e = (re: RegExp) => (err: Error) => err instanceof SafeTensorsError && re.test(err.message);
  // JSON.parse would keep the second "a"; the reader names the duplicate instead.
  const json =
    '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}';
  const dup = new Uint8Array(8 + json.length + 4);
  new DataView(dup.buffer).setBigUint64(0, BigInt(json.length), true);
  dup.set(new TextEncoder().encode(json), 8);
  throws(() => readSafeTensors(dup), e(/"a" appears twice/));
  // A key nested deeper may repeat a top-level name; an escaped quote does not end a name.
  const ok = handMade({
    'x"y': { dtype: "U8", shape: [1], data_offsets: [0, 1] },
    __metadata__: { 'x"y': "v" },
  }, 1);
  assertEquals([...readSafeTensors(ok).tensors.keys()], ['x"y']);
  const huge = { dtype: "F64", shape: [2 ** 26, 2 ** 26, 2 ** 26], data_offsets: [0, 8] };
  throws(() => readSafeTensors(handMade({ a: huge }, 8)), e(/too many elements/));
  const bad = handMade({ a: { dtype: "U8", shape: [1], data_offsets: [0, 1] } }, 1);
  bad[9] = 0xff; // inside the first key: not UTF-8
  throws(() => readSafeTensors(bad), e(/UTF-8/));
});

/** readSafeTensorsMetadata() of `bytes` as a file agrees with readSafeTensors(): the same metadata or error. */
async function assertSameMetadata(bytes: Uint8Array, what: string): Promise<void> {
  const path = await Deno.makeTempFile();
  try {
    await Deno.writeFile(path, bytes);
    const outcome = async (f: () => unknown) => {
      try {
        return JSON.stringify(await f());
      } catch (e) {
        assert(e instanceof SafeTensorsError, `${what}: ${(e as Error).name}: ${(e as Error).message}`);
        return e.message;
      }
    };
    assertEquals(
      await outcome(() => readSafeTensorsMetadata(path)),
      await outcome(() => readSafeTensors(bytes).metadata),
      what,
    );
  } finally {
    await Deno.remove(path);
  }
}

Deno.test("readSafeTensors() under 5000 seeded mutations of a valid file either reads it or throws SafeTensorsError; readSafeTensorsMetadata() agrees on every 25th", async () => {
  const valid = writeSafeTensors(sample(), { step: "7" });
  let rng = 12345;
  const next = () => (rng = (Math.imul(rng, 1103515245) + 12345) >>> 0) / 2 ** 32;
  const counts = { read: 0, refused: 0 };
  for (let i = 0; i < 5000; i++) {
    let b = valid.slice();
    const kind = i % 5;
    if (kind === 0) { // flip 1–4 bits anywhere (header length, JSON, data)
      for (let f = 0; f < 1 + (i % 4); f++) {
        const at = Math.floor(next() * b.length);
        b[at]! ^= 1 << Math.floor(next() * 8);
      }
    } else if (kind === 1) b = b.slice(0, Math.floor(next() * b.length)); // truncate
    else if (kind === 2) { // insert a random byte
      const at = Math.floor(next() * b.length), c = new Uint8Array(b.length + 1);
      c.set(b.subarray(0, at)), c[at] = Math.floor(next() * 256), c.set(b.subarray(at), at + 1);
      b = c;
    } else if (kind === 3) { // overwrite a header byte with a JSON-significant character
      const at = 8 + Math.floor(next() * 40);
      b[at] = '{}[]":,0123456789-e '.charCodeAt(Math.floor(next() * 20));
    } else { // a random header length
      new DataView(b.buffer).setBigUint64(
        0,
        BigInt(Math.floor(next() * 2 ** 32)) << BigInt(i % 3 === 0 ? 20 : 0),
        true,
      );
    }
    if (i % 25 === 0) await assertSameMetadata(b, `mutation ${i}`);
    try {
      const f = readSafeTensors(b);
      for (const t of f.tensors.values()) assert(t.data.byteLength <= b.length);
      counts.read++;
    } catch (err) {
      assert(
        err instanceof SafeTensorsError,
        `mutation ${i} (kind ${kind}): ${(err as Error).name}: ${(err as Error).message}`,
      );
      counts.refused++;
    }
  }
  assert(counts.refused > 3000 && counts.read > 0, JSON.stringify(counts));
});

Deno.test("checkpoints: a single flipped bit in the header length, the JSON header or the data falls back to the previous checkpoint", async () => {
  const run = await Deno.makeTempDir();
  try {
    await writeCheckpoint(run, 10, sample(), { config: "a" });
    await writeCheckpoint(run, 20, sample(), { config: "a" });
    const path = `${run}/ckpt/step-20.safetensors`, good = await Deno.readFile(path);
    const headerLen = Number(new DataView(good.buffer).getBigUint64(0, true));
    // Positions: the header length, the header's first and last bytes, the data's first and last bytes.
    const at = [0, 3, 8, 8 + headerLen - 1, 8 + headerLen, good.length - 1];
    for (const i of at) {
      for (const bit of [0, 7]) {
        const bad = good.slice();
        bad[i]! ^= 1 << bit;
        await Deno.writeFile(path, bad);
        const skipped: string[] = [];
        const latest = await latestCheckpoint(run, (e, why) => skipped.push(`${e.step}: ${why}`));
        assertEquals(latest!.entry.step, 10, `bit ${bit} of byte ${i}`);
        assertEquals(skipped, ["20: size or SHA-256 does not match the manifest"], `bit ${bit} of byte ${i}`);
      }
    }
    await Deno.writeFile(path, good);
    assertEquals((await latestCheckpoint(run))!.entry.step, 20, "the intact file is used again");
  } finally {
    await Deno.remove(run, { recursive: true });
  }
});

/** Starts tests/fixtures/ckpt_writer.ts on `run`; `out()` is what it printed so far, `ended` its exit. */
function startWriter(run: string, env: Record<string, string> = {}) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "tests/fixtures/ckpt_writer.ts", run],
    env,
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let text = "";
  const reading = (async () => {
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) text += chunk;
  })();
  return {
    child,
    out: () => text,
    ended: Promise.all([child.status, reading]).then(([status]) => status),
    until: async (re: RegExp) => {
      while (!re.test(text)) await new Promise((r) => setTimeout(r, 2));
    },
  };
}

/** What the next start sees after a kill: a complete newest checkpoint, at least the acknowledged step. */
async function assertRecovers(run: string, newest: number, what: string): Promise<void> {
  const latest = await latestCheckpoint(run);
  if (newest === 0) return;
  assert(latest !== null, `${what}: a checkpoint was acknowledged but none loads`);
  assert(latest.entry.step >= newest, `${what}: loads step ${latest.entry.step}, ${newest} was saved`);
  const w = tensorToF32(latest.file.tensors.get("param/w")!);
  assert(w.length === 512 * 1024 && w.every((v) => v === latest.entry.step), `${what}: torn data`);
}

Deno.test("checkpoints survive SIGKILL at 50 random points of a writer and at every stage of a write: every restart loads a complete checkpoint and clears temp files", async () => {
  const run = await Deno.makeTempDir();
  let rng = 2024;
  const next = () => (rng = (Math.imul(rng, 1103515245) + 12345) >>> 0) / 2 ** 32;
  let saved = 0, newest = 0, midWrite = 0;
  const acknowledge = (out: string) => {
    for (const m of out.matchAll(/saved (\d+)/g)) saved++, newest = Math.max(newest, Number(m[1]));
  };
  const temps = () =>
    [...Deno.readDirSync(`${run}/ckpt`)].map((e) => e.name).filter((n) => n.includes(TEMP_MARK));
  try {
    await Deno.mkdir(`${run}/ckpt`, { recursive: true });
    // How long one checkpoint takes here (the machine may be loaded): kills are drawn over 2.5 of them.
    const calib = startWriter(run);
    await calib.until(/ready/);
    const t0 = performance.now();
    await calib.until(/saved \d+\n(.|\n)*saved \d+\n(.|\n)*saved \d+\n/);
    const period = (performance.now() - t0) / 3;
    calib.child.kill("SIGKILL");
    await calib.ended;
    acknowledge(calib.out());
    for (let i = 0; i < 50; i++) {
      const left = temps();
      const w = startWriter(run);
      await w.until(/ready/);
      // The start removed the temp files of the previous kill.
      assert(left.every((n) => !temps().includes(n)), `kill ${i}: ${left} left after the next start`);
      await new Promise((r) => setTimeout(r, next() * 2.5 * period));
      w.child.kill("SIGKILL");
      await w.ended;
      if (temps().length > 0) midWrite++;
      acknowledge(w.out());
      await assertRecovers(run, newest, `kill ${i}`);
    }
    // A kill at each stage of writing a checkpoint file and its manifest, and between the manifest and the
    // rotation's deletions (DSMOE_FAULT_KILL_AT; the second checkpoint of the process, so one completes).
    const stages = ["opened", "half", "synced", "renamed"].flatMap((
      s,
    ) => [`checkpoint:${s}`, `manifest:${s}`]);
    for (const point of [...stages, "checkpoint:listed"]) {
      const w = startWriter(run, { DSMOE_FAULT_KILL_AT: `${point}#2` });
      const status = await w.ended;
      assertEquals(status.signal, "SIGKILL", `${point}: ${w.out()}`);
      acknowledge(w.out());
      assert(/saved \d+/.test(w.out()), `${point}: the first checkpoint of the process completed`);
      await assertRecovers(run, newest, point);
    }
    console.log(`  ${saved} checkpoints saved, ${midWrite} of 50 random kills left a half-written temp file`);
    assert(saved > 0 && midWrite > 0, `saved ${saved}, killed mid-write ${midWrite}: the kills hit writes`);
    // The next start removes whatever temp files the kills left.
    await cleanCheckpointTemps(run);
    assertEquals(temps(), []);
  } finally {
    await Deno.remove(run, { recursive: true });
  }
});

/** A manifest text whose entries are `entries` (each spread over a valid entry of its step). */
function manifestText(entries: Record<string, unknown>[]): string {
  return JSON.stringify({ checkpoints: entries });
}

const VALID = (step: number) => ({
  step,
  file: `step-${step}.safetensors`,
  bytes: 8,
  sha256: "0".repeat(64),
  time: "2026-01-01T00:00:00.000Z",
});

Deno.test("listCheckpoints() refuses every malformed manifest with a CheckpointError naming it, and writeCheckpoint() will not write beside one", async () => {
  const run = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${run}/ckpt`);
    const manifest = `${run}/ckpt/manifest.json`;
    const cases: [string, RegExp][] = [
      ["{not json", /not a JSON manifest/],
      ["", /not a JSON manifest/],
      ["[]", /expected an object \{"checkpoints"/],
      ["{}", /expected an object \{"checkpoints"/],
      ['{"checkpoints": {}}', /expected an object \{"checkpoints"/],
      ['{"checkpoints": [7]}', /checkpoints\[0\]: expected an object, got 7/],
      [
        manifestText([{ ...VALID(1), step: "1" }]),
        /checkpoints\[0\]: step must be a non-negative integer, got "1"/,
      ],
      [manifestText([{ ...VALID(1), step: -1, file: "step--1.safetensors" }]), /step must be a non-negative/],
      [manifestText([{ ...VALID(1), step: 2.5 }]), /step must be a non-negative integer, got 2\.5/],
      [manifestText([{ ...VALID(1), step: 1e300 }]), /step must be a non-negative integer, got 1e\+300/],
      [manifestText([{ ...VALID(1), bytes: -3 }]), /bytes must be a non-negative integer/],
      [
        manifestText([{ ...VALID(1), bytes: undefined }]),
        /bytes must be a non-negative integer, got nothing/,
      ],
      [manifestText([{ ...VALID(1), sha256: "xyz" }]), /sha256 must be 64 lowercase hex/],
      [manifestText([{ ...VALID(1), time: 5 }]), /time must be an ISO 8601 string/],
      [
        manifestText([{ ...VALID(1), file: "../../victim" }]),
        /file "\.\.\/\.\.\/victim" is not step-1\.safetensors/,
      ],
      [manifestText([{ ...VALID(1), file: "/etc/passwd" }]), /file "\/etc\/passwd" is not step-1/],
      [manifestText([{ ...VALID(1), file: "step-1.safetensors\0x" }]), /file "step-1\.safetensors\\u0000x"/],
      [
        manifestText([{ ...VALID(1), file: "step-2.safetensors" }]),
        /file "step-2\.safetensors" is not step-1/,
      ],
      [manifestText([{ ...VALID(1), file: "manifest.json" }]), /file "manifest\.json" is not step-1/],
      [manifestText([{ ...VALID(1), file: "sub/step-1.safetensors" }]), /is not step-1\.safetensors/],
      [manifestText([VALID(1), VALID(2), VALID(1)]), /step 1 is listed twice/],
    ];
    for (const [text, re] of cases) {
      await Deno.writeTextFile(manifest, text);
      await rejects(listCheckpoints(run), (e: Error) => {
        assert(e instanceof CheckpointError, `${text}: ${e.name}: ${e.message}`);
        assert(e.message.startsWith(`${manifest}: `) && re.test(e.message), `${text}: ${e.message}`);
        return true;
      });
      await rejects(writeCheckpoint(run, 9, sample(), {}, { keep: 1 }), CheckpointError);
      assertEquals(await Deno.readTextFile(manifest), text, "the manifest is left as it was");
      assertEquals([...Deno.readDirSync(`${run}/ckpt`)].map((e) => e.name), ["manifest.json"]);
    }
    // A manifest that is a link (here to a valid one elsewhere) is refused, not followed.
    const elsewhere = await Deno.makeTempDir();
    await Deno.writeTextFile(`${elsewhere}/m.json`, manifestText([VALID(1)]));
    await Deno.remove(manifest);
    await Deno.symlink(`${elsewhere}/m.json`, manifest);
    await rejects(listCheckpoints(run), /manifest\.json: is a symbolic link/);
    await Deno.remove(elsewhere, { recursive: true });
  } finally {
    await Deno.remove(run, { recursive: true });
  }
});

Deno.test("rotation deletes only checkpoint files it can prove are its own: never through a link, never outside ckpt/", async () => {
  const root = await Deno.makeTempDir();
  try {
    const run = `${root}/run`, victim = `${root}/victim`;
    await Deno.mkdir(`${run}/ckpt`, { recursive: true });
    await Deno.mkdir(victim);
    // Step 1 is a link to a file outside whose bytes match the manifest: loading skips it, rotation
    // drops the entry but leaves the link and its target.
    const bytes = writeSafeTensors(sample(), { step: "1" });
    await Deno.writeFile(`${victim}/step-1.safetensors`, bytes);
    await Deno.symlink(`${victim}/step-1.safetensors`, `${run}/ckpt/step-1.safetensors`);
    await Deno.writeTextFile(
      `${run}/ckpt/manifest.json`,
      manifestText([{ ...VALID(1), bytes: bytes.byteLength, sha256: await sha256Hex(bytes) }]),
    );
    const why: string[] = [];
    assertEquals(await latestCheckpoint(run, (e, w) => why.push(`${e.step}: ${w}`)), null);
    assertEquals(why, ["1: is a symbolic link, not a checkpoint file"]);
    for (const s of [2, 3]) await writeCheckpoint(run, s, sample(), {}, { keep: 1 });
    assertEquals((await listCheckpoints(run)).map((e) => e.step), [3]);
    assert((await Deno.lstat(`${run}/ckpt/step-1.safetensors`)).isSymlink, "the link is not ours to delete");
    assertEquals(await Deno.readFile(`${victim}/step-1.safetensors`), bytes, "its target is untouched");
    // A ckpt directory that is a link out of the run: nothing is written or deleted through it.
    const other = `${root}/run2`;
    await Deno.mkdir(other);
    await Deno.symlink(victim, `${other}/ckpt`);
    await rejects(writeCheckpoint(other, 4, sample(), {}, { keep: 1 }), /ckpt: is a symbolic link/);
    await rejects(latestCheckpoint(other), CheckpointError);
    await rejects(cleanCheckpointTemps(other), CheckpointError);
    await Deno.writeFile(`${victim}/x${TEMP_MARK}1-a`, new Uint8Array(1));
    await rejects(cleanRunLeftovers(other), CheckpointError);
    assertEquals([...Deno.readDirSync(victim)].map((e) => e.name).sort(), [
      `step-1.safetensors`,
      `x${TEMP_MARK}1-a`,
    ]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("cleanRunLeftovers() removes temp files and unlisted checkpoints of the run, nothing else", async () => {
  const run = await Deno.makeTempDir();
  try {
    await writeCheckpoint(run, 5, sample(), {});
    const ck = `${run}/ckpt`;
    await Deno.writeFile(`${ck}/step-10.safetensors`, new Uint8Array(3)); // written, never listed
    await Deno.writeFile(`${ck}/step-10.safetensors${TEMP_MARK}9-abcd`, new Uint8Array(3));
    await Deno.writeFile(`${run}/config.yaml${TEMP_MARK}9-abcd`, new Uint8Array(3));
    await Deno.writeFile(`${ck}/notes.txt`, new Uint8Array(3)); // not ours
    await Deno.symlink(`${ck}/notes.txt`, `${ck}/step-20.safetensors`); // a link, not a file of ours
    assertEquals(await cleanRunLeftovers(run), 3);
    assertEquals(
      [...Deno.readDirSync(ck)].map((e) => e.name).sort(),
      ["manifest.json", "notes.txt", "step-20.safetensors", "step-5.safetensors"],
    );
    assertEquals([...Deno.readDirSync(run)].map((e) => e.name), ["ckpt"]);
  } finally {
    await Deno.remove(run, { recursive: true });
  }
});

Deno.test("checkpointRecordPath() confines a store's checkpoint record to its run's ckpt/ directory", () => {
  const rec = (run_id: string, step: number, path: string) => ({ run_id, step, path });
  assertEquals(
    checkpointRecordPath("runs", rec("r1", 30, "r1/ckpt/step-30.safetensors")),
    "runs/r1/ckpt/step-30.safetensors",
  );
  for (
    const bad of [
      rec("r1", 30, "../r1/ckpt/step-30.safetensors"),
      rec("r1", 30, "/etc/passwd"),
      rec("r1", 30, "r2/ckpt/step-30.safetensors"),
      rec("r1", 30, "r1/ckpt/step-31.safetensors"),
      rec("..", 30, "../ckpt/step-30.safetensors"),
      rec("r1", -1, "r1/ckpt/step--1.safetensors"),
    ]
  ) {
    throws(
      () => checkpointRecordPath("runs", bad),
      (e: Error) => e instanceof CheckpointError && e.message.includes(JSON.stringify(bad.path)),
    );
  }
});

Deno.test("atomicWrite() removes its temp file when a write fails and rethrows the error with the target path", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/f.bin`;
    await atomicWrite(path, new Uint8Array([1, 2, 3]));
    Deno.env.set("DSMOE_FAULT_ENOSPC", "f.bin");
    try {
      await rejects(atomicWrite(path, new Uint8Array(1000)), (e: Error & { code?: string }) => {
        assert(e.code === "ENOSPC" && e.message.includes("No space left on device"), e.message);
        assert(e.message.includes(`writing ${path}`), e.message);
        return true;
      });
    } finally {
      Deno.env.delete("DSMOE_FAULT_ENOSPC");
    }
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name), ["f.bin"]);
    assertEquals(Array.from(await Deno.readFile(path)), [1, 2, 3], "the old file is intact");
    // Rename failing (the target is a directory): the temp file goes too.
    await Deno.mkdir(`${dir}/d`);
    await Deno.writeFile(`${dir}/d/x`, new Uint8Array(1));
    await rejects(
      atomicWrite(`${dir}/d`, new Uint8Array(4)),
      (e: Error) => e.message.includes(`writing ${dir}/d`),
    );
    assertEquals([...Deno.readDirSync(dir)].map((e) => e.name).sort(), ["d", "f.bin"]);
    // Open failing (no such directory): named as well.
    await rejects(
      atomicWrite(`${dir}/none/f`, new Uint8Array(1)),
      (e: Error) => e.message.includes(`${dir}/none/f`),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeCheckpoint() on a full disk keeps the previous checkpoint listed and intact, and leaves no temp or unlisted file", async () => {
  const run = await Deno.makeTempDir();
  try {
    await writeCheckpoint(run, 5, sample(), {}, { keep: 3 });
    for (const full of ["step-10.safetensors", "manifest.json"]) {
      Deno.env.set("DSMOE_FAULT_ENOSPC", full);
      try {
        await rejects(writeCheckpoint(run, 10, sample(), {}, { keep: 3 }), (e: Error) => {
          assert(/No space left on device.*writing .*\/ckpt\//.test(e.message), e.message);
          return e.message.includes(full);
        });
      } finally {
        Deno.env.delete("DSMOE_FAULT_ENOSPC");
      }
      assertEquals((await listCheckpoints(run)).map((e) => e.step), [5]);
      assertEquals((await latestCheckpoint(run))!.entry.step, 5);
      assertEquals([...Deno.readDirSync(`${run}/ckpt`)].map((e) => e.name).sort(), [
        "manifest.json",
        "step-5.safetensors",
      ]);
    }
  } finally {
    await Deno.remove(run, { recursive: true });
  }
});

Deno.test("checkCheckpointContent() accepts the model's training state and names the tensor and index of every wrong one", async () => {
  const { config } = (await loadExperiment("tests/fixtures/micro.yaml")).points[0]!;
  const specs = buildModel(config, 1).params, init = initParams(specs, 1);
  const state = (): TrainState => ({
    params: new Map(
      specs.map((p) => [p.value.name, { shape: p.value.shape, data: init.get(p.value.name)!.slice() }]),
    ),
    adamM: new Map(specs.map((p) => [p.value.name, new Float32Array(init.get(p.value.name)!.length)])),
    adamV: new Map(
      specs.map((p) => [p.value.name, new Float32Array(init.get(p.value.name)!.length).fill(1e-6)]),
    ),
    step: 10,
  });
  const file = (edit: (t: Map<string, SafeTensor>, m: Record<string, string>) => void = () => {}) => {
    const tensors = stateToTensors(state()),
      metadata: Record<string, string> = { step: "10", skipped_steps: "0" };
    edit(tensors, metadata);
    return { tensors, metadata };
  };
  const check = (f: ReturnType<typeof file>, purpose: CheckpointPurpose, step = 10) =>
    checkCheckpointContent(f, config, { step, purpose });
  check(file(), "resume");
  check(file(), "infer");
  const setValue = (t: Map<string, SafeTensor>, name: string, i: number, v: number) => {
    const a = tensorToF32(t.get(name)!);
    a[i] = v;
    t.set(name, f32Tensor(t.get(name)!.shape, a));
  };
  const wte = t0(specs, "wte");
  const cases: [string, (t: Map<string, SafeTensor>, m: Record<string, string>) => void, RegExp, boolean][] =
    [
      [
        "NaN weight",
        (t) => setValue(t, "param/wte", 3, NaN),
        /tensor "param\/wte" holds NaN at index 3 \(must be finite\)/,
        true,
      ],
      [
        "Inf weight",
        (t) => setValue(t, "param/lnf.weight", 0, -Infinity),
        /"param\/lnf\.weight" holds -Infinity at index 0/,
        true,
      ],
      [
        "Inf moment",
        (t) => setValue(t, "adam_m/wte", 7, Infinity),
        /"adam_m\/wte" holds Infinity at index 7/,
        false,
      ],
      [
        "negative adam_v",
        (t) => setValue(t, "adam_v/wte", 2, -1),
        /"adam_v\/wte" holds -1 at index 2 \(must be finite and ≥ 0\)/,
        false,
      ],
      [
        "transposed",
        (t) => t.set("param/wte", { ...t.get("param/wte")!, shape: [...wte].reverse() }),
        new RegExp(
          `"param/wte" has shape \\[${[...wte].reverse().join(", ")}\\], expected \\[${wte.join(", ")}\\]`,
        ),
        true,
      ],
      [
        "flattened",
        (t) => t.set("param/wte", { ...t.get("param/wte")!, shape: [wte[0]! * wte[1]!] }),
        /"param\/wte" has shape \[\d+\], expected/,
        true,
      ],
      ["missing param", (t) => t.delete("param/lnf.weight"), /tensor "param\/lnf\.weight" is missing/, true],
      [
        "extra param",
        (t) => t.set("param/extra", f32Tensor([1], new Float32Array(1))),
        /tensor "param\/extra" is not a tensor of the config's model/,
        true,
      ],
      [
        "extra tensor",
        (t) => t.set("junk", f32Tensor([1], new Float32Array(1))),
        /tensor "junk" is not a tensor/,
        true,
      ],
      [
        "F16 weight",
        (t) => t.set("param/wte", { dtype: "F16", shape: wte, data: new Uint8Array(2 * wte[0]! * wte[1]!) }),
        /"param\/wte" is F16, expected F32/,
        true,
      ],
      [
        "no optimizer_step",
        (t) => t.delete("optimizer_step"),
        /"optimizer_step" is missing: the optimizer and learning-rate schedule could not continue/,
        false,
      ],
      [
        "optimizer_step off",
        (t) => t.set("optimizer_step", f32Tensor([1], new Float32Array([3]))),
        /"optimizer_step" holds 3, not the checkpoint's step 10/,
        false,
      ],
      [
        "optimizer_step shape",
        (t) => t.set("optimizer_step", f32Tensor([2], new Float32Array([10, 10]))),
        /"optimizer_step" is F32 \[2\], expected F32 \[1\]/,
        false,
      ],
      ["no adam_v", (t) => t.delete("adam_v/wte"), /tensor "adam_v\/wte" is missing/, false],
      [
        "skipped_steps",
        (_, m) => m.skipped_steps = "11",
        /skipped_steps "11" is not a count of steps up to 10/,
        false,
      ],
    ];
  for (const [what, edit, re, infer] of cases) {
    for (const purpose of ["resume", "infer"] as const) {
      if (purpose === "infer" && !infer) {
        check(file(edit), "infer"); // the optimizer state is not inference's business
        continue;
      }
      throws(
        () => check(file(edit), purpose),
        (e: Error) => e instanceof CheckpointError && re.test(e.message),
        `${what} (${purpose})`,
      );
    }
  }
  // A step past the run's end, with a matching optimizer step.
  const late = file((
    t,
    m,
  ) => (t.set("optimizer_step", f32Tensor([1], new Float32Array([1000]))), m.step = "1000"));
  throws(() => check(late, "resume", 1000), /step 1000 is past train\.steps \(60\)/);
});

/** The shape of parameter `name` among `specs`. */
function t0(specs: readonly { value: { name: string; shape: readonly number[] } }[], name: string): number[] {
  return [...specs.find((p) => p.value.name === name)!.value.shape];
}

Deno.test("checkMemoryBudget() refuses what run --dry-run reports as not fitting, naming the file and the numbers", async () => {
  for (const budget of ["256MiB", "64KiB"]) {
    const { config } =
      (await loadExperiment("tests/fixtures/micro.yaml", { sets: [`hardware.memory_budget=${budget}`] }))
        .points[0]!;
    const fits = summarizePoint("micro", {}, config).fits_budget;
    if (fits) checkMemoryBudget(config, "x.yaml");
    else {
      throws(
        () => checkMemoryBudget(config, "x.yaml"),
        (e: Error) =>
          e instanceof CheckpointError &&
          /^x\.yaml: the config needs an estimated .* of memory, more than its hardware\.memory_budget of 64\.00 KiB \(65536 bytes\)/
            .test(e.message),
      );
    }
    assertEquals(fits, budget === "256MiB");
  }
});

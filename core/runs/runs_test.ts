import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import { atomicWrite, cleanTempFiles, TEMP_MARK } from "./atomic_write.ts";
import { cleanCheckpointTemps, latestCheckpoint, listCheckpoints, writeCheckpoint } from "./checkpoints.ts";
import {
  f32Tensor,
  readSafeTensors,
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

Deno.test("readSafeTensors() under 5000 seeded mutations of a valid file either reads it or throws SafeTensorsError", () => {
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

Deno.test("checkpoints survive SIGKILL at 50 random points of a writer: every restart loads a complete checkpoint and clears temp files", async () => {
  const run = await Deno.makeTempDir();
  let rng = 2024;
  const next = () => (rng = (Math.imul(rng, 1103515245) + 12345) >>> 0) / 2 ** 32;
  let saved = 0, newest = 0, midWrite = 0;
  try {
    await Deno.mkdir(`${run}/ckpt`, { recursive: true });
    for (let i = 0; i < 50; i++) {
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "tests/fixtures/ckpt_writer.ts", run],
        stdout: "piped",
        stderr: "inherit",
      }).spawn();
      const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let out = "";
      while (!out.includes("ready")) out += (await reader.read()).value ?? "";
      // Kill somewhere in the next 0–40 ms: before, during or between checkpoint writes.
      await new Promise((r) => setTimeout(r, next() * 40));
      child.kill("SIGKILL");
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        out += value;
      }
      await child.status;
      if ([...Deno.readDirSync(`${run}/ckpt`)].some((e) => e.name.includes(TEMP_MARK))) midWrite++;
      for (const m of out.matchAll(/saved (\d+)/g)) saved++, newest = Math.max(newest, Number(m[1]));
      // What the next start sees: the newest complete checkpoint, intact, at least as new as any acknowledged one.
      const latest = await latestCheckpoint(run);
      if (newest > 0) {
        assert(latest !== null, `kill ${i}: a checkpoint was acknowledged but none loads`);
        assert(
          latest.entry.step >= newest,
          `kill ${i}: loads step ${latest.entry.step}, ${newest} was saved`,
        );
        const w = tensorToF32(latest.file.tensors.get("param/w")!);
        assert(w.length === 512 * 1024 && w.every((v) => v === latest.entry.step), `kill ${i}: torn data`);
      }
    }
    console.log(`  ${saved} checkpoints saved, ${midWrite} of 50 kills left a half-written temp file`);
    assert(saved > 0 && midWrite > 0, `saved ${saved}, killed mid-write ${midWrite}: the kills hit writes`);
    // The next start removes whatever temp files the kills left.
    await cleanCheckpointTemps(run);
    const left = [...Deno.readDirSync(`${run}/ckpt`)].map((e) => e.name);
    assert(left.every((n) => !n.includes(TEMP_MARK)), `${left}`);
  } finally {
    await Deno.remove(run, { recursive: true });
  }
});

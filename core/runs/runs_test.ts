import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert/strict";
import { atomicWrite, cleanTempFiles, TEMP_MARK } from "./atomic_write.ts";
import { latestCheckpoint, listCheckpoints, writeCheckpoint } from "./checkpoints.ts";
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

import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import { BenchJsonError, tableFromJsonLines } from "./json_table.ts";
import type { BenchRow } from "./case.ts";
import { formatTable } from "./report.ts";

const rows: BenchRow[] = [
  {
    suite: "decode",
    case: "1b (944M vs 944M params) 32 tokens queued",
    impl: "dense",
    ms: 40,
    gflops: null,
    flops: null,
    tokens: 32,
    tokens_per_s: 800,
    max_err: 1e-5,
    per_sync: 1,
  },
  {
    suite: "decode",
    case: "1b (944M vs 944M params) 32 tokens queued",
    impl: "sparse",
    ms: 20,
    gflops: null,
    flops: null,
    tokens: 32,
    tokens_per_s: 1600,
    max_err: 1e-5,
    per_sync: 1,
  },
];
const summary = {
  suite: "decode",
  rows: 2,
  errors: 0,
  adapter: "NVIDIA H100",
  quick: false,
  warmup: 1,
  reps: 5,
  per_sync: null,
  cpu: "Intel Xeon",
  cpu_threads: 16,
  llvmpipe_threads: null,
  llvmpipe_threads_from: null,
};
const lines = [...rows, summary].map((o) => JSON.stringify(o));

Deno.test("tableFromJsonLines() gives the table the run would have printed, host line included", () => {
  const text = tableFromJsonLines(lines.join("\n") + "\n");
  assertEquals(
    text,
    formatTable(rows, "NVIDIA H100", {
      host: {
        cpu: "Intel Xeon",
        threads: 16,
        llvmpipeThreads: null,
        llvmpipeThreadsFrom: null,
        simd: null,
        llvmpipeVectorWidth: null,
        mesa: null,
        webgpuBackend: null,
      },
    }),
  );
  assertEquals(text.split("\n").slice(0, 2), ["adapter: NVIDIA H100", "host: Intel Xeon, 16 threads"]);
  assert(text.includes("0.50"), "DS-MoE/dense ratio");
  const skipped = tableFromJsonLines(
    JSON.stringify({ ...summary, adapter: "llvmpipe", rows: 0, decode_skipped: ["125m", "1b"] }),
  );
  assert(skipped.includes("decode sizes 125m, 1b skipped on llvmpipe (a software adapter)"), skipped);
  const mesa = [{ api: "Vulkan", version: "25.0.7", file: "/x/libvulkan_lvp.so" }];
  const lp = tableFromJsonLines(
    JSON.stringify({ ...summary, adapter: "llvmpipe", llvmpipe_threads: 1, mesa, webgpu_backend: "vulkan" }),
  );
  assert(lp.includes("; Mesa 25.0.7 (Vulkan) (DENO_WEBGPU_BACKEND=vulkan)"), lp);
});

Deno.test("tableFromJsonLines() refuses what is not bench output, naming the line", () => {
  assertThrows(
    () => tableFromJsonLines(`${lines[0]}\nnot json\n${lines[2]}`),
    (e: Error) => e instanceof BenchJsonError && e.message.startsWith("line 2 is not JSON"),
  );
  assertThrows(() => tableFromJsonLines(`[1]\n${lines[2]}`), /line 1 is not a JSON object/);
  assertThrows(() => tableFromJsonLines(`{"a":1}\n${lines[2]}`), /line 1 is not a bench row/);
  assertThrows(() => tableFromJsonLines(lines[0]!), /not a bench summary/);
  assertThrows(() => tableFromJsonLines(""), /not a bench summary/);
});

Deno.test("json_table.ts as a script: the table on stdout; bad input exits 2 with one line, no stack trace", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/ok.jsonl`, lines.join("\n"));
    await Deno.writeTextFile(`${dir}/bad.jsonl`, "{\n");
    const run = (file: string) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", new URL("./json_table.ts", import.meta.url).pathname, file],
        stdout: "piped",
        stderr: "piped",
      }).output();
    const ok = await run(`${dir}/ok.jsonl`);
    assertEquals(ok.code, 0);
    assert(new TextDecoder().decode(ok.stdout).startsWith("adapter: NVIDIA H100\nhost: Intel Xeon"));
    const bad = await run(`${dir}/bad.jsonl`);
    const err = new TextDecoder().decode(bad.stderr).trim();
    assertEquals(bad.code, 2);
    assert(/^json_table: .*bad\.jsonl: line 1 is not JSON/.test(err) && !err.includes("    at "), err);
    const missing = await run(`${dir}/none.jsonl`);
    assertEquals(missing.code, 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

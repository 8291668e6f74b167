import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { cli } from "./helpers/cli.ts";
import { closeRunStores } from "../core/runs/open_store.ts";

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** Runs the CLI in-process and captures its output. */
Deno.test("run --dry-run --json lists every sweep point of sweep-mi with its counts", async () => {
  const { code, out } = await cli("run", "configs/sweep-mi.yaml", "--dry-run", "--json");
  assertEquals(code, 0);
  const last = JSON.parse(out.at(-1)!);
  assertEquals(last.points.length, 6);
  const mi = last.points.map((
    p: { params: Record<string, number> },
  ) => [p.params["loss.mi.mlp"], p.params["loss.mi.attention"]]);
  assertEquals(mi, [[0, 0], [0, 3.5e-4], [6.3e-4, 0], [6.3e-4, 3.5e-4], [2e-3, 0], [2e-3, 3.5e-4]]);
  for (const p of last.points) {
    assertEquals(p.params_total, 368_768); // the MI weights do not change the model
    assertEquals(p.flops_per_token_train, 3 * 793_600);
    assert(p.fits_budget);
    assert(typeof p.name === "string" && p.name.startsWith("sweep-mi"));
  }
});

Deno.test("run --dry-run prints the resolved config and a per-point table", async () => {
  const { code, out } = await cli("run", "configs/dsmoe-tiny.yaml", "--dry-run");
  assertEquals(code, 0);
  const text = out.join("\n");
  assert(text.includes("d_model: 64"), "resolved config is printed");
  assert(text.includes("369K total"), "total parameters are printed");
  assert(text.includes("upper bound"), "threshold rule is marked as a bound");
});

Deno.test("run --dry-run --set changes the counted model", async () => {
  const { code, out } = await cli(
    "run",
    "configs/dsmoe-tiny.yaml",
    "--dry-run",
    "--json",
    "--set",
    "model.mlp.experts=4",
  );
  assertEquals(code, 0);
  // 4 fewer experts × 4 layers × 2·64·64, and 4 fewer router columns × 64 × 4 layers.
  assertEquals(JSON.parse(out.at(-1)!).points[0].params_total, 368_768 - 4 * 4 * 8192 - 4 * 64 * 4);
});

Deno.test("run --dry-run refuses a plan over memory_budget with exit code 2", async () => {
  const { code, err } = await cli(
    "run",
    "configs/dsmoe-tiny.yaml",
    "--dry-run",
    "--set",
    "hardware.memory_budget=1MiB",
  );
  assertEquals(code, 2);
  assert(err.join("\n").includes("memory_budget"));
});

Deno.test("a config error exits 2 and names file:line:col without a stack trace", async () => {
  const { code, err } = await cli("run", "configs/dsmoe-tiny.yaml", "--dry-run", "--set", "model.layres=2");
  assertEquals(code, 2);
  const text = err.join("\n");
  assert(text.includes("--set"), text);
  assert(text.includes("model.layres"), text);
  assert(!text.includes("    at "), "no stack trace");
});

Deno.test("unknown flags and commands are usage errors with exit code 2", async () => {
  assertEquals((await cli("run", "--dry-rn")).code, 2);
  assertEquals((await cli("frobnicate")).code, 2);
  assertEquals((await cli("run", "--stop-after", "zero", "--dry-run")).code, 2);
  for (const bad of [["--peak-tflops", "-1", "--profile"], ["--peak-tflops", "67"]]) {
    const r = await cli("run", "configs/dsmoe-tiny.yaml", "--dry-run", ...bad);
    assertEquals(r.code, 2, bad.join(" "));
    assert(r.err.join("\n").includes("--peak-tflops"), r.err.join("\n"));
  }
});

Deno.test("a missing config file is reported without a stack trace", async () => {
  const { code, err } = await cli("run", "configs/does-not-exist.yaml", "--dry-run");
  assertEquals(code, 2);
  assertEquals(err.join("\n"), `Config error:\nno such file: ${Deno.cwd()}/configs/does-not-exist.yaml`);
});

Deno.test("quick-run traps: a warmup not below the steps names the fix; a missing data file is 'no such file: <absolute path>' (exit 2)", async () => {
  const w = await cli("run", "configs/quickstart.yaml", "--dry-run", "--set", "train.steps=20");
  assertEquals(w.code, 2, w.err.join("\n"));
  const text = w.err.join("\n");
  assert(
    text.includes(
      "train.schedule.warmup (30) must be less than train.steps (20): lower it, e.g. --set train.schedule.warmup=2",
    ),
    text,
  );
  assertEquals((await cli("run", "configs/quickstart.yaml", "--dry-run", "--set", "train.steps=30")).code, 2);
  const dir = await Deno.makeTempDir();
  try {
    const cfg = `${dir}/nodata.yaml`;
    await Deno.writeTextFile(
      cfg,
      `extends: ${Deno.cwd()}/tests/fixtures/micro.yaml\ndata: { source: nope.txt }\n`,
    );
    const d = await cli("run", cfg, "--runs-dir", `${dir}/runs`, "--no-dashboard");
    assertEquals(d.code, 2, d.err.join("\n"));
    assert(d.err.join("\n").includes(`: no such file: ${dir}/nope.txt`), d.err.join("\n"));
    const glob = await cli(
      "run",
      cfg,
      "--set",
      "data.source=nodir/*.txt",
      "--runs-dir",
      `${dir}/runs`,
      "--no-dashboard",
    );
    assertEquals(glob.code, 2, glob.err.join("\n"));
    assert(glob.err.join("\n").includes(`: no such directory: ${dir}/nodir`), glob.err.join("\n"));
    assert(!(await exists(`${dir}/runs`)), "nothing was created");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("run --stop-after: progress lines count to the stop and say where it is in the run", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const r = await cli(
      ...["run", "tests/fixtures/micro.yaml", "--runs-dir", dir, "--no-dashboard", "--stop-after", "4"],
      ...["--set", "train.steps=30", "--set", "train.log_every=2", "--set", "train.eval_every=30"],
    );
    assertEquals(r.code, 0, r.err.join("\n"));
    const lines = r.err.filter((l) => /^step \d+\/|^stopping/.test(l));
    assertEquals(lines[0], "stopping at step 4 of 30 (--stop-after 4), with a checkpoint");
    assert(/^step 2\/4 {2}.* ETA \S+ \(stopping at 4 of 30\)$/.test(lines[1]!), lines.join("\n"));
    assert(/^step 4\/4 {2}.* tok\/s {2}stopping at 4 of 30$/.test(lines[2]!), lines.join("\n"));
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("eval and generate refuse a malformed checkpoint file with exit code 2 and the reason, no stack trace", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/bad.safetensors`;
    const json = new TextEncoder().encode('{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}');
    const bytes = new Uint8Array(8 + json.length + 12); // 4 bytes short of the data the header promises
    new DataView(bytes.buffer).setBigUint64(0, BigInt(json.length), true);
    bytes.set(json, 8);
    await Deno.writeFile(path, bytes);
    for (const args of [["eval", path], ["generate", path, "--prompt", "x"]]) {
      const r = await cli(...args);
      assertEquals(r.code, 2, `${args[0]}: ${r.err.join("\n")}`);
      const text = r.err.join("\n");
      assert(
        /Cannot read checkpoint .*bad\.safetensors: Data is 12 bytes but tensors cover 16/.test(text),
        text,
      );
      assert(!/\n\s+at /.test(text), `no stack trace: ${text}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { cli } from "./helpers/cli.ts";
import { latestCheckpoint, sha256Hex } from "../core/runs/checkpoints.ts";
import { RunDir } from "../core/runs/run_dir.ts";
import { closeRunStores } from "../core/runs/open_store.ts";
import { loadExperiment } from "../core/config/mod.ts";
import { loadDataset } from "../core/data/dataset.ts";
import { checkCheckpointContent } from "../core/runs/stored_run.ts";
import { f32Tensor, type SafeTensor, tensorToF32 } from "../core/runs/safetensors.ts";

// 60 steps of the micro DS-MoE on a corpus small enough that an epoch is under 16 steps, with a 10-step
// warmup, every step's loss logged and a checkpoint every 10 steps.
const CONFIG = `extends: ${Deno.cwd()}/tests/fixtures/micro.yaml
name: resume
data: { synthetic_bytes: 8192 }
train:
  steps: 60
  log_every: 1
  eval_every: 30
  checkpoint_every: 10
  schedule: { warmup: 10 }
`;

/** Every logged value of `key`, by step (a step logged twice, by a killed and a resumed process, has two). */
async function series(dir: string, runId: string, key: string): Promise<Map<number, number[]>> {
  const out = new Map<number, number[]>();
  for (const p of await (await RunDir.open(dir, runId)).readMetrics()) {
    if (p.key === key) out.set(p.step, [...(out.get(p.step) ?? []), p.value]);
  }
  return out;
}

/** SHA-256 of the newest checkpoint's (at `step`) tensors whose names start with `prefix`, in name order. */
async function stateSha256(dir: string, runId: string, prefix: string, step = 60): Promise<string> {
  const ck = (await latestCheckpoint(`${dir}/${runId}`))!;
  assertEquals(ck.entry.step, step);
  const names = [...ck.file.tensors.keys()].filter((n) => n.startsWith(prefix)).sort();
  assert(names.length >= (prefix === "router_state/" ? 1 : 10), `${names.length} ${prefix} tensors`);
  const parts = names.map((n) => ck.file.tensors.get(n)!.data);
  const all = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  parts.reduce((at, p) => (all.set(p, at), at + p.length), 0);
  return await sha256Hex(all);
}

/**
 * Asserts that run `b` logged, at every step run `a` logged, exactly a's value (every copy of it); with
 * `sameSteps`, also at no other step (evaluations also run where an invocation stops, so not for val/).
 */
async function assertSameSeries(
  dir: string,
  a: string,
  b: string,
  key: string,
  steps: number,
  sameSteps = true,
) {
  const sa = await series(dir, a, key), sb = await series(dir, b, key);
  assertEquals(sa.size, steps, `${key}: ${sa.size} steps logged`);
  const order = (m: Map<number, number[]>) => [...m.keys()].sort((x, y) => x - y);
  if (sameSteps) assertEquals(order(sb), order(sa), key);
  for (const [step, [want]] of sa) {
    assert(sb.has(step), `${key} at step ${step} not logged after resume`);
    for (const got of sb.get(step)!) {
      assert(Object.is(got, want), `${key} at step ${step}: ${got} after resume, ${want} straight`);
    }
  }
}

async function assertEquivalent(dir: string, straight: string, resumed: string) {
  for (const key of ["train/loss", "train/grad_norm", "train/lr"]) {
    await assertSameSeries(dir, straight, resumed, key, 60);
  }
  await assertSameSeries(dir, straight, resumed, "val/loss", 2, false);
  for (const prefix of ["param/", "adam_m/", "adam_v/"]) {
    assertEquals(
      await stateSha256(dir, resumed, prefix),
      await stateSha256(dir, straight, prefix),
      `${prefix} SHA-256`,
    );
  }
}

Deno.test("resume is exact: 60 steps straight = 30 + SIGKILL + resume, and = stops at the warmup boundary and mid-epoch + resumes (losses bit-identical, parameter SHA-256 equal)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cfg = `${dir}/resume.yaml`;
    await Deno.writeTextFile(cfg, CONFIG);
    const ds = await loadDataset((await loadExperiment(cfg)).config);
    // Step 24 is mid-epoch and the run crosses several epochs.
    assert(ds.epochAt(24, 8) % 1 > 0.1 && ds.epochAt(24, 8) % 1 < 0.9, `epoch at 24: ${ds.epochAt(24, 8)}`);
    assert(ds.epochAt(60, 8) > 3, `epochs in 60 steps: ${ds.epochAt(60, 8)}`);
    const run = (...extra: string[]) =>
      cli("run", cfg, "--runs-dir", dir, "--json", "--no-dashboard", ...extra);
    const resume = (id: string, ...extra: string[]) =>
      cli("run", "--resume", id, "--runs-dir", dir, "--json", "--no-dashboard", ...extra);

    const straight = await run();
    assertEquals(straight.code, 0, straight.err.join("\n"));
    const straightId = straight.json().run_id;

    // 1. Killed (SIGKILL) after step 35 in a separate process: the newest checkpoint is step 30's; the
    // resumed process redoes 31–35 (each now logged twice: both copies must match) and goes on to 60.
    const killed = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "mod.ts", "run", cfg, "--runs-dir", dir, "--no-dashboard"],
      env: { DSMOE_FAULT_KILL_AFTER_STEP: "35" },
      stdout: "null",
      stderr: "piped",
    }).output();
    assertEquals(killed.signal, "SIGKILL", new TextDecoder().decode(killed.stderr));
    const killedId = new TextDecoder().decode(killed.stderr).match(/run (\S+) →/)![1]!;
    const after = await resume(killedId);
    assertEquals(after.code, 0, after.err.join("\n"));
    assert(after.err.includes(`Resuming ${killedId} from step 30`), after.err.join("\n"));
    assertEquals((await series(dir, killedId, "train/loss")).get(33)!.length, 2, "step 33 logged twice");
    await assertEquivalent(dir, straightId, killedId);

    // 2. Stopped at the end of warmup (step 10), resumed to a stop mid-epoch (step 24), resumed to the end.
    const first = await run("--stop-after", "10");
    assertEquals(first.json().status, "interrupted");
    const id = first.json().run_id;
    assertEquals((await resume(id, "--stop-after", "14")).code, 0);
    assertEquals((await latestCheckpoint(`${dir}/${id}`))!.entry.step, 24);
    const last = await resume(id);
    assertEquals(last.code, 0, last.err.join("\n"));
    assert(last.err.includes(`Resuming ${id} from step 24`), last.err.join("\n"));
    await assertEquivalent(dir, straightId, id);
    assertEquals(last.json().final, straight.json().final);
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a run killed before its first checkpoint resumes from step 0 and says so; --set train.steps extends a finished run, other keys refused; a run whose checkpoints are all damaged is refused (exit 2) with the way to start over, its files and record unchanged", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sets = [
      "--set",
      "train.steps=6",
      "--set",
      "train.checkpoint_every=6",
      "--set",
      "train.eval_every=6",
    ];
    const killed = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "mod.ts",
        "run",
        "tests/fixtures/micro.yaml",
        "--runs-dir",
        dir,
        "--no-dashboard",
        ...sets,
      ],
      env: { DSMOE_FAULT_KILL_AFTER_STEP: "2" },
      stdout: "null",
      stderr: "piped",
    }).output();
    assertEquals(killed.signal, "SIGKILL", new TextDecoder().decode(killed.stderr));
    const id = new TextDecoder().decode(killed.stderr).match(/run (\S+) →/)![1]!;
    const r = await cli("run", "--resume", id, "--runs-dir", dir, "--json", "--no-dashboard");
    assertEquals(r.code, 0, r.err.join("\n"));
    assert(
      r.err.includes(
        `Run ${id} has no checkpoint yet (${dir}/${id}/ckpt/manifest.json lists none): starting it from step 0; ` +
          "the points of its earlier steps, if any, are logged again",
      ),
      r.err.join("\n"),
    );
    assertEquals((await latestCheckpoint(`${dir}/${id}`))!.entry.step, 6);

    // Finished: resuming it says so and changes nothing; flags that would be ignored are refused.
    const events = (await (await RunDir.open(dir, id)).store.events(id)).length;
    const again = await cli("run", "--resume", id, "--runs-dir", dir, "--no-dashboard");
    assertEquals(again.code, 0, again.err.join("\n"));
    assert(
      again.err.some((l) =>
        l.startsWith(`Run ${id} has finished its 6 steps (checkpoint at step 6): nothing to resume; `) &&
        l.endsWith(`deno task run --resume ${id} --set train.steps=12`)
      ),
      again.err.join("\n"),
    );
    assertEquals((await (await RunDir.open(dir, id)).store.events(id)).length, events);
    const config = await Deno.readTextFile(`${dir}/${id}/config.yaml`);
    for (
      const [flag, why] of [
        [["--dry-run"], "--dry-run does not go with --resume"],
        [
          ["--set", "model.d_model=32"],
          "--set model.d_model does not go with --resume: a resumed run may change",
        ],
        [
          ["--set", "train.steps=6"],
          `--set train.steps=6 does not extend run ${id}: its newest checkpoint is at step 6`,
        ],
      ] as const
    ) {
      const bad = await cli("run", "--resume", id, ...flag, "--runs-dir", dir, "--no-dashboard");
      assertEquals(bad.code, 2, bad.err.join("\n"));
      assert(bad.err[0]!.includes(why), bad.err.join("\n"));
    }
    assertEquals(
      await Deno.readTextFile(`${dir}/${id}/config.yaml`),
      config,
      "a refused --set changes nothing",
    );

    // Extended: --set train.steps=8 trains two more steps in the same run and says what changed.
    const more = await cli(
      "run",
      "--resume",
      id,
      "--set",
      "train.steps=8",
      "--runs-dir",
      dir,
      "--no-dashboard",
    );
    assertEquals(more.code, 0, more.err.join("\n"));
    assert(
      more.err.includes(`Run ${id}: train.steps 6 → 8 (config.yaml and the store updated)`),
      more.err.join("\n"),
    );
    assert(
      more.err.some((l) =>
        /^ {2}the learning-rate schedule now spans 8 steps: lr at step 6 \S+ → \S+$/.test(l)
      ),
    );
    assertEquals((await latestCheckpoint(`${dir}/${id}`))!.entry.step, 8);
    assert((await Deno.readTextFile(`${dir}/${id}/config.yaml`)).includes("steps: 8"));
    const stored = (await (await RunDir.open(dir, id)).store.getRun(id))!;
    assert(stored.config_yaml.includes("steps: 8") && stored.status === "finished" && stored.step === 8);

    // Both its checkpoints damaged: refused, nothing written to the run directory or the record.
    const path = `${dir}/${id}/ckpt/step-8.safetensors`;
    await Deno.truncate(path, 1000);
    await Deno.truncate(`${dir}/${id}/ckpt/step-6.safetensors`, 1000);
    const run = await RunDir.open(dir, id);
    const before = {
      meta: run.meta,
      events: (await run.store.events(id)).length,
      files: await Deno.readFile(path),
    };
    const refused = await cli("run", "--resume", id, "--runs-dir", dir, "--no-dashboard");
    assertEquals(refused.code, 2, refused.err.join("\n"));
    const text = refused.err.join("\n");
    for (
      const want of [
        `Run ${id} has no intact checkpoint to resume from: all 2 that ${dir}/${id}/ckpt/manifest.json lists are damaged:`,
        `${path}: size or SHA-256 does not match the manifest (1000 bytes, listed `,
        `To start over from step 0 as a new run: deno task run ${dir}/${id}/config.yaml --runs-dir ${dir}`,
      ]
    ) assert(text.includes(want), text);
    assertEquals((await RunDir.open(dir, id)).meta, before.meta);
    assertEquals((await run.store.events(id)).length, before.events);
    assertEquals(await Deno.readFile(path), before.files);
    // eval refuses it too, naming the file.
    const ev = await cli("eval", id, "--runs-dir", dir);
    assertEquals(ev.code, 2);
    assert(ev.err.join("\n").includes(`${path}: size or SHA-256 does not match`), ev.err.join("\n"));
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

// An SMoE with optimizer-free router state (aux-free balancing biases) and router jitter: 12 steps with a
// checkpoint every 4.
const ROUTER_STATE = `extends: ${Deno.cwd()}/tests/fixtures/micro.yaml
name: resume-router-state
data: { synthetic_bytes: 8192 }
model:
  kind: smoe
  attention: { kind: mha, heads: 2, head_dim: 8 }
  mlp: { experts: 4, hidden: 16 }
router: { train: topk, k: 2, balance: aux_free, bias_rate: 0.01, jitter: 0.1, infer: { kind: topk, k: 2 } }
loss: { mi: { attention: 0, mlp: 0 } }
train: { steps: 12, log_every: 1, eval_every: 12, eval_batches: 2, checkpoint_every: 4, schedule: { warmup: 2 } }
`;

Deno.test("resume is exact with router state (aux-free biases, jitter): 12 steps straight = 5 + resume = SIGKILL after 7 + resume (losses and biases bit-identical, state SHA-256 equal); a checkpoint without the biases is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cfg = `${dir}/state.yaml`;
    await Deno.writeTextFile(cfg, ROUTER_STATE);
    const run = (...extra: string[]) =>
      cli("run", cfg, "--runs-dir", dir, "--json", "--no-dashboard", ...extra);
    const resume = (id: string) => cli("run", "--resume", id, "--runs-dir", dir, "--json", "--no-dashboard");
    const straight = await run();
    assertEquals(straight.code, 0, straight.err.join("\n"));
    const straightId = straight.json().run_id;

    const stopped = await run("--stop-after", "5");
    assertEquals(stopped.json().status, "interrupted");
    const stoppedId = stopped.json().run_id;
    assertEquals((await resume(stoppedId)).code, 0);

    const killed = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "mod.ts", "run", cfg, "--runs-dir", dir, "--no-dashboard"],
      env: { DSMOE_FAULT_KILL_AFTER_STEP: "7" },
      stdout: "null",
      stderr: "piped",
    }).output();
    assertEquals(killed.signal, "SIGKILL", new TextDecoder().decode(killed.stderr));
    const killedId = new TextDecoder().decode(killed.stderr).match(/run (\S+) →/)![1]!;
    const after = await resume(killedId);
    assertEquals(after.code, 0, after.err.join("\n"));
    assert(after.err.includes(`Resuming ${killedId} from step 4`), after.err.join("\n"));

    const ck = (await latestCheckpoint(`${dir}/${straightId}`))!;
    const biases = [...ck.file.tensors.keys()].filter((n) => n.startsWith("router_state/")).sort();
    assertEquals(biases, [
      "router_state/h0.mlp.router.balance_bias",
      "router_state/h1.mlp.router.balance_bias",
    ]);
    assert(tensorToF32(ck.file.tensors.get(biases[0]!)!).some((v) => v !== 0), "the bias moved");
    for (const id of [stoppedId, killedId]) {
      for (const key of ["train/loss", "train/grad_norm", "train/router/1/mlp/bias/3"]) {
        await assertSameSeries(dir, straightId, id, key, 12);
      }
      for (const prefix of ["param/", "adam_m/", "adam_v/", "router_state/"]) {
        assertEquals(
          await stateSha256(dir, id, prefix, 12),
          await stateSha256(dir, straightId, prefix, 12),
          prefix,
        );
      }
    }

    // The biases are part of the model's checkpoint: missing or not finite, it is refused, naming them.
    const { config } = await loadExperiment(cfg);
    const edited = (edit: (t: Map<string, SafeTensor>) => void) => {
      const tensors = new Map(ck.file.tensors);
      edit(tensors);
      return { tensors, metadata: ck.file.metadata };
    };
    checkCheckpointContent(edited(() => {}), config, { step: 12, purpose: "resume" });
    const refused = (edit: (t: Map<string, SafeTensor>) => void, purpose: "resume" | "infer") => {
      try {
        checkCheckpointContent(edited(edit), config, { step: 12, purpose });
      } catch (e) {
        return String(e);
      }
      return "accepted";
    };
    for (const purpose of ["resume", "infer"] as const) {
      assert(
        refused((t) => t.delete(biases[1]!), purpose).includes(`tensor "${biases[1]}" is missing`),
        purpose,
      );
    }
    const nan = refused((t) => t.set(biases[0]!, f32Tensor([4], Float32Array.of(0, NaN, 0, 0))), "resume");
    assert(nan.includes(`tensor "${biases[0]}" holds NaN at index 1`), nan);
  } finally {
    closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

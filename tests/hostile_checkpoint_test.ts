/**
 * Hostile checkpoints and manifests (issue 18): every case copies one trained micro run (two checkpoints,
 * steps 5 and 10) into a fresh directory beside a "victim" directory outside the runs directory, damages or
 * tampers with it, and runs `run --resume`, `eval` or `generate` as a user would (a separate process). Each
 * asserts the exit code, a message naming the file, run or tensor, no stack trace, that nothing outside the
 * run directory changed, and for refusals that nothing inside it changed either. The only file that may
 * change on a refusal is SQLite's shared-memory index `runs.db-shm`, which every reader of the store
 * rewrites; the store's data (`runs.db`, `runs.db-wal`) must stay byte-identical.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  assertNoStack,
  assertTreeUnchanged,
  copyTree,
  runCliProcess,
  snapshotTree,
} from "./helpers/hostile.ts";
import { sha256Hex } from "../core/runs/checkpoints.ts";
import {
  f32Tensor,
  readSafeTensors,
  type SafeTensor,
  tensorToF32,
  writeSafeTensors,
} from "../core/runs/safetensors.ts";

/** One case's directory: `runs/` with the run and its store, `victim/` outside it, `elsewhere/`. */
interface Ctx {
  root: string;
  runs: string;
  id: string;
  run: string; // runs/<id>
  ckpt: string; // runs/<id>/ckpt
  victim: string;
}

type Tensors = Map<string, SafeTensor>;

/** What one case does and expects. */
interface Case {
  name: string;
  /** The command: a run command on the case's run, or eval/generate of the file `file(ctx)`. */
  command: "resume" | "eval" | "generate";
  target?: (c: Ctx) => string; // default the run id
  tamper: (c: Ctx) => Promise<void>;
  code: number;
  stderr: ((c: Ctx) => RegExp | string)[];
  /** Exit 0 cases: the run directory (and the store) may change; refusals change nothing. */
  changesRun?: boolean;
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");

async function readManifest(c: Ctx) {
  return JSON.parse(await Deno.readTextFile(`${c.ckpt}/manifest.json`));
}

async function editManifest(c: Ctx, edit: (m: { checkpoints: Record<string, unknown>[] }) => unknown) {
  const m = await readManifest(c);
  const out = edit(m) ?? m;
  await Deno.writeTextFile(`${c.ckpt}/manifest.json`, typeof out === "string" ? out : JSON.stringify(out));
}

/** Rewrites every listed checkpoint with `edit` applied, and lists its new size and hash (a careful forger). */
async function forgeAll(c: Ctx, edit: (t: Tensors, meta: Record<string, string>) => void) {
  const m = await readManifest(c);
  for (const e of m.checkpoints) {
    const f = readSafeTensors(await Deno.readFile(`${c.ckpt}/${e.file}`));
    edit(f.tensors, f.metadata);
    const bytes = writeSafeTensors(f.tensors, f.metadata);
    await Deno.writeFile(`${c.ckpt}/${e.file}`, bytes);
    Object.assign(e, { bytes: bytes.byteLength, sha256: await sha256Hex(bytes) });
  }
  await Deno.writeTextFile(`${c.ckpt}/manifest.json`, JSON.stringify(m));
}

/** A copy of the newest checkpoint at `<root>/<name>`, edited, for eval/generate of a file. */
async function forgeFile(c: Ctx, name: string, edit: (t: Tensors, meta: Record<string, string>) => void) {
  const f = readSafeTensors(await Deno.readFile(`${c.ckpt}/step-10.safetensors`));
  edit(f.tensors, f.metadata);
  await Deno.writeFile(`${c.root}/${name}`, writeSafeTensors(f.tensors, f.metadata));
}

function setValue(t: Tensors, name: string, i: number, v: number) {
  const a = tensorToF32(t.get(name)!);
  a[i] = v;
  t.set(name, f32Tensor(t.get(name)!.shape, a));
}

const transpose = (t: Tensors, name: string) => {
  const x = t.get(name)!;
  t.set(name, { ...x, shape: [...x.shape].reverse() });
};

const ALL_DAMAGED = (c: Ctx) => new RegExp(`Run ${esc(c.id)} has no intact checkpoint to`);
const RESTART = (c: Ctx) => `To start over from step 0 as a new run: deno task run ${c.run}/config.yaml`;
const MANIFEST = (c: Ctx) => `${c.ckpt}/manifest.json: `;
const FILE = (step: number, why: string) => (c: Ctx) =>
  new RegExp(`${esc(`${c.ckpt}/step-${step}.safetensors`)}: ${why}`);

const CASES: Case[] = [
  // Tampered manifests: refused whole, naming the manifest and the entry.
  {
    name: "manifest entry with a path traversal",
    command: "resume",
    tamper: (c) => editManifest(c, (m) => void (m.checkpoints[1]!.file = "../../../victim/secret.txt")),
    code: 2,
    stderr: [MANIFEST, () => /checkpoints\[1\]: file "\.\.\/\.\.\/\.\.\/victim\/secret\.txt" is not step-10/],
  },
  {
    name: "manifest entry with an absolute path",
    command: "eval",
    tamper: (c) => editManifest(c, (m) => void (m.checkpoints[0]!.file = `${c.victim}/secret.txt`)),
    code: 2,
    stderr: [MANIFEST, (c) => `checkpoints[0]: file "${c.victim}/secret.txt" is not step-5.safetensors`],
  },
  {
    name: "manifest entry with a NUL byte",
    command: "generate",
    tamper: (c) => editManifest(c, (m) => void (m.checkpoints[1]!.file = "step-10.safetensors\0.txt")),
    code: 2,
    stderr: [MANIFEST, () => 'file "step-10.safetensors\\u0000.txt"'],
  },
  {
    name: "manifest entry naming another file of the run",
    command: "resume",
    tamper: (c) => editManifest(c, (m) => void (m.checkpoints[1]!.file = "../config.yaml")),
    code: 2,
    stderr: [MANIFEST, () => 'file "../config.yaml" is not step-10.safetensors'],
  },
  {
    name: "manifest entry naming another step's file",
    command: "eval",
    tamper: (c) => editManifest(c, (m) => void (m.checkpoints[1]!.file = "step-5.safetensors")),
    code: 2,
    stderr: [MANIFEST, () => 'file "step-5.safetensors" is not step-10.safetensors'],
  },
  {
    name: "manifest that is not JSON",
    command: "eval",
    tamper: (c) => editManifest(c, () => '{"checkpoints": [{"step": 5,'),
    code: 2,
    stderr: [MANIFEST, () => "not a JSON manifest"],
  },
  {
    name: "manifest with a step of the wrong type",
    command: "resume",
    tamper: (c) => editManifest(c, (m) => void (m.checkpoints[1]!.step = "10")),
    code: 2,
    stderr: [MANIFEST, () => 'checkpoints[1]: step must be a non-negative integer, got "10"'],
  },
  {
    name: "manifest listing a step twice",
    command: "generate",
    tamper: (c) => editManifest(c, (m) => void m.checkpoints.push({ ...m.checkpoints[1]! })),
    code: 2,
    stderr: [MANIFEST, () => "step 10 is listed twice"],
  },
  {
    name: "manifest with a huge step",
    command: "resume",
    tamper: (c) => editManifest(c, (m) => void (m.checkpoints[1]!.step = 1e300)),
    code: 2,
    stderr: [MANIFEST, () => "step must be a non-negative integer, got 1e+300"],
  },
  {
    name: "manifest with a fractional step",
    command: "eval",
    tamper: (c) => editManifest(c, (m) => void (m.checkpoints[0]!.step = 2.5)),
    code: 2,
    stderr: [MANIFEST, () => "checkpoints[0]: step must be a non-negative integer, got 2.5"],
  },
  {
    name: "manifest entry without its hash",
    command: "resume",
    tamper: (c) => editManifest(c, (m) => void delete m.checkpoints[1]!.sha256),
    code: 2,
    stderr: [MANIFEST, () => "checkpoints[1]: sha256 must be 64 lowercase hex digits, got nothing"],
  },
  {
    name: "manifest of the wrong shape",
    command: "eval",
    tamper: (c) => editManifest(c, (m) => JSON.stringify(m.checkpoints)),
    code: 2,
    stderr: [MANIFEST, () => 'expected an object {"checkpoints": [...]}'],
  },
  {
    name: "manifest that is a link out of the run",
    command: "resume",
    tamper: async (c) => {
      await Deno.rename(`${c.ckpt}/manifest.json`, `${c.victim}/manifest.json`);
      await Deno.symlink(`${c.victim}/manifest.json`, `${c.ckpt}/manifest.json`);
    },
    code: 2,
    stderr: [MANIFEST, () => "is a symbolic link"],
  },
  {
    name: "ckpt directory that is a link out of the run",
    command: "resume",
    tamper: async (c) => {
      await Deno.rename(c.ckpt, `${c.victim}/ckpt`);
      await Deno.symlink(`${c.victim}/ckpt`, c.ckpt);
    },
    code: 2,
    stderr: [(c) => `${c.ckpt}: is a symbolic link`],
  },
  {
    name: "manifest removed while the store lists checkpoints",
    command: "resume",
    tamper: (c) => Deno.remove(`${c.ckpt}/manifest.json`),
    code: 2,
    stderr: [
      (c) => `the run store lists checkpoints of steps 5, 10, but ${c.ckpt}/manifest.json lists none`,
      RESTART,
    ],
  },
  // Damaged or missing files: refused, naming each file and why, with the way to start over.
  {
    name: "every checkpoint with a flipped bit",
    command: "resume",
    tamper: async (c) => {
      for (const s of [5, 10]) {
        const p = `${c.ckpt}/step-${s}.safetensors`, b = await Deno.readFile(p);
        b[b.length - 3]! ^= 1;
        await Deno.writeFile(p, b);
      }
    },
    code: 2,
    stderr: [
      ALL_DAMAGED,
      FILE(5, "size or SHA-256 does not match the manifest"),
      FILE(10, "size or SHA-256 does not match the manifest"),
      () => "Nothing was changed.",
      RESTART,
    ],
  },
  {
    name: "every checkpoint missing",
    command: "eval",
    tamper: async (c) => {
      for (const s of [5, 10]) await Deno.remove(`${c.ckpt}/step-${s}.safetensors`);
    },
    code: 2,
    stderr: [ALL_DAMAGED, FILE(5, "missing"), FILE(10, "missing")],
  },
  {
    name: "every checkpoint truncated",
    command: "generate",
    tamper: async (c) => {
      for (const s of [5, 10]) await Deno.truncate(`${c.ckpt}/step-${s}.safetensors`, 100);
    },
    code: 2,
    stderr: [
      ALL_DAMAGED,
      FILE(10, "size or SHA-256 does not match the manifest \\(100 bytes, listed \\d+\\)"),
    ],
  },
  {
    name: "every checkpoint a link to a copy outside the run",
    command: "eval",
    tamper: async (c) => {
      for (const s of [5, 10]) {
        await Deno.rename(`${c.ckpt}/step-${s}.safetensors`, `${c.victim}/step-${s}.safetensors`);
        await Deno.symlink(`${c.victim}/step-${s}.safetensors`, `${c.ckpt}/step-${s}.safetensors`);
      }
    },
    code: 2,
    stderr: [ALL_DAMAGED, FILE(5, "is a symbolic link"), FILE(10, "is a symbolic link")],
  },
  {
    name: "the newest checkpoint a link out of the run: passed over, never followed or deleted",
    command: "resume",
    tamper: async (c) => {
      await Deno.rename(`${c.ckpt}/step-10.safetensors`, `${c.victim}/step-10.safetensors`);
      await Deno.symlink(`${c.victim}/step-10.safetensors`, `${c.ckpt}/step-10.safetensors`);
    },
    code: 0,
    stderr: [
      () =>
        "skipping checkpoint step 10: is a symbolic link, not a checkpoint file; resuming from an older one",
      (c) => `Resuming ${c.id} from step 5`,
    ],
    changesRun: true,
  },
  // Well-formed but wrong checkpoints, listed with their new hashes: refused, naming the tensor.
  {
    name: "NaN weights",
    command: "eval",
    tamper: (c) => forgeAll(c, (t) => setValue(t, "param/wte", 5, NaN)),
    code: 2,
    stderr: [
      ALL_DAMAGED,
      FILE(10, 'tensor "param/wte" holds NaN at index 5 \\(must be finite\\)'),
      FILE(5, ""),
    ],
  },
  {
    name: "infinite weights",
    command: "generate",
    tamper: (c) => forgeAll(c, (t) => setValue(t, "param/h1.ln2.weight", 3, -Infinity)),
    code: 2,
    stderr: [FILE(10, 'tensor "param/h1\\.ln2\\.weight" holds -Infinity at index 3')],
  },
  {
    name: "a tensor of the right element count but another shape",
    command: "resume",
    tamper: (c) => forgeAll(c, (t) => transpose(t, "param/wte")),
    code: 2,
    stderr: [FILE(10, 'tensor "param/wte" has shape \\[32, 256\\], expected \\[256, 32\\]'), RESTART],
  },
  {
    name: "a parameter missing",
    command: "eval",
    tamper: (c) => forgeAll(c, (t) => t.delete("param/lnf.weight")),
    code: 2,
    stderr: [FILE(10, 'tensor "param/lnf\\.weight" is missing')],
  },
  {
    name: "an extra tensor",
    command: "generate",
    tamper: (c) => forgeAll(c, (t) => t.set("param/backdoor", f32Tensor([1], new Float32Array([1])))),
    code: 2,
    stderr: [FILE(10, `tensor "param/backdoor" is not a tensor of the config's model`)],
  },
  {
    name: "a parameter in F16",
    command: "eval",
    tamper: (c) =>
      forgeAll(c, (t) => {
        const x = t.get("param/lnf.weight")!;
        t.set("param/lnf.weight", { dtype: "F16", shape: x.shape, data: x.data.slice(0, x.data.length / 2) });
      }),
    code: 2,
    stderr: [FILE(10, 'tensor "param/lnf\\.weight" is F16, expected F32')],
  },
  {
    name: "the optimizer step missing",
    command: "resume",
    tamper: (c) => forgeAll(c, (t) => t.delete("optimizer_step")),
    code: 2,
    stderr: [FILE(10, 'tensor "optimizer_step" is missing'), RESTART],
  },
  {
    name: "the optimizer step off the checkpoint's step",
    command: "resume",
    tamper: (c) => forgeAll(c, (t) => t.set("optimizer_step", f32Tensor([1], new Float32Array([2])))),
    code: 2,
    stderr: [FILE(10, `tensor "optimizer_step" holds 2, not the checkpoint's step 10`)],
  },
  {
    name: "an Adam moment missing",
    command: "resume",
    tamper: (c) => forgeAll(c, (t) => t.delete("adam_m/h0.ln1.weight")),
    code: 2,
    stderr: [FILE(10, 'tensor "adam_m/h0\\.ln1\\.weight" is missing')],
  },
  {
    name: "a negative second moment",
    command: "resume",
    tamper: (c) => forgeAll(c, (t) => setValue(t, "adam_v/wte", 0, -1)),
    code: 2,
    stderr: [FILE(10, 'tensor "adam_v/wte" holds -1 at index 0 \\(must be finite and ≥ 0\\)')],
  },
  {
    name: "a metadata step other than the manifest's",
    command: "eval",
    tamper: (c) => forgeAll(c, (_, meta) => void (meta.step = "7")),
    code: 2,
    stderr: [FILE(10, `its metadata step "7" is not the manifest's 10`)],
  },
  {
    name: "a run config over its memory budget",
    command: "resume",
    tamper: async (c) => {
      const yaml = await Deno.readTextFile(`${c.run}/config.yaml`);
      await Deno.writeTextFile(
        `${c.run}/config.yaml`,
        yaml.replace(/memory_budget: .*/, "memory_budget: 64KiB"),
      );
    },
    code: 2,
    stderr: [
      (c) =>
        new RegExp(
          `${
            esc(c.run)
          }/config\\.yaml: the config needs an estimated .* \\(\\d+ bytes\\) of memory, more than its hardware\\.memory_budget of 64\\.00 KiB \\(65536 bytes\\)`,
        ),
    ],
  },
  {
    name: "a run config with extends: (it would read other files)",
    command: "resume",
    tamper: async (c) => {
      await Deno.writeTextFile(`${c.victim}/base.yaml`, "seed: 7\n");
      const yaml = await Deno.readTextFile(`${c.run}/config.yaml`);
      await Deno.writeTextFile(`${c.run}/config.yaml`, `extends: ${c.victim}/base.yaml\n${yaml}`);
    },
    code: 2,
    stderr: [(c) => `${c.run}/config.yaml: has extends:, which a run's resolved config never has`],
  },
  {
    name: "a run config that is a link out of the run",
    command: "eval",
    tamper: async (c) => {
      await Deno.rename(`${c.run}/config.yaml`, `${c.victim}/config.yaml`);
      await Deno.symlink(`${c.victim}/config.yaml`, `${c.run}/config.yaml`);
    },
    code: 2,
    stderr: [(c) => `${c.run}/config.yaml: is not a file (a link, a directory or a device)`],
  },
  {
    name: "checkpoints listed as larger than the model's can be (never read)",
    command: "eval",
    tamper: (c) => editManifest(c, (m) => void m.checkpoints.forEach((e) => e.bytes = 2 ** 50)),
    code: 2,
    stderr: [
      ALL_DAMAGED,
      FILE(10, `listed as ${2 ** 50} bytes, more than a checkpoint of this model can be`),
    ],
  },
  // A checkpoint file given directly: the same checks.
  {
    name: "a checkpoint file whose embedded config has extends:",
    command: "generate",
    target: (c) => `${c.root}/ext.safetensors`,
    tamper: (c) =>
      forgeFile(c, "ext.safetensors", (_, m) => {
        m.config = `extends: ${c.victim}/secret.txt\n${m.config}`;
      }),
    code: 2,
    stderr: [(c) => `${c.root}/ext.safetensors (metadata config): has extends:`],
  },
  {
    name: "a checkpoint file whose embedded config is over its budget",
    command: "eval",
    target: (c) => `${c.root}/big.safetensors`,
    tamper: (c) =>
      forgeFile(c, "big.safetensors", (_, m) => {
        m.config = m.config!.replace(/memory_budget: .*/, "memory_budget: 64KiB");
      }),
    code: 2,
    stderr: [
      (c) => `${c.root}/big.safetensors (metadata config): the config needs an estimated`,
      () => "65536 bytes",
    ],
  },
  {
    name: "a checkpoint file with NaN weights",
    command: "generate",
    target: (c) => `${c.root}/nan.safetensors`,
    tamper: (c) => forgeFile(c, "nan.safetensors", (t) => setValue(t, "param/wte", 9, NaN)),
    code: 2,
    stderr: [(c) => `${c.root}/nan.safetensors: tensor "param/wte" holds NaN at index 9`],
  },
  {
    name: "a checkpoint file with a reshaped tensor",
    command: "eval",
    target: (c) => `${c.root}/shape.safetensors`,
    tamper: (c) => forgeFile(c, "shape.safetensors", (t) => transpose(t, "param/wte")),
    code: 2,
    stderr: [
      (c) => `${c.root}/shape.safetensors: tensor "param/wte" has shape [32, 256], expected [256, 32]`,
    ],
  },
  // Run ids and directories that lead out of the runs directory.
  {
    name: "a run directory outside the runs directory",
    command: "eval",
    target: (c) => `${c.root}/elsewhere/${c.id}`,
    tamper: (c) => copyTree(c.runs, `${c.root}/elsewhere`),
    code: 2,
    stderr: [(c) => `${c.root}/elsewhere/${c.id} is not a run directory of the runs directory ${c.runs}`],
  },
  {
    name: "a run directory path with a traversal out of the runs directory",
    command: "resume",
    target: (c) => `${c.runs}/../victim/${c.id}`,
    // A copy of the run there: an unconfined resume would open (and create) a store beside it and train it.
    tamper: (c) => copyTree(c.run, `${c.victim}/${c.id}`),
    code: 2,
    stderr: [(c) => `${c.runs}/../victim/${c.id} is not a run directory of the runs directory ${c.runs}`],
  },
  {
    name: 'the run id ".."',
    command: "eval",
    target: () => "..",
    tamper: async () => {},
    code: 2,
    stderr: [() => '".." is not a run id'],
  },
  {
    name: "a run directory that is a link out of the runs directory",
    command: "resume",
    tamper: async (c) => {
      await Deno.rename(c.run, `${c.victim}/${c.id}`);
      await Deno.symlink(`${c.victim}/${c.id}`, c.run);
    },
    code: 2,
    stderr: [(c) => `${c.run}: is a symbolic link; a run directory must be a directory in ${c.runs}`],
  },
];

function argv(c: Ctx, k: Case): string[] {
  const target = k.target?.(c) ?? c.id;
  switch (k.command) {
    case "resume":
      return ["run", "--resume", target, "--runs-dir", c.runs, "--no-dashboard"];
    case "eval":
      return ["eval", target, "--runs-dir", c.runs, "--batches", "1"];
    case "generate":
      return ["generate", target, "--runs-dir", c.runs, "--prompt", "x", "--max-tokens", "2"];
  }
}

Deno.test(`${CASES.length} hostile checkpoints, manifests, configs and run paths for run --resume, eval and generate: refused (exit 2) naming the file and tensor, or a damaged newest checkpoint passed over; nothing changed outside the run, nothing inside it on a refusal`, async (t) => {
  const base = await Deno.makeTempDir();
  try {
    // One trained run to copy: steps 5 and 10 checkpointed.
    const seed = `${base}/seed`;
    const trained = await runCliProcess([
      "run",
      `${Deno.cwd()}/tests/fixtures/micro.yaml`,
      ...["--set", "train.steps=10", "--set", "train.checkpoint_every=5", "--set", "train.eval_every=10"],
      ...["--runs-dir", `${seed}/runs`, "--no-dashboard", "--json"],
    ], { cwd: base });
    assertEquals(trained.code, 0, trained.stderr);
    const id = JSON.parse(trained.stdout.trim().split("\n").at(-1)!).run_id as string;
    await Deno.mkdir(`${seed}/victim`);
    await Deno.writeTextFile(`${seed}/victim/secret.txt`, "not yours\n");
    assertEquals(
      (await readManifest({ ckpt: `${seed}/runs/${id}/ckpt` } as Ctx)).checkpoints.map((
        e: { step: number },
      ) => e.step),
      [5, 10],
    );
    let refused = 0;
    for (const [i, k] of CASES.entries()) {
      await t.step(k.name, async () => {
        const root = `${base}/case-${i}`;
        await copyTree(seed, root);
        const runs = `${root}/runs`;
        const c: Ctx = {
          root,
          runs,
          id,
          run: `${runs}/${id}`,
          ckpt: `${runs}/${id}/ckpt`,
          victim: `${root}/victim`,
        };
        await k.tamper(c);
        const before = await snapshotTree(root);
        const r = await runCliProcess(argv(c, k), { cwd: root });
        assertEquals(r.code, k.code, `${k.name}: exit ${r.code}\n${r.stderr}`);
        for (const want of k.stderr) {
          const w = want(c);
          assert(
            typeof w === "string" ? r.stderr.includes(w) : w.test(r.stderr),
            `${k.name}: ${w}\n${r.stderr}`,
          );
        }
        assertNoStack(r.stderr);
        const after = await snapshotTree(root);
        const allowed = k.changesRun
          ? [`runs/${id}`, "runs/runs.db", "runs/runs.db-wal", "runs/runs.db-shm"]
          : [
            "runs/runs.db-shm",
          ];
        assertTreeUnchanged(before, after, allowed, k.name);
        if (k.code === 2) refused++;
      });
    }
    assert(refused >= 18, `${refused} refusals`);
  } finally {
    await Deno.remove(base, { recursive: true });
  }
});

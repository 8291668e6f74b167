/**
 * Hostile configs and data sources, each run through the CLI as a user runs it (a separate process with a
 * kill timeout, so that a source that blocks cannot hang the suite): every case must exit 2 quickly with a
 * message naming the file, source, key or flag it is about, print no stack trace and no secret, and leave
 * the temp directory that holds its `--runs-dir` and its files exactly as it was.
 *
 * Files too large to snapshot (a sparse file over the data limit) and kernel files live outside that
 * directory.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { assertNoStack, assertTreeUnchanged, runCliProcess, snapshotTree } from "./helpers/hostile.ts";
import { experimentToYaml, parseExperimentText } from "../core/config/mod.ts";
import { loadDataset } from "../core/data/dataset.ts";
import { MAX_SOURCE_BYTES } from "../core/data/sources.ts";
import { plan } from "../core/plan/plan.ts";
import { f32Tensor, writeSafeTensors } from "../core/runs/safetensors.ts";

/** A secret that must never be printed (in a fake environment file, and in the process environment). */
const SECRET = "sk-live-7f3a9c2e41b8d05a6e";

/** One hostile case: `setup` writes what it needs (under `root`, snapshotted, or `aside`) and gives the args. */
interface HostileCase {
  name: string;
  setup: (root: string, aside: string) => Promise<string[]>;
  /** What stderr must say (it names the file, source, key or flag). */
  message: RegExp;
}

const MICRO = await Deno.readTextFile(new URL("./fixtures/micro.yaml", import.meta.url));
/** `eval`'s most batches on the micro config's validation split (batches of 8 windows of 32 + 1 tokens). */
const MICRO_MAX_BATCHES = await (async () => {
  const c = parseExperimentText(MICRO, "micro.yaml").config;
  return (await loadDataset(c)).maxValBatches(c.train.batch);
})();

/** A valid micro config whose data source is `source`. */
function configWith(source: string): string {
  const c = parseExperimentText(MICRO, "micro.yaml", { sets: [`data.source=${JSON.stringify(source)}`] });
  return experimentToYaml(c.config);
}

/** Writes `config.yaml` (micro, data from `source`) under `root`; the args train it into `root/runs`. */
async function runWith(root: string, source: string): Promise<string[]> {
  await Deno.writeTextFile(`${root}/config.yaml`, configWith(source));
  return ["run", `${root}/config.yaml`, "--runs-dir", `${root}/runs`, "--dashboard-port", "0"];
}

async function mkfifo(path: string): Promise<void> {
  assertEquals((await new Deno.Command("mkfifo", { args: [path] }).output()).code, 0);
}

/** Args of `run` on a config file, with `--runs-dir` inside `root`. */
const runArgs = (root: string, config: string, ...more: string[]) => [
  "run",
  config,
  "--runs-dir",
  `${root}/runs`,
  "--dashboard-port",
  "0",
  ...more,
];

/** A checkpoint of the micro model (zero parameters) whose config reads `source`. */
function checkpointWith(source: string): Uint8Array {
  const c = parseExperimentText(configWith(source), "micro.yaml").config;
  const tensors = new Map(
    plan(c, "infer-sparse").model.params.map((p) => {
      const n = p.value.shape.reduce((a, b) => a * b, 1);
      return [`param/${p.value.name}`, f32Tensor(p.value.shape, new Float32Array(n))];
    }),
  );
  return writeSafeTensors(tensors, { config: experimentToYaml(c), step: "0" });
}

const DATA_CASES: HostileCase[] = [
  {
    name: "data.source is a FIFO (never opened: no hang)",
    setup: async (root) => (await mkfifo(`${root}/pipe.txt`), runWith(root, `${root}/pipe.txt`)),
    message: /data\.source ".*\/pipe\.txt" is a FIFO \(named pipe\), not a regular file or directory/,
  },
  {
    name: "data.source is /dev/zero",
    setup: (root) => runWith(root, "/dev/zero"),
    message: /data\.source "\/dev\/zero" is a character device, not a regular file or directory/,
  },
  {
    name: "data.source is /dev/urandom",
    setup: (root) => runWith(root, "/dev/urandom"),
    message: /data\.source "\/dev\/urandom" is a character device/,
  },
  {
    name: "data.source is a symlink to /dev/zero",
    setup: async (root) => (await Deno.symlink("/dev/zero", `${root}/z.txt`), runWith(root, `${root}/z.txt`)),
    message: /data\.source ".*\/z\.txt" is a symlink to a character device/,
  },
  {
    name: "data.source is a directory with a FIFO inside",
    setup: async (root) => {
      await Deno.mkdir(`${root}/corpus`);
      await Deno.writeTextFile(`${root}/corpus/a.txt`, "some text\n".repeat(2000));
      await mkfifo(`${root}/corpus/b.txt`);
      return runWith(root, `${root}/corpus`);
    },
    message: /data\.source ".*\/corpus": .*\/corpus\/b\.txt is a FIFO \(named pipe\)/,
  },
  {
    name: "data.source is a directory with a symlink loop",
    setup: async (root) => {
      await Deno.mkdir(`${root}/corpus`);
      await Deno.writeTextFile(`${root}/corpus/a.txt`, "some text\n".repeat(2000));
      await Deno.symlink(`${root}/corpus`, `${root}/corpus/again`);
      return runWith(root, `${root}/corpus`);
    },
    message: /data\.source ".*\/corpus": .*\/corpus\/again is a symlink loop/,
  },
  {
    name: "data.source is a glob that matches nothing",
    setup: (root) => runWith(root, `${root}/*.nothing`),
    message: /No files match data\.source ".*\/\*\.nothing"/,
  },
  {
    name: "data.source is a glob that matches only a FIFO",
    setup: async (root) => (await mkfifo(`${root}/only.txt`), runWith(root, `${root}/*.txt`)),
    message:
      /data\.source ".*\/\*\.txt": .*\/only\.txt is a FIFO \(named pipe\).*; a glob may match only regular/,
  },
  {
    name: "data.source is an empty file",
    setup: async (root) => (await Deno.writeTextFile(`${root}/e.txt`, ""), runWith(root, `${root}/e.txt`)),
    message: /data\.source ".*\/e\.txt" holds no text: the file is empty/,
  },
  {
    name: "data.source is too short for seq_len + 1 tokens per split",
    setup: async (
      root,
    ) => (await Deno.writeTextFile(`${root}/s.txt`, "abc\n".repeat(500)), runWith(root, `${root}/s.txt`)),
    message: /data\.source ".*\/s\.txt" is too short: its 2000 tokens .*fewer than data\.seq_len \+ 1 = 33/,
  },
  {
    name: "data.source is a binary file (NUL bytes, valid UTF-8)",
    setup: async (root) => {
      await Deno.writeFile(`${root}/b.txt`, new Uint8Array(20_000).map((_, i) => i % 3 === 0 ? 0 : 65));
      return runWith(root, `${root}/b.txt`);
    },
    message: /data\.source ".*\/b\.txt": a NUL byte at byte 0: a binary file, not text/,
  },
  {
    name: "data.source is invalid UTF-8",
    setup: async (root) => {
      await Deno.writeFile(`${root}/u.txt`, new Uint8Array(20_000).map((_, i) => i === 5 ? 0xff : 97));
      return runWith(root, `${root}/u.txt`);
    },
    message: /data\.source ".*\/u\.txt": invalid UTF-8 at byte 5 \(0xff\)/,
  },
  {
    name: "data.source is /proc/self/environ (a pseudo-file holding secrets)",
    setup: (root) => runWith(root, "/proc/self/environ"),
    message: /data\.source "\/proc\/self\/environ" is a kernel pseudo-file under \/proc/,
  },
  {
    name: "data.source is larger than 1 GiB (a sparse file: refused from stat)",
    setup: async (root, aside) => {
      using f = await Deno.open(`${aside}/huge.txt`, { write: true, create: true });
      await f.truncate(MAX_SOURCE_BYTES + 4096);
      return runWith(root, `${aside}/huge.txt`);
    },
    message: /data\.source ".*\/huge\.txt": 1073745920 bytes in 1 file\(s\); the limit is 1 GiB/,
  },
];

const CONFIG_CASES: HostileCase[] = [
  {
    name: "a diamond extends graph of 20 levels (each file read once) with a bad key at the top",
    setup: async (root) => {
      const L = 20;
      const next = (
        i: number,
      ) => (i + 1 === L ? "[leaf.yaml, leaf.yaml]" : `[x${i + 1}.yaml, y${i + 1}.yaml]`);
      for (let i = 0; i < L; i++) {
        for (const n of ["x", "y"]) {
          await Deno.writeTextFile(`${root}/${n}${i}.yaml`, `extends: ${next(i)}\n`);
        }
      }
      await Deno.writeTextFile(`${root}/leaf.yaml`, MICRO);
      await Deno.writeTextFile(`${root}/top.yaml`, "extends: [x0.yaml, y0.yaml]\nmodel: { d_model: wide }\n");
      return runArgs(root, `${root}/top.yaml`);
    },
    message: /top\.yaml:2:19: model\.d_model: expected an integer, got "wide"/,
  },
  {
    name: "an extends graph of more than 64 files",
    setup: async (root) => {
      const wide = Array.from({ length: 16 }, (_, i) => `a${i}.yaml`);
      for (const [i, a] of wide.entries()) {
        const bs = Array.from({ length: 4 }, (_, j) => `b${i}_${j}.yaml`);
        for (const b of bs) await Deno.writeTextFile(`${root}/${b}`, "seed: 1\n");
        await Deno.writeTextFile(`${root}/${a}`, `extends: [${bs.join(", ")}]\n`);
      }
      await Deno.writeTextFile(`${root}/top.yaml`, `extends: [${wide.join(", ")}]\n`);
      return runArgs(root, `${root}/top.yaml`);
    },
    message: /\.yaml:1:\d+: extends\[\d\]: the extends graph reads more than 64 files/,
  },
  {
    name: "extends names a .env file holding a secret",
    setup: async (root) => {
      await Deno.writeTextFile(`${root}/.env`, `API_KEY=${SECRET}\nDB_PASSWORD=${SECRET}\n`);
      await Deno.writeTextFile(`${root}/top.yaml`, "extends: .env\nname: t\n");
      return runArgs(root, `${root}/top.yaml`);
    },
    message: /top\.yaml:1:10: extends: "\.env" is not a \.yaml or \.yml file/,
  },
  {
    name: "extends names an environment file renamed .yaml",
    setup: async (root) => {
      await Deno.writeTextFile(`${root}/env.yaml`, `export API_KEY=${SECRET}\nexport OTHER="a: ${SECRET}"\n`);
      await Deno.writeTextFile(`${root}/top.yaml`, "extends: env.yaml\n");
      return runArgs(root, `${root}/top.yaml`);
    },
    message: /env\.yaml:1:1: \[…\]: implicit keys need to be on a single line/,
  },
  {
    name: "the config itself is an environment file",
    setup: async (root) => {
      await Deno.writeTextFile(`${root}/secrets.env`, `API_KEY=${SECRET}\nTOKEN=${SECRET}\n`);
      return runArgs(root, `${root}/secrets.env`);
    },
    message:
      /secrets\.env:1:1: \(root\): expected a map of settings, got a single text value of \d+ characters \(not shown\)/,
  },
  {
    name: "extends names a binary file",
    setup: async (root) => {
      await Deno.writeFile(`${root}/blob.yaml`, new Uint8Array(4096).map((_, i) => (i * 37) % 256));
      await Deno.writeTextFile(`${root}/top.yaml`, "extends: blob.yaml\n");
      return runArgs(root, `${root}/top.yaml`);
    },
    message:
      /top\.yaml:1:10: extends: ".*\/blob\.yaml" is not a YAML text file: it holds a NUL byte at offset 0/,
  },
  {
    name: "extends names a JSON array (.json)",
    setup: async (root) => {
      await Deno.writeTextFile(`${root}/list.json`, JSON.stringify([SECRET, 1, 2]));
      await Deno.writeTextFile(`${root}/top.yaml`, "extends: [list.json]\n");
      return runArgs(root, `${root}/top.yaml`);
    },
    message: /top\.yaml:1:11: extends\[0\]: "list\.json" is not a \.yaml or \.yml file/,
  },
  {
    name: "extends names a JSON array saved as .yaml",
    setup: async (root) => {
      await Deno.writeTextFile(`${root}/list.yaml`, JSON.stringify([SECRET, 1, 2]));
      await Deno.writeTextFile(`${root}/top.yaml`, "extends: list.yaml\n");
      return runArgs(root, `${root}/top.yaml`);
    },
    message: /list\.yaml:1:1: \(root\): expected a map of settings, got a list of 3/,
  },
  {
    name: "extends names a FIFO called .yaml (never opened: no hang)",
    setup: async (root) => {
      await mkfifo(`${root}/pipe.yaml`);
      await Deno.writeTextFile(`${root}/top.yaml`, "extends: pipe.yaml\n");
      return runArgs(root, `${root}/top.yaml`);
    },
    message: /top\.yaml:1:10: extends: ".*\/pipe\.yaml" is a FIFO \(named pipe\), not a file/,
  },
  {
    name: "the config is a directory",
    setup: async (root) => (await Deno.mkdir(`${root}/conf.yaml`), runArgs(root, `${root}/conf.yaml`)),
    message: /conf\.yaml:1:1: \(root\): ".*\/conf\.yaml" is a directory, not a file/,
  },
  {
    name: "the config is /dev/zero",
    setup: (root) => Promise.resolve(runArgs(root, "/dev/zero")),
    message: /\/dev\/zero:1:1: \(root\): "\/dev\/zero" is a character device, not a file/,
  },
  {
    name: "the config is /proc/kmsg (a pseudo-file that blocks when read)",
    setup: (root) => Promise.resolve(runArgs(root, "/proc/kmsg")),
    message:
      /\/proc\/kmsg:1:1: \(root\): "\/proc\/kmsg" is a kernel pseudo-file \(\/proc\/kmsg\), not a config/,
  },
  {
    name: "extends names a symlink to /proc/self/environ (the process's secrets)",
    setup: async (root) => {
      await Deno.symlink("/proc/self/environ", `${root}/env.yaml`);
      await Deno.writeTextFile(`${root}/top.yaml`, "extends: env.yaml\n");
      return runArgs(root, `${root}/top.yaml`);
    },
    message:
      /top\.yaml:1:10: extends: ".*\/env\.yaml" is a kernel pseudo-file \(\/proc\/\d+\/environ\), not a config/,
  },
  {
    name: "--set with a 100,000-character value",
    setup: (root) =>
      Promise.resolve(
        runArgs(root, "tests/fixtures/micro.yaml", "--set", `description=${"x".repeat(100_000)}`),
      ),
    message:
      /--set:1:13: description: the value is too long: the argument has 100012 characters; a --set argument holds at most 16384/,
  },
  {
    name: "--set with a 50,000-character key",
    setup: (root) =>
      Promise.resolve(runArgs(root, "tests/fixtures/micro.yaml", "--set", `${"k".repeat(50_000)}=1`)),
    message: /--set:1:1: \[…\]: unknown key: a key of 50000 characters \(not shown\)/,
  },
];

const EVAL_CASES: HostileCase[] = [
  ...["1000000000000", "0", "-3", "2.5", "1e3", "0x10", "100001"].map((n): HostileCase => ({
    name: `eval --batches ${n}`,
    setup: (root) => Promise.resolve(["eval", "some-run", `--batches=${n}`, "--runs-dir", `${root}/runs`]),
    message: new RegExp(`--batches expects a whole number from 1 to 100000, got "${n.replace(".", "\\.")}"`),
  })),
  {
    name: "eval --batches above the distinct validation windows of the data",
    setup: async (root) => {
      await Deno.writeFile(`${root}/micro.safetensors`, checkpointWith("synthetic:multidomain"));
      return ["eval", `${root}/micro.safetensors`, "--batches", "99999", "--runs-dir", `${root}/runs`];
    },
    message: new RegExp(
      `--batches 99999: the validation split holds \\d+ distinct windows of seq_len \\+ 1 = 33 tokens, ` +
        `${MICRO_MAX_BATCHES} batches of 8; use --batches ${MICRO_MAX_BATCHES} or fewer`,
    ),
  },
  {
    name: "eval of a checkpoint whose data.source is a FIFO (never opened: no hang)",
    setup: async (root) => {
      await mkfifo(`${root}/pipe.txt`);
      await Deno.writeFile(`${root}/fifo.safetensors`, checkpointWith(`${root}/pipe.txt`));
      return ["eval", `${root}/fifo.safetensors`, "--runs-dir", `${root}/runs`];
    },
    message: /data\.source ".*\/pipe\.txt" is a FIFO \(named pipe\)/,
  },
];

async function check(c: HostileCase): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "dsmoe-hostile-" });
  const aside = await Deno.makeTempDir({ prefix: "dsmoe-hostile-aside-" });
  try {
    const args = await c.setup(root, aside);
    const before = await snapshotTree(root);
    const t0 = performance.now();
    const r = await runCliProcess(args, { timeoutMs: 60_000, env: { DSMOE_HOSTILE_SECRET: SECRET } });
    const ms = performance.now() - t0;
    console.log(`${c.name}: exit ${r.code} in ${ms.toFixed(0)} ms`);
    const text = `${r.stdout}\n${r.stderr}`;
    assertEquals(r.code, 2, `${c.name}: exit ${r.code}\n${text}`);
    assert(c.message.test(r.stderr), `${c.name}: message\n${r.stderr}`);
    assertNoStack(text);
    assert(!text.includes(SECRET.slice(8)), `${c.name}: the secret was printed\n${text}`);
    assert(ms < 30_000, `${c.name}: ${ms} ms`); // a liveness bound: a blocked read is killed at 60 s
    assertTreeUnchanged(before, await snapshotTree(root), [], c.name);
  } finally {
    await Deno.remove(root, { recursive: true });
    await Deno.remove(aside, { recursive: true });
  }
}

for (const c of [...DATA_CASES, ...CONFIG_CASES, ...EVAL_CASES]) {
  Deno.test(`hostile input: ${c.name}`, () => check(c));
}

Deno.test("the hostile suite has at least 16 config and data cases", () => {
  assert(DATA_CASES.length + CONFIG_CASES.length >= 16, `${DATA_CASES.length + CONFIG_CASES.length}`);
});

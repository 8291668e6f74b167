import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { closeRunStores } from "../core/runs/open_store.ts";
import { cli } from "./helpers/cli.ts";

const MICRO = "tests/fixtures/micro.yaml";

type _Point = { name: string; params: Record<string, unknown> };

Deno.test("run --sweep turns a plain config into a grid: one point per combination, values parsed as YAML", async () => {
  const r = await cli(
    "run",
    MICRO,
    "--sweep",
    "loss.mi.mlp=0,6.3e-4,1e-3",
    "--sweep",
    "train.optimizer.lr=1e-2,5e-3",
    "--dry-run",
    "--json",
  );
  assertEquals(r.code, 0, r.err.join("\n"));
  const points: _Point[] = r.json().points;
  assertEquals(points.length, 6);
  assertEquals(points.map((p) => [p.params["loss.mi.mlp"], p.params["train.optimizer.lr"]]), [
    [0, 1e-2],
    [0, 5e-3],
    [6.3e-4, 1e-2],
    [6.3e-4, 5e-3],
    [1e-3, 1e-2],
    [1e-3, 5e-3],
  ]);
  assertEquals(new Set(points.map((p) => p.name)).size, 6, "each point has its own name");
  assert(r.out.join("\n").includes("6 points"), "the dry run says it is a sweep");
  // The same flags make the same sweep (its id is a hash of the config and its sweep block): a rerun finds
  // its finished points.
  const again = await cli("run", MICRO, "--sweep", "loss.mi.mlp=0,6.3e-4,1e-3", "--dry-run");
  const id = (t: string[]) => /sweep ([0-9a-z-]+), 3 points/.exec(t.join("\n"))?.[1];
  assert(id(again.out) !== undefined, again.out.join("\n"));
  assertEquals(
    id((await cli("run", MICRO, "--sweep", "loss.mi.mlp=0,6.3e-4,1e-3", "--dry-run")).out),
    id(again.out),
  );
});

Deno.test("run --sweep adds axes to a config's own sweep: grid, and refuses a key swept twice or a bad one (exit 2)", async () => {
  const merged = await cli(
    "run",
    "tests/fixtures/micro_sweep.yaml",
    "--sweep",
    "seed=1,2",
    "--dry-run",
    "--json",
  );
  assertEquals(merged.code, 0, merged.err.join("\n"));
  assertEquals(merged.json().points.length, 18, "3 learning rates × 3 MI weights × 2 seeds");
  for (
    const [args, msg] of [
      [
        ["tests/fixtures/micro_sweep.yaml", "--sweep", "loss.mi.mlp=0"],
        /loss\.mi\.mlp is swept already by the config's sweep:/,
      ],
      [[MICRO, "--sweep", "seed=1,2", "--sweep", "seed=3"], /seed is swept already by an earlier --sweep/],
      [[MICRO, "--sweep", "loss.mi.mpl=0,1"], /did you mean "mlp"/],
      [[MICRO, "--sweep", "loss.mi.mlp"], /expected key=value,value/],
      [[MICRO, "--sweep", "loss.mi.mlp="], /expected key=value,value/],
      [[MICRO, "--sweep", "sweep.repeat=1,2"], /the sweep: block itself cannot be swept/],
      [[MICRO, "--sweep", "model.d_model=32,abc"], /--sweep:1:.*d_model/],
      [["--resume", "x", "--sweep", "seed=1,2"], /--sweep does not go with --resume/],
    ] as const
  ) {
    const r = await cli("run", ...args, ...(args[0] === "--resume" ? [] : ["--dry-run"]));
    assertEquals(r.code, 2, `${args}: ${r.err.join("\n")}`);
    assert(msg.test(r.err.join("\n")), `${args}: ${r.err.join("\n")}`);
  }
});

Deno.test("run --sweep trains every point; run again, the finished points are skipped and the table shows their stored results", async () => {
  const dir = await Deno.makeTempDir();
  const args = [
    "run",
    MICRO,
    "--sweep",
    "loss.mi.mlp=0,1e-3",
    ..."hardware.backend=cpu train.steps=4 train.eval_every=4 train.checkpoint_every=4 train.log_every=2 train.schedule.warmup=1"
      .split(" ").flatMap((s) => ["--set", s]),
    "--runs-dir",
    `${dir}/runs`,
    "--no-dashboard",
    "--json",
  ];
  try {
    const first = await cli(...args);
    assertEquals(first.code, 0, first.err.join("\n"));
    const points = first.json().points;
    assertEquals(points.map((p: { status: string }) => p.status), ["finished", "finished"]);
    const sweep = /Sweep (\S+): its page is \/sweeps\/(\S+) on the dashboard/.exec(first.out.join("\n"));
    assert(sweep && sweep[1] === sweep[2], first.out.join("\n"));
    assert(first.out.join("\n").includes(`deno task dashboard --runs-dir ${dir}/runs`), first.out.join("\n"));

    const again = await cli(...args);
    assertEquals(again.code, 0, again.err.join("\n"));
    const skipped = again.json().points;
    assertEquals(skipped.map((p: { status: string }) => p.status), ["skipped", "skipped"]);
    for (const [i, p] of skipped.entries()) {
      assertEquals(p.run_id, points[i].run_id);
      assertEquals(p.final["val/loss"], points[i].final["val/loss"], "the stored final loss");
      assertEquals(p.final["train/loss"], points[i].final["train/loss"]);
      const row = again.out.find((l) => l.includes(p.run_id) && l.includes("skipped"))!;
      assert(row.includes(p.final["val/loss"].toFixed(4)), row);
    }
  } finally {
    await closeRunStores();
    await Deno.remove(dir, { recursive: true });
  }
});

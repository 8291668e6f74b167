import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { parseExperimentText } from "../config/mod.ts";
import { flopsPerToken } from "./counts.ts";
import { nodeFlops, trainStepFlops } from "./flops.ts";
import { plan } from "./plan.ts";

const TINY = `
data: { seq_len: 24 }
model:
  d_model: 16
  layers: 2
  attention: { kind: moa, experts: 2, heads_per_expert: 2, head_dim: 4 }
  mlp: { experts: 4, hidden: 8 }
train: { batch: 4, micro_batch: 2, steps: 10, schedule: { warmup: 1 } }
`;

const cfg = (yaml: string, ...sets: string[]) =>
  parseExperimentText(yaml, "t.yaml", { sets }).points[0]!.config;

Deno.test("a dense-trained model's step FLOPs on the graph equal 3 × the forward FLOPs per token × its tokens", () => {
  for (
    const c of [
      cfg(TINY),
      cfg(TINY, "model.kind=dense", "model.attention.kind=mha", "model.mlp.experts=1"),
      cfg(TINY, "model.norm=rmsnorm", "train.micro_batch=4"),
    ]
  ) {
    const f = trainStepFlops(plan(c, "train-dense"));
    const tokens = c.train.batch * c.data.seq_len;
    assertEquals(f.total, flopsPerToken(c).train * tokens);
    assertEquals(f.total, f.matmul + f.attention);
  }
});

Deno.test("top-k training counts the work its graph does: every expert, masked (more than k of them)", () => {
  const c = cfg(
    TINY,
    "model.kind=smoe",
    "router.train=topk",
    "router.k=1",
    "loss.mi.attention=0",
    "loss.mi.mlp=0",
  );
  const f = trainStepFlops(plan(c, "train-dense"));
  assert(f.total > flopsPerToken(c).train * c.train.batch * c.data.seq_len, JSON.stringify(f));
});

Deno.test("attention's FLOPs: QKᵀ and P·V over the causal triangle forward, twice that backward", () => {
  const c = cfg(TINY);
  const nodes = plan(c, "train-dense").schedule.nodes;
  const fwd = nodes.find((n) => n.op === "attention")!,
    bwd = nodes.find((n) => n.op === "attention_backward")!;
  const [B, T, H, D] = fwd.inputs[0]!.shape as number[];
  assertEquals([B, T, H, D], [2, 24, 4, 4]);
  assertEquals(nodeFlops(fwd).attention, 2 * 2 * B! * H! * D! * (T! * (T! + 1)) / 2);
  assertEquals(nodeFlops(bwd).attention, 2 * nodeFlops(fwd).attention);
  const mm = nodes.find((n) => n.op === "matmul")!;
  const [m, k] = mm.inputs[0]!.shape as number[], n = mm.outputs[0]!.shape[1]!;
  assertEquals(nodeFlops(mm), { matmul: 2 * m! * k! * n, attention: 0 });
});

/**
 * Help text of every command (DESIGN.md §7).
 *
 * @module
 */

import { storeUsage } from "./store_flag.ts";

/** Top-level usage. */
export const USAGE = `dsmoe — Mixture-of-Experts experiments, trained densely, run sparsely, on WebGPU

Usage: deno task <command> [options]

Commands:
  run [config.yaml] [--set k=v]… [--dry-run] [--stop-after N]   train (default config: configs/quickstart.yaml)
  run --resume <run-id>                                          continue from the newest complete checkpoint
  eval <run-id|ckpt> [--rule threshold --epsilon 0.5 | --rule topk --k 2 | …]… [--batches N]
  generate <run-id|ckpt> --prompt TEXT [--max-tokens N] [--rule …]
  dashboard [--port 8000] [--host 127.0.0.1] [--token T]         serve the runs dashboard (live charts, API)
  bench [--json] [--suite NAME] [--quick] [--per-sync N]
  repro [--scale micro|small]                                    reproduce the paper's claims; write a report
  test                                                           fmt, lint, type check and the test suite

Common options: --json (last stdout line is one JSON object), --runs-dir DIR (default runs/),
  --store URL (run store: postgres://… or a SQLite file; default $DSMOE_STORE, else DIR/runs.db), -h/--help.
Exit codes: 0 ok, 1 run failure, 2 usage or config error.`;

/** Usage of \`run\`. */
export const RUN_USAGE = `Usage: deno task run [config.yaml] [options]

Trains the experiment in config.yaml (default configs/quickstart.yaml); a sweep: block trains every point.

Options:
  --set key.path=value   override a config value (repeatable), typed by the schema: --set model.mlp.experts=8
  --dry-run              print the resolved config(s), parameter counts, FLOPs and memory; train nothing
  --stop-after N         stop after N steps (a checkpoint is written)
  --resume RUN_ID        continue a run from its newest complete checkpoint
  --dashboard-port N     serve the live dashboard on 127.0.0.1:N while training (default 8000; a free port
                         if it is taken; 0 = any free port)
  --no-dashboard         do not serve the dashboard
  --profile              time every kernel of every step on the GPU (timestamp queries) and print each
                         kernel's share of the step; also logs system/gpu_ms_per_step
  --json                 last stdout line is one JSON object
${storeUsage(25, true)}`;

/** Usage of \`bench\`. */
export const BENCH_USAGE = `Usage: deno task bench [options]

Times our WebGPU kernels beside tfjs-webgpu on the same device. Every implementation is first checked
against the float64 reference (a mismatch is an error row and exit code 1), then run once to warm up and
timed over 5 samples; the median is reported. A sample times a queue of p runs (encode + submit each,
one wait for the GPU at the end) and one of 2p, and divides the difference by p, so the fixed ~11 ms
host↔GPU wait cancels out; p (column runs/wait) is doubled per case until the p extra runs take ≥ 25 ms,
and is the same for every implementation of the case.

Options:
  --suite NAME   matmul (GFLOP/s at 256³…2048³ and 4096×256×1024), kernels (softmax, layernorm, gelu,
                 bias add, attention, cross-entropy, embedding, AdamW, sum), moe (MoE-MLP forward, dense
                 vs sparse execution at 10–100% of experts active), decode (batch-1 decoding tokens/s,
                 DS-MoE under top-2 routing vs a dense model of the same total parameters) or train (one
                 dense-training step of a MoE-MLP block: forward, backward, clipping, AdamW; also against
                 jax-js on WebGPU and WebAssembly); repeatable;
                 default all
  --quick        small sizes, 2 samples with p = 2 (for tests)
  --per-sync N   p = N in every case instead of sizing it
  --json         one JSON object per row, then a summary object as the last line`;

/**
 * Help text of every command (README.md "Commands"; the exit codes: docs/design.md §1).
 *
 * @module
 */

import { DEFAULT_MAX_ATTEMPTS, DEFAULT_STALE_SECONDS } from "../train/sweep_worker.ts";
import { storeUsage } from "./store_flag.ts";

/** Top-level usage. */
export const USAGE = `dsmoe — Mixture-of-Experts experiments, trained densely, run sparsely, on WebGPU

Usage: deno task <command> [options]

Commands:
  run [config.yaml] [--set k=v]… [--dry-run] [--stop-after N]   train (default config: configs/quickstart.yaml)
  run <config.yaml> --sweep k=v1,v2[,…]…                         train a grid: one run per combination
  run --resume <run>                                             continue from the newest complete checkpoint
  run <sweep.yaml> --store postgres://… --enqueue                queue a sweep's points for workers
  prepare <config.yaml> [--cache-dir DIR] [--set k=v]…           tokenize the data once into token shards
  worker --store postgres://… [--runs-dir SHARED] [--sweep ID]   train queued points (any number, any machine)
  eval <run-id|ckpt> [--rule threshold --epsilon 0.5 | --rule topk --k 2 | …]… [--batches N]  (routing rules)
  generate <run-id|ckpt> --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] (sampling)
                         [--rule …] (routing rule)
  dashboard [--port 8000] [--host 127.0.0.1] [--token T]         serve the runs dashboard (live charts, API)
  bench [--json] [--suite NAME] [--quick] [--reps N] [--per-sync N]
  repro [--scale micro|small]                                    reproduce the paper's claims; write a report
  study [manifest.yaml] [--scale micro|small]                    the router study: router × rule matrix report
  store check | rebuild [--full]                                 check the run store against the run dirs; rebuild it
  runs [--name GLOB] [--status S] [--sweep ID] [--limit N]       list runs, newest first, with final val loss
  runs show <run> | runs rm <run>… [--yes]                       one run's record and metrics; remove runs
  test                                                           fmt, lint, type check and the test suite

Common options: --json (last stdout line is one JSON object), --runs-dir DIR (default runs/),
  --store URL (run store: postgres://… or a SQLite file; default $DSMOE_STORE, else DIR/runs.db), -h/--help.
A <run> is a run id, a unique id prefix or a run name (eval, generate: its newest finished run; run --resume,
  runs show, runs rm: its newest run).
Exit codes: 0 ok, 1 run failure, 2 usage or config error.`;

/** Usage of \`run\`. */
export const RUN_USAGE = `Usage: deno task run [config.yaml] [options]

Trains the experiment in config.yaml (default configs/quickstart.yaml); a sweep: block trains every point.

Options:
  --set key.path=value   override a config value (repeatable), typed by the schema: --set model.mlp.experts=8
  --sweep key=v1,v2,…    sweep key over the values (each parsed as YAML, as for --set); repeatable: several
                         --sweep flags make a grid of every combination, one run per point, as a sweep:
                         grid block would (added to the config's own sweep:, which may not sweep the key too)
  --dry-run              print the resolved config(s), parameter counts, FLOPs and memory; train nothing
  --stop-after N         stop after N steps (a checkpoint is written); Ctrl-C, SIGTERM and SIGHUP (also
                         sent only to deno task or npx) stop the same way after the current step
  --resume RUN           continue a run (its id, name: the newest run of that name, or a unique id prefix)
                         from its newest intact checkpoint (checked against its config: shapes,
                         finite values, optimizer state); a run that never wrote one starts from step 0.
                         If every checkpoint it lists is damaged, nothing is done (exit 2) and the message
                         names each file; to start over from step 0 as a new run:
                         deno task run <runs-dir>/RUN_ID/config.yaml
  --dashboard-port N     serve the live dashboard on 127.0.0.1:N while training (default 8000; a free port
                         if it is taken; 0 = any free port)
  --no-dashboard         do not serve the dashboard
  --profile              time every kernel of every step on the GPU (timestamp queries) and print each
                         kernel's share of the step, the model FLOPs per step and the MFU (model FLOP/s
                         over the adapter's fp32 peak, docs/performance.md); also logs
                         system/gpu_ms_per_step
  --peak-tflops X        with --profile: the adapter's fp32 peak in TFLOP/s for the MFU (default: the
                         vendor figure of a known adapter; none for others, e.g. llvmpipe)
  --enqueue              put every point of the sweep in the queue of the Postgres store for
                         \`deno task worker\` processes to train, and train nothing here (again: nothing is
                         queued twice, failed points are queued again)
  --json                 last stdout line is one JSON object
${storeUsage(25, true)}`;

/** Usage of \`prepare\`. */
export const PREPARE_USAGE = `Usage: deno task prepare <config.yaml> [options]

Tokenizes the config's data once into binary token shards (uint16, or uint32 for vocabularies over 65,536)
with an index of their SHA-256 hashes, in <cache-dir>/<key>/, keyed by the source (paths, sizes, times; a
corpus's package version), the tokenizer (data.tokenizer, data.vocab_size), the seed and data.val_fraction.
For data.tokenizer bpe it first trains the tokenizer on the training split (cached too). A second prepare
finds the shards, verifies them and does nothing; shards that do not verify are prepared again. \`run\` and
\`eval\` prepare on their own when the shards are missing. Every point of a sweep is prepared.

Options:
  --cache-dir DIR        where shard folders are kept (default <runs-dir>/cache, i.e. runs/cache)
  --set key.path=value   override a config value (repeatable), as for run: --set data.vocab_size=8192
  --json                 last stdout line: {"prepared":[{"point","dir","reused","tokenizer","vocab_size",
                         "train_tokens","val_tokens","train_bytes","val_bytes","seconds","tokens_per_s",
                         "mb_per_s"}]}
  --runs-dir DIR         runs directory (default runs/); the cache is DIR/cache unless --cache-dir is given
  -h, --help             this help`;

/** Usage of \`worker\`. */
export const WORKER_USAGE = `Usage: deno task worker --store postgres://… [options]

Trains sweep points queued with \`deno task run <sweep.yaml> --store postgres://… --enqueue\`, one at a
time, until stopped: claims a point (SELECT … FOR UPDATE SKIP LOCKED), trains it as a run while
heartbeating, marks it finished or failed, claims the next. Start any number, on any machines, against
the same store and the same shared --runs-dir (checkpoints are files there). A point whose worker sent no
heartbeat for --stale-seconds is taken over and continues the same run from its newest checkpoint.
SIGINT or SIGTERM: the point in hand is checkpointed and handed back to the queue, and the worker exits.

Options:
  --sweep ID             only this sweep's points (default: every sweep in the queue)
  --max-points N         exit after claiming N points
  --stale-seconds S      take over a point with no heartbeat for S seconds (default ${DEFAULT_STALE_SECONDS}); heartbeats
                         go every S/4 seconds, at most every 5; use the same S on every worker
  --max-attempts N       a point claimed N times without finishing is marked failed (default ${DEFAULT_MAX_ATTEMPTS});
                         enqueuing the sweep again queues it again
  --exit-when-empty      exit when no point is queued or running; while points run on other workers,
                         wait, to take one over if its worker dies (default: wait for new points)
  --json                 last stdout line is one JSON object
  --store URL            the Postgres store that holds the queue: postgres://user@host:port/db
                         [?schema=NAME] (password in the URL or $PGPASSWORD); default $DSMOE_STORE
  --runs-dir DIR         the runs directory, the same shared one on every worker (default runs/):
                         checkpoints are files there, and a point taken over resumes from them`;

/** Usage of \`store\`. */
export const STORE_USAGE = `Usage: deno task store check|rebuild [options]

check    reads the run store and its runs directory, writes nothing: the store's integrity (SQLite
         quick_check; Postgres: schema version, tables, indexes), then every run in the store against the
         run directories on disk (a record without its directory, a directory without a record) and its
         checkpoint records against ckpt/manifest.json and the files it lists (their sizes). One line per
         problem, naming the run or file. Exit 0 when consistent, 1 otherwise.
rebuild  rebuilds a SQLite store; deletes nothing. Reads what it can of the old store (row by row past
         damaged pages), moves it aside (runs.db.damaged-<UTC time>, with its -wal and -shm), creates a
         new store and re-creates every run from its directory (config.yaml, ckpt/manifest.json, the
         metrics.jsonl journal of its points) and from what was read; prints what it recovered and what
         was lost. Refused while a live process trains into the old store.

Options:
  --full                 check: SQLite's full integrity_check (minutes on a large store) and the SHA-256
                         of every checkpoint file
  --json                 last stdout line is one JSON object
${storeUsage(25)}`;

/** Usage of \`bench\`. */
export const BENCH_USAGE = `Usage: deno task bench [options]

Times our WebGPU kernels beside tfjs-webgpu on the same device. Every implementation is first checked
against the float64 reference (a mismatch is an error row and exit code 1), then run once to warm up and
timed over 5 samples; the median is reported. A sample times a queue of p runs (encode + submit each,
one wait for the GPU at the end) and one of 2p, and divides the difference by p, so the fixed ~11 ms
host↔GPU wait cancels out; p (column runs/wait) is doubled per case until the p extra runs take ≥ 25 ms,
and is the same for every implementation of the case.

Options:
  --suite NAME   matmul (GFLOP/s at 256³…2048³, 4096×256×1024, and 4096³ with --large), kernels
                 (softmax, layernorm, gelu, bias add, attention, cross-entropy, embedding, AdamW, sum), moe
                 (MoE-MLP forward, dense vs sparse execution at 10–100% of experts active), decode (batch-1
                 decoding tokens/s, DS-MoE under top-k routing vs a dense model of the same total
                 parameters), serve (batched decoding: total tokens/s of B = 32 and 64 sequences at
                 different positions, the same two models; ratio DS-MoE/dense tokens/s) or train (one
                 dense-training step of a MoE-MLP block: forward, backward, clipping, AdamW; also against
                 jax-js on WebGPU and WebAssembly); repeatable;
                 default all
  --quick        small sizes, 2 samples with p = 2 (for tests)
  --large        add the 4096³ matmul (the default on real GPUs; minutes on a software adapter)
  --peak-tflops X
                 the adapter's fp32 peak in TFLOP/s: rows show their GFLOP/s as a % of it (default: the
                 vendor figure of a known adapter, docs/performance.md; none for others)
  --reps N       timed samples per row, the median reported (default 5; more for a steadier median on a
                 busy machine)
  --per-sync N   p = N in every case instead of sizing it
  --decode-sizes A,B
                 decode and serve suite sizes: tiny, d512 (the tiny configs' shapes), 125m and 1b (GPT-2 vocabulary,
                 d_model 768 and 2048, DS-MoE top-3/4 attention and top-2/8 MLP experts). Default all, except
                 125m and 1b on a software adapter (llvmpipe), which prints a line naming them; with --quick,
                 one layer of each named shape
  --json         one JSON object per row, then a summary object as the last line (with the adapter, the host's
                 CPU model and threads, and llvmpipe's threads on llvmpipe)`;

/** Usage of \`runs\`. */
export const RUNS_USAGE = `Usage: deno task runs [list | show <run> | rm <run>…] [options]

list   (the default) runs in the store, newest first: id, name, status, step, start (UTC) and the last
       validation loss, perplexity and bits per byte; at most --limit of them
show   one run: its record, run directory, config.yaml, checkpoints and the last value of each metric
rm     removes runs: their rows in the store (record, metrics, events, checkpoint records) and their run
       directories <runs-dir>/<id>/, nothing outside the runs directory. Asks first on a terminal; without
       one (a script, a pipe) it removes nothing unless --yes is given (exit 2). A run that a live process
       trains is refused (exit 2), and then no run is removed.

A <run> is a run id, a run name (here: its newest run, whatever its status; eval and generate take its
newest finished one) or the start of exactly one run's id ("Using run <id>" says which); a prefix of
several ids exits 2 listing them.

Options:
  --name GLOB            list: runs whose name matches (* any characters, ? one): --name 'sweep-mi.*'
  --status S             list: running, finished, failed or interrupted
  --sweep ID             list: the runs of one sweep (its id, or the start of it)
  --limit N              list: at most N runs (default 50)
  -y, --yes              rm: remove without asking
  --json                 last stdout line: list {"store","total","runs":[…]}; show {"run","directory",
                         "config_path","checkpoints","metrics"}; rm {"removed":[{"id","dir","files"}]}
${storeUsage(25)}`;

/**
 * `deno task prepare <config> [--cache-dir DIR] [--set k=v]… [--json]`: tokenizes the data of every point
 * of a config once into token shards (core/data/prepare.ts), with a progress bar on stderr and a summary
 * per point on stdout. Points that share their data (same `data` and `seed`) are prepared once; synthetic
 * sources have nothing to prepare.
 *
 * @module
 */
import { loadExperiment } from "../config/mod.ts";
import type { Experiment } from "../config/schema.ts";
import { defaultCacheDir, formatPrepareSummary, prepareData, type PreparedData } from "../data/prepare.ts";
import { parseCommandArgs } from "./args.ts";
import { EXIT_OK, UsageError } from "./errors.ts";
import type { CliIo } from "./io.ts";
import { dataProgress } from "./progress.ts";
import { PREPARE_USAGE } from "./usage.ts";

/** One point's result, as `--json` lists it. */
export interface PreparedPoint {
  point: string;
  dir: string | null;
  reused: boolean;
  tokenizer: string;
  vocab_size: number | null;
  train_tokens: number;
  val_tokens: number;
  train_bytes: number;
  val_bytes: number;
  seconds: number;
  tokens_per_s: number | null;
  mb_per_s: number | null;
}

/** Runs `prepare`. */
export async function prepareCommand(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parseCommandArgs("prepare", args, {
    set: { type: "string", multiple: true },
    "cache-dir": { type: "string" },
  });
  if (values.help) {
    io.out(PREPARE_USAGE);
    return EXIT_OK;
  }
  if (positionals.length !== 1) {
    throw new UsageError(`prepare takes one config file, got ${positionals.length}`);
  }
  if (values.store !== undefined) throw new UsageError("prepare writes no runs: --store does not apply");
  const file = positionals[0]!;
  const loaded = await loadExperiment(file, { sets: values.set ?? [] });
  const baseDir = file.includes("/") ? file.slice(0, file.lastIndexOf("/")) : ".";
  const cacheDir = values["cache-dir"] ?? defaultCacheDir(values["runs-dir"]);
  const onProgress = dataProgress(io);
  const done = new Map<string, PreparedPoint>();
  const results: PreparedPoint[] = [];
  for (const p of loaded.points) {
    const key = JSON.stringify([p.config.data, p.config.seed]);
    const same = done.get(key);
    if (same) {
      results.push({ ...same, point: p.name, reused: true });
      continue;
    }
    let result: PreparedPoint;
    if (p.config.data.source.startsWith("synthetic:")) {
      io.out(`${p.name}: ${p.config.data.source} is generated in memory at each run: nothing to prepare`);
      result = _synthetic(p.name, p.config);
    } else {
      io.err(`${p.name}: data ${p.config.data.source}, tokenizer ${p.config.data.tokenizer}`);
      const prepared = await prepareData(p.config, {
        baseDir,
        cacheDir,
        onProgress,
        log: (l) => io.err(l),
      });
      for (const line of formatPrepareSummary(prepared)) io.out(line);
      result = _point(p.name, prepared);
    }
    done.set(key, result);
    results.push(result);
  }
  if (values.json) io.out(JSON.stringify({ prepared: results }));
  return EXIT_OK;
}

function _point(name: string, p: PreparedData): PreparedPoint {
  const i = p.index;
  return {
    point: name,
    dir: p.dir,
    reused: p.reused,
    tokenizer: i.tokenizer.spec,
    vocab_size: i.tokenizer.vocab_size,
    train_tokens: i.splits.train.tokens,
    val_tokens: i.splits.val.tokens,
    train_bytes: i.splits.train.text_bytes,
    val_bytes: i.splits.val.text_bytes,
    seconds: p.reused ? 0 : i.prepare.seconds,
    tokens_per_s: p.reused ? null : i.prepare.tokens_per_s,
    mb_per_s: p.reused ? null : i.prepare.bytes_per_s / 1e6,
  };
}

function _synthetic(name: string, c: Readonly<Experiment>): PreparedPoint {
  return {
    point: name,
    dir: null,
    reused: false,
    tokenizer: c.data.tokenizer,
    vocab_size: null,
    train_tokens: 0,
    val_tokens: 0,
    train_bytes: 0,
    val_bytes: 0,
    seconds: 0,
    tokens_per_s: null,
    mb_per_s: null,
  };
}

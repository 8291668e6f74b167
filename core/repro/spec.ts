/**
 * The reproduction manifest (`configs/repro/repro.yaml`): which configs play the dense, SMoE and DS-MoE
 * models and the MI-loss ablation, the inference rules of the sparsity frontier, the rule the paper's claims
 * are checked under, and the `--set` overrides of each scale. Problems are reported as `ConfigError`s at the
 * file, line and column they were written at.
 *
 * @module
 */
import { ConfigError, type ConfigIssue, issueAt } from "../config/errors.ts";
import { isPlainMap, parseYaml, positionOf, type Sourced } from "../config/yaml_source.ts";
import { parseRuleSpec } from "../infer/rule_spec.ts";
import type { InferRules } from "../plan/model.ts";

/** The roles a manifest fills: three models and two ablation points. */
export const MODEL_ROLES = ["dense", "smoe", "dsmoe"] as const;
export const ABLATION_ROLES = ["alpha0", "alpha-3x", "alpha-large"] as const;
/** Ablation roles a manifest may leave out (the MI-weight sweep's middle point). */
export const OPTIONAL_ROLES: readonly Role[] = ["alpha-3x"];
export type Role = (typeof MODEL_ROLES)[number] | (typeof ABLATION_ROLES)[number];

/** A validated manifest. */
export interface ReproSpec {
  file: string;
  /** Config file of each role the manifest names, resolved against the manifest's directory. */
  configs: Partial<Record<Role, string>>;
  /** Evaluate the ablation models under every frontier rule too (else only dense and the claim rule). */
  ablationFrontier: boolean;
  /** Rules of the frontier, as written (`threshold:0.5`) and parsed; "dense" is always first. */
  rules: { spec: string; rules: InferRules }[];
  claimRule: { spec: string; rules: InferRules };
  scales: Record<string, ReproScale>;
}

/** One `--scale`: overrides of every model, validation batches per rule, tokens of the decode comparison. */
export interface ReproScale {
  set: string[];
  evalBatches: number;
  decodeTokens: number;
}

const _KEYS = [
  "models",
  "ablation",
  "ablation_frontier",
  "rules",
  "claim_rule",
  "eval_batches",
  "decode_tokens",
  "scales",
];

/** Reads and validates the manifest at `file`. */
export async function loadReproSpec(file: string): Promise<ReproSpec> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    throw new ConfigError([{
      file,
      line: 1,
      col: 1,
      keyPath: "",
      message: `cannot read: ${(e as Error).message}`,
    }]);
  }
  const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/")) : ".";
  const spec = parseReproSpec(text, file, dir);
  const missing: ConfigIssue[] = [];
  let tree: Sourced | null = null; // positions, read only when a file is missing
  for (const [role, path] of Object.entries(spec.configs) as [Role, string][]) {
    try {
      await Deno.stat(path);
    } catch {
      tree ??= parseYaml(text, file);
      const group = (MODEL_ROLES as readonly string[]).includes(role) ? "models" : "ablation";
      missing.push(
        issueAt(positionOf(tree.src, [group, role], "value"), `${group}.${role}`, `no file ${path}`),
      );
    }
  }
  if (missing.length > 0) throw new ConfigError(missing);
  return spec;
}

/** Validates manifest text; config paths resolve against `dir`. */
export function parseReproSpec(text: string, file: string, dir: string): ReproSpec {
  const tree = parseYaml(text, file);
  const issues: ConfigIssue[] = [];
  const at = (path: (string | number)[], message: string, kind: "key" | "value" = "value") =>
    issues.push(issueAt(positionOf(tree.src, path, kind), path.join("."), message));
  const root = isPlainMap(tree.value) ? tree.value : {};
  if (!isPlainMap(tree.value)) at([], "expected a map of models, ablation, rules, claim_rule, …");
  for (const k of Object.keys(root)) {
    if (!_KEYS.includes(k)) at([k], `unknown key; expected one of ${_KEYS.join(", ")}`, "key");
  }

  const configs: Partial<Record<Role, string>> = {};
  const files = (group: string, roles: readonly Role[]) => {
    const m = root[group];
    if (!isPlainMap(m)) return at([group], `expected a map of ${roles.join(", ")} to config files`);
    for (const k of Object.keys(m)) {
      if (!(roles as readonly string[]).includes(k)) {
        at([group, k], `unknown role; expected ${roles.join(", ")}`, "key");
      }
    }
    for (const r of roles) {
      const v = m[r];
      if (v === undefined && OPTIONAL_ROLES.includes(r)) continue;
      if (typeof v !== "string" || v === "") at([group, r], `expected a config file path`);
      else configs[r] = v.startsWith("/") ? v : `${dir}/${v}`;
    }
  };
  files("models", MODEL_ROLES);
  files("ablation", ABLATION_ROLES);

  const rule = (path: (string | number)[], v: unknown) => {
    if (typeof v !== "string") {
      return void at(path, "expected a rule such as threshold:0.5, topk:2, top_p:0.9, dense");
    }
    try {
      return { spec: v, rules: parseRuleSpec(v) };
    } catch (e) {
      at(path, (e as Error).message);
    }
  };
  const rules: ReproSpec["rules"] = [];
  if (!Array.isArray(root.rules) || root.rules.length === 0) {
    at(["rules"], "expected a non-empty list of rules");
  } else {root.rules.forEach((v, i) => {
      const r = rule(["rules", i], v);
      if (r) rules.push(r);
    });}
  const dense = rule(["rules"], "dense")!;
  const frontier = [dense, ...rules.filter((r) => r.spec !== "dense")];
  const claimRule = rule(["claim_rule"], root.claim_rule) ?? dense;

  const count = (path: string[], v: unknown) => {
    if (!Number.isSafeInteger(v) || (v as number) < 1) {
      at(path, `expected an integer ≥ 1, got ${JSON.stringify(v)}`);
    }
    return Number(v);
  };
  const evalBatches = count(["eval_batches"], root.eval_batches);
  const decodeTokens = count(["decode_tokens"], root.decode_tokens);

  const scales: Record<string, ReproScale> = {};
  if (!isPlainMap(root.scales) || Object.keys(root.scales).length === 0) {
    at(["scales"], "expected a map of scale name to { set: [key=value, …], eval_batches?, decode_tokens? }");
  } else {
    for (const [name, sc] of Object.entries(root.scales)) {
      if (!isPlainMap(sc)) {
        at(["scales", name], "expected { set: [key=value, …], eval_batches?, decode_tokens? }");
        continue;
      }
      for (const k of Object.keys(sc)) {
        if (!["set", "eval_batches", "decode_tokens"].includes(k)) {
          at(["scales", name, k], "unknown key; expected set, eval_batches, decode_tokens", "key");
        }
      }
      const set = sc.set ?? [];
      if (!Array.isArray(set) || set.some((v) => typeof v !== "string" || !v.includes("="))) {
        at(["scales", name, "set"], "expected a list of key=value overrides (as for --set)");
      }
      scales[name] = {
        set: Array.isArray(set) ? set.map(String) : [],
        evalBatches: sc.eval_batches === undefined
          ? evalBatches
          : count(["scales", name, "eval_batches"], sc.eval_batches),
        decodeTokens: sc.decode_tokens === undefined
          ? decodeTokens
          : count(["scales", name, "decode_tokens"], sc.decode_tokens),
      };
    }
  }
  const ablationFrontier = root.ablation_frontier ?? false;
  if (typeof ablationFrontier !== "boolean") at(["ablation_frontier"], "expected true or false");
  if (issues.length > 0) throw new ConfigError(issues);
  return { file, configs, ablationFrontier: ablationFrontier === true, rules: frontier, claimRule, scales };
}

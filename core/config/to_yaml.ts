/**
 * A resolved config back to YAML: the text saved with every run, and the one `--dry-run` prints. It reads
 * back through `loadExperiment` to the same config.
 *
 * @module
 */
import { Document, isScalar, Scalar, visit } from "yaml";
import type { Experiment } from "./schema.ts";

/**
 * Writes a config as YAML 1.2: keys in schema order, short scalar lists in flow style, and strings that
 * YAML 1.1 tools would read as booleans (`no`, `on`, …) quoted.
 *
 * @example
 * ```ts
 * import { experimentToYaml } from "./to_yaml.ts";
 * import { parseExperimentText } from "./load.ts";
 * const { config } = parseExperimentText("name: x\n", "x.yaml");
 * const again = parseExperimentText(experimentToYaml(config), "x.yaml").config;
 * if (JSON.stringify(again) !== JSON.stringify(config)) throw new Error("round trip changed the config");
 * ```
 */
export function experimentToYaml(config: Readonly<Experiment>): string {
  const doc = new Document(_plain(config), { version: "1.2" });
  visit(doc, {
    Seq(_, node) {
      if (node.items.length <= 16 && node.items.every(isScalar)) node.flow = true;
    },
    Scalar(_, node) {
      if (typeof node.value === "string" && /^(y|yes|n|no|on|off)$/i.test(node.value)) {
        node.type = Scalar.QUOTE_DOUBLE;
      }
    },
  });
  return doc.toString({ lineWidth: 0 });
}

/** A mutable deep copy without `undefined` members (optional keys that are not set). */
function _plain(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(_plain);
  if (v === null || typeof v !== "object") return v;
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    if (x !== undefined) {
      Object.defineProperty(out, k, { value: _plain(x), enumerable: true, writable: true });
    }
  }
  return out;
}

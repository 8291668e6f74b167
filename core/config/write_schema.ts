/**
 * The JSON Schema of experiment files, for editor completion and checking
 * (`# yaml-language-server: $schema=./schema.json` at the top of a config). `deno task schema` runs this
 * module to write `configs/schema.json`; a test fails when that file is stale.
 *
 * @module
 */
import { z } from "zod";
import { ExperimentSchema } from "./schema.ts";

/** Where `deno task schema` writes the schema. */
export const SCHEMA_FILE: URL = new URL("../../configs/schema.json", import.meta.url);

/**
 * The JSON Schema of an experiment file as written (input side: every key optional, defaults shown),
 * plus the loader's `extends` key.
 *
 * @example
 * ```ts
 * import { experimentJsonSchema } from "./write_schema.ts";
 * const s = experimentJsonSchema() as { properties: Record<string, unknown> };
 * if (!("extends" in s.properties) || !("model" in s.properties)) throw new Error("bad");
 * ```
 */
export function experimentJsonSchema(): Record<string, unknown> {
  const base = z.toJSONSchema(ExperimentSchema, { io: "input" }) as Record<string, unknown>;
  const properties = (base.properties ?? {}) as Record<string, unknown>;
  return {
    ...base,
    title: "dsmoe experiment",
    description:
      "One experiment (or, with sweep, a family of runs). See README.md (Configuration) and docs/design.md.",
    properties: {
      extends: {
        description: "Base file(s), relative to this file; maps merge, later files and this file win",
        anyOf: [
          { type: "string", minLength: 1 },
          { type: "array", items: { type: "string", minLength: 1 } },
        ],
      },
      ...properties,
    },
  };
}

/** The text of `configs/schema.json`: the schema as indented JSON with a final newline. */
export function experimentJsonSchemaText(): string {
  return `${JSON.stringify(experimentJsonSchema(), null, 2)}\n`;
}

if (import.meta.main) {
  await Deno.writeTextFile(SCHEMA_FILE, experimentJsonSchemaText());
  console.log(`wrote ${SCHEMA_FILE.pathname}`);
}

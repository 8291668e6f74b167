import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { experimentJsonSchema, experimentJsonSchemaText, SCHEMA_FILE } from "./write_schema.ts";

Deno.test("configs/schema.json is up to date with the schema (run `deno task schema`)", async () => {
  const committed = await Deno.readTextFile(SCHEMA_FILE);
  assertEquals(committed, experimentJsonSchemaText(), "configs/schema.json is stale: run `deno task schema`");
});

Deno.test("experimentJsonSchema() describes the input side, with defaults and extends", () => {
  type Props = { properties: Record<string, Props & { default?: unknown; anyOf?: unknown[] }> };
  const s = experimentJsonSchema() as unknown as Props & { additionalProperties: boolean };
  assertEquals(s.additionalProperties, false);
  assertEquals(s.properties.extends?.anyOf?.length, 2);
  assertEquals(s.properties.model?.properties.mlp?.properties.experts?.default, 8);
  assert(Object.keys(s.properties).includes("sweep"));
});

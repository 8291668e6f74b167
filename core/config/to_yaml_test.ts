import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { experimentToYaml, loadExperiment, parseExperimentText } from "./mod.ts";

Deno.test("experimentToYaml() round-trips every config and sweep point in configs/", async () => {
  for await (const entry of Deno.readDir("configs")) {
    if (!entry.name.endsWith(".yaml")) continue;
    const loaded = await loadExperiment(`configs/${entry.name}`);
    const again = parseExperimentText(experimentToYaml(loaded.config), "again.yaml");
    assertEquals(again.config, loaded.config, entry.name);
    assertEquals(again.points.map((p) => [p.name, p.params]), loaded.points.map((p) => [p.name, p.params]));
    assertEquals(again.sweepId, loaded.sweepId);
    for (const p of loaded.points) {
      assertEquals(parseExperimentText(experimentToYaml(p.config), "p.yaml").config, p.config, p.name);
    }
  }
});

Deno.test("experimentToYaml() writes schema order, flow lists and quotes YAML 1.1 boolean words", () => {
  const { config } = parseExperimentText("description: 'no'\nname: q\n", "q.yaml");
  const yaml = experimentToYaml(config);
  assert(yaml.startsWith('name: q\ndescription: "no"\nseed: 1\n'), yaml);
  assert(yaml.includes("    betas: [ 0.9, 0.95 ]\n"), yaml);
  assert(!yaml.includes("kv_heads"), "unset optional keys are left out");
  assertEquals(parseExperimentText(yaml, "q.yaml").config.description, "no");
});

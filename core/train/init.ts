/**
 * Seeded parameter initialization, identical on every backend: normal(0, std) for matrices and embeddings,
 * ones for norm gains, zeros for biases. Each parameter draws from its own stream (seed, name), so adding a
 * parameter does not change the others.
 *
 * @module
 */
import { hash32, Rng } from "../util/rng.ts";
import type { ParamSpec } from "../plan/model.ts";

/** Initial values of every parameter, by name. */
export function initParams(specs: readonly ParamSpec[], seed: number): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const p of specs) {
    const n = p.value.shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    switch (p.init) {
      case "ones":
        data.fill(1);
        break;
      case "zeros":
        break;
      case "normal": {
        const rng = new Rng(hash32(seed, ..._nameCodes(p.value.name)));
        for (let i = 0; i < n; i++) data[i] = rng.normal() * p.std;
        break;
      }
      default:
        p.init satisfies never;
    }
    out.set(p.value.name, data);
  }
  return out;
}

function _nameCodes(name: string): number[] {
  return Array.from(name, (ch) => ch.charCodeAt(0));
}

/**
 * `synthetic:multidomain`: a generated corpus that mixes clearly different kinds of text — arithmetic,
 * code, prose and structured records — so that expert specialization is observable (each byte carries
 * the id of the domain that produced it). Deterministic in (seed, size).
 *
 * @module
 */
import { Rng } from "../util/rng.ts";

/** Domain names, indexed by the ids in {@linkcode SyntheticCorpus.domains}. */
export const DOMAINS = ["arithmetic", "code", "prose", "records"] as const;

/** A generated corpus: bytes and, per byte, the domain that produced it. */
export interface SyntheticCorpus {
  bytes: Uint8Array; // (n,)
  domains: Uint8Array; // (n,) index into DOMAINS
}

const _NOUNS = [
  "cat",
  "river",
  "engine",
  "garden",
  "teacher",
  "storm",
  "letter",
  "market",
  "island",
  "signal",
];
const _VERBS = ["finds", "carries", "watches", "builds", "follows", "opens", "breaks", "remembers"];
const _ADJS = ["quiet", "old", "bright", "heavy", "strange", "small", "distant", "warm"];
const _NAMES = ["ana", "bo", "chen", "dara", "eli", "fay", "gus", "hana", "ivo", "jun"];
const _CITIES = ["oslo", "lima", "pune", "kyiv", "doha", "nice", "cork", "bern"];
const _IDENTS = ["x", "y", "n", "acc", "total", "item", "idx", "value"];

/** Generates `size` bytes of mixed-domain text from `seed`. */
export function generateMultidomain(seed: number, size: number): SyntheticCorpus {
  const rng = new Rng(seed);
  const bytes = new Uint8Array(size), domains = new Uint8Array(size);
  const enc = new TextEncoder();
  let pos = 0;
  while (pos < size) {
    const d = rng.int(DOMAINS.length);
    const doc = enc.encode(_GENERATORS[d]!(rng));
    const n = Math.min(doc.length, size - pos);
    bytes.set(doc.subarray(0, n), pos);
    domains.fill(d, pos, pos + n);
    pos += n;
  }
  return { bytes, domains };
}

const _GENERATORS: ((rng: Rng) => string)[] = [_arithmetic, _code, _prose, _records];

function _arithmetic(rng: Rng): string {
  const lines: string[] = [];
  for (let i = 0, n = 2 + rng.int(4); i < n; i++) {
    const a = rng.int(1000), b = rng.int(1000);
    switch (rng.int(3)) {
      case 0:
        lines.push(`${a}+${b}=${a + b}`);
        break;
      case 1:
        lines.push(`${a}-${b}=${a - b}`);
        break;
      default:
        lines.push(`${a % 100}*${b % 100}=${(a % 100) * (b % 100)}`);
    }
  }
  return lines.join("\n") + "\n\n";
}

function _code(rng: Rng): string {
  const f = `f${rng.int(100)}`, v = rng.pick(_IDENTS), k = 1 + rng.int(9);
  const body = rng.int(2) === 0
    ? `    for i in range(${v}):\n        ${v} = ${v} * ${k} + i\n    return ${v}\n`
    : `    if ${v} > ${k}:\n        return ${v} - ${k}\n    return ${v} + ${k}\n`;
  return `def ${f}(${v}):\n${body}\n`;
}

function _prose(rng: Rng): string {
  const sentences: string[] = [];
  for (let i = 0, n = 1 + rng.int(3); i < n; i++) {
    const s = `the ${rng.pick(_ADJS)} ${rng.pick(_NOUNS)} ${rng.pick(_VERBS)} a ${rng.pick(_ADJS)} ${
      rng.pick(_NOUNS)
    }`;
    sentences.push(s[0]!.toUpperCase() + s.slice(1) + ".");
  }
  return sentences.join(" ") + "\n\n";
}

function _records(rng: Rng): string {
  const rows: string[] = [];
  for (let i = 0, n = 1 + rng.int(3); i < n; i++) {
    rows.push(
      `{"id": ${rng.int(10000)}, "name": "${rng.pick(_NAMES)}", "city": "${rng.pick(_CITIES)}", ` +
        `"age": ${18 + rng.int(60)}}`,
    );
  }
  return rows.join("\n") + "\n\n";
}

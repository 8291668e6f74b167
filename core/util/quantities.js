/**
 * The one formatting module of dsmoe: every number, timestamp, sweep parameter and run colour that a
 * dashboard page, a terminal table or a report shows is written by a function here — in the browser (the
 * dashboard serves this file as /static/format.js), on the server (pages.ts) and in the terminal and the
 * reports (core/cli, core/train, core/infer, core/repro), so a quantity reads the same everywhere.
 *
 * The formats, one per quantity:
 *
 * | quantity                          | format                                   | example            |
 * | --------------------------------- | ---------------------------------------- | ------------------ |
 * | loss (train, val, MI, eval)        | 4 decimals                               | `2.3026`           |
 * | perplexity                         | 2 decimals                               | `10.02`            |
 * | bits per byte                      | 4 decimals                               | `1.1932`           |
 * | parameters, tokens, other counts   | 3 significant digits with K/M/G/T        | `1.23M`, `512`     |
 * | step                               | the integer as it is                     | `12000`            |
 * | percentage (active params, load)   | 1 decimal and `%`                        | `42.0%`            |
 * | relative change (ppl vs dense)     | sign, 2 decimals and `%`                 | `+1.25%`, `-0.40%` |
 * | learning rate, MI weight, tiny     | 2 significant decimals in exponent form  | `3.0e-3`           |
 * | anything else                      | 4 significant digits (K/M/G when ≥ 1e4)  | `0.1235`, `12.5K`  |
 * | timestamp                          | `<time datetime=ISO title="ISO UTC">`, shown in the viewer's local time by {@linkcode localTime} |
 * | sweep parameters                   | `key=value` pairs (strings bare, numbers as above)                           |
 *
 * A missing value is an em dash. A run's colour is {@linkcode runColor}: a stable hash of its id into
 * {@linkcode PALETTE}, the same on the runs table, a run's charts, overlays, the sweep page and frontiers.
 *
 * Pure functions only (no DOM, no imports), so Deno imports this file as it is. In the terminal a timestamp is
 * {@linkcode utcText}.
 *
 * @module
 */

/** What every format shows for a missing value. */
export const NONE = "—";

/** @param {unknown} v */
function _missing(v) {
  return v === null || v === undefined || typeof v !== "number" || Number.isNaN(v);
}

/**
 * A loss: 4 decimals.
 * @param {number | null | undefined} v
 * @returns {string}
 */
export function fmtLoss(v) {
  return _missing(v) ? NONE : Number(v).toFixed(4);
}

/**
 * A perplexity: 2 decimals.
 * @param {number | null | undefined} v
 * @returns {string}
 */
export function fmtPpl(v) {
  return _missing(v) ? NONE : Number(v).toFixed(2);
}

/**
 * Bits per byte: 4 decimals.
 * @param {number | null | undefined} v
 * @returns {string}
 */
export function fmtBpb(v) {
  return _missing(v) ? NONE : Number(v).toFixed(4);
}

/**
 * A percentage already in percent (42 → "42.0%"): 1 decimal.
 * @param {number | null | undefined} v
 * @returns {string}
 */
export function fmtPct(v) {
  return _missing(v) ? NONE : `${Number(v).toFixed(1)}%`;
}

/**
 * A relative change already in percent, signed (1.25 → "+1.25%", -0.4 → "-0.40%"): 2 decimals.
 * @param {number | null | undefined} v
 * @returns {string}
 */
export function fmtChange(v) {
  if (_missing(v)) return NONE;
  const n = Number(v);
  return `${n >= 0 ? "+" : "-"}${Math.abs(n).toFixed(2)}%`;
}

/**
 * A share in [0, 1] as a percentage (0.125 → "12.5%").
 * @param {number | null | undefined} v
 * @returns {string}
 */
export function fmtShare(v) {
  return _missing(v) ? NONE : fmtPct(Number(v) * 100);
}

/**
 * A count (parameters, tokens): 3 significant digits with K/M/G/T from 10,000 up; smaller integers as they are.
 * @param {number | null | undefined} v
 * @returns {string}
 */
export function fmtCount(v) {
  if (_missing(v)) return NONE;
  const n = Number(v), a = Math.abs(n);
  if (a >= 1e12) return `${Number((n / 1e12).toPrecision(3))}T`;
  if (a >= 1e9) return `${Number((n / 1e9).toPrecision(3))}G`;
  if (a >= 1e6) return `${Number((n / 1e6).toPrecision(3))}M`;
  if (a >= 1e4) return `${Number((n / 1e3).toPrecision(3))}K`;
  return Number.isInteger(n) ? String(n) : String(Number(n.toPrecision(3)));
}

/**
 * A step: the integer as it is.
 * @param {number | null | undefined} v
 * @returns {string}
 */
export function fmtStep(v) {
  return _missing(v) ? NONE : String(Math.round(Number(v)));
}

/**
 * A small rate (learning rate, loss weight): exponent form with 2 significant digits below 0.01 ("3.0e-3"),
 * else 4 significant digits; 0 is "0".
 * @param {number | null | undefined} v
 * @returns {string}
 */
export function fmtRate(v) {
  if (_missing(v)) return NONE;
  const n = Number(v);
  if (n === 0) return "0";
  return Math.abs(n) < 0.01 ? n.toExponential(1) : String(Number(n.toPrecision(4)));
}

/**
 * Any other number: 4 significant digits, K/M/G from 10,000 up, exponent form below 0.001.
 * @param {number | null | undefined} v
 * @returns {string}
 */
export function fmtNum(v) {
  if (_missing(v)) return NONE;
  const n = Number(v), a = Math.abs(n);
  if (a >= 1e4) return fmtCount(n);
  if (Number.isInteger(n)) return String(n);
  if (a !== 0 && a < 1e-3) return n.toExponential(2);
  return String(Number(n.toPrecision(4)));
}

/**
 * A metric value by its key: `…/loss` and `…loss/…` as a loss, `…/ppl` as a perplexity, `…/bpb` in bits per
 * byte, `…_pct` as a percentage, `…/lr` as a rate, `…tokens…` and `…params…` as counts, else {@linkcode fmtNum}.
 * @param {string} key
 * @param {number | null | undefined} v
 * @returns {string}
 */
export function fmtMetric(key, v) {
  const last = key.split("/").at(-1) ?? key;
  if (last === "ppl") return fmtPpl(v);
  if (last === "bpb") return fmtBpb(v);
  if (last === "loss" || key.includes("loss/")) return fmtLoss(v);
  if (last.endsWith("_pct")) return fmtPct(v);
  if (last === "lr") return fmtRate(v);
  if (last.includes("params") || last === "tokens") return fmtCount(v);
  return fmtNum(v);
}

/**
 * A sweep or config value: a number as {@linkcode fmtParamNumber}, a string bare, anything else as compact
 * JSON.
 * @param {unknown} v
 * @returns {string}
 */
export function fmtValue(v) {
  if (v === null || v === undefined) return NONE;
  if (typeof v === "number") return fmtParamNumber(v);
  if (typeof v === "string") return v;
  if (typeof v === "boolean") return String(v);
  return JSON.stringify(v) ?? String(v);
}

/**
 * A hyperparameter number: integers as they are, small magnitudes as a rate, else 4 significant digits.
 * @param {number} v
 * @returns {string}
 */
export function fmtParamNumber(v) {
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) < 0.01 ? fmtRate(v) : String(Number(v.toPrecision(4)));
}

/**
 * Sweep parameters as `key=value` pairs in key order ("loss.mi.mlp=1.0e-3 model.kind=dsmoe").
 * @param {Record<string, unknown> | null | undefined} params
 * @returns {string[]}
 */
export function paramPairs(params) {
  if (!params || typeof params !== "object") return [];
  return Object.keys(params).sort().map((k) => `${k}=${fmtValue(params[k])}`);
}

/**
 * An ISO timestamp as the server writes it before the browser localises it: "2026-11-25 10:00 UTC".
 * @param {string | null | undefined} iso
 * @returns {string}
 */
export function utcText(iso) {
  if (!iso) return NONE;
  return `${String(iso).replace("T", " ").slice(0, 16)} UTC`;
}

/**
 * An ISO timestamp in the viewer's time zone, "2026-11-25 11:00" (what `<time>` elements show in a browser);
 * `tz` for tests. An unparsable one is returned as it is.
 * @param {string} iso
 * @param {string} [tz]
 * @returns {string}
 */
export function localTime(iso, tz) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const parts = Object.fromEntries(
    new Intl.DateTimeFormat("en-CA", {
      timeZone: tz,
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      hourCycle: "h23",
    }).formatToParts(d).map((p) => [p.type, p.value]),
  );
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}`;
}

/**
 * Run colours: distinct on white, in the order Tableau's 20-colour palette pairs them (dark ones first).
 */
export const PALETTE = [
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#ff7f0e",
  "#9467bd",
  "#17becf",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
  "#393b79",
  "#637939",
  "#8c6d31",
  "#843c39",
  "#7b4173",
  "#3182bd",
];

/**
 * FNV-1a (32 bit) of a string's UTF-16 code units, then MurmurHash3's finalizer, so that the low bits (the
 * palette index) depend on every bit of every character.
 * @param {string} s
 * @returns {number}
 */
export function hash32(s) {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * The colour of a run, from its id alone: the same on every page.
 * @param {string} id
 * @returns {string}
 */
export function runColor(id) {
  return PALETTE[hash32(String(id)) % PALETTE.length] ?? PALETTE[0];
}

/**
 * Colours of runs shown together: each its {@linkcode runColor}, except that a run whose colour an earlier
 * one of the list already has takes the next palette colour no other holds (so overlaid lines differ).
 * @param {readonly string[]} ids
 * @returns {string[]}
 */
export function runColors(ids) {
  const used = new Set();
  return ids.map((id) => {
    let i = PALETTE.indexOf(runColor(id));
    for (let n = 0; n < PALETTE.length && used.has(PALETTE[i]); n++) i = (i + 1) % PALETTE.length;
    const c = PALETTE[i] ?? PALETTE[0];
    used.add(c);
    return c;
  });
}

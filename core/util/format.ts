/**
 * Human-readable sizes, durations and plain-text tables for terminal output; the formats of the quantities
 * (loss, perplexity, bits per byte, percentages, counts, rates) are core/util/quantities.js's.
 *
 * @module
 */

/** Counts as everywhere in dsmoe: 1234567 → "1.23M" (core/util/quantities.js). */
export { fmtCount } from "./quantities.js";

/** 1536 → "1.50 KiB". */
export function fmtBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n, i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) v /= 1024, i++;
  return i === 0 ? `${v} B` : `${v.toFixed(2)} ${units[i]}`;
}

/** Seconds → "1h02m", "3m05s", "12.3s". */
export function fmtDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
  if (m < 60) return `${m}m${String(s).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

/** Column alignment of {@linkcode table}. */
export type Align = "left" | "right";

/**
 * Renders rows as an aligned text table with a header rule.
 *
 * @example
 * ```ts
 * import { table } from "./format.ts";
 * const t = table(["a", "b"], [["x", "1"]], ["left", "right"]);
 * if (!t.includes("x")) throw new Error("missing row");
 * ```
 */
export function table(
  header: readonly string[],
  rows: readonly (readonly string[])[],
  align?: readonly Align[],
): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]) =>
    cells.map((c, i) => (align?.[i] === "right" ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join("  ")
      .trimEnd();
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n");
}

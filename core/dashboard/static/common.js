/**
 * Helpers shared by the dashboard's page scripts: page data, JSON fetches, DOM building, smoothing,
 * sortable and filterable tables, local times and run colour swatches. Every number format is format.js's
 * (re-exported here).
 *
 * @module
 */

import { fmtNum, localTime, PALETTE } from "./format.js";

export * from "./format.js";

/** Distinct line colours where colour tells metrics apart, not runs (runs take `runColor`). */
export const COLORS = PALETTE;

/** The page's JSON data block. */
export function pageData() {
  const node = document.getElementById("data");
  return node ? JSON.parse(node.textContent ?? "{}") : {};
}

/** GETs JSON; a non-2xx answer throws its `error` message. */
export async function getJson(url) {
  const res = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error ?? `${res.status} ${res.statusText}`);
  return body;
}

/** Builds an element: `el("td", { class: "num" }, "1.5")`. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = String(v);
    else if (k === "text") node.textContent = String(v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const ch of children) node.append(ch instanceof Node ? ch : document.createTextNode(String(ch ?? "")));
  return node;
}

/** A number for people (axis ticks, values of no named quantity): format.js's `fmtNum`. */
export const fmt = fmtNum;

/** Seconds → "12.5s", "3m05s", "1h02m". */
export function fmtDuration(s) {
  if (s === null || s === undefined) return "—";
  if (s < 60) return `${Number(s.toFixed(1))}s`;
  const m = Math.floor(s / 60), sec = Math.round(s % 60);
  if (m < 60) return `${m}m${String(sec).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

/** An x value on the chosen axis. */
export function fmtX(v, axis) {
  if (v === null || v === undefined) return "—";
  return axis === "time" ? fmtDuration(v) : fmt(v);
}

/** "12.3 MiB". */
export function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n, i = 0;
  while (v >= 1024 && i < units.length - 1) (v /= 1024, i++);
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

/**
 * Exponential moving average with bias correction (the first points are not pulled toward 0); `alpha` 0
 * returns the values; nulls stay null.
 */
export function ema(values, alpha) {
  if (!(alpha > 0)) return values;
  let s = 0, n = 0;
  return values.map((v) => {
    if (v === null || v === undefined) return null;
    s = alpha * s + (1 - alpha) * v;
    n++;
    return s / (1 - alpha ** n);
  });
}

/** Calls `fn` at most once per `ms`, on the trailing edge. */
export function throttle(fn, ms) {
  let timer = null;
  return () => {
    if (timer !== null) return;
    timer = setTimeout(() => {
      timer = null;
      fn();
    }, ms);
  };
}

/** A timestamp element: the ISO in `datetime` and (as UTC) in the title, the viewer's local time as text. */
export function timeEl(iso) {
  if (!iso) return "—";
  return el("time", { datetime: iso, title: `${iso} (UTC)` }, localTime(iso));
}

/** Shows every `<time datetime>` under `root` in the viewer's local time (the server writes UTC). */
export function localizeTimes(root = document) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const iso = t.getAttribute("datetime");
    if (!Number.isNaN(Date.parse(iso))) t.textContent = localTime(iso);
  }
}

/**
 * Colours every `.swatch[data-color]` under `root` (the CSP allows no inline style attribute; a style set
 * from a script is allowed).
 */
export function paintSwatches(root = document) {
  for (const s of root.querySelectorAll(".swatch[data-color]")) {
    const c = s.dataset.color;
    if (/^#[0-9a-f]{6}$/i.test(c)) s.style.backgroundColor = c;
  }
}

/** A colour swatch element. */
export function swatch(color) {
  const s = el("span", { class: "swatch", "data-color": color });
  s.style.backgroundColor = color;
  return s;
}

/** A status badge. */
export function statusBadge(status) {
  return el("span", { class: `status status-${status}` }, status);
}

/** A table of `rows` (arrays of cells: text, numbers or nodes) under `headers`. */
export function table(headers, rows, cls = "list") {
  const head = el("tr", {}, ...headers.map((h) => el("th", {}, h)));
  const body = rows.map((r) =>
    el(
      "tr",
      {},
      ...r.map((c) =>
        typeof c === "number"
          ? el("td", { class: "num" }, fmt(c))
          : el("td", {}, c instanceof Node ? c : c ?? "—")
      ),
    )
  );
  return el("table", { class: cls }, el("thead", {}, head), el("tbody", {}, ...body));
}

/** Makes the `th.sortable` headers of `tableEl` sort its rows by their cells' `data-v` on click. */
export function sortableTable(tableEl) {
  const heads = [...tableEl.querySelectorAll("thead th")];
  heads.forEach((th, col) => {
    if (!th.classList.contains("sortable")) return;
    th.addEventListener("click", () => {
      const dir = th.dataset.dir === "asc" ? "desc" : "asc";
      for (const h of heads) delete h.dataset.dir;
      th.dataset.dir = dir;
      const body = tableEl.tBodies[0];
      const rows = [...body.rows];
      const key = (r) => r.cells[col]?.dataset.v ?? "";
      rows.sort((a, b) => {
        const x = key(a), y = key(b);
        if (x === "" || y === "") return x === y ? 0 : x === "" ? 1 : -1; // blanks last
        const nx = Number(x), ny = Number(y);
        const c = Number.isFinite(nx) && Number.isFinite(ny) ? nx - ny : x.localeCompare(y);
        return dir === "asc" ? c : -c;
      });
      body.append(...rows);
    });
  });
}

/** Shows only the rows of `tableEl` whose text contains every word typed in `input`. */
export function filterableTable(tableEl, input) {
  input.addEventListener("input", () => {
    const words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    for (const row of tableEl.tBodies[0].rows) {
      const text = row.textContent.toLowerCase();
      row.hidden = !words.every((w) => text.includes(w));
    }
  });
}

/**
 * The runs table: click a header to sort (again to reverse), type to filter, group the runs by any config
 * key (a header row per group with its count and best validation loss; click it to fold the group), show or
 * hide columns (remembered in localStorage), tick runs to compare them. While a run is running its status,
 * step and metrics refresh every few seconds from /api/runs.
 *
 * @module
 */
import {
  fmtBpb,
  fmtLoss,
  fmtPpl,
  fmtStep,
  fmtValue,
  getJson,
  localizeTimes,
  NONE,
  pageData,
  paintSwatches,
  statusBadge,
} from "./common.js";

const STORE_KEY = "dsmoe.runs.view"; // localStorage: { hidden: [col], sort: {col, dir}, group }
const REFRESH_MS = 3000;

const data = pageData();
const configs = data.configs ?? {};
const runsTable = document.getElementById("runs");
const compare = document.getElementById("compare");
const groupSelect = document.getElementById("group-by");
const picker = document.getElementById("column-picker");
const filterInput = document.getElementById("filter");

/** The view's state, from localStorage when it holds one. */
const view = { hidden: [], sort: null, group: "", filter: "" };
try {
  const saved = JSON.parse(localStorage.getItem(STORE_KEY) ?? "{}");
  if (Array.isArray(saved.hidden)) view.hidden = saved.hidden.filter((c) => typeof c === "string");
  if (saved.sort && typeof saved.sort.col === "string") view.sort = saved.sort;
  if (typeof saved.group === "string") view.group = saved.group;
} catch {
  // A damaged or unavailable localStorage: the default view.
}
const folded = new Set();

function save() {
  try {
    localStorage.setItem(
      STORE_KEY,
      JSON.stringify({ hidden: view.hidden, sort: view.sort, group: view.group }),
    );
  } catch {
    // Private mode or full: the view is not remembered.
  }
}

function picked() {
  return [...document.querySelectorAll("input.pick:checked")].map((c) => c.value);
}

/** The data rows in server order (newest first). */
const rows = runsTable ? [...runsTable.tBodies[0].rows] : [];
rows.forEach((r, i) => (r.dataset.order = String(i)));

function cellOf(row, col) {
  return row.querySelector(`td[data-col="${CSS.escape(col)}"]`);
}

function setCell(row, col, value, text) {
  const cell = cellOf(row, col);
  if (!cell) return;
  cell.dataset.v = value === null || value === undefined ? "" : String(value);
  if (text instanceof Node) cell.replaceChildren(text);
  else cell.textContent = text;
}

/** Compares two sort keys (`data-v`): numbers as numbers, blanks last whatever the direction. */
function compareKeys(x, y, dir) {
  if (x === "" || y === "") return x === y ? 0 : x === "" ? 1 : -1;
  const nx = Number(x), ny = Number(y);
  const c = Number.isFinite(nx) && Number.isFinite(ny) ? nx - ny : x.localeCompare(y);
  return dir === "asc" ? c : -c;
}

/** The value a run is grouped under. */
function groupValue(row) {
  const key = view.group;
  if (key === ":status" || key === ":sweep") return cellOf(row, key.slice(1))?.dataset.v || null;
  const v = configs[row.dataset.id]?.[key];
  return v === undefined ? null : v;
}

function matches(row, words) {
  const text = row.textContent.toLowerCase();
  return words.every((w) => text.includes(w));
}

function visibleColumnCount() {
  return [...runsTable.tHead.rows[0].cells].filter((th) => !th.hidden).length;
}

/** A group's header row: `key=value`, how many runs, and the best validation loss among them. */
function groupRow(label, members) {
  const bests = members
    .map((r) => ({ r, v: Number(cellOf(r, "best_val_loss")?.dataset.v) }))
    .filter((b) => cellOf(b.r, "best_val_loss")?.dataset.v !== "" && Number.isFinite(b.v))
    .sort((a, b) => a.v - b.v);
  const best = bests[0];
  const tr = document.createElement("tr");
  tr.className = "group-row";
  tr.dataset.group = label;
  const td = document.createElement("td");
  td.colSpan = visibleColumnCount();
  const toggle = document.createElement("button");
  toggle.type = "button";
  toggle.className = "group-toggle";
  toggle.textContent = folded.has(label) ? "▸" : "▾";
  toggle.setAttribute("aria-label", `fold ${label}`);
  const name = document.createElement("code");
  name.textContent = label;
  const count = document.createElement("span");
  count.className = "group-count";
  count.textContent = `${members.length} run${members.length === 1 ? "" : "s"}`;
  const bestText = document.createElement("span");
  bestText.className = "group-best";
  bestText.textContent = best
    ? `best val loss ${fmtLoss(best.v)} (${best.r.querySelector("td[data-col=name] a")?.textContent ?? ""})`
    : `best val loss ${NONE}`;
  td.append(toggle, " ", name, " · ", count, " · ", bestText);
  tr.append(td);
  tr.addEventListener("click", () => {
    if (folded.has(label)) folded.delete(label);
    else folded.add(label);
    render();
  });
  return tr;
}

/** Lays the table out from `view`: hidden columns, order, groups, filter. */
function render() {
  const hidden = new Set(view.hidden);
  for (const cell of runsTable.querySelectorAll("th[data-col], td[data-col]")) {
    cell.hidden = hidden.has(cell.dataset.col);
  }
  for (const th of runsTable.tHead.rows[0].cells) {
    if (view.sort && th.dataset.col === view.sort.col) th.dataset.dir = view.sort.dir;
    else delete th.dataset.dir;
  }
  const ordered = [...rows];
  if (view.sort) {
    const { col, dir } = view.sort;
    ordered.sort((a, b) =>
      compareKeys(cellOf(a, col)?.dataset.v ?? "", cellOf(b, col)?.dataset.v ?? "", dir) ||
      Number(a.dataset.order) - Number(b.dataset.order)
    );
  }
  const words = view.filter.toLowerCase().split(/\s+/).filter(Boolean);
  const shown = new Set(ordered.filter((r) => matches(r, words)));
  for (const r of ordered) r.hidden = !shown.has(r);
  const body = runsTable.tBodies[0];
  for (const g of [...body.querySelectorAll("tr.group-row")]) g.remove();
  if (!view.group) {
    body.append(...ordered);
    return;
  }
  const groups = new Map();
  for (const r of ordered) {
    const v = groupValue(r);
    const label = `${view.group.replace(/^:/, "")}=${fmtValue(v)}`;
    if (!groups.has(label)) groups.set(label, { v, members: [], all: [] });
    groups.get(label).all.push(r);
    if (shown.has(r)) groups.get(label).members.push(r);
  }
  const sortedGroups = [...groups.entries()].sort(([, a], [, b]) =>
    compareKeys(a.v === null ? "" : String(a.v), b.v === null ? "" : String(b.v), "asc")
  );
  for (const [label, g] of sortedGroups) {
    const head = groupRow(label, g.members);
    head.hidden = g.members.length === 0;
    body.append(head, ...g.all);
    if (folded.has(label)) { for (const r of g.all) r.hidden = true; }
  }
}

/** The picker's checkboxes follow `view.hidden`; toggling one hides or shows its column. */
function bindPicker() {
  for (const box of picker.querySelectorAll("input[data-col]")) {
    box.checked = !view.hidden.includes(box.dataset.col);
    box.addEventListener("change", () => {
      const col = box.dataset.col;
      view.hidden = view.hidden.filter((c) => c !== col);
      if (!box.checked) view.hidden.push(col);
      save();
      render();
    });
  }
}

function bindSorting() {
  for (const th of runsTable.tHead.rows[0].cells) {
    if (!th.classList.contains("sortable")) continue;
    th.addEventListener("click", () => {
      const col = th.dataset.col;
      const dir = view.sort?.col === col && view.sort.dir === "asc" ? "desc" : "asc";
      view.sort = { col, dir };
      save();
      render();
    });
  }
}

/** Refreshes the live columns from /api/runs; returns whether any run is still running. */
async function refresh() {
  const { runs } = await getJson("/api/runs");
  const byId = new Map(runs.map((r) => [r.id, r]));
  for (const row of rows) {
    const r = byId.get(row.dataset.id);
    if (!r) continue;
    const step = Math.max(r.step, r.last_train_step ?? 0);
    setCell(row, "status", r.status, statusBadge(r.status));
    setCell(row, "step", step, fmtStep(step));
    setCell(row, "train_loss", r.last_train_loss, fmtLoss(r.last_train_loss));
    const best = r.best_val_loss === null
      ? NONE
      : `${fmtLoss(r.best_val_loss)} @${fmtStep(r.best_val_loss_step)}`;
    setCell(row, "best_val_loss", r.best_val_loss, best);
    setCell(row, "val_ppl", r.last_val_ppl, fmtPpl(r.last_val_ppl));
    setCell(row, "val_bpb", r.last_val_bpb, fmtBpb(r.last_val_bpb));
  }
  if (runs.length !== rows.length) location.reload(); // a new run appeared
  render();
  return runs.some((r) => r.status === "running");
}

if (runsTable) {
  localizeTimes();
  paintSwatches();
  if ([...groupSelect.options].some((o) => o.value === view.group)) groupSelect.value = view.group;
  else view.group = "";
  bindPicker();
  bindSorting();
  groupSelect.addEventListener("change", () => {
    view.group = groupSelect.value;
    folded.clear();
    save();
    render();
  });
  filterInput.addEventListener("input", () => {
    view.filter = filterInput.value;
    render();
  });
  runsTable.addEventListener("change", () => {
    const n = picked().length;
    compare.disabled = n < 1;
    compare.textContent = n > 1 ? `Compare ${n} runs` : "Compare selected";
  });
  compare.addEventListener("click", () => {
    location.href = `/compare?ids=${encodeURIComponent(picked().join(","))}`;
  });
  render();
  document.body.dataset.ready = "1";
  if (data.running) {
    const tick = async () => {
      const again = await refresh().catch(() => true);
      if (again) setTimeout(tick, REFRESH_MS);
    };
    setTimeout(tick, REFRESH_MS);
  }
}

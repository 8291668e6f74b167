/**
 * The runs table: click a header to sort, type to filter, tick runs to compare them; while a run is
 * running its status, step and metrics refresh every few seconds.
 *
 * @module
 */
import { filterableTable, fmt, getJson, pageData, sortableTable, statusBadge } from "./common.js";

const runsTable = document.getElementById("runs");
const compare = document.getElementById("compare");

function picked() {
  return [...document.querySelectorAll("input.pick:checked")].map((c) => c.value);
}

function columnIndex(name) {
  return [...runsTable.tHead.rows[0].cells].findIndex((th) => th.dataset.col === name);
}

function setCell(row, col, value, text) {
  const cell = row.cells[columnIndex(col)];
  if (!cell) return;
  cell.dataset.v = value === null || value === undefined ? "" : String(value);
  if (text instanceof Node) cell.replaceChildren(text);
  else cell.textContent = text;
}

/** Refreshes the live columns from /api/runs; returns whether any run is still running. */
async function refresh() {
  const { runs } = await getJson("/api/runs");
  const byId = new Map(runs.map((r) => [r.id, r]));
  for (const row of runsTable.tBodies[0].rows) {
    const r = byId.get(row.dataset.id);
    if (!r) continue;
    setCell(row, "status", r.status, statusBadge(r.status));
    setCell(row, "step", r.step, fmt(r.step));
    setCell(row, "train_loss", r.last_train_loss, fmt(r.last_train_loss));
    const best = r.best_val_loss === null ? "—" : `${fmt(r.best_val_loss)} @${r.best_val_loss_step}`;
    setCell(row, "best_val_loss", r.best_val_loss, best);
    setCell(row, "val_ppl", r.last_val_ppl, fmt(r.last_val_ppl));
    setCell(row, "val_bpb", r.last_val_bpb, fmt(r.last_val_bpb));
  }
  if (runs.length !== runsTable.tBodies[0].rows.length) location.reload(); // a new run appeared
  return runs.some((r) => r.status === "running");
}

if (runsTable) {
  sortableTable(runsTable);
  filterableTable(runsTable, document.getElementById("filter"));
  runsTable.addEventListener("change", () => {
    const n = picked().length;
    compare.disabled = n < 1;
    compare.textContent = n > 1 ? `Compare ${n} runs` : "Compare selected";
  });
  compare.addEventListener("click", () => {
    location.href = `/compare?ids=${encodeURIComponent(picked().join(","))}`;
  });
  if (pageData().running) {
    const tick = async () => {
      const again = await refresh().catch(() => true);
      if (again) setTimeout(tick, 5000);
    };
    setTimeout(tick, 5000);
  }
}

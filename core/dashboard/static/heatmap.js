/**
 * Expert-load heatmaps on a canvas: one per router layer, rows = experts, columns = evaluated steps,
 * colour = the expert's load, the share of validation tokens whose most probable expert it is (a
 * viridis-like scale shared by all layers of a kind, so they compare). Hovering a cell shows its value.
 *
 * @module
 */
import { el, fmtNum, fmtShare } from "./common.js";

const _STOPS = [
  [68, 1, 84],
  [59, 82, 139],
  [33, 145, 140],
  [94, 201, 98],
  [253, 231, 37],
];

/** The colour of `t` in [0, 1]. */
function _color(t) {
  const x = Math.min(1, Math.max(0, t)) * (_STOPS.length - 1);
  const i = Math.min(_STOPS.length - 2, Math.floor(x)), f = x - i;
  const [a, b] = [_STOPS[i], _STOPS[i + 1]];
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(",")})`;
}

function _canvas(width, height) {
  const dpr = globalThis.devicePixelRatio || 1;
  const c = el("canvas", { width: Math.round(width * dpr), height: Math.round(height * dpr) });
  c.style.width = `${width}px`;
  c.style.height = `${height}px`;
  const ctx = c.getContext("2d");
  ctx.scale(dpr, dpr);
  return { c, ctx };
}

/** The colour bar from 0 to `vmax`. */
function _legend(vmax, experts) {
  const { c, ctx } = _canvas(200, 12);
  for (let x = 0; x < 200; x++) {
    ctx.fillStyle = _color(x / 199);
    ctx.fillRect(x, 0, 1, 12);
  }
  const uniform = experts > 0 ? ` · uniform load 1/${experts} = ${fmtShare(1 / experts)}` : "";
  return el("div", { class: "heat-legend" }, "0% ", c, ` ${fmtShare(vmax)}`, uniform);
}

/** Draws one kind's heatmaps (`hm`: { kind, steps, layers: [{ layer, experts, values, entropy }] }). */
export function drawHeatmaps(container, hm, title) {
  container.replaceChildren();
  if (hm.layers.length === 0 || hm.steps.length === 0) return false;
  let vmax = 0;
  for (const l of hm.layers) {
    for (const row of l.values) for (const v of row) if (v !== null) vmax = Math.max(vmax, v);
  }
  vmax = vmax || 1;
  const maxExperts = Math.max(...hm.layers.map((l) => l.experts));
  const tip = el("div", { class: "tip", hidden: true });
  container.append(el("h3", {}, title), _legend(vmax, maxExperts), tip);
  const grid = el("div", { class: "heat-grid" });
  container.append(grid);
  const width = Math.max(
    240,
    Math.min(container.clientWidth - 24, 1400) / Math.min(2, hm.layers.length) - 24,
  );
  for (const l of hm.layers) grid.append(_layer(l, hm.steps, vmax, width, tip));
  return true;
}

function _layer(l, steps, vmax, width, tip) {
  const rowH = Math.max(8, Math.min(22, Math.floor(160 / Math.max(1, l.experts))));
  const left = 28, bottom = 16, height = l.experts * rowH + bottom;
  const { c, ctx } = _canvas(width, height);
  const cols = steps.length, cw = (width - left) / cols;
  ctx.font = "10px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  for (let e = 0; e < l.experts; e++) {
    ctx.fillStyle = "#555";
    if (rowH >= 10 || e % 2 === 0) ctx.fillText(String(e), 4, e * rowH + rowH / 2);
    l.values[e].forEach((v, j) => {
      ctx.fillStyle = v === null ? "#f3f3f3" : _color(v / vmax);
      ctx.fillRect(left + j * cw, e * rowH, Math.ceil(cw), rowH - (rowH > 10 ? 1 : 0));
    });
  }
  ctx.fillStyle = "#555";
  ctx.textBaseline = "top";
  ctx.fillText(`step ${steps[0]}`, left, l.experts * rowH + 3);
  const end = `step ${steps[cols - 1]}`;
  ctx.fillText(end, width - ctx.measureText(end).width - 2, l.experts * rowH + 3);
  c.addEventListener("mousemove", (ev) => {
    const r = c.getBoundingClientRect();
    const j = Math.floor((ev.clientX - r.left - left) / cw), e = Math.floor((ev.clientY - r.top) / rowH);
    if (j < 0 || j >= cols || e < 0 || e >= l.experts) return (tip.hidden = true);
    const ent = l.entropy[j];
    tip.textContent = `layer ${l.layer} · expert ${e} · step ${steps[j]}: load ${fmtShare(l.values[e][j])}` +
      (ent === null ? "" : ` · router entropy ${fmtNum(ent)}`);
    tip.hidden = false;
    tip.style.left = `${ev.clientX + 12}px`;
    tip.style.top = `${ev.clientY + 12}px`;
  });
  c.addEventListener("mouseleave", () => (tip.hidden = true));
  return el(
    "figure",
    { class: "heat" },
    el("figcaption", {}, `layer ${l.layer} · y: expert (0–${l.experts - 1}) · x: step`),
    c,
  );
}

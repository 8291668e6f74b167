/**
 * The dashboard's static files: its own browser scripts and styles (`core/dashboard/static/`) and uPlot
 * from `node_modules` (installed by `deno install`). Served by name from a fixed table, so no part of a
 * request path ever reaches the filesystem.
 *
 * @module
 */
import type { Hono } from "hono";
import { HTTPException } from "hono/http-exception";

const _JS = "text/javascript; charset=utf-8";
const _CSS = "text/css; charset=utf-8";

interface _File {
  url: URL;
  type: string;
  npm: boolean; // installed by `deno install`, not part of the repository
}

function _own(name: string, type: string): _File {
  return { url: new URL(`./static/${name}`, import.meta.url), type, npm: false };
}

function _uplot(file: string, type: string): _File {
  return { url: new URL(`../../node_modules/uplot/dist/${file}`, import.meta.url), type, npm: true };
}

const _FILES: ReadonlyMap<string, _File> = new Map([
  ["uplot.js", _uplot("uPlot.iife.min.js", _JS)],
  ["uplot.css", _uplot("uPlot.min.css", _CSS)],
  ["dashboard.css", _own("dashboard.css", _CSS)],
  ["common.js", _own("common.js", _JS)],
  // The one module of quantity formats, shared with the terminal output and reports (core/util/quantities.js).
  ["format.js", { url: new URL("../util/quantities.js", import.meta.url), type: _JS, npm: false }],
  ["scatter.js", _own("scatter.js", _JS)],
  ["charts.js", _own("charts.js", _JS)],
  ["heatmap.js", _own("heatmap.js", _JS)],
  ["frontier.js", _own("frontier.js", _JS)],
  ["metrics_view.js", _own("metrics_view.js", _JS)],
  ["runs.js", _own("runs.js", _JS)],
  ["run.js", _own("run.js", _JS)],
  ["sweep.js", _own("sweep.js", _JS)],
]);

/** Adds GET /static/:name to `app`. */
export function registerStatic(app: Hono): void {
  app.get("/static/:name", async (c) => {
    const name = c.req.param("name");
    const f = _FILES.get(name);
    if (!f) throw new HTTPException(404, { message: `No static file "${name.slice(0, 100)}"` });
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(f.url);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      const hint = f.npm ? ": uPlot is not installed; run `deno install` in the project root" : "";
      throw new HTTPException(500, { message: `Cannot serve /static/${name}${hint}` });
    }
    return c.body(bytes.buffer as ArrayBuffer, 200, { "Content-Type": f.type, "Cache-Control": "no-cache" });
  });
}

/**
 * HTML for the dashboard's pages (pages.ts) and stored reports (report_html.ts), escaped by construction:
 * {@linkcode markup} is Hono's `html` tagged template (`hono/html`), which escapes every interpolated string
 * (`& < > " '`, so it is safe in text and in quoted attributes) unless it is markup that the template itself
 * built. Nothing calls an escape function by hand, and the one place that marks text as markup without
 * escaping it is {@linkcode jsonScript}, whose JSON cannot end its `<script>` element.
 *
 * The tag is not called `html` because `deno fmt` formats templates tagged `html` as HTML: it would re-indent
 * the pages and put spaces between adjacent interpolations, changing what they render.
 *
 * @module
 */
import { html as honoHtml, raw } from "hono/html";
import type { HtmlEscapedString } from "hono/utils/html";

/** Markup built by {@linkcode markup}: interpolated into another template, it is kept as it is. */
export type Html = HtmlEscapedString;

/**
 * What a template interpolates: text (escaped), a number, markup built by {@linkcode markup} (kept),
 * nothing (`null`, `undefined`, `false` and `true` render as nothing, for `cond && markup…`), or a list of
 * these (concatenated).
 */
export type HtmlValue = string | number | boolean | null | undefined | Html | readonly HtmlValue[];

/**
 * Builds markup: the literal parts as written, each interpolated value escaped unless it is {@linkcode Html}.
 *
 * @example
 * ```ts
 * import { markup } from "./html.ts";
 * const name = `<img src=x onerror="alert(1)">`;
 * console.log(String(markup`<td title="${name}">${name}</td>`));
 * // <td title="&lt;img src=x onerror=&quot;alert(1)&quot;&gt;">&lt;img src=x onerror=&quot;alert(1)&quot;&gt;</td>
 * ```
 */
export function markup(strings: TemplateStringsArray, ...values: HtmlValue[]): Html {
  const out = honoHtml(strings, ...values);
  // Hono's template is asynchronous only when a value is a Promise, which HtmlValue rules out.
  if (out instanceof Promise) throw new TypeError("markup: an interpolated value was a Promise");
  return out;
}

/** `items` one after another with `sep` (text, escaped) between them: markup's `join`. */
export function joinHtml(items: readonly HtmlValue[], sep = ""): Html {
  return markup`${items.flatMap((item, i) => (i === 0 ? [item] : [sep, item]))}`;
}

/**
 * JSON that cannot end or break out of the `<script>` element it is in, nor be read as markup: `<`, `>`,
 * `&`, U+2028 and U+2029 are written as `\uXXXX` escapes (which appear only inside JSON strings, so
 * `JSON.parse` reads the same value back).
 *
 * @example
 * ```ts
 * import { safeJson } from "./html.ts";
 * console.log(safeJson({ name: "</script><b>&" })); // {"name":"\u003c/script\u003e\u003cb\u003e\u0026"}
 * ```
 */
export function safeJson(data: unknown): string {
  return (JSON.stringify(data) ?? "null").replace(
    /[<>&\u2028\u2029]/g,
    (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

/**
 * A `<script type="application/json">` data block (never executed: a page's script reads and parses it).
 * Its text is {@linkcode safeJson}, so it is inserted as it is: entities are not decoded inside `<script>`.
 */
export function jsonScript(id: string, data: unknown): Html {
  return markup`<script type="application/json" id="${id}">${raw(safeJson(data))}</script>`;
}

/**
 * A stored report's Markdown as HTML for the sweep page. The Markdown is the subset our reports are written
 * in (headings, paragraphs, pipe tables, `code`, **bold**). It is built with {@linkcode markup}: the text of
 * a report is only ever interpolated (so escaped), and the markup around it is written literally here, so no
 * text of a report can inject HTML.
 *
 * @module
 */
import { type Html, type HtmlValue, joinHtml, markup } from "./html.ts";

/**
 * Renders report Markdown.
 *
 * @example
 * ```ts
 * import { reportHtml } from "./report_html.ts";
 * console.log(String(reportHtml("## Claims\n\n| a | b |\n| --- | ---: |\n| **yes** | `x<y` |")));
 * ```
 */
export function reportHtml(markdown: string): Html {
  const out: Html[] = [];
  const lines = markdown.split("\n");
  for (let i = 0; i < lines.length;) {
    const line = lines[i]!;
    const h = /^(#{1,3}) (.*)$/s.exec(line); // s: a heading may hold U+2028 or a CR
    if (h) {
      // The page has its own h1: report headings start at h2.
      const level = Math.min(h[1]!.length + 1, 4);
      out.push(markup`<h${level}>${_inline(h[2]!)}</h${level}>`);
      i++;
    } else if (line.startsWith("|")) {
      const block: string[] = [];
      while (i < lines.length && lines[i]!.startsWith("|")) block.push(lines[i++]!);
      out.push(_table(block));
    } else if (line.trim() === "") {
      i++;
    } else {
      // A paragraph takes its first line whatever it starts with (a `#` that is no heading, such as `####`,
      // would otherwise be taken by nothing and never passed), then lines up to a blank, heading or table.
      const para = [lines[i++]!];
      while (i < lines.length && lines[i]!.trim() !== "" && !/^(#|\|)/.test(lines[i]!)) {
        para.push(lines[i++]!);
      }
      out.push(markup`<p>${_inline(para.join(" "))}</p>`);
    }
  }
  return joinHtml(out, "\n");
}

function _cells(row: string): string[] {
  return row.replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
}

function _table(block: string[]): Html {
  const [head, rule, ...rows] = block;
  const right = _cells(rule ?? "").map((c) => c.endsWith(":"));
  const cell = (c: string, j: number, th: boolean) => {
    const cls = right[j] && markup` class="num"`;
    return th ? markup`<th${cls}>${_inline(c)}</th>` : markup`<td${cls}>${_inline(c)}</td>`;
  };
  const headCells = _cells(head ?? "").map((c, j) => cell(c, j, true));
  const bodyRows = rows.map((r) => markup`<tr>${_cells(r).map((c, j) => cell(c, j, false))}</tr>`);
  return markup`<table class="report"><thead><tr>${headCells}</tr></thead><tbody>${bodyRows}</tbody></table>`;
}

/**
 * `code` and **bold** spans of `text`. Their delimiters are found in the text itself and replaced by tags
 * written here; the text between them is interpolated, so escaped. Bold is matched over the whole text, code
 * spans included (its `[^*]+` crosses backticks), as when it was applied to the text after the code markup.
 */
function _inline(text: string): Html {
  const marks: [at: number, length: number, tag: Html][] = [];
  for (const m of text.matchAll(/`[^`]+`/g)) {
    marks.push([m.index, 1, markup`<code>`], [m.index + m[0].length - 1, 1, markup`</code>`]);
  }
  for (const m of text.matchAll(/\*\*[^*]+\*\*/g)) {
    marks.push([m.index, 2, markup`<strong>`], [m.index + m[0].length - 2, 2, markup`</strong>`]);
  }
  marks.sort((a, b) => a[0] - b[0]);
  const parts: HtmlValue[] = [];
  let at = 0;
  for (const [i, length, tag] of marks) {
    parts.push(text.slice(at, i), tag);
    at = i + length;
  }
  parts.push(text.slice(at));
  return markup`${parts}`;
}

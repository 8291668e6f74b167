/**
 * A stored report's Markdown as HTML for the sweep page. The Markdown is the subset our reports are written
 * in (headings, paragraphs, pipe tables, `code`, **bold**); everything is escaped before that markup is
 * applied, so no text of a report can inject HTML.
 *
 * @module
 */
import { esc } from "./esc.ts";

/**
 * Renders report Markdown.
 *
 * @example
 * ```ts
 * import { reportHtml } from "./report_html.ts";
 * console.log(reportHtml("## Claims\n\n| a | b |\n| --- | ---: |\n| **yes** | `x<y` |"));
 * ```
 */
export function reportHtml(markdown: string): string {
  const out: string[] = [];
  const lines = markdown.split("\n");
  for (let i = 0; i < lines.length;) {
    const line = lines[i]!;
    const h = /^(#{1,3}) (.*)$/.exec(line);
    if (h) {
      // The page has its own h1: report headings start at h2.
      const level = Math.min(h[1]!.length + 1, 4);
      out.push(`<h${level}>${_inline(h[2]!)}</h${level}>`);
      i++;
    } else if (line.startsWith("|")) {
      const block: string[] = [];
      while (i < lines.length && lines[i]!.startsWith("|")) block.push(lines[i++]!);
      out.push(_table(block));
    } else if (line.trim() === "") {
      i++;
    } else {
      const para: string[] = [];
      while (i < lines.length && lines[i]!.trim() !== "" && !/^(#|\|)/.test(lines[i]!)) {
        para.push(lines[i++]!);
      }
      out.push(`<p>${_inline(para.join(" "))}</p>`);
    }
  }
  return out.join("\n");
}

function _cells(row: string): string[] {
  return row.replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
}

function _table(block: string[]): string {
  const [head, rule, ...rows] = block;
  const right = _cells(rule ?? "").map((c) => c.endsWith(":"));
  const cell = (tag: string, c: string, j: number) =>
    `<${tag}${right[j] ? ' class="num"' : ""}>${_inline(c)}</${tag}>`;
  return `<table class="report"><thead><tr>${
    _cells(head ?? "").map((c, j) => cell("th", c, j)).join("")
  }</tr>` +
    `</thead><tbody>${
      rows.map((r) => `<tr>${_cells(r).map((c, j) => cell("td", c, j)).join("")}</tr>`).join("")
    }` +
    "</tbody></table>";
}

function _inline(text: string): string {
  return esc(text)
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>");
}

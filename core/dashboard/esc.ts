/**
 * HTML escaping for the dashboard's pages (pages.ts) and stored reports (report_html.ts).
 *
 * @module
 */

/** Escapes text for HTML content and quoted attributes. */
export function esc(s: unknown): string {
  return String(s ?? "").replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

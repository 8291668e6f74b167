/**
 * `postgres://` run store URLs and connection errors: URLs checked before any connection, both shown without
 * the password.
 *
 * @module
 */

/** A checked Postgres store URL. */
export interface PostgresUrl {
  connect: string; // what the client connects with (password kept, dsmoe's own `schema` parameter removed)
  schema: string; // the Postgres schema that holds the store's tables
  display: string; // the URL without its password: safe to print
  password: string; // to scrub from error messages
}

/** The schema of a store whose URL names none. */
export const DEFAULT_PG_SCHEMA = "dsmoe";

const _SCHEMA_RE = /^[a-z_][a-z0-9_]{0,62}$/;

/** Whether `text` names a Postgres store (`postgres://` or `postgresql://`). */
export function isPostgresUrl(text: string): boolean {
  return /^postgres(ql)?:\/\//i.test(text);
}

/**
 * Checks a store URL `postgres://user[:password]@host[:port]/database[?schema=NAME&sslmode=…]`. Throws a
 * TypeError that never repeats the password.
 *
 * @example
 * ```ts
 * import { parsePostgresUrl } from "./postgres_url.ts";
 * const u = parsePostgresUrl("postgres://me:secret@db.lab:5432/runs?schema=team_a");
 * console.log(u.display, u.schema); // "postgres://me@db.lab:5432/runs?schema=team_a" "team_a"
 * ```
 */
export function parsePostgresUrl(text: string): PostgresUrl {
  if (!isPostgresUrl(text)) throw new TypeError(`Not a Postgres URL: expected postgres://…`);
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    // The text may hold a password: do not repeat it.
    throw new TypeError(
      "Invalid Postgres URL: expected postgres://user:password@host:port/database (percent-encode " +
        "special characters in the user and password)",
    );
  }
  const password = _decode(url.password);
  const safe = new URL(url.href);
  safe.password = "";
  const display = safe.href;
  if (url.searchParams.has("search_path")) {
    throw new TypeError(
      `Invalid Postgres URL ${display}: name the schema with ?schema=NAME, not search_path`,
    );
  }
  const schema = url.searchParams.get("schema") ?? DEFAULT_PG_SCHEMA;
  if (!_SCHEMA_RE.test(schema)) {
    throw new TypeError(
      `Invalid Postgres URL ${display}: schema "${schema}" must be 1 to 63 of a-z, 0-9 and _, not starting ` +
        "with a digit",
    );
  }
  if (url.pathname.length > 1 && url.pathname.slice(1).includes("/")) {
    throw new TypeError(`Invalid Postgres URL ${display}: the path must be one database name`);
  }
  url.searchParams.delete("schema");
  return { connect: url.href, schema, display, password };
}

/** `message` with every occurrence of `password` (raw or percent-encoded) replaced by `***`. */
export function scrubPassword(message: string, password: string): string {
  if (password === "") return message;
  return message.split(password).join("***").split(encodeURIComponent(password)).join("***");
}

function _decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** A one-line reason for a failed connection or query, without the password. */
export function describePostgresError(e: unknown, u: Pick<PostgresUrl, "password">): string {
  const err = e as { code?: string; message?: string; address?: string; port?: number };
  const where = err.address ? ` ${err.address}:${err.port}` : "";
  let why: string;
  switch (err.code) {
    case "ECONNREFUSED":
      why = `connection refused by${where} (is the server running, and on this port?)`;
      break;
    case "ENOTFOUND":
    case "EAI_AGAIN":
      why = `unknown host (${err.message ?? err.code})`;
      break;
    case "CONNECT_TIMEOUT":
      why = "no answer from the server (connect timeout)";
      break;
    default:
      why = err.message ?? String(e);
      if (err.code && /^[0-9A-Z]{5}$/.test(err.code)) why += ` (SQLSTATE ${err.code})`;
  }
  return scrubPassword(why, u.password);
}

/** Errors that come from the server or the connection, not from this module's checks. */
export function isPostgresFailure(e: unknown): boolean {
  if ((e as Error | null)?.name === "PostgresError") return true;
  const code = (e as { code?: unknown })?.code;
  return typeof code === "string" && /^(E[A-Z]+|CONNECT_TIMEOUT|CONNECTION_\w+|UNDEFINED_VALUE)$/.test(code);
}

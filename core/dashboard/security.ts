/**
 * The dashboard's defences: a Host allowlist (a page on another site that rebinds its DNS name to 127.0.0.1
 * still sends its own Host), security headers on every response (a CSP without inline scripts), bearer-token
 * checks compared in constant time, strict run ids, and request bodies read under a byte limit before they
 * are parsed.
 *
 * @module
 */
import type { MiddlewareHandler } from "hono";
import { HTTPException } from "hono/http-exception";

/** Default request body limit: 1 MiB. */
export const DEFAULT_BODY_LIMIT = 1024 * 1024;

/** The Content-Security-Policy of every response: only this origin's scripts, styles and connections. */
export const CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
  "form-action 'self'",
].join("; ");

const _ID = /^[A-Za-z0-9._-]{1,128}$/;
const _LOOPBACK = new Set(["localhost", "127.0.0.1", "[::1]"]);

/** Whether `id` is a valid run or sweep id: 1–128 of `A-Za-z0-9._-`, never `..`. */
export function isValidId(id: string): boolean {
  return _ID.test(id) && !id.includes("..");
}

/** `id` if valid, else an HTTP 400 naming it. */
export function checkId(what: string, id: string): string {
  if (!isValidId(id)) {
    throw new HTTPException(400, {
      message: `Invalid ${what} id "${id.slice(0, 140)}": expected 1–128 of A-Z a-z 0-9 . _ - (no "..")`,
    });
  }
  return id;
}

/** The hosts a server bound to `hostname:port` answers to by default. */
export function defaultAllowedHosts(hostname: string, port: number): string[] {
  const names = new Set(["127.0.0.1", "localhost", "[::1]"]);
  if (hostname !== "0.0.0.0" && hostname !== "::") {
    names.add(hostname.includes(":") ? `[${hostname}]` : hostname);
  }
  return [...names].map((h) => `${h}:${port}`);
}

/** The headers every response carries, errors (also those of the connection guard) included. */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  "Content-Security-Policy": CSP,
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "no-referrer",
  "X-Frame-Options": "DENY",
  "Cross-Origin-Opener-Policy": "same-origin",
};

/** Sets the security headers on every response, errors included. */
export function securityHeaders(): MiddlewareHandler {
  return async function securityHeaders(c, next) {
    await next();
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) c.res.headers.set(name, value);
  };
}

/**
 * Refuses (403) requests whose Host is not in `allowed` (`host:port`, case-insensitive). Without a list,
 * only loopback names (any port) are accepted.
 */
export function hostGuard(allowed?: readonly string[]): MiddlewareHandler {
  const set = allowed ? new Set(allowed.map((h) => h.toLowerCase())) : null;
  return async function hostGuard(c, next) {
    const host = (c.req.header("host") ?? new URL(c.req.url).host).toLowerCase();
    const ok = set ? set.has(host) : _LOOPBACK.has(host.replace(/:\d+$/, ""));
    if (!ok) throw new HTTPException(403, { message: `Host "${host.slice(0, 200)}" is not allowed` });
    await next();
  };
}

/**
 * Checks `Authorization: Bearer <token>` against `token`: missing → 401, wrong → 403, and no token
 * configured → 403 (writes are off).
 */
export function bearerGuard(token: string | undefined): MiddlewareHandler {
  return async function bearerGuard(c, next) {
    if (!token) {
      throw new HTTPException(403, {
        message: "Writes are disabled: the dashboard was started without a token (--token or DSMOE_TOKEN)",
      });
    }
    const m = /^Bearer\s+(\S+)\s*$/i.exec(c.req.header("authorization") ?? "");
    if (!m) {
      throw new HTTPException(401, { message: "Missing bearer token: send Authorization: Bearer <token>" });
    }
    if (!await tokensEqual(m[1]!, token)) throw new HTTPException(403, { message: "Wrong bearer token" });
    await next();
  };
}

/** Compares two secrets in time independent of where they differ (and of their lengths: both are hashed). */
export async function tokensEqual(a: string, b: string): Promise<boolean> {
  const enc = new TextEncoder();
  const [ha, hb] = await Promise.all([
    crypto.subtle.digest("SHA-256", enc.encode(a)),
    crypto.subtle.digest("SHA-256", enc.encode(b)),
  ]);
  const x = new Uint8Array(ha), y = new Uint8Array(hb);
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= x[i]! ^ y[i]!;
  return diff === 0;
}

/**
 * Reads a JSON request body of at most `limit` bytes: a larger Content-Length is refused (413) before
 * anything is read, and the bytes actually streamed are counted too (a body without Content-Length, or one
 * that lies). Malformed UTF-8 or JSON → 400.
 */
export async function readJsonBody(req: Request, limit: number): Promise<unknown> {
  const tooLarge = () =>
    new HTTPException(413, { message: `Request body exceeds the limit of ${limit} bytes` });
  const declared = req.headers.get("content-length");
  if (declared !== null) {
    if (!/^\d+$/.test(declared.trim())) {
      throw new HTTPException(400, { message: `Invalid Content-Length "${declared.slice(0, 40)}"` });
    }
    if (Number(declared) > limit) throw tooLarge();
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (req.body) {
    const reader = req.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > limit) {
        await reader.cancel().catch(() => {});
        throw tooLarge();
      }
      chunks.push(value);
    }
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const ch of chunks) (bytes.set(ch, at), at += ch.byteLength);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new HTTPException(400, { message: "Invalid request body: not UTF-8" });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new HTTPException(400, { message: `Invalid JSON body: ${(e as Error).message}` });
  }
}

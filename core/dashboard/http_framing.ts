/**
 * HTTP/1.1 message framing for the connection guard (`guard.ts`): where each request head ends, how long its
 * body is, and when each response is complete. This is not an HTTP parser: the server behind the guard
 * (hyper, inside `Deno.serve`) parses every request and writes every response; the guard forwards bytes
 * unchanged and only needs to know where messages start and end, to time request heads and bodies, and to
 * tell a connection with a request in flight from an idle one.
 *
 * Requests are framed strictly, so that the guard and the server can never disagree about where a message
 * ends: a head must end with CRLF CRLF and use CRLF line ends; a body is given by one Content-Length (equal
 * duplicates allowed); `Transfer-Encoding` (chunked request bodies) is refused with 411; a head over the byte
 * or header-count limit is refused with 431; a body over the byte limit with 413. Responses come from hyper:
 * status line and headers, then a body by Content-Length, chunked, or until close (RFC 9112 §6.3).
 *
 * @module
 */

/** Limits of {@linkcode RequestFramer}. */
export interface RequestLimits {
  maxHeadBytes: number; // the request line and headers, CRLF CRLF included
  maxHeaders: number; // header lines
  maxBodyBytes: number; // Content-Length
}

/** A complete request head, as the guard forwards it. */
export interface RequestHead {
  bytes: Uint8Array; // the head as received (leading empty lines dropped)
  method: string;
  contentLength: number;
}

/** What a chunk of client bytes holds, in order. */
export type RequestEvent =
  | { kind: "head"; head: RequestHead }
  | { kind: "body"; bytes: Uint8Array } // a view into the chunk pushed: use it before the next push
  | { kind: "refuse"; status: number; message: string };

const _CR = 13, _LF = 10;
const _latin1 = new TextDecoder("latin1");
const _TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/; // RFC 9110 §5.6.2: methods and header names

/**
 * The index just past the first CRLF CRLF of `buf` at or after `from`, or -1.
 *
 * @example
 * ```ts
 * import { headEnd } from "./http_framing.ts";
 * console.log(headEnd(new TextEncoder().encode("GET / HTTP/1.1\r\n\r\nrest"))); // 18
 * ```
 */
export function headEnd(buf: Uint8Array, from = 0): number {
  for (let i = Math.max(0, from); i + 3 < buf.length; i++) {
    if (buf[i + 3] !== _LF) continue; // the last byte of the four first: most positions fail here
    if (buf[i] === _CR && buf[i + 1] === _LF && buf[i + 2] === _CR) return i + 4;
  }
  return -1;
}

/** `a` followed by `b`, as one array. */
function _concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b.slice();
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Whether `head` has a LF not preceded by CR at or after `from` (a bare LF line end, read differently by parsers). */
function _hasBareLf(head: Uint8Array, from = 0): boolean {
  for (let i = from; i < head.length; i++) {
    if (head[i] === _LF && (i === 0 || head[i - 1] !== _CR)) return true;
  }
  return false;
}

/**
 * Reads a complete request head (request line and headers, ending CRLF CRLF): its method and body length,
 * or why the guard refuses it (status and message).
 *
 * @example
 * ```ts
 * import { parseRequestHead } from "./http_framing.ts";
 * const head = new TextEncoder().encode("POST /api/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n");
 * const r = parseRequestHead(head, 100);
 * console.log("method" in r ? [r.method, r.contentLength] : r.status); // ["POST", 12]
 * ```
 */
export function parseRequestHead(
  head: Uint8Array,
  maxHeaders: number,
): { method: string; contentLength: number } | { status: number; message: string } {
  if (_hasBareLf(head)) {
    return { status: 400, message: "Bad request: a line of the head ends in LF without CR" };
  }
  const lines = _latin1.decode(head.subarray(0, head.length - 4)).split("\r\n");
  const [method, target, version, extra] = lines[0]!.split(" ");
  if (!method || !_TOKEN.test(method) || !target || !version || extra !== undefined) {
    return { status: 400, message: "Bad request: malformed request line" };
  }
  if (version !== "HTTP/1.1" && version !== "HTTP/1.0") {
    return { status: 505, message: `HTTP version not supported: ${version.slice(0, 20)} (use HTTP/1.1)` };
  }
  if (lines.length - 1 > maxHeaders) {
    return { status: 431, message: `Request has more than ${maxHeaders} header lines` };
  }
  let length: string | null = null;
  for (const line of lines.slice(1)) {
    if (line.startsWith(" ") || line.startsWith("\t")) {
      return { status: 400, message: "Bad request: folded header line" };
    }
    const colon = line.indexOf(":");
    const name = line.slice(0, colon).toLowerCase(), value = line.slice(colon + 1).trim();
    if (colon < 1 || !_TOKEN.test(name)) {
      return { status: 400, message: "Bad request: malformed header line" };
    }
    if (name === "transfer-encoding") {
      return {
        status: 411,
        message: "Length required: send request bodies with Content-Length, not chunked",
      };
    }
    if (name !== "content-length") continue;
    if (!/^\d{1,15}$/.test(value) || (length !== null && value !== length)) {
      return { status: 400, message: `Bad request: invalid Content-Length "${value.slice(0, 40)}"` };
    }
    length = value;
  }
  return { method, contentLength: length === null ? 0 : Number(length) };
}

/**
 * Splits the bytes a client sends into request heads (each complete, to be forwarded whole) and body bytes,
 * or a refusal. Feed it chunks in order with {@linkcode push}.
 *
 * @example
 * ```ts
 * import { RequestFramer } from "./http_framing.ts";
 * const f = new RequestFramer({ maxHeadBytes: 32768, maxHeaders: 100, maxBodyBytes: 1 << 20 });
 * const enc = new TextEncoder();
 * console.log(f.push(enc.encode("GET / HTTP/1.1\r\nHost: x")).length, f.partialHead); // 0 true
 * console.log(f.push(enc.encode("\r\n\r\n")).map((e) => e.kind)); // ["head"]
 * ```
 */
export class RequestFramer {
  readonly #limits: RequestLimits;
  #head: Uint8Array = new Uint8Array(0); // bytes of the current head so far
  #bodyLeft = 0; // bytes of the current body still to come
  #refused = false;

  constructor(limits: RequestLimits) {
    this.#limits = limits;
  }

  /** Whether bytes of a head that is not complete yet are held. */
  get partialHead(): boolean {
    return this.#head.length > 0;
  }

  /** Whether a body is being received. */
  get inBody(): boolean {
    return this.#bodyLeft > 0;
  }

  /** The events of the next chunk; after a refusal, nothing more. */
  push(chunk: Uint8Array): RequestEvent[] {
    const out: RequestEvent[] = [];
    let at = 0;
    while (at < chunk.length && !this.#refused) {
      if (this.#bodyLeft > 0) {
        const n = Math.min(this.#bodyLeft, chunk.length - at);
        out.push({ kind: "body", bytes: chunk.subarray(at, at + n) });
        this.#bodyLeft -= n;
        at += n;
        continue;
      }
      at = this.#pushHead(chunk, at, out);
    }
    return out;
  }

  /** Takes head bytes from `chunk` at `at`; returns where the head ended in it (its length if it did not). */
  #pushHead(chunk: Uint8Array, at: number, out: RequestEvent[]): number {
    if (this.#head.length === 0) {
      // Empty lines before a request line are ignored (RFC 9112 §2.2).
      while (at + 1 < chunk.length && chunk[at] === _CR && chunk[at + 1] === _LF) at += 2;
      if (at === chunk.length) return at;
    }
    const before = this.#head.length;
    const room = this.#limits.maxHeadBytes - before;
    const take = chunk.subarray(at, at + Math.min(chunk.length - at, room + 1));
    this.#head = _concat(this.#head, take);
    if (_hasBareLf(this.#head, before)) {
      return this.#refuse(out, 400, "Bad request: a line of the head ends in LF without CR");
    }
    const end = headEnd(this.#head, before - 3);
    if (end < 0) {
      if (this.#head.length > this.#limits.maxHeadBytes) {
        return this.#refuse(out, 431, `Request head exceeds ${this.#limits.maxHeadBytes} bytes`);
      }
      return at + take.length;
    }
    const bytes = this.#head.subarray(0, end);
    this.#head = new Uint8Array(0);
    const parsed = parseRequestHead(bytes, this.#limits.maxHeaders);
    if ("status" in parsed) return this.#refuse(out, parsed.status, parsed.message);
    if (parsed.contentLength > this.#limits.maxBodyBytes) {
      return this.#refuse(out, 413, `Request body exceeds the limit of ${this.#limits.maxBodyBytes} bytes`);
    }
    out.push({ kind: "head", head: { bytes, ...parsed } });
    this.#bodyLeft = parsed.contentLength;
    return at + (end - before);
  }

  #refuse(out: RequestEvent[], status: number, message: string): number {
    this.#refused = true;
    this.#head = new Uint8Array(0);
    out.push({ kind: "refuse", status, message });
    return Number.MAX_SAFE_INTEGER;
  }
}

/** How a response's body is delimited. */
type _BodyMode = "none" | "length" | "chunked" | "close" | "tunnel";

/** The status and body delimiting of a response head; null if it is not one. */
export function parseResponseHead(
  head: Uint8Array,
  method: string,
): { status: number; body: _BodyMode; length: number } | null {
  const lines = _latin1.decode(head.subarray(0, head.length - 4)).split("\r\n");
  const m = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(lines[0]!);
  if (!m) return null;
  const status = Number(m[1]);
  let length: number | null = null, chunked = false, coded = false;
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    const name = line.slice(0, colon).trim().toLowerCase(), value = line.slice(colon + 1).trim();
    if (name === "content-length" && /^\d{1,15}$/.test(value)) length = Number(value);
    if (name === "transfer-encoding") (coded = true, chunked = /(^|,)\s*chunked\s*$/i.test(value));
  }
  if (status === 101 || (method === "CONNECT" && status >= 200 && status < 300)) {
    return { status, body: "tunnel", length: 0 };
  }
  if (method === "HEAD" || (status >= 100 && status < 200) || status === 204 || status === 304) {
    return { status, body: "none", length: 0 };
  }
  if (coded) return { status, body: chunked ? "chunked" : "close", length: 0 };
  return length === null ? { status, body: "close", length: 0 } : { status, body: "length", length };
}

type _ResponseState =
  | "head"
  | "length"
  | "chunk-size"
  | "chunk-data"
  | "chunk-end"
  | "trailers"
  | "close"
  | "unframed";

/** Longest response head or chunk line the framer reads before it gives up framing. */
const _MAX_RESPONSE_LINE = 64 * 1024;

/**
 * Counts the responses a server sends on one connection, to know how many requests are still in flight.
 * Tell it each request forwarded ({@linkcode expect}) and feed it the server's bytes ({@linkcode push}).
 * Bytes it cannot frame (or a tunnel) leave it {@linkcode unframed}: every request counts as in flight until
 * the connection closes.
 *
 * @example
 * ```ts
 * import { ResponseFramer } from "./http_framing.ts";
 * const f = new ResponseFramer();
 * f.expect("GET");
 * f.push(new TextEncoder().encode("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"));
 * console.log(f.pending); // 0
 * ```
 */
export class ResponseFramer {
  #methods: string[] = []; // of the requests forwarded and not answered yet
  #state: _ResponseState = "head";
  #buf: Uint8Array = new Uint8Array(0); // head or chunk-line bytes so far
  #left = 0; // body or chunk bytes to come

  /** Requests forwarded whose response is not complete. */
  get pending(): number {
    return this.#methods.length;
  }

  /** Whether framing was given up (a tunnel, or bytes that are not HTTP/1.1). */
  get unframed(): boolean {
    return this.#state === "unframed" || this.#state === "close";
  }

  /** Records a request forwarded to the server (its method: a response to HEAD has no body). */
  expect(method: string): void {
    this.#methods.push(method);
  }

  /** Reads the next bytes from the server. */
  push(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length && this.#state !== "unframed" && this.#state !== "close") {
      if (this.#state === "length" || this.#state === "chunk-data") {
        const n = Math.min(this.#left, chunk.length - at);
        this.#left -= n;
        at += n;
        if (this.#left > 0) continue;
        if (this.#state === "length") this.#done();
        else this.#state = "chunk-end";
        continue;
      }
      at = this.#pushLine(chunk, at);
    }
  }

  /** Head, chunk-size, chunk-end and trailer bytes: collected up to the end of the line or head. */
  #pushLine(chunk: Uint8Array, at: number): number {
    const rest = chunk.subarray(at);
    const before = this.#buf.length;
    const joined = before === 0 ? rest : _concat(this.#buf, rest.subarray(0, _MAX_RESPONSE_LINE));
    const end = this.#lineEnd(joined, before);
    if (end < 0) {
      if (joined.length > _MAX_RESPONSE_LINE) this.#state = "unframed";
      else this.#buf = joined === rest ? rest.slice() : joined;
      return chunk.length;
    }
    this.#buf = new Uint8Array(0);
    this.#onLine(joined.subarray(0, end));
    return at + (end - before);
  }

  /** Where the line (or head, or trailer section) in `buf` ends, searching from about `from`; -1 if not yet. */
  #lineEnd(buf: Uint8Array, from: number): number {
    if (this.#state === "chunk-size" || this.#state === "chunk-end") {
      const i = buf.indexOf(_LF, from);
      return i < 0 ? -1 : i + 1;
    }
    if (this.#state === "trailers" && buf.length >= 2 && buf[0] === _CR && buf[1] === _LF) return 2;
    return headEnd(buf, from - 3);
  }

  #onLine(line: Uint8Array): void {
    switch (this.#state) {
      case "head":
        return this.#onHead(line);
      case "chunk-size": {
        const size = /^([0-9a-fA-F]{1,12})\s*(;[^\r\n]*)?\r?\n$/.exec(_latin1.decode(line));
        if (!size) return void (this.#state = "unframed");
        this.#left = parseInt(size[1]!, 16);
        this.#state = this.#left === 0 ? "trailers" : "chunk-data";
        return;
      }
      case "chunk-end":
        this.#state = line.length <= 2 ? "chunk-size" : "unframed";
        return;
      case "trailers":
        return this.#done(); // the trailer section (or the bare CRLF) ended with an empty line
    }
  }

  #onHead(head: Uint8Array): void {
    const method = this.#methods[0];
    const r = method === undefined ? null : parseResponseHead(head, method);
    if (!r || r.body === "tunnel") {
      this.#state = "unframed";
    } else if (r.status < 200 && r.body === "none") {
      // An interim response (100 Continue): the final one follows.
    } else if (r.body === "close") {
      this.#state = "close";
    } else if (r.body === "none" || (r.body === "length" && r.length === 0)) {
      this.#done();
    } else {
      this.#state = r.body === "length" ? "length" : "chunk-size";
      this.#left = r.length;
    }
  }

  #done(): void {
    this.#methods.shift();
    this.#state = "head";
  }
}

/**
 * The dashboard's connection guard: the public TCP port is this module's listener, not `Deno.serve`'s, which
 * has no header or idle timeouts and no connection cap (so ~1,000 idle connections once exhausted the file
 * descriptors and killed the process). Each accepted connection is counted and timed; its bytes are
 * forwarded unchanged to the real server (`Deno.serve` on a Unix socket in a private directory, see
 * `server.ts`), which still does all the HTTP parsing. The guard only frames messages (`http_framing.ts`).
 *
 * Rules:
 * - The first request head must be complete within {@linkcode HEAD_TIMEOUT_MS} of accept, a later one within
 *   the same time of its first byte (408); a body within {@linkcode BODY_TIMEOUT_MS} of its head.
 * - A connection with no bytes moving either way for {@linkcode IDLE_TIMEOUT_MS} is closed (a live stream
 *   sends a heartbeat every 15 s, `app.ts`).
 * - Heads over 32 KiB or 100 header lines (431), chunked request bodies (411), bad or duplicate
 *   Content-Length (400) and bodies over the body limit (413) are answered by the guard, which then closes.
 * - A connection costs one descriptor until its first request head is complete; only then is the upstream
 *   connection opened (two more). The caps come from the soft descriptor limit
 *   ({@linkcode connectionLimits}). A connection accepted over the cap makes room for itself: the oldest
 *   other connection whose request head is incomplete is closed, else the oldest idle keep-alive one, never
 *   one with a request in flight (if all have one, the new connection is closed, and the guard accepts no
 *   more until one finishes: new ones wait in the kernel's backlog). At the upstream cap, a new request waits
 *   for a slot (an idle keep-alive connection is closed for it), up to the head timeout (503).
 * - `accept()` failing (EMFILE, ENFILE) closes one evictable connection and retries after a short wait; an
 *   upstream error closes only its connection.
 * - What only the server side can cause is logged (`log`, at most one line per kind every
 *   {@linkcode WARN_INTERVAL_MS}, with a count of those left out): `accept()` failing, the upstream refusing a
 *   connection, the upstream closing one before its response was complete (the client then sees its
 *   connection closed mid-response), and reading a client connection failing other than by a reset or a close.
 *
 * @module
 */
import { RequestFramer, type RequestHead, ResponseFramer } from "./http_framing.ts";
import { DEFAULT_BODY_LIMIT, SECURITY_HEADERS } from "./security.ts";

/** Longest wait for a complete request head: from accept (first request) or from its first byte (later). */
export const HEAD_TIMEOUT_MS = 10_000;
/** Longest wait for a request body, from the end of its head. */
export const BODY_TIMEOUT_MS = 60_000;
/** A connection with no bytes moving in either direction for this long is closed. */
export const IDLE_TIMEOUT_MS = 45_000;
/** Largest request head (request line and headers). */
export const MAX_HEAD_BYTES = 32 * 1024;
/** Most header lines of a request (as hyper's default). */
export const MAX_HEADERS = 100;
/** Descriptors left to the rest of the process: the store's files, stdio, the runtime's own. */
export const RESERVE_FDS = 128;
/** Most client connections at once, however high the descriptor limit. */
export const MAX_CONNECTIONS_CEILING = 4096;
/** The guard logs one line of a kind at most this often (the rest are counted in the next line). */
export const WARN_INTERVAL_MS = 10_000;
/** Soft descriptor limit assumed where `/proc/self/limits` cannot be read (macOS's default is 256). */
export const FALLBACK_FD_LIMIT = 256;

/** How long a refused connection may go on sending before it is closed (so that it reads the answer). */
const _LINGER_MS = 2000;
/** Wait before accepting again after `accept()` failed. */
const _ACCEPT_RETRY_MS = 100;
const _CLIENT_READ = 4096;
const _UPSTREAM_READ = 64 * 1024;

/** The guard's limits; {@linkcode guardLimits} fills in the defaults. */
export interface GuardLimits {
  headTimeoutMs: number;
  bodyTimeoutMs: number;
  idleTimeoutMs: number;
  maxHeadBytes: number;
  maxHeaders: number;
  maxBodyBytes: number;
  maxConnections: number; // client connections
  maxUpstream: number; // connections to the server behind (two descriptors each)
}

/** What the guard has done, for tests and measurements. */
export interface GuardStats {
  open: number; // client connections now
  upstream: number; // upstream connections now
  accepted: number;
  evicted: number; // closed to make room
  timedOut: number; // closed or answered 408 for a head, body or idle timeout
  refused: number; // answered by the guard (4xx, 503)
  acceptErrors: number;
  maxConnections: number;
  maxUpstream: number;
}

/**
 * The soft limit on open files of this process: `/proc/self/limits` on Linux, else
 * {@linkcode FALLBACK_FD_LIMIT}; `Infinity` when unlimited.
 *
 * @example
 * ```ts
 * import { softFdLimit } from "./guard.ts";
 * console.log(softFdLimit() >= 64); // true
 * ```
 */
export function softFdLimit(): number {
  let text: string;
  try {
    text = Deno.readTextFileSync("/proc/self/limits");
  } catch {
    return FALLBACK_FD_LIMIT;
  }
  const m = /^Max open files\s+(\S+)/m.exec(text);
  if (!m) return FALLBACK_FD_LIMIT;
  return m[1] === "unlimited" ? Infinity : Number(m[1]) || FALLBACK_FD_LIMIT;
}

/**
 * The connection caps under a soft descriptor limit: {@linkcode RESERVE_FDS} are left to the process, then
 * an eighth of the rest (4 to 256) is for upstream connections (two descriptors each), and what remains for
 * client connections (at most {@linkcode MAX_CONNECTIONS_CEILING}).
 *
 * @example
 * ```ts
 * import { connectionLimits } from "./guard.ts";
 * console.log(connectionLimits(1024)); // { maxConnections: 672, maxUpstream: 112 }
 * ```
 */
export function connectionLimits(softFds: number): { maxConnections: number; maxUpstream: number } {
  const usable = Math.max(48, Math.min(softFds, 1_000_000) - RESERVE_FDS);
  const maxUpstream = Math.max(4, Math.min(256, Math.floor(usable / 8)));
  const maxConnections = Math.max(8, Math.min(MAX_CONNECTIONS_CEILING, usable - 2 * maxUpstream));
  return { maxConnections, maxUpstream };
}

/** The default limits (caps from this process's descriptor limit), with `o` over them. */
export function guardLimits(o: Partial<GuardLimits> = {}): GuardLimits {
  return {
    headTimeoutMs: HEAD_TIMEOUT_MS,
    bodyTimeoutMs: BODY_TIMEOUT_MS,
    idleTimeoutMs: IDLE_TIMEOUT_MS,
    maxHeadBytes: MAX_HEAD_BYTES,
    maxHeaders: MAX_HEADERS,
    maxBodyBytes: DEFAULT_BODY_LIMIT,
    ...connectionLimits(softFdLimit()),
    ...o,
  };
}

const _REASONS: Record<number, string> = {
  400: "Bad Request",
  408: "Request Timeout",
  411: "Length Required",
  413: "Content Too Large",
  431: "Request Header Fields Too Large",
  503: "Service Unavailable",
  505: "HTTP Version Not Supported",
};

/** A complete response written by the guard itself: JSON `{error}`, the app's security headers, then close. */
export function guardResponse(status: number, message: string): Uint8Array {
  const body = new TextEncoder().encode(JSON.stringify({ error: message }));
  const head = [
    `HTTP/1.1 ${status} ${_REASONS[status] ?? "Error"}`,
    "Content-Type: application/json; charset=utf-8",
    `Content-Length: ${body.length}`,
    "Connection: close",
    "Cache-Control: no-store",
    ...Object.entries(SECURITY_HEADERS).map(([name, value]) => `${name}: ${value}`),
    "",
    "",
  ].join("\r\n");
  const bytes = new TextEncoder().encode(head);
  const out = new Uint8Array(bytes.length + body.length);
  out.set(bytes);
  out.set(body, bytes.length);
  return out;
}

/** One client connection. */
interface _Conn {
  id: number;
  conn: Deno.Conn;
  lastIo: number; // when bytes last moved either way (performance.now())
  requests: RequestFramer;
  responses: ResponseFramer;
  forwarded: number; // request heads sent upstream
  upstream: Deno.Conn | null;
  upstreamDead: boolean; // writing to it failed: client bytes are dropped from then on
  writing: boolean; // a write to the client is under way
  headDeadline: number | null;
  bodyDeadline: number | null;
  waitDeadline: number | null; // waiting for an upstream slot
  lingerUntil: number | null; // refused: closed at this time at the latest
  closed: boolean;
}

/** Where a connection stands, for eviction: never "busy" ones. */
function _kind(c: _Conn): "busy" | "incomplete" | "idle" {
  if (c.writing || c.responses.pending > 0 || c.responses.unframed) return "busy";
  if (c.lingerUntil !== null) return "incomplete"; // refused, its answer written: on its way out
  if (c.requests.inBody || c.waitDeadline !== null) return "busy";
  return c.forwarded === 0 || c.requests.partialHead ? "incomplete" : "idle";
}

/** An error's message (its name where it has none), one line. */
function _reason(e: unknown): string {
  const text = e instanceof Error ? e.message || e.name : String(e);
  return text.replace(/\s+/g, " ").slice(0, 200);
}

/**
 * Reads into `buf`: the byte count, or null at EOF or on any error (a reset, the connection closed), which
 * goes to `onError` first.
 */
async function _read(
  conn: Deno.Conn,
  buf: Uint8Array,
  onError?: (e: unknown) => void,
): Promise<number | null> {
  try {
    return await conn.read(buf);
  } catch (e) {
    onError?.(e);
    return null;
  }
}

/** Errors of reading a client connection that its client or the guard itself causes (not logged). */
const _CLIENT_ENDS = [
  Deno.errors.ConnectionReset,
  Deno.errors.ConnectionAborted,
  Deno.errors.BrokenPipe,
  Deno.errors.BadResource,
  Deno.errors.Interrupted,
];

/** Writes all of `bytes`; false on any error. */
async function _writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<boolean> {
  try {
    for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
    return true;
  } catch {
    return false;
  }
}

function _delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Options of {@linkcode ConnectionGuard}. */
export interface GuardOptions {
  /** The public listener; the guard accepts on it and closes it when stopped. */
  listener: Deno.Listener;
  /** Opens a connection to the server behind the guard. */
  connectUpstream: () => Promise<Deno.Conn>;
  limits?: Partial<GuardLimits>;
  /** Where the server-side faults of the module doc go (one line each); by default nowhere. */
  log?: (line: string) => void;
}

/**
 * Accepts connections on a listener and forwards them to an upstream server under the rules of the module
 * doc, until {@linkcode close}.
 *
 * @example
 * ```ts
 * import { ConnectionGuard } from "./guard.ts";
 * const dir = await Deno.makeTempDir();
 * const path = `${dir}/s.sock`;
 * const server = Deno.serve({ path, transport: "unix", onListen() {} }, () => new Response("hi"));
 * const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const guard = new ConnectionGuard({ listener, connectUpstream: () => Deno.connect({ transport: "unix", path }) });
 * const res = await fetch(`http://127.0.0.1:${listener.addr.port}/`);
 * console.log(await res.text()); // "hi"
 * guard.close();
 * await guard.finished;
 * await server.shutdown();
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export class ConnectionGuard {
  /** The limits in force. */
  readonly limits: GuardLimits;
  /** Resolves once stopped and every connection is closed. */
  readonly finished: Promise<void>;
  readonly #o: GuardOptions;
  readonly #conns = new Map<number, _Conn>(); // in order of accept: the oldest first
  readonly #tasks = new Set<Promise<void>>();
  readonly #ticker: ReturnType<typeof setInterval>;
  #nextId = 1;
  #upstreams = 0; // open or opening
  #stopped = false;
  #wake: (() => void) | null = null;
  #changed: Promise<void> | null = null;
  #counts = { accepted: 0, evicted: 0, timedOut: 0, refused: 0, acceptErrors: 0 };
  readonly #warned = new Map<string, { at: number; left: number }>(); // kind → last line's time, lines left out

  constructor(o: GuardOptions) {
    this.#o = o;
    this.limits = guardLimits(o.limits);
    const l = this.limits;
    const tick = Math.max(20, Math.min(1000, l.headTimeoutMs / 4, l.idleTimeoutMs / 4, l.bodyTimeoutMs / 4));
    this.#ticker = setInterval(() => this.#tick(), tick);
    this.finished = this.#run();
  }

  /** Counters and the connections open now. */
  stats(): GuardStats {
    return {
      open: this.#conns.size,
      upstream: this.#upstreams,
      ...this.#counts,
      maxConnections: this.limits.maxConnections,
      maxUpstream: this.limits.maxUpstream,
    };
  }

  /** Stops accepting and closes every connection; {@linkcode finished} resolves when all is done. */
  close(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    clearInterval(this.#ticker);
    try {
      this.#o.listener.close();
    } catch {
      // Already closed.
    }
    for (const c of [...this.#conns.values()]) this.#close(c);
    this.#notify();
  }

  async #run(): Promise<void> {
    await this.#acceptLoop();
    while (this.#tasks.size > 0) await Promise.all(this.#tasks);
  }

  async #acceptLoop(): Promise<void> {
    while (!this.#stopped) {
      if (this.#conns.size >= this.limits.maxConnections && !this.#oldest((c) => _kind(c) !== "busy")) {
        await this.#next(); // every connection has a request in flight: new ones wait in the backlog
        continue;
      }
      let conn: Deno.Conn;
      try {
        conn = await this.#o.listener.accept();
      } catch (e) {
        if (this.#stopped || e instanceof Deno.errors.BadResource) break;
        // EMFILE, ENFILE, ECONNABORTED: free a descriptor, wait a little, go on.
        this.#counts.acceptErrors++;
        this.#warn(
          "accept",
          `accepting a connection failed (${_reason(e)}); closing a waiting one to make room`,
        );
        this.#evictOne();
        await _delay(_ACCEPT_RETRY_MS);
        continue;
      }
      if (this.#stopped) {
        conn.close();
        break;
      }
      const c = this.#track(conn);
      // Over the cap by this one: another makes room for it, or (all others busy) it goes.
      if (this.#conns.size > this.limits.maxConnections && !this.#evictOne(c)) this.#close(c, "evicted");
    }
  }

  #track(conn: Deno.Conn): _Conn {
    const now = performance.now();
    try {
      (conn as Deno.TcpConn).setNoDelay?.(true);
    } catch {
      // Not a TCP connection.
    }
    const c: _Conn = {
      id: this.#nextId++,
      conn,
      lastIo: now,
      requests: new RequestFramer(this.limits),
      responses: new ResponseFramer(),
      forwarded: 0,
      upstream: null,
      upstreamDead: false,
      writing: false,
      headDeadline: now + this.limits.headTimeoutMs,
      bodyDeadline: null,
      waitDeadline: null,
      lingerUntil: null,
      closed: false,
    };
    this.#conns.set(c.id, c);
    this.#counts.accepted++;
    this.#spawn(this.#pumpClient(c));
    return c;
  }

  /** Runs `task` in the background; {@linkcode finished} waits for it. */
  #spawn(task: Promise<void>): void {
    const p = task.catch(() => {}).finally(() => this.#tasks.delete(p));
    this.#tasks.add(p);
  }

  /** Client → guard: frames requests, forwards heads (opening the upstream) and bodies. */
  async #pumpClient(c: _Conn): Promise<void> {
    const buf = new Uint8Array(_CLIENT_READ);
    try {
      for (;;) {
        const n = await _read(c.conn, buf, (e) => {
          if (c.closed || _CLIENT_ENDS.some((k) => e instanceof k)) return;
          this.#warn("client", `reading connection ${c.id} failed (${_reason(e)}); it was closed`);
        });
        if (n === null || c.closed) break;
        c.lastIo = performance.now();
        if (c.lingerUntil !== null) continue; // refused: what it still sends is dropped
        for (const e of c.requests.push(buf.subarray(0, n))) {
          if (e.kind === "refuse") await this.#refuse(c, e.status, e.message);
          else if (e.kind === "head") await this.#forwardHead(c, e.head);
          else await this.#toUpstream(c, e.bytes);
          if (c.closed || c.lingerUntil !== null) break;
        }
        this.#afterRead(c);
      }
      // The client sent EOF (or failed): let responses in flight finish, then close.
      while (!c.closed && c.lingerUntil === null && _kind(c) === "busy") await this.#next();
    } finally {
      this.#close(c);
    }
  }

  /** Head deadlines after a read: a new head's time starts at its first byte; none between requests. */
  #afterRead(c: _Conn): void {
    if (c.forwarded === 0 || c.closed) return;
    if (!c.requests.partialHead) c.headDeadline = null;
    else c.headDeadline ??= performance.now() + this.limits.headTimeoutMs;
  }

  /** Sends a complete head upstream, opening the upstream connection first if there is none. */
  async #forwardHead(c: _Conn, head: RequestHead): Promise<void> {
    c.headDeadline = null;
    if (!c.upstream && !await this.#openUpstream(c)) return;
    c.responses.expect(head.method);
    c.forwarded++;
    c.bodyDeadline = head.contentLength > 0 ? performance.now() + this.limits.bodyTimeoutMs : null;
    await this.#toUpstream(c, head.bytes);
  }

  /** Waits for an upstream slot (closing an idle keep-alive connection for one) and connects; false if not. */
  async #openUpstream(c: _Conn): Promise<boolean> {
    c.waitDeadline = performance.now() + this.limits.headTimeoutMs;
    try {
      while (this.#upstreams >= this.limits.maxUpstream) {
        if (c.closed) return false;
        if (performance.now() >= c.waitDeadline) {
          await this.#refuse(c, 503, "The dashboard is busy: every upstream connection is in use; retry");
          return false;
        }
        const idle = this.#oldest((x) => x.upstream !== null && _kind(x) === "idle");
        if (idle) this.#close(idle, "evicted");
        else await this.#next();
      }
      this.#upstreams++;
      let up: Deno.Conn;
      try {
        up = await this.#o.connectUpstream();
      } catch (e) {
        this.#warn(
          "upstream",
          `the server behind the guard refused a connection (${_reason(e)}); answered 503`,
        );
        this.#upstreams--;
        this.#notify();
        await this.#refuse(c, 503, "The dashboard server is not answering; retry");
        return false;
      }
      if (c.closed) {
        up.close();
        this.#upstreams--;
        this.#notify();
        return false;
      }
      c.upstream = up;
      this.#spawn(this.#pumpUpstream(c, up));
      return true;
    } finally {
      c.waitDeadline = null;
    }
  }

  /** Client bytes to the upstream; after a failed write they are dropped (the upstream's answer still flows). */
  async #toUpstream(c: _Conn, bytes: Uint8Array): Promise<void> {
    if (!c.upstream || c.upstreamDead) return;
    if (!await _writeAll(c.upstream, bytes)) c.upstreamDead = true;
    if (!c.requests.inBody) c.bodyDeadline = null;
  }

  /** Upstream → client: counts complete responses; when the upstream closes, so does the client connection. */
  async #pumpUpstream(c: _Conn, up: Deno.Conn): Promise<void> {
    const buf = new Uint8Array(_UPSTREAM_READ);
    try {
      for (;;) {
        let failed = "";
        const n = await _read(up, buf, (e) => failed = ` (reading it failed: ${_reason(e)})`);
        if (
          n === null && !c.closed && c.upstream === up && (c.responses.pending > 0 || c.responses.unframed)
        ) {
          this.#warn(
            "cut",
            `the server behind the guard closed connection ${c.id} before the response to request ` +
              `${c.forwarded} was complete${failed}; the client's connection was closed`,
          );
        }
        if (n === null || c.closed || c.upstream !== up) break;
        const bytes = buf.subarray(0, n);
        c.writing = true;
        c.responses.push(bytes);
        const ok = await _writeAll(c.conn, bytes);
        c.writing = false;
        if (!ok) break;
        c.lastIo = performance.now();
        this.#notify();
      }
    } finally {
      c.writing = false;
      if (c.upstream === up) this.#close(c);
    }
  }

  /**
   * Answers `status` itself (after the responses to earlier requests), half-closes, and lets the client
   * read the answer for a moment before closing.
   */
  async #refuse(c: _Conn, status: number, message: string): Promise<void> {
    if (c.closed || c.lingerUntil !== null) return;
    c.lingerUntil = Infinity; // from now on evictable, and nothing more is forwarded
    c.headDeadline = c.bodyDeadline = null;
    this.#counts.refused++;
    while (!c.closed && (c.writing || c.responses.pending > 0)) await this.#next();
    if (c.closed) return;
    this.#releaseUpstream(c);
    c.lingerUntil = performance.now() + _LINGER_MS;
    c.writing = true;
    const ok = await _writeAll(c.conn, guardResponse(status, message));
    c.writing = false;
    try {
      if (ok) await c.conn.closeWrite();
    } catch {
      // The client is gone.
    }
    if (!ok) this.#close(c);
  }

  /** Closes the upstream connection of `c` without closing `c`. */
  #releaseUpstream(c: _Conn): void {
    const up = c.upstream;
    if (!up) return;
    c.upstream = null;
    this.#upstreams--;
    try {
      up.close();
    } catch {
      // Already closed.
    }
    this.#notify();
  }

  #close(c: _Conn, why?: "evicted" | "timeout"): void {
    if (c.closed) return;
    c.closed = true;
    if (why === "evicted") this.#counts.evicted++;
    if (why === "timeout") this.#counts.timedOut++;
    this.#releaseUpstream(c);
    try {
      c.conn.close();
    } catch {
      // Already closed.
    }
    this.#conns.delete(c.id);
    this.#notify();
  }

  /** Closes the oldest connection (but `spare`) with an incomplete head, else the oldest idle one; false if none. */
  #evictOne(spare?: _Conn): boolean {
    const victim = this.#oldest((c) => c !== spare && _kind(c) === "incomplete") ??
      this.#oldest((c) => c !== spare && _kind(c) === "idle");
    if (!victim) return false;
    this.#close(victim, "evicted");
    return true;
  }

  #oldest(pred: (c: _Conn) => boolean): _Conn | null {
    for (const c of this.#conns.values()) if (pred(c)) return c;
    return null;
  }

  /** Enforces the deadlines; wakes whoever waits for a change, so that they check theirs. */
  #tick(): void {
    const now = performance.now(), l = this.limits;
    for (const c of [...this.#conns.values()]) {
      if (c.lingerUntil !== null && now >= c.lingerUntil) {
        this.#close(c);
      } else if (now - c.lastIo >= l.idleTimeoutMs) {
        this.#close(c, "timeout");
      } else if (c.lingerUntil !== null) {
        continue; // refused: closed when its linger ends
      } else if (c.bodyDeadline !== null && now >= c.bodyDeadline && c.requests.inBody) {
        this.#close(c, "timeout"); // its request is in flight upstream: no answer of our own can follow it
      } else if (c.headDeadline !== null && now >= c.headDeadline) {
        this.#counts.timedOut++;
        if (_kind(c) === "busy") this.#close(c);
        else {
          const s = Math.round(l.headTimeoutMs / 100) / 10;
          this.#spawn(this.#refuse(c, 408, `Request head not received within ${s} s`));
        }
      }
    }
    this.#notify();
  }

  /** Logs `line` unless a line of `kind` went out in the last {@linkcode WARN_INTERVAL_MS}; then it is counted. */
  #warn(kind: string, line: string): void {
    if (!this.#o.log) return;
    const now = performance.now(), w = this.#warned.get(kind);
    if (w && now - w.at < WARN_INTERVAL_MS) {
      w.left++;
      return;
    }
    const left = w?.left ? ` (${w.left} more like it since the last such line)` : "";
    this.#warned.set(kind, { at: now, left: 0 });
    this.#o.log(`dashboard: ${line}${left}`);
  }

  /** Resolves at the next change: a connection closed, a response finished, a tick. */
  #next(): Promise<void> {
    this.#changed ??= new Promise((resolve) => this.#wake = resolve);
    return this.#changed;
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    this.#changed = null;
    wake?.();
  }
}

import { deepStrictEqual as assertEquals } from "node:assert/strict";
import {
  headEnd,
  parseRequestHead,
  type RequestEvent,
  RequestFramer,
  ResponseFramer,
} from "./http_framing.ts";

const enc = new TextEncoder(), dec = new TextDecoder();
const LIMITS = { maxHeadBytes: 1024, maxHeaders: 10, maxBodyBytes: 100 };

/** The events of `chunks` fed in order, heads and bodies as text. */
function _events(chunks: string[], limits = LIMITS): (string | number)[][] {
  const f = new RequestFramer(limits);
  const out: (string | number)[][] = [];
  const show = (e: RequestEvent) =>
    e.kind === "head"
      ? ["head", e.head.method, e.head.contentLength, dec.decode(e.head.bytes)]
      : e.kind === "body"
      ? ["body", dec.decode(e.bytes)]
      : ["refuse", e.status];
  for (const c of chunks) out.push(...f.push(enc.encode(c)).map(show));
  return out;
}

Deno.test("headEnd() finds the first CRLF CRLF", () => {
  assertEquals(headEnd(enc.encode("GET / HTTP/1.1\r\nA: b\r\n\r\nbody")), 24);
  assertEquals(headEnd(enc.encode("GET / HTTP/1.1\r\nA: b\r\n\r")), -1);
  assertEquals(headEnd(enc.encode("\r\n\r\n")), 4);
});

Deno.test("RequestFramer splits pipelined requests into heads and bodies, across any chunking", () => {
  const text =
    "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
  const whole = _events([text]);
  assertEquals(whole, [
    ["head", "POST", 5, "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"],
    ["body", "hello"],
    ["head", "GET", 0, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n"],
  ]);
  // Byte by byte: the same heads, the body in pieces.
  const bytewise = _events([...text]);
  assertEquals(bytewise.filter((e) => e[0] === "head"), whole.filter((e) => e[0] === "head"));
  assertEquals(bytewise.filter((e) => e[0] === "body").map((e) => e[1]).join(""), "hello");
  // Empty lines before a request line are dropped.
  assertEquals(_events(["\r\n\r\nGET / HTTP/1.0\r\n\r\n"]), [["head", "GET", 0, "GET / HTTP/1.0\r\n\r\n"]]);
});

Deno.test("RequestFramer reports a partial head and a body under way", () => {
  const f = new RequestFramer(LIMITS);
  f.push(enc.encode("POST / HTTP/1.1\r\nContent-"));
  assertEquals([f.partialHead, f.inBody], [true, false]);
  f.push(enc.encode("Length: 3\r\n\r\nab"));
  assertEquals([f.partialHead, f.inBody], [false, true]);
  f.push(enc.encode("c"));
  assertEquals([f.partialHead, f.inBody], [false, false]);
});

Deno.test("RequestFramer refuses what the server could frame differently, and oversized heads and bodies", () => {
  const refusal = (head: string, limits = LIMITS) => _events([head], limits).at(-1);
  assertEquals(refusal("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), ["refuse", 411]);
  assertEquals(refusal("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"), ["refuse", 400]);
  assertEquals(refusal("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), ["refuse", 400]);
  assertEquals(refusal("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"), ["refuse", 400]);
  assertEquals(refusal("POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n"), ["refuse", 413]);
  assertEquals(refusal("GET / HTTP/1.1\nHost: x\r\n\r\n"), ["refuse", 400]);
  assertEquals(refusal("GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n"), ["refuse", 400]);
  assertEquals(refusal("GET / HTTP/1.1\r\nHost : x\r\n\r\n"), ["refuse", 400]);
  assertEquals(refusal("GET /  HTTP/1.1\r\n\r\n"), ["refuse", 400]);
  assertEquals(refusal("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), ["refuse", 505]);
  const many = "GET / HTTP/1.1\r\n" + "A: b\r\n".repeat(11) + "\r\n";
  assertEquals(refusal(many), ["refuse", 431]);
  assertEquals(refusal("GET /" + "a".repeat(2000)), ["refuse", 431], "no end in sight past the limit");
  assertEquals(_events(["POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nGET / HTTP/1.1\r\n\r\n"]).length, 1);
  assertEquals(parseRequestHead(enc.encode("GET / HTTP/1.1\r\nContent-Length: 007\r\n\r\n"), 10), {
    method: "GET",
    contentLength: 7,
  });
});

/** A framer expecting `methods`, fed `chunks`: its pending count after each. */
function _pending(methods: string[], chunks: string[]): number[] {
  const f = new ResponseFramer();
  for (const m of methods) f.expect(m);
  return chunks.map((c) => (f.push(enc.encode(c)), f.pending));
}

Deno.test("ResponseFramer counts responses by Content-Length, chunked bodies and bodiless statuses", () => {
  assertEquals(_pending(["GET"], ["HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel", "lo"]), [1, 0]);
  const chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
  assertEquals(_pending(["GET"], [chunked]), [0]);
  assertEquals(_pending(["GET"], [...chunked]).at(-1), 0, "the same byte by byte");
  assertEquals(_pending(["GET"], [...chunked]).at(-2), 1);
  const trailers = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n";
  assertEquals(_pending(["GET"], [trailers]), [0]);
  assertEquals(_pending(["HEAD"], ["HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n"]), [0]);
  assertEquals(
    _pending(["GET", "GET"], ["HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\n\r\n"]),
    [0],
  );
  assertEquals(
    _pending(["POST"], [
      "HTTP/1.1 100 Continue\r\n\r\n",
      "HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
    ]),
    [1, 0],
  );
  const sse = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7\r\nretry: \r\n";
  assertEquals(_pending(["GET"], [sse]), [1], "a stream stays in flight");
});

Deno.test("ResponseFramer gives up framing on what is not a response, keeping the request in flight", () => {
  const f = new ResponseFramer();
  f.push(enc.encode("HTTP/1.1 200 OK\r\n\r\n"));
  assertEquals([f.pending, f.unframed], [0, true], "bytes nobody asked for");
  const g = new ResponseFramer();
  g.expect("GET");
  g.push(enc.encode("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"));
  assertEquals([g.pending, g.unframed], [1, true], "a body delimited by close");
  const h = new ResponseFramer();
  h.expect("GET");
  h.push(enc.encode("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"));
  assertEquals([h.pending, h.unframed], [1, true], "a bad chunk size");
});

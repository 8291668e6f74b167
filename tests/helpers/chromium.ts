/**
 * A headless Chromium driven over the DevTools protocol, for browser tests of the dashboard: open a page,
 * evaluate expressions in it, wait for a condition. Chromium comes from Debian's `chromium` package (.ci/run
 * installs it); a test fails, never skips, when it is missing.
 *
 * @module
 */

/** Path of the Chromium binary, or a failure that says how to install it. */
export function chromiumPath(): string {
  for (const p of [Deno.env.get("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"]) {
    if (!p) continue;
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch {
      // Try the next one.
    }
  }
  throw new Error(
    "No Chromium found for the browser tests: install Debian's chromium (apt-get install chromium)",
  );
}

/** One browser with one page. */
export class Browser {
  readonly #proc: Deno.ChildProcess;
  readonly #profile: string;
  readonly #ws: WebSocket;
  #id = 0;
  readonly #waiting = new Map<number, { ok: (v: unknown) => void; fail: (e: Error) => void }>();
  /** Console messages and uncaught exceptions of the page, for failure messages. */
  readonly console: string[] = [];

  private constructor(proc: Deno.ChildProcess, profile: string, ws: WebSocket) {
    this.#proc = proc;
    this.#profile = profile;
    this.#ws = ws;
    ws.onmessage = (e) => {
      const msg = JSON.parse(String(e.data));
      if (msg.id !== undefined) {
        const w = this.#waiting.get(msg.id);
        this.#waiting.delete(msg.id);
        if (msg.error) w?.fail(new Error(`DevTools: ${msg.error.message}`));
        else w?.ok(msg.result);
      } else if (msg.method === "Runtime.consoleAPICalled") {
        this.console.push(msg.params.args.map((a: { value?: unknown }) => String(a.value)).join(" "));
      } else if (msg.method === "Runtime.exceptionThrown") {
        this.console.push(`exception: ${msg.params.exceptionDetails?.exception?.description ?? "?"}`);
      }
    };
  }

  /** Starts Chromium headless with a fresh profile and attaches to its first page. */
  static async launch(width = 1280, height = 900): Promise<Browser> {
    const profile = await Deno.makeTempDir({ prefix: "dsmoe-chromium-" });
    const proc = new Deno.Command(chromiumPath(), {
      args: [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        `--window-size=${width},${height}`,
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        `--user-data-dir=${profile}`,
        "about:blank",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    try {
      const port = await _devtoolsPort(proc);
      const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json() as {
        type: string;
        webSocketDebuggerUrl: string;
      }[];
      const page = targets.find((t) => t.type === "page");
      if (!page) throw new Error("Chromium opened no page");
      const ws = new WebSocket(page.webSocketDebuggerUrl);
      await new Promise<void>((ok, fail) => {
        ws.onopen = () => ok();
        ws.onerror = () => fail(new Error("Cannot connect to Chromium's DevTools"));
      });
      const b = new Browser(proc, profile, ws);
      await b.send("Page.enable");
      await b.send("Runtime.enable");
      return b;
    } catch (e) {
      proc.kill("SIGKILL");
      await proc.status;
      await Deno.remove(profile, { recursive: true }).catch(() => {});
      throw e;
    }
  }

  /** Sends a DevTools command and waits for its result (15 s at most). */
  send(method: string, params: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const id = ++this.#id;
    return new Promise((ok, fail) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(id);
        fail(new Error(`DevTools ${method} timed out`));
      }, 15_000);
      this.#waiting.set(id, {
        ok: (v) => (clearTimeout(timer), ok(v as Record<string, unknown>)),
        fail: (e) => (clearTimeout(timer), fail(e)),
      });
      this.#ws.send(JSON.stringify({ id, method, params }));
    });
  }

  /** Navigates and waits for the load event. */
  async goto(url: string): Promise<void> {
    const r = await this.send("Page.navigate", { url });
    if (r.errorText) throw new Error(`Cannot open ${url}: ${r.errorText}`);
    await this.waitFor("document.readyState === 'complete'");
  }

  /** The value of a JavaScript expression in the page (awaited if it is a promise). */
  async eval<T>(expression: string): Promise<T> {
    const r = await this.send("Runtime.evaluate", { expression, awaitPromise: true, returnByValue: true });
    const ex = r.exceptionDetails as { exception?: { description?: string }; text?: string } | undefined;
    if (ex) throw new Error(`In the page: ${ex.exception?.description ?? ex.text}`);
    return (r.result as { value: T }).value;
  }

  /** Waits until `expression` is truthy in the page; fails after `timeoutMs` with the page's console. */
  async waitFor(expression: string, timeoutMs = 20_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      if (await this.eval<boolean>(`Boolean(${expression})`).catch(() => false)) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`Timed out waiting for ${expression}; page console:\n${this.console.join("\n")}`);
  }

  /** A PNG screenshot of the page. */
  async screenshot(): Promise<Uint8Array> {
    const r = await this.send("Page.captureScreenshot", { format: "png" });
    return Uint8Array.from(atob(String(r.data)), (c) => c.charCodeAt(0));
  }

  async close(): Promise<void> {
    try {
      this.#ws.close();
    } catch {
      // Already closed.
    }
    try {
      this.#proc.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    await this.#proc.status;
    await Deno.remove(this.#profile, { recursive: true }).catch(() => {});
  }
}

/** Drains Chromium's stderr (so it never blocks on a full pipe) and resolves with its DevTools port. */
function _devtoolsPort(proc: Deno.ChildProcess): Promise<number> {
  const reader = proc.stderr.pipeThrough(new TextDecoderStream()).getReader();
  return new Promise<number>((ok, fail) => {
    let text = "", pending = true;
    const timer = setTimeout(() => {
      pending = false;
      fail(new Error(`Chromium did not start in 30 s:\n${text}`));
    }, 30_000);
    (async () => {
      for (;;) {
        const { value, done } = await reader.read().catch(() => ({ value: "", done: true }));
        if (done) break;
        if (!pending) continue;
        text += value;
        const m = /DevTools listening on ws:\/\/127\.0\.0\.1:(\d+)\//.exec(text);
        if (m) {
          pending = false;
          clearTimeout(timer);
          ok(Number(m[1]));
        }
      }
      if (pending) {
        pending = false;
        clearTimeout(timer);
        fail(new Error(`Chromium exited:\n${text}`));
      }
    })();
  });
}

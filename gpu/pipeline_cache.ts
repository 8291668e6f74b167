/**
 * Compute pipelines cached by WGSL source: a kernel template builds source, the cache compiles it once.
 * Compile errors become {@linkcode WgslCompileError} with line:col and the offending source lines.
 *
 * @module
 */
import { WgslCompileError } from "./errors.ts";

/** Caches `GPUComputePipeline`s keyed by their exact WGSL source and entry point. */
export class PipelineCache {
  readonly #device: GPUDevice;
  readonly #pipelines = new Map<string, GPUComputePipeline>();
  readonly #checked = new Map<string, Promise<void>>();

  constructor(device: GPUDevice) {
    this.#device = device;
  }

  /** Number of distinct pipelines compiled so far. */
  get size(): number {
    return this.#pipelines.size;
  }

  /**
   * Returns the pipeline for `code`, compiling it on first use. Uses `layout: "auto"`:
   * bindings are `@group(0) @binding(i)` in the order the kernel's dispatch lists them.
   * Call {@linkcode PipelineCache.check} once per source (the kernels do, in their tests) to get
   * compile errors as exceptions; WebGPU itself only reports them asynchronously.
   */
  get(code: string, label = "kernel", entryPoint = "main"): GPUComputePipeline {
    const key = `${entryPoint}\u0000${code}`;
    let p = this.#pipelines.get(key);
    if (!p) {
      const module = this.#device.createShaderModule({ code, label });
      p = this.#device.createComputePipeline({ layout: "auto", compute: { module, entryPoint }, label });
      this.#pipelines.set(key, p);
    }
    return p;
  }

  /** Compiles `code` and throws {@linkcode WgslCompileError} with line:col and source if it has errors. */
  check(code: string, label = "kernel"): Promise<void> {
    let pending = this.#checked.get(code);
    if (!pending) {
      pending = this.#compileInfo(code, label);
      this.#checked.set(code, pending);
    }
    return pending;
  }

  async #compileInfo(code: string, label: string): Promise<void> {
    const module = this.#device.createShaderModule({ code, label });
    const info = await module.getCompilationInfo();
    const errors = info.messages.filter((m) => m.type === "error");
    if (errors.length > 0) throw new WgslCompileError(formatCompileErrors(label, code, errors));
  }
}

/** Formats compiler messages as `label:line:col: message` followed by the numbered source around it. */
export function formatCompileErrors(
  label: string,
  code: string,
  messages: readonly Pick<GPUCompilationMessage, "lineNum" | "linePos" | "message">[],
): string {
  const lines = code.split("\n");
  const out: string[] = [];
  for (const m of messages) {
    out.push(`WGSL compile error in ${label}:${m.lineNum}:${m.linePos}: ${m.message}`);
    const from = Math.max(1, m.lineNum - 2), to = Math.min(lines.length, m.lineNum + 2);
    for (let i = from; i <= to; i++) {
      out.push(`${String(i).padStart(5)} | ${lines[i - 1]}`);
      if (i === m.lineNum) out.push(`${" ".repeat(5)} | ${" ".repeat(Math.max(0, m.linePos - 1))}^`);
    }
  }
  return out.join("\n");
}

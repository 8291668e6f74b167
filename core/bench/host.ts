/**
 * The host a benchmark ran on, printed beside the adapter (docs/performance.md "How `deno task bench`
 * measures"): the CPU model, its thread count and, when the adapter is llvmpipe, the threads llvmpipe
 * rasterizes and computes with (`LP_NUM_THREADS` when set, else one per CPU), and which Mesa build and API
 * (GL or Vulkan) this process loaded it through. On llvmpipe every GPU number is a CPU number, so a table
 * without them cannot be compared with another machine's; and the adapter's description ("llvmpipe (LLVM
 * 15.0.6, 256 bits)") is the same for Mesa releases whose kernels run up to 1.7× apart (docs/llvmpipe.md).
 *
 * Nothing here throws: an unreadable source gives "unknown" (or null for a count).
 *
 * @module
 */

import { llvmpipeThreads, type LlvmpipeThreadsSource } from "../../gpu/device.ts";
import {
  type MesaApi,
  mesaDriverFiles,
  mesaReleaseOf,
  mesaVersionFromText,
  mesaVersionInFile,
} from "../../gpu/mesa.ts";

export { llvmpipeThreads, type LlvmpipeThreadsSource, mesaDriverFiles, mesaVersionFromText };

/** The host of a bench run. */
export interface HostInfo {
  /** CPU model, e.g. "AMD EPYC 7B13"; "unknown" when the system does not say. */
  cpu: string;
  /** Hardware threads this process may use (`navigator.hardwareConcurrency`); null when unknown. */
  threads: number | null;
  /** Threads llvmpipe uses, when the adapter is llvmpipe; null otherwise (or when unknown). */
  llvmpipeThreads: number | null;
  /** Where {@linkcode HostInfo.llvmpipeThreads} comes from; null when it is null. */
  llvmpipeThreadsFrom: LlvmpipeThreadsSource | null;
  /**
   * The CPU's vector extensions that llvmpipe's code generation depends on (of sse4_2, avx, avx2, fma,
   * avx512f, neon), as /proc/cpuinfo lists them; null where the system does not say (not Linux).
   */
  simd: string[] | null;
  /** `LP_NATIVE_VECTOR_WIDTH` (llvmpipe's vector width in bits) when set on llvmpipe; null otherwise. */
  llvmpipeVectorWidth: number | null;
  /**
   * Mesa's software drivers this process has loaded, on llvmpipe (GL: swrast_dri.so or libgallium; Vulkan:
   * lavapipe's libvulkan_lvp.so), with the Mesa release each file names; null off llvmpipe or where the
   * process's mappings cannot be read (not Linux). Deno loads both when the Vulkan loader is installed and
   * `DENO_WEBGPU_BACKEND` is unset (it then computes through Vulkan).
   */
  mesa: MesaDriver[] | null;
  /** `DENO_WEBGPU_BACKEND` when set (the API Deno's WebGPU is told to use); null otherwise. */
  webgpuBackend: string | null;
}

/** One of Mesa's software drivers mapped into this process. */
export interface MesaDriver {
  api: MesaApi;
  /** The Mesa release the file names (e.g. "22.3.6"); null when no "Mesa x.y.z" string was found in it. */
  version: string | null;
  /** Its path. */
  file: string;
}

/** What {@linkcode hostInfo} reads, injectable for tests. */
export interface HostSources {
  os: string; // Deno.build.os
  /** Text of a file, or null when it cannot be read. */
  readText(path: string): string | null;
  /** stdout of a command, or null when it cannot be run or fails. */
  command(cmd: string, args: string[]): string | null;
  env(name: string): string | undefined;
  threads: number | null;
  /** The first "Mesa x.y.z" release named in a binary file, or null (unreadable, or no such string). */
  mesaVersionIn(path: string): string | null;
}

/**
 * The CPU model named in Linux's /proc/cpuinfo text: the first "model name" (x86), else "Model",
 * "cpu model", "Processor" (some ARM kernels) or "Hardware"; null when none is there.
 *
 * @example
 * ```ts
 * import { cpuModelFromCpuinfo } from "./host.ts";
 * const text = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\n";
 * if (cpuModelFromCpuinfo(text) !== "AMD EPYC 7B13") throw new Error("model name");
 * ```
 */
export function cpuModelFromCpuinfo(text: string): string | null {
  const fields = new Map<string, string>();
  for (const line of text.split("\n")) {
    const i = line.indexOf(":");
    if (i < 0) continue;
    const key = line.slice(0, i).trim().toLowerCase(), value = line.slice(i + 1).trim().replace(/\s+/g, " ");
    if (value !== "" && !fields.has(key)) fields.set(key, value);
  }
  for (const key of ["model name", "model", "cpu model", "processor", "hardware"]) {
    const v = fields.get(key);
    // "processor" is also x86's CPU index ("processor : 0"), which names nothing.
    if (v !== undefined && !/^\d+$/.test(v)) return v;
  }
  return null;
}

/** True for an adapter description naming llvmpipe (the only software adapter whose threads we know). */
export function isLlvmpipe(adapter: string): boolean {
  return /llvmpipe/i.test(adapter);
}

/** The vector extensions {@linkcode HostInfo.simd} lists, in the order printed. */
const _SIMD = ["sse4_2", "avx", "avx2", "fma", "avx512f", "neon", "asimd"] as const;

/**
 * The vector extensions of the first CPU's "flags" (x86) or "Features" (ARM) line of /proc/cpuinfo, of those
 * llvmpipe's code depends on; null when the text has no such line.
 *
 * @example
 * ```ts
 * import { simdFromCpuinfo } from "./host.ts";
 * const got = simdFromCpuinfo("flags\t: fpu sse4_2 avx avx2 fma avx512f\n");
 * if (got?.join(" ") !== "sse4_2 avx avx2 fma avx512f") throw new Error(String(got));
 * ```
 */
export function simdFromCpuinfo(text: string): string[] | null {
  const line = text.split("\n").find((l) => /^(flags|features)\s*:/i.test(l));
  if (line === undefined) return null;
  const have = new Set(line.slice(line.indexOf(":") + 1).trim().split(/\s+/));
  return _SIMD.filter((f) => have.has(f));
}

/**
 * One line's worth of the Mesa drivers: "Mesa 22.3.6 (GL, Vulkan)" when they agree, "Mesa 22.3.6 (GL),
 * 25.0.7 (Vulkan)" when they do not, with "release unknown" for a file that names none.
 */
export function formatMesa(drivers: readonly MesaDriver[]): string {
  const byVersion = new Map<string, string[]>();
  for (const d of drivers) {
    const v = d.version ?? "release unknown";
    byVersion.set(v, [...(byVersion.get(v) ?? []), d.api]);
  }
  return "Mesa " + [...byVersion].map(([v, apis]) => `${v} (${apis.join(", ")})`).join(", ");
}

/** The CPU model from the system's own sources, or "unknown". */
export function cpuModel(s: HostSources): string {
  let model: string | null = null;
  if (s.os === "linux" || s.os === "android") {
    const text = s.readText("/proc/cpuinfo");
    model = text === null ? null : cpuModelFromCpuinfo(text);
  } else if (s.os === "darwin") {
    model = s.command("sysctl", ["-n", "machdep.cpu.brand_string"])?.trim() || null;
  } else if (s.os === "windows") {
    model = s.env("PROCESSOR_IDENTIFIER")?.trim() || null;
  }
  return model ?? "unknown";
}

/** The host of this process, given the adapter the bench opened (for llvmpipe's threads). */
export function hostInfo(adapter: string, s: HostSources = denoHostSources()): HostInfo {
  const lp = isLlvmpipe(adapter) ? llvmpipeThreads(s.env("LP_NUM_THREADS"), s.threads) : null;
  const cpuinfo = s.os === "linux" || s.os === "android" ? s.readText("/proc/cpuinfo") : null;
  const width = lp ? Number(s.env("LP_NATIVE_VECTOR_WIDTH")?.trim() || NaN) : NaN;
  const maps = lp && (s.os === "linux" || s.os === "android") ? s.readText("/proc/self/maps") : null;
  return {
    cpu: cpuModel(s),
    threads: s.threads,
    llvmpipeThreads: lp?.threads ?? null,
    llvmpipeThreadsFrom: lp && lp.threads !== null ? lp.from : null,
    simd: cpuinfo === null ? null : simdFromCpuinfo(cpuinfo),
    llvmpipeVectorWidth: Number.isSafeInteger(width) && width > 0 ? width : null,
    mesa: maps === null ? null : mesaDriverFiles(maps).map(({ api, file }) => ({
      api,
      version: mesaReleaseOf(file, s.mesaVersionIn),
      file,
    })),
    webgpuBackend: s.env("DENO_WEBGPU_BACKEND")?.trim() || null,
  };
}

/**
 * One line for a table header, e.g. "host: AMD EPYC 7B13, 2 threads, sse4_2 avx avx2 fma; llvmpipe threads:
 * 2 (LP_NUM_THREADS unset: one per CPU); Mesa 22.3.6 (GL)", and `DENO_WEBGPU_BACKEND` when it was set.
 */
export function formatHost(h: HostInfo): string {
  const threads =
    (h.threads === null ? "threads unknown" : `${h.threads} thread${h.threads === 1 ? "" : "s"}`) +
    (h.simd === null ? "" : `, ${h.simd.length > 0 ? h.simd.join(" ") : "no vector extensions listed"}`);
  const lp = h.llvmpipeThreads === null
    ? ""
    : `; llvmpipe threads: ${h.llvmpipeThreads} (${
      h.llvmpipeThreadsFrom === "LP_NUM_THREADS" ? "LP_NUM_THREADS" : "LP_NUM_THREADS unset: one per CPU"
    })`;
  const width = h.llvmpipeVectorWidth === null ? "" : `, LP_NATIVE_VECTOR_WIDTH ${h.llvmpipeVectorWidth}`;
  const mesa = h.mesa === null || h.mesa.length === 0 ? "" : `; ${formatMesa(h.mesa)}`;
  const backend = h.webgpuBackend === null ? "" : ` (DENO_WEBGPU_BACKEND=${h.webgpuBackend})`;
  return `host: ${h.cpu}, ${threads}${lp}${width}${mesa}${backend}`;
}

/** The {@linkcode HostSources} of this Deno process; each read that fails gives null. */
export function denoHostSources(): HostSources {
  const attempt = <T>(f: () => T): T | null => {
    try {
      return f();
    } catch {
      return null;
    }
  };
  const threads = attempt(() => navigator.hardwareConcurrency);
  return {
    os: Deno.build.os,
    readText: (path) => attempt(() => Deno.readTextFileSync(path)),
    command: (cmd, args) =>
      attempt(() => {
        const r = new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).outputSync();
        return r.success ? new TextDecoder().decode(r.stdout) : null;
      }),
    env: (name) => attempt(() => Deno.env.get(name)) ?? undefined,
    threads: typeof threads === "number" && threads > 0 ? threads : null,
    mesaVersionIn: (path) => attempt(() => mesaVersionInFile(path)),
  };
}

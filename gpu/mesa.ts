/**
 * Which Mesa release a software adapter runs on. llvmpipe's description ("llvmpipe (LLVM 15.0.6, 256 bits)")
 * is the same across releases whose generated code differs enough for kernels to want another shape
 * (docs/llvmpipe.md, "Mesa 25"), so the release is read from the driver files this process has mapped, and
 * from the version string inside them.
 *
 * @module
 */
import { optionalEnv } from "../core/util/env.ts";

/** The API a Mesa software driver serves: GL (llvmpipe through EGL) or Vulkan (lavapipe). */
export type MesaApi = "GL" | "Vulkan";

/** Which API a mapped file serves, when it is one of Mesa's software drivers; null otherwise. */
function _mesaApi(path: string): MesaApi | null {
  const name = path.slice(path.lastIndexOf("/") + 1);
  if (/^libvulkan_lvp\.so/.test(name)) return "Vulkan";
  // Mesa ≤ 24.0 builds the gallium drivers into swrast_dri.so; later releases into libgallium-<release>.so,
  // which the *_dri.so files load.
  if (/^(kms_)?swrast_dri\.so|^libgallium[-.]/.test(name)) return "GL";
  return null;
}

/**
 * The paths of Mesa's software drivers in a Linux /proc/<pid>/maps text, in the order first mapped, one per
 * API; for GL the libgallium file where one is mapped (newer releases split GL into a small swrast_dri.so and
 * libgallium-<release>.so, which holds the code and names the release).
 *
 * @example
 * ```ts
 * import { mesaDriverFiles } from "./mesa.ts";
 * const maps = "7f0-7f1 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libvulkan_lvp.so\n";
 * const got = mesaDriverFiles(maps);
 * if (got[0]?.api !== "Vulkan") throw new Error(JSON.stringify(got));
 * ```
 */
export function mesaDriverFiles(maps: string): { api: MesaApi; file: string }[] {
  const out: { api: MesaApi; file: string }[] = [];
  for (const line of maps.split("\n")) {
    const file = line.trim().split(/\s+/).slice(5).join(" ");
    const api = file.startsWith("/") ? _mesaApi(file) : null;
    if (api === null) continue;
    const i = out.findIndex((d) => d.api === api);
    if (i < 0) out.push({ api, file });
    else if (/\/libgallium[^/]*$/.test(file)) out[i] = { api, file };
  }
  return out;
}

/**
 * The first Mesa release ("22.3.6") a driver binary names in its version strings ("Mesa 22.3.6",
 * "Mesa 25.0.7-2~bpo12+1"), searched in latin1 text; null when there is none.
 */
export function mesaVersionFromText(text: string): string | null {
  return /Mesa (\d+\.\d+\.\d+)/.exec(text)?.[1] ?? null;
}

/**
 * The first "Mesa x.y.z" in a file, read in 4 MiB pieces that overlap by 64 bytes (a driver is 7–30 MB, and
 * the string sits in its read-only data); null when none.
 */
export function mesaVersionInFile(path: string): string | null {
  const f = Deno.openSync(path, { read: true });
  try {
    const piece = new Uint8Array(4 << 20), latin1 = new TextDecoder("latin1");
    let tail = "";
    for (;;) {
      const n = f.readSync(piece);
      if (n === null || n === 0) return null;
      const text = tail + latin1.decode(piece.subarray(0, n));
      const v = mesaVersionFromText(text);
      if (v !== null) return v;
      tail = text.slice(-64);
    }
  } finally {
    f.close();
  }
}

/**
 * The release a driver file names: from a `libgallium-<release>.so` name, else the first "Mesa x.y.z" inside
 * it (`versionIn`); null when neither says.
 */
export function mesaReleaseOf(file: string, versionIn: (path: string) => string | null): string | null {
  return /\/libgallium-(\d+\.\d+\.\d+)[^/]*$/.exec(file)?.[1] ?? versionIn(file);
}

/**
 * Of the drivers mapped (`mesaDriverFiles`), the one Deno's WebGPU computes through: the API
 * `DENO_WEBGPU_BACKEND` names (gl, vulkan), else Vulkan where lavapipe is loaded (Deno prefers it), else GL.
 *
 * @example
 * ```ts
 * import { computingMesaDriver } from "./mesa.ts";
 * const both = [{ api: "GL" as const, file: "/gl.so" }, { api: "Vulkan" as const, file: "/vk.so" }];
 * if (computingMesaDriver(both, undefined)?.api !== "Vulkan") throw new Error("Vulkan first");
 * if (computingMesaDriver(both, "gl")?.api !== "GL") throw new Error("the backend named");
 * ```
 */
export function computingMesaDriver<T extends { api: MesaApi }>(
  drivers: readonly T[],
  backend: string | undefined,
): T | null {
  const want = backend?.trim().toLowerCase();
  const api: MesaApi | null = want === "gl" ? "GL" : want === "vulkan" ? "Vulkan" : null;
  if (api) return drivers.find((d) => d.api === api) ?? null;
  return drivers.find((d) => d.api === "Vulkan") ?? drivers.find((d) => d.api === "GL") ?? null;
}

/**
 * Whether a Mesa release ("25.0.7") is `major`.0 or later; false for an unknown release (null, or not x.y.z).
 *
 * @example
 * ```ts
 * import { mesaAtLeast } from "./mesa.ts";
 * if (!mesaAtLeast("25.0.7", 23) || mesaAtLeast("22.3.6", 23) || mesaAtLeast(null, 1)) throw new Error();
 * ```
 */
export function mesaAtLeast(release: string | null, major: number): boolean {
  const have = release === null ? NaN : Number(release.split(".")[0]);
  return Number.isInteger(have) && have >= major;
}

let _release: string | null | undefined; // undefined until read

/**
 * The Mesa release this process computes on (a software adapter opened: its driver is mapped by then), once
 * per process; null off Linux, when no Mesa software driver is mapped, or when its file names no release.
 */
export function processMesaRelease(): string | null {
  if (_release !== undefined) return _release;
  _release = null;
  try {
    if (Deno.build.os === "linux") {
      const driver = computingMesaDriver(
        mesaDriverFiles(Deno.readTextFileSync("/proc/self/maps")),
        optionalEnv("DENO_WEBGPU_BACKEND"),
      );
      _release = driver ? mesaReleaseOf(driver.file, mesaVersionInFile) : null;
    }
  } catch {
    // unreadable maps or driver file: the release stays unknown (null)
  }
  return _release;
}

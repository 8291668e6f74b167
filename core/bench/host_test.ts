import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  cpuModelFromCpuinfo,
  denoHostSources,
  formatHost,
  hostInfo,
  type HostSources,
  llvmpipeThreads,
  mesaDriverFiles,
  mesaVersionFromText,
} from "./host.ts";

// Excerpts of real /proc/cpuinfo layouts: x86 (two CPUs), an older ARM kernel, a newer ARM kernel (no name).
const X86 = `processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
stepping\t: 0
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
`;
const ARM_OLD = `Processor\t: AArch64 Processor rev 4 (aarch64)
processor\t: 0
BogoMIPS\t: 38.40
Hardware\t: Qualcomm Technologies, Inc SM8150
`;
const ARM_NEW = `processor\t: 0
BogoMIPS\t: 50.00
CPU implementer\t: 0x41
CPU part\t: 0xd0c
`;

// An excerpt of /proc/self/maps in a Deno process on llvmpipe with the Vulkan loader installed (both of Mesa's
// software drivers mapped, the GL one twice), and the releases the fake files name.
const MAPS = `55d0c000-55d0d000 r--p 00000000 08:01 123 /usr/bin/deno
7f10a000-7f10b000 r--p 00000000 08:01 200 /usr/lib/x86_64-linux-gnu/dri/swrast_dri.so
7f10b000-7f10c000 r-xp 00001000 08:01 200 /usr/lib/x86_64-linux-gnu/dri/swrast_dri.so
7f20a000-7f20b000 r--p 00000000 08:01 201 /opt/mesa 25/lib/libvulkan_lvp.so
7f30a000-7f30b000 r--p 00000000 08:01 202 /usr/lib/x86_64-linux-gnu/libvulkan_radeon.so
7f40a000-7f40b000 rw-p 00000000 00:00 0 [heap]
`;
const VERSIONS: Record<string, string> = {
  "/usr/lib/x86_64-linux-gnu/dri/swrast_dri.so": "22.3.6",
  "/opt/mesa 25/lib/libvulkan_lvp.so": "25.0.7",
};

function fake(over: Partial<HostSources>): HostSources {
  return {
    os: "linux",
    readText: (p) => (p === "/proc/cpuinfo" ? X86 : null),
    command: () => null,
    env: () => undefined,
    threads: 2,
    mesaVersionIn: (p) => VERSIONS[p] ?? null,
    ...over,
  };
}

Deno.test("cpuModelFromCpuinfo() reads the first model name, ARM's Processor line, or nothing", () => {
  assertEquals(cpuModelFromCpuinfo(X86), "AMD EPYC 7B13");
  assertEquals(cpuModelFromCpuinfo(ARM_OLD), "AArch64 Processor rev 4 (aarch64)");
  // x86's "processor : 0" is an index, not a name: nothing names this CPU.
  assertEquals(cpuModelFromCpuinfo(ARM_NEW), null);
  assertEquals(cpuModelFromCpuinfo(""), null);
  assertEquals(cpuModelFromCpuinfo("model name\t:   Intel(R)  Xeon(R)   CPU\n"), "Intel(R) Xeon(R) CPU");
});

Deno.test("llvmpipeThreads(): LP_NUM_THREADS when it is a whole number, else one per CPU", () => {
  assertEquals(llvmpipeThreads("8", 2), { threads: 8, from: "LP_NUM_THREADS" });
  assertEquals(llvmpipeThreads("0", 2), { threads: 0, from: "LP_NUM_THREADS" });
  assertEquals(llvmpipeThreads(undefined, 2), { threads: 2, from: "cpu count" });
  assertEquals(llvmpipeThreads("", 16), { threads: 16, from: "cpu count" });
  assertEquals(llvmpipeThreads("many", 16), { threads: 16, from: "cpu count" });
  assertEquals(llvmpipeThreads(undefined, null), { threads: null, from: "cpu count" });
});

Deno.test("hostInfo() on llvmpipe names the CPU, its threads and where llvmpipe's come from", () => {
  const h = hostInfo("llvmpipe (LLVM 15.0.6, 256 bits)", fake({}));
  assertEquals(h, {
    cpu: "AMD EPYC 7B13",
    threads: 2,
    llvmpipeThreads: 2,
    llvmpipeThreadsFrom: "cpu count",
    simd: ["sse4_2", "avx", "avx2", "fma"],
    llvmpipeVectorWidth: null,
    mesa: null,
    webgpuBackend: null,
  });
  assertEquals(
    formatHost(h),
    "host: AMD EPYC 7B13, 2 threads, sse4_2 avx avx2 fma; llvmpipe threads: 2 (LP_NUM_THREADS unset: one per CPU)",
  );
  const env: Record<string, string> = { LP_NUM_THREADS: "1", LP_NATIVE_VECTOR_WIDTH: "128" };
  const set = hostInfo("llvmpipe", fake({ env: (n) => env[n] }));
  assertEquals(
    formatHost(set),
    "host: AMD EPYC 7B13, 2 threads, sse4_2 avx avx2 fma; llvmpipe threads: 1 (LP_NUM_THREADS), LP_NATIVE_VECTOR_WIDTH 128",
  );
});

Deno.test("hostInfo() on llvmpipe names the Mesa drivers this process loaded and their releases", () => {
  assertEquals(mesaDriverFiles(MAPS), [
    { api: "GL", file: "/usr/lib/x86_64-linux-gnu/dri/swrast_dri.so" },
    { api: "Vulkan", file: "/opt/mesa 25/lib/libvulkan_lvp.so" },
  ]);
  // A newer GL build: the small swrast_dri.so loads libgallium-<release>.so, which is the one reported.
  const split =
    "7f-80 r--p 0 08:01 8 /usr/lib/dri/swrast_dri.so\n7f-80 r--p 0 08:01 9 /usr/lib/libgallium-24.2.8.so\n";
  assertEquals(mesaDriverFiles(split), [{ api: "GL", file: "/usr/lib/libgallium-24.2.8.so" }]);
  const gallium = hostInfo("llvmpipe", fake({ readText: (p) => (p === "/proc/self/maps" ? split : null) }));
  assertEquals(gallium.mesa, [{ api: "GL", version: "24.2.8", file: "/usr/lib/libgallium-24.2.8.so" }]);
  const readText = (p: string) => (p === "/proc/cpuinfo" ? X86 : p === "/proc/self/maps" ? MAPS : null);
  const env: Record<string, string> = { DENO_WEBGPU_BACKEND: "vulkan" };
  const both = hostInfo("llvmpipe (LLVM 15.0.6, 256 bits)", fake({ readText, env: (n) => env[n] }));
  assertEquals(both.mesa?.map((d) => [d.api, d.version]), [["GL", "22.3.6"], ["Vulkan", "25.0.7"]]);
  assertEquals(
    formatHost(both),
    "host: AMD EPYC 7B13, 2 threads, sse4_2 avx avx2 fma; llvmpipe threads: 2 (LP_NUM_THREADS unset: one per " +
      "CPU); Mesa 22.3.6 (GL), 25.0.7 (Vulkan) (DENO_WEBGPU_BACKEND=vulkan)",
  );
  const same = hostInfo("llvmpipe", fake({ readText, mesaVersionIn: () => "22.3.6" }));
  assert(formatHost(same).endsWith("; Mesa 22.3.6 (GL, Vulkan)"), formatHost(same));
  const unnamed = hostInfo("llvmpipe", fake({ readText, mesaVersionIn: () => null }));
  assert(formatHost(unnamed).endsWith("; Mesa release unknown (GL, Vulkan)"), formatHost(unnamed));
  // Off llvmpipe the drivers are not looked for, even where they are mapped.
  assertEquals(hostInfo("NVIDIA H100 80GB HBM3", fake({ readText })).mesa, null);
  assertEquals(mesaVersionFromText("\0GL_VERSION\0%s Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)\0"), "25.0.7");
  assertEquals(mesaVersionFromText("Mesa driver"), null);
});

Deno.test("hostInfo() on a real GPU leaves llvmpipe out; unreadable sources give unknown, not a throw", () => {
  const gpu = hostInfo(
    "NVIDIA H100 80GB HBM3",
    fake({ env: (n) => (n === "LP_NUM_THREADS" ? "4" : undefined) }),
  );
  assertEquals([gpu.llvmpipeThreads, gpu.llvmpipeThreadsFrom], [null, null]);
  assertEquals(formatHost(gpu), "host: AMD EPYC 7B13, 2 threads, sse4_2 avx avx2 fma");
  const none = hostInfo("x", fake({ readText: () => null, threads: null }));
  assertEquals(formatHost(none), "host: unknown, threads unknown");
  const mac = hostInfo("Apple M2", fake({ os: "darwin", command: () => "Apple M2\n", threads: 8 }));
  assertEquals(mac.cpu, "Apple M2");
  assertEquals(hostInfo("x", fake({ os: "darwin" })).cpu, "unknown");
  const win = hostInfo(
    "x",
    fake({ os: "windows", env: (n) => (n === "PROCESSOR_IDENTIFIER" ? "x86 Family 6" : undefined) }),
  );
  assertEquals(win.cpu, "x86 Family 6");
});

Deno.test("denoHostSources() reads this machine without throwing", () => {
  const s = denoHostSources();
  assert(s.threads === null || (Number.isSafeInteger(s.threads) && s.threads > 0), `${s.threads}`);
  assertEquals(s.readText("/nonexistent/cpuinfo"), null);
  assertEquals(s.command("/nonexistent/sysctl", []), null);
  const h = hostInfo("llvmpipe", s);
  assert(h.cpu.length > 0);
  assertEquals(s.mesaVersionIn("/nonexistent/swrast_dri.so"), null);
  // A file that names a release across the 4 MiB pieces it is read in, and one that names none.
  const dir = Deno.makeTempDirSync();
  try {
    const big = new Uint8Array((4 << 20) + 100).fill(0x41);
    big.set(new TextEncoder().encode("Mesa 22.3.6"), (4 << 20) - 5);
    Deno.writeFileSync(`${dir}/a.so`, big);
    assertEquals(s.mesaVersionIn(`${dir}/a.so`), "22.3.6");
    Deno.writeFileSync(`${dir}/b.so`, big.fill(0x41));
    assertEquals(s.mesaVersionIn(`${dir}/b.so`), null);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import {
  cpuModelFromCpuinfo,
  denoHostSources,
  formatHost,
  hostInfo,
  type HostSources,
  llvmpipeThreads,
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

function fake(over: Partial<HostSources>): HostSources {
  return {
    os: "linux",
    readText: (p) => (p === "/proc/cpuinfo" ? X86 : null),
    command: () => null,
    env: () => undefined,
    threads: 2,
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

Deno.test("hostInfo() on a real GPU leaves llvmpipe out; unreadable sources give unknown, not a throw", () => {
  const gpu = hostInfo("NVIDIA H100 80GB HBM3", fake({ env: () => "4" }));
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
});

/**
 * Tests that need the WebGPU feature `shader-f16` (the native f16 matmul), and where they can run.
 *
 * Deno picks its WebGPU backend once per process (`DENO_WEBGPU_BACKEND`, else Vulkan when the Vulkan loader is
 * installed, else GL). Mesa's llvmpipe through GL has no shader-f16, but the same Mesa's Vulkan driver
 * (lavapipe) has it (docs/llvmpipe.md "Settings and compile times"). So a shader-f16 test runs here when this
 * process's adapter has the feature, else in a child `deno test` on the Vulkan backend when that one has it
 * (the test then asserts the child passed it), else nowhere, with a printed reason.
 *
 * @module
 */

/** Where the shader-f16 tests of this process run. */
export type F16Route =
  | { where: "here" }
  | { where: "child"; adapter: string; env: Record<string, string> }
  | { where: "none"; why: string };

/** Set in the child's environment: there the test must run, not spawn again. */
const CHILD = "DSMOE_F16_CHILD";

let _route: Promise<F16Route> | null = null;

/** This process's route for shader-f16 tests (probed once). */
export function f16Route(): Promise<F16Route> {
  return _route ??= _probe();
}

async function _probe(): Promise<F16Route> {
  const adapter = await (globalThis.navigator as Navigator | undefined)?.gpu?.requestAdapter();
  const here = adapter?.info.description ?? "(no adapter)";
  if (adapter?.features.has("shader-f16")) return { where: "here" };
  if (Deno.env.get(CHILD) === "1") {
    return { where: "none", why: `the child process's adapter ${here} has no shader-f16 either` };
  }
  const env = { DENO_WEBGPU_BACKEND: "vulkan", [CHILD]: "1", NO_COLOR: "1" };
  const code = "const a = await navigator.gpu.requestAdapter(); console.log(JSON.stringify(" +
    '{ f16: a?.features.has("shader-f16") ?? false, adapter: a?.info.description ?? null }));';
  let probe: { f16: boolean; adapter: string | null } | null = null;
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", code],
      env,
      stdout: "piped",
      stderr: "null",
      signal: AbortSignal.timeout(60_000),
    }).output();
    const last = new TextDecoder().decode(out.stdout).trim().split("\n").at(-1) ?? "";
    probe = out.success ? JSON.parse(last) : null;
  } catch {
    probe = null;
  }
  if (probe?.f16) return { where: "child", adapter: probe.adapter ?? "(unnamed)", env };
  return {
    where: "none",
    why: `the adapter ${here} has no shader-f16, and ${
      probe === null
        ? "no adapter opens with DENO_WEBGPU_BACKEND=vulkan (no Vulkan loader or driver)"
        : `the Vulkan backend's adapter ${probe.adapter ?? "(none)"} has none either`
    }`,
  };
}

/**
 * Registers a test that needs shader-f16: run here, or in a child `deno test --filter <name>` of `file` on
 * the Vulkan backend (which must pass exactly this one test), or ignored with a printed SKIP line.
 *
 * @param file the test module's URL (`import.meta.url`), run again in the child
 */
export async function f16Test(name: string, file: string, fn: () => Promise<void>): Promise<void> {
  const route = await f16Route();
  if (route.where === "none") console.log(`SKIP "${name}": ${route.why}`);
  Deno.test({
    name,
    ignore: route.where === "none",
    fn: route.where === "child" ? () => _inChild(name, file, route) : fn,
  });
}

async function _inChild(
  name: string,
  file: string,
  { adapter, env }: { adapter: string; env: Record<string, string> },
): Promise<void> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", "--filter", name, new URL(file).pathname],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success || !/\bok \| 1 passed \| 0 failed\b/.test(text)) {
    throw new Error(
      `the child on the Vulkan backend did not pass "${name}" (exit ${out.code}):\n${text.slice(-3000)}`,
    );
  }
  console.log(`"${name}" ran in a child process on the Vulkan backend (${adapter}): passed`);
}

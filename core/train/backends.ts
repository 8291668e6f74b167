/**
 * The backend a config asks for: `hardware.backend: webgpu` (default) or `cpu` (the float64 reference).
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import { assertAdapterFeatures, probeAdapter } from "../../gpu/device.ts";
import { requiredGpuFeatures } from "./gpu_features.ts";
import type { TrainBackend } from "./backend.ts";
import { CpuTrainBackend } from "./cpu_backend.ts";
import { GpuTrainBackend, parseFaultSteps } from "./gpu_backend.ts";
import { optionalEnv } from "../util/env.ts";

/** Creates the training backend of `c`. */
export async function createBackend(c: Readonly<Experiment>): Promise<TrainBackend> {
  switch (c.hardware.backend) {
    case "webgpu": {
      // Fault injection for reliability tests (optimizer steps, 1-based): DSMOE_FAULT_NAN_GRAD=3,4,10- puts a
      // NaN into a gradient, DSMOE_FAULT_DEVICE_LOSS=10 destroys the device at the start of step 10.
      const nan = optionalEnv("DSMOE_FAULT_NAN_GRAD"), lose = optionalEnv("DSMOE_FAULT_DEVICE_LOSS");
      return await GpuTrainBackend.create(c, undefined, {
        ...(nan ? { nanGradAt: parseFaultSteps(nan) } : {}),
        ...(lose ? { loseDeviceAt: parseFaultSteps(lose) } : {}),
      });
    }
    case "cpu":
      return new CpuTrainBackend(c);
    default:
      return c.hardware.backend satisfies never;
  }
}

/**
 * Refuses configs whose training needs a feature this machine's adapter lacks (a GpuFeatureError, a kind of
 * GpuLimitError: exit 2), asking the adapter only (no device is opened, nothing is allocated): called before
 * any data is loaded, store opened or run created. With several points, the first that cannot run is named.
 */
export async function assertTrainableHere(configs: readonly Readonly<Experiment>[]): Promise<void> {
  const adapters = new Map<GPUPowerPreference, Awaited<ReturnType<typeof probeAdapter>>>();
  for (const c of configs) {
    const req = requiredGpuFeatures(c);
    if (!req) continue;
    const pref = c.hardware.power_preference;
    if (!adapters.has(pref)) adapters.set(pref, await probeAdapter(pref));
    const a = adapters.get(pref)!;
    assertAdapterFeatures(a.description, a.features, req);
  }
}

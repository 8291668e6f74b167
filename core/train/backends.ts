/**
 * The backend a config asks for: `hardware.backend: webgpu` (default) or `cpu` (the float64 reference).
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
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

/**
 * The backend a config asks for: `hardware.backend: webgpu` (default) or `cpu` (the float64 reference).
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import type { TrainBackend } from "./backend.ts";
import { CpuTrainBackend } from "./cpu_backend.ts";
import { GpuTrainBackend, parseFaultSteps } from "./gpu_backend.ts";

/** Creates the training backend of `c`. */
export async function createBackend(c: Readonly<Experiment>): Promise<TrainBackend> {
  switch (c.hardware.backend) {
    case "webgpu": {
      // Fault injection for reliability tests: DSMOE_FAULT_NAN_GRAD=3,4,10- (optimizer steps, 1-based).
      let spec: string | undefined;
      try {
        spec = Deno.env.get("DSMOE_FAULT_NAN_GRAD");
      } catch {
        spec = undefined; // no --allow-env
      }
      return await GpuTrainBackend.create(c, undefined, spec ? { nanGradAt: parseFaultSteps(spec) } : {});
    }
    case "cpu":
      return new CpuTrainBackend(c);
    default:
      return c.hardware.backend satisfies never;
  }
}

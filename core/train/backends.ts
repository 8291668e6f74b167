/**
 * The backend a config asks for: `hardware.backend: webgpu` (default) or `cpu` (the float64 reference).
 *
 * @module
 */
import type { Experiment } from "../config/schema.ts";
import type { TrainBackend } from "./backend.ts";
import { CpuTrainBackend } from "./cpu_backend.ts";
import { GpuTrainBackend } from "./gpu_backend.ts";

/** Creates the training backend of `c`. */
export async function createBackend(c: Readonly<Experiment>): Promise<TrainBackend> {
  switch (c.hardware.backend) {
    case "webgpu":
      return await GpuTrainBackend.create(c);
    case "cpu":
      return new CpuTrainBackend(c);
    default:
      return c.hardware.backend satisfies never;
  }
}

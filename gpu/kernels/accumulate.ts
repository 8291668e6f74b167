/**
 * Gradient accumulation: after each micro-step of a training step, every gradient (and loss scalar) is
 * added into an accumulator of its own, `y = scale · ((first ? 0 : y) + x)`, several tensors per dispatch.
 * The first micro-step writes without reading (an accumulator left non-finite by a skipped step cannot leak
 * into the next), the last one scales by 1 / micro-steps, so the accumulator ends as the mean.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { type Binding, simpleKernel, type UniformFields } from "./common.ts";

/** One accumulated tensor: `x` is added into `y` (same size). */
export interface AccumulatePair {
  x: GpuTensor;
  y: GpuTensor;
}

/** The most pairs one {@linkcode accumulate} dispatch takes: two storage bindings each. */
export function accumulateGroup(ctx: GpuContext): number {
  return Math.max(1, Math.min(8, Math.floor(ctx.limits.maxStorageBuffersPerShaderStage / 2)));
}

/**
 * One dispatch over `pairs` (at most {@linkcode accumulateGroup}): y = scale · ((first ? 0 : y) + x), as
 * vec4s for tensors whose size is a multiple of 4, one invocation per vec4 (or element), the tensors' units
 * laid end to end.
 */
export function accumulate(
  ctx: GpuContext,
  o: { pairs: readonly AccumulatePair[]; first: boolean; scale: number },
): KernelCall {
  const n = o.pairs.length;
  if (n < 1 || n > accumulateGroup(ctx)) {
    throw new RangeError(`Cannot accumulate ${n} tensors in one dispatch (1 to ${accumulateGroup(ctx)})`);
  }
  const bindings: Binding[] = [], fields: [string, "u32", number][] = [];
  let units = 0;
  o.pairs.forEach(({ x, y }, t) => {
    if (x.size !== y.size) {
      throw new RangeError(`Cannot accumulate "${x.label}" (${x.size}) into "${y.label}" (${y.size})`);
    }
    const type = x.size % 4 === 0 ? "vec4<f32>" : "f32";
    bindings.push({ name: `x${t}`, tensor: x, type }, { name: `y${t}`, tensor: y, write: true, type });
    fields.push([`s${t}`, "u32", units]);
    units += type === "f32" ? x.size : x.size / 4;
  });
  const update = (t: number) =>
    `{ let j = i - u.s${t}; y${t}[j] = u.scale * (${o.first ? "" : `y${t}[j] + `}x${t}[j]); }`;
  const body = o.pairs.map((_, t) =>
    t === n - 1
      ? `  ${t > 0 ? "else " : ""}${update(t)}`
      : `  ${t > 0 ? "else " : ""}if (i < u.s${t + 1}) ${update(t)}`
  ).join("\n");
  const uniform: UniformFields = [["n", "u32", units], ["scale", "f32", o.scale], ...fields];
  return simpleKernel(ctx, { label: "accumulate", bindings, fields: uniform, invocations: units, body });
}

/**
 * Calls accumulating every pair, grouped {@linkcode accumulateGroup} at a time, in the pairs' order.
 */
export function accumulateCalls(
  ctx: GpuContext,
  pairs: readonly AccumulatePair[],
  o: { first: boolean; scale: number },
): KernelCall[] {
  const calls: KernelCall[] = [], group = accumulateGroup(ctx);
  for (let i = 0; i < pairs.length; i += group) {
    calls.push(accumulate(ctx, { pairs: pairs.slice(i, i + group), ...o }));
  }
  return calls;
}

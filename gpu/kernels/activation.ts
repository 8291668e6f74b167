/**
 * Activations (GELU tanh form, ReLU, SiLU) and their backward, element-wise.
 *
 * @module
 */
import type { ActivationKind } from "../../core/graph/op_types.ts";
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { simpleKernel } from "./common.ts";

export type { ActivationKind };

/** Each activation of x as a WGSL expression of type T (the formulas of core/ref/activation.ts). */
const _FORWARD: Record<ActivationKind, (T: string) => string> = {
  gelu: () => "0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))",
  relu: (T) => `max(x, ${T}(0.0))`,
  silu: () => "x / (1.0 + exp(-x))",
};

/** The activations for one WGSL type T (f32, or vec4<f32> with the suffix 4: four elements at once). */
export function activationWgsl(T: string, sfx: string): string {
  return `
fn gelu${sfx}(x: ${T}) -> ${T} { return ${_FORWARD.gelu(T)}; }
fn gelu_grad${sfx}(x: ${T}) -> ${T} {
  let c = 0.7978845608028654; let t = tanh(c * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 0.134145 * x * x);
}
fn relu${sfx}(x: ${T}) -> ${T} { return ${_FORWARD.relu(T)}; }
fn relu_grad${sfx}(x: ${T}) -> ${T} { return select(${T}(0.0), ${T}(1.0), x > ${T}(0.0)); }
fn silu${sfx}(x: ${T}) -> ${T} { return ${_FORWARD.silu(T)}; }
fn silu_grad${sfx}(x: ${T}) -> ${T} { let s = 1.0 / (1.0 + exp(-x)); return s * (1.0 + x * (1.0 - s)); }
`;
}

/** Element-wise work on vec4s when the size allows (fewer invocations, wide loads), else on scalars. */
function _width(n: number): { type: "vec4<f32>" | "f32"; sfx: string; n: number } {
  return n % 4 === 0 ? { type: "vec4<f32>", sfx: "4", n: n / 4 } : { type: "f32", sfx: "", n };
}

/** y = act(x). */
export function activation(
  ctx: GpuContext,
  o: { kind: ActivationKind; x: GpuTensor; y: GpuTensor },
): KernelCall {
  const w = _width(o.y.size);
  return simpleKernel(ctx, {
    label: `activation_${o.kind}`,
    bindings: [{ name: "x", tensor: o.x, type: w.type }, {
      name: "y",
      tensor: o.y,
      write: true,
      type: w.type,
    }],
    fields: [["n", "u32", w.n]],
    invocations: w.n,
    prelude: activationWgsl(w.type, w.sfx),
    body: `  y[i] = ${o.kind}${w.sfx}(x[i]);`,
  });
}

/** dx = act'(x) ⊙ dy. */
export function activationBackward(
  ctx: GpuContext,
  o: { kind: ActivationKind; x: GpuTensor; dy: GpuTensor; dx: GpuTensor },
): KernelCall {
  const w = _width(o.dx.size);
  return simpleKernel(ctx, {
    label: `activation_backward_${o.kind}`,
    bindings: [
      { name: "x", tensor: o.x, type: w.type },
      { name: "dy", tensor: o.dy, type: w.type },
      { name: "dx", tensor: o.dx, write: true, type: w.type },
    ],
    fields: [["n", "u32", w.n]],
    invocations: w.n,
    prelude: activationWgsl(w.type, w.sfx),
    body: `  dx[i] = ${o.kind}_grad${w.sfx}(x[i]) * dy[i];`,
  });
}

/** WGSL `fn act(x: vec4<f32>) -> vec4<f32>` of activation k (the epilogues of fused kernels). */
const _act4 = (k: ActivationKind) =>
  `fn act(x: vec4<f32>) -> vec4<f32> { return ${_FORWARD[k]("vec4<f32>")}; }`;

/** {@linkcode _act4} of each activation. */
export const ACT_VEC4: Record<ActivationKind, string> = {
  gelu: _act4("gelu"),
  relu: _act4("relu"),
  silu: _act4("silu"),
};

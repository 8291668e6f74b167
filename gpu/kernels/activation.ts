/**
 * Activations (GELU tanh form, ReLU, SiLU) and their backward, element-wise.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { simpleKernel } from "./common.ts";

/** Activation names. */
export type ActivationKind = "gelu" | "relu" | "silu";

const _FNS = `
fn gelu(x: f32) -> f32 { let c = 0.7978845608028654; return 0.5 * x * (1.0 + tanh(c * (x + 0.044715 * x * x * x))); }
fn gelu_grad(x: f32) -> f32 {
  let c = 0.7978845608028654; let t = tanh(c * (x + 0.044715 * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 0.134145 * x * x);
}
fn relu(x: f32) -> f32 { return max(x, 0.0); }
fn relu_grad(x: f32) -> f32 { return select(0.0, 1.0, x > 0.0); }
fn silu(x: f32) -> f32 { return x / (1.0 + exp(-x)); }
fn silu_grad(x: f32) -> f32 { let s = 1.0 / (1.0 + exp(-x)); return s * (1.0 + x * (1.0 - s)); }
`;

/** y = act(x). */
export function activation(
  ctx: GpuContext,
  o: { kind: ActivationKind; x: GpuTensor; y: GpuTensor },
): KernelCall {
  return simpleKernel(ctx, {
    label: `activation_${o.kind}`,
    bindings: [{ name: "x", tensor: o.x }, { name: "y", tensor: o.y, write: true }],
    fields: [["n", "u32", o.y.size]],
    invocations: o.y.size,
    prelude: _FNS,
    body: `  y[i] = ${o.kind}(x[i]);`,
  });
}

/** dx = act'(x) ⊙ dy. */
export function activationBackward(
  ctx: GpuContext,
  o: { kind: ActivationKind; x: GpuTensor; dy: GpuTensor; dx: GpuTensor },
): KernelCall {
  return simpleKernel(ctx, {
    label: `activation_backward_${o.kind}`,
    bindings: [{ name: "x", tensor: o.x }, { name: "dy", tensor: o.dy }, {
      name: "dx",
      tensor: o.dx,
      write: true,
    }],
    fields: [["n", "u32", o.dx.size]],
    invocations: o.dx.size,
    prelude: _FNS,
    body: `  dx[i] = ${o.kind}_grad(x[i]) * dy[i];`,
  });
}

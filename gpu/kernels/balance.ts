/**
 * The Switch load-balance loss per sequence (loss.load_balance_scope: sequence, docs/design.md §16) and its
 * gradient; float64 twin: core/ref/balance.ts. One invocation per (sequence, expert) takes the column means
 * f and P over the sequence's tokens in token order; a single invocation adds the B·E products in a fixed
 * order, so the sum is the same on every run.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { loopBudget, simpleKernel } from "./common.ts";

const _HINT = "Lower data.seq_len";

/** Per (sequence b, expert e): f_b,e · P_b,e (given S as `s`) or f_b,e alone into `out` (B, E). */
function _perSequence(
  ctx: GpuContext,
  label: string,
  o: { s?: GpuTensor; mask: GpuTensor; out: GpuTensor; seq: number },
): KernelCall {
  const [N, E] = o.mask.shape as [number, number], B = N / o.seq;
  loopBudget(ctx, o.seq, `${label} (${o.seq} tokens per sequence)`, _HINT);
  const sIn = o.s ? [{ name: "s", tensor: o.s }] : [];
  return simpleKernel(ctx, {
    label,
    bindings: [...sIn, { name: "m", tensor: o.mask }, { name: "o", tensor: o.out, write: true }],
    fields: [["n", "u32", B * E], ["E", "u32", E], ["seq", "u32", o.seq]],
    invocations: B * E,
    body: `  let e = i % u.E;
  let first = (i / u.E) * u.seq;
  var f = 0.0;
  var p = 0.0;
  for (var t = first; t < first + u.seq; t = t + 1u) {
    f = f + m[t * u.E + e];${o.s ? "\n    p = p + s[t * u.E + e];" : ""}
  }
  let inv = 1.0 / f32(u.seq);
  o[i] = ${o.s ? "(f * inv) * (p * inv)" : "f * inv"};`,
  });
}

/** loss (1,) = (E / (k·B)) · Σ_b Σ_e f_b,e · P_b,e; scratch fp (B, E). */
export function switchLossSeq(
  ctx: GpuContext,
  o: { s: GpuTensor; mask: GpuTensor; loss: GpuTensor; k: number; seq: number; fp: GpuTensor },
): KernelCall[] {
  const [N, E] = o.s.shape as [number, number], B = N / o.seq;
  loopBudget(ctx, B * E, `switch_loss_seq (${B} sequences × ${E} experts)`, "Lower train.micro_batch");
  return [
    _perSequence(ctx, "switch_seq_fp", { s: o.s, mask: o.mask, out: o.fp, seq: o.seq }),
    simpleKernel(ctx, {
      label: "switch_loss_seq",
      bindings: [{ name: "fp", tensor: o.fp }, { name: "l", tensor: o.loss, write: true }],
      fields: [["one", "u32", 1], ["BE", "u32", B * E], ["scale", "f32", E / (o.k * B)]],
      invocations: 1,
      workgroup: 1,
      body: `  var acc = 0.0;
  for (var j = 0u; j < u.BE; j = j + 1u) { acc = acc + fp[j]; }
  l[0] = u.scale * acc;`,
    }),
  ];
}

/** dS[t, e] = dl · E · f_b(t),e / (k · seq · B); scratch f (B, E). */
export function switchLossSeqBackward(
  ctx: GpuContext,
  o: { s: GpuTensor; mask: GpuTensor; dl: GpuTensor; ds: GpuTensor; k: number; seq: number; f: GpuTensor },
): KernelCall[] {
  const [N, E] = o.s.shape as [number, number], B = N / o.seq;
  return [
    _perSequence(ctx, "switch_seq_f", { mask: o.mask, out: o.f, seq: o.seq }),
    simpleKernel(ctx, {
      label: "switch_loss_seq_backward",
      bindings: [{ name: "f", tensor: o.f }, { name: "dl", tensor: o.dl }, {
        name: "ds",
        tensor: o.ds,
        write: true,
      }],
      fields: [["n", "u32", N * E], ["E", "u32", E], ["seq", "u32", o.seq], [
        "scale",
        "f32",
        E / (o.k * o.seq * B),
      ]],
      invocations: N * E,
      body: `  ds[i] = dl[0] * u.scale * f[(i / (u.E * u.seq)) * u.E + i % u.E];`,
    }),
  ];
}

/**
 * The auxiliary-loss-free bias update of one router after an optimizer step (docs/design.md §16), skipped
 * when the step was (`stats[2]`, the optimizer's finite flag, is not 1): b_i ← b_i + rate ·
 * sign(k·T − E·c_i), c_i = round(load_i · T) the tokens of the step's T that selected expert i (`load`
 * holds c_i / T), i.e. sign(mean load − load_i) on exact integer counts. Float64 twin:
 * `balanceBiasUpdateRef` (core/ref/token_choice.ts).
 */
export function balanceBiasUpdate(
  ctx: GpuContext,
  o: { bias: GpuTensor; load: GpuTensor; stats: GpuTensor; rate: number; k: number; tokens: number },
): KernelCall {
  const E = o.bias.size;
  if (!Number.isSafeInteger(o.k * o.tokens) || o.k * o.tokens >= 2 ** 31) {
    throw new RangeError(`Cannot update the balancing bias: k · tokens = ${o.k * o.tokens} exceeds 2^31`);
  }
  return simpleKernel(ctx, {
    label: "balance_bias_update",
    bindings: [
      { name: "b", tensor: o.bias, write: true },
      { name: "load", tensor: o.load },
      { name: "stats", tensor: o.stats },
    ],
    fields: [["n", "u32", E], ["T", "u32", o.tokens], ["kT", "u32", o.k * o.tokens], ["rate", "f32", o.rate]],
    invocations: E,
    body: `  if (stats[2] != 1.0) { return; }
  let count = i32(round(load[i] * f32(u.T)));
  let d = i32(u.kT) - i32(u.n) * count;
  b[i] = b[i] + u.rate * f32(sign(d));`,
  });
}

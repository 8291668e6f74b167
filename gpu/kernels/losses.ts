/**
 * Loss kernels and their gradients: cross-entropy from logits, the DS-MoE mutual-information router loss,
 * the Switch load-balance loss and the router z-loss, and the two router losses' micro-batch forms under
 * gradient accumulation (the batch's p̄ or routed shares given; core/ref/losses.ts). Scalars are (1,)
 * tensors; reductions over rows are deterministic (fixed order), with small scratch tensors the caller
 * allocates.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import {
  type Binding,
  columnSums,
  loopBudget,
  simpleKernel,
  totalSum,
  type UniformFields,
} from "./common.ts";

/** ε inside the entropies' logs (same as core/ref/losses.ts MI_EPS). */
export const MI_EPS = 1e-9;

function _single(
  ctx: GpuContext,
  label: string,
  bindings: Binding[],
  fields: UniformFields,
  body: string,
): KernelCall {
  return simpleKernel(ctx, {
    label,
    bindings,
    fields: [["one", "u32", 1], ...fields],
    invocations: 1,
    workgroup: 1,
    body,
  });
}

const _ROW_LSE = `
  var m = -3.0e38;
  for (var j = 0u; j < u.V; j = j + 1u) { m = max(m, x[b + j]); }
  var s = 0.0;
  for (var j = 0u; j < u.V; j = j + 1u) { s = s + exp(x[b + j] - m); }
  let lse = m + log(s);`;

/** loss (1,) = mean over rows of logsumexp(x) − x[target]; x (N, V), targets (N,); rowLoss scratch (N,). */
export function crossEntropy(
  ctx: GpuContext,
  o: { logits: GpuTensor; targets: GpuTensor; loss: GpuTensor; rowLoss: GpuTensor },
): KernelCall[] {
  const [N, V] = o.logits.shape as [number, number];
  const rows = simpleKernel(ctx, {
    label: "cross_entropy_rows",
    bindings: [{ name: "x", tensor: o.logits }, { name: "t", tensor: o.targets }, {
      name: "r",
      tensor: o.rowLoss,
      write: true,
    }],
    fields: [["n", "u32", N], ["V", "u32", V]],
    invocations: N,
    workgroup: 8,
    body: `  let b = i * u.V;${_ROW_LSE}
  r[i] = lse - x[b + min(t[i], u.V - 1u)];`,
  });
  const meanBindings: Binding[] = [{ name: "r", tensor: o.rowLoss }, {
    name: "l",
    tensor: o.loss,
    write: true,
  }];
  const mean = ctx.profile === "gpu"
    ? totalSum(ctx, {
      label: "cross_entropy_mean",
      bindings: meanBindings,
      fields: [["N", "u32", N]],
      count: "u.N",
      term: "r[k]",
      finish: "l[0] = total / f32(u.N);",
    })
    : _single(
      ctx,
      "cross_entropy_mean",
      meanBindings,
      [["N", "u32", N]],
      `
  var acc = 0.0;
  for (var k = 0u; k < u.N; k = k + 1u) { acc = acc + r[k]; }
  l[0] = acc / f32(u.N);`,
    );
  return [rows, mean];
}

/** dlogits = dl · (softmax − onehot) / N. */
export function crossEntropyBackward(
  ctx: GpuContext,
  o: { logits: GpuTensor; targets: GpuTensor; dl: GpuTensor; dlogits: GpuTensor },
): KernelCall {
  const [N, V] = o.logits.shape as [number, number];
  return simpleKernel(ctx, {
    label: "cross_entropy_backward",
    bindings: [
      { name: "x", tensor: o.logits },
      { name: "t", tensor: o.targets },
      { name: "dl", tensor: o.dl },
      { name: "dx", tensor: o.dlogits, write: true },
    ],
    fields: [["n", "u32", N], ["V", "u32", V]],
    invocations: N,
    workgroup: 8,
    body: `  let b = i * u.V;${_ROW_LSE}
  let sc = dl[0] / f32(u.n); let tg = min(t[i], u.V - 1u);
  for (var j = 0u; j < u.V; j = j + 1u) { dx[b + j] = sc * (exp(x[b + j] - lse) - select(0.0, 1.0, j == tg)); }`,
  });
}

/** What to lower when one invocation would sum over too many tokens on llvmpipe. */
const _TOKENS_HINT = "Lower train.micro_batch × data.seq_len (the tokens one graph execution sums over)";

/** out (E,) = column means of x (N, E) (a micro-batch's router statistics). */
export function meanRows(ctx: GpuContext, o: { x: GpuTensor; out: GpuTensor }): KernelCall {
  return _colMean(ctx, "mean_rows", o.x, o.out);
}

function _colMean(ctx: GpuContext, label: string, s: GpuTensor, out: GpuTensor): KernelCall {
  const [N, E] = s.shape as [number, number];
  loopBudget(
    ctx,
    N,
    `${label} (${N} rows)`,
    _TOKENS_HINT,
  );
  if (ctx.profile === "gpu") {
    return columnSums(ctx, {
      label,
      bindings: [{ name: "s", tensor: s }, { name: "o", tensor: out, write: true }],
      fields: [["n", "u32", E], ["rows", "u32", N]],
      terms: ["s[r * u.n + i]"],
      finish: "o[i] = s0 / f32(u.rows);",
    });
  }
  return simpleKernel(ctx, {
    label,
    bindings: [{ name: "s", tensor: s }, { name: "o", tensor: out, write: true }],
    fields: [["n", "u32", E], ["N", "u32", N]],
    invocations: E,
    body: `  var acc = 0.0;
  for (var t = 0u; t < u.N; t = t + 1u) { acc = acc + s[t * u.n + i]; }
  o[i] = acc / f32(u.N);`,
  });
}

/** loss (1,) = −H(p̄) + mean_t H(S_t); S (N, E); pbar scratch (E,). */
export function miLoss(ctx: GpuContext, o: { s: GpuTensor; loss: GpuTensor; pbar: GpuTensor }): KernelCall[] {
  const [N, E] = o.s.shape as [number, number];
  const miBindings: Binding[] = [{ name: "s", tensor: o.s }, { name: "p", tensor: o.pbar }, {
    name: "l",
    tensor: o.loss,
    write: true,
  }];
  const miFields: UniformFields = [["N", "u32", N], ["E", "u32", E], ["eps", "f32", MI_EPS]];
  loopBudget(
    ctx,
    N * E + E,
    `mi_loss (${N} rows × ${E} experts)`,
    _TOKENS_HINT,
  );
  return [
    _colMean(ctx, "mi_loss_pbar", o.s, o.pbar),
    ctx.profile === "gpu"
      ? totalSum(ctx, {
        label: "mi_loss",
        bindings: miBindings,
        fields: miFields,
        count: "u.N * u.E",
        term: "s[k] * log(s[k] + u.eps)",
        finish: `var acc = 0.0;
    for (var e = 0u; e < u.E; e = e + 1u) { acc = acc + p[e] * log(p[e] + u.eps); }
    l[0] = acc - total / f32(u.N);`,
      })
      : _single(
        ctx,
        "mi_loss",
        miBindings,
        miFields,
        `
  var acc = 0.0;
  for (var e = 0u; e < u.E; e = e + 1u) { acc = acc + p[e] * log(p[e] + u.eps); }
  var h = 0.0;
  for (var k = 0u; k < u.N * u.E; k = k + 1u) { h = h + s[k] * log(s[k] + u.eps); }
  l[0] = acc - h / f32(u.N);`,
      ),
  ];
}

/** dS = (dl/N)·[log(p̄+ε) + p̄/(p̄+ε) − log(S+ε) − S/(S+ε)]. */
export function miLossBackward(
  ctx: GpuContext,
  o: { s: GpuTensor; dl: GpuTensor; ds: GpuTensor; pbar: GpuTensor },
): KernelCall[] {
  return [_colMean(ctx, "mi_loss_backward_pbar", o.s, o.pbar), _miBackward(ctx, "mi_loss_backward", o)];
}

/** dS from a p̄ already in `pbar`. */
function _miBackward(
  ctx: GpuContext,
  label: string,
  o: { s: GpuTensor; dl: GpuTensor; ds: GpuTensor; pbar: GpuTensor },
): KernelCall {
  const [N, E] = o.s.shape as [number, number];
  return simpleKernel(ctx, {
    label,
    bindings: [{ name: "s", tensor: o.s }, { name: "p", tensor: o.pbar }, { name: "dl", tensor: o.dl }, {
      name: "ds",
      tensor: o.ds,
      write: true,
    }],
    fields: [["n", "u32", N * E], ["E", "u32", E], ["N", "u32", N], ["eps", "f32", MI_EPS]],
    invocations: N * E,
    body: `  let pb = p[i % u.E]; let v = s[i];
  ds[i] = dl[0] / f32(u.N) * (log(pb + u.eps) + pb / (pb + u.eps) - log(v + u.eps) - v / (v + u.eps));`,
  });
}

/**
 * The MI loss of a micro-batch against the batch's p̄ (`pbar`, given): loss (1,) = F(pbar) + Σ_e c_e·(own_e −
 * pbar_e) − (1/N) Σ S log(S + ε), F(p) = Σ p log(p + ε), c = log(pbar + ε) + pbar/(pbar + ε), own = the
 * micro-batch's column means (scratch (E,)).
 */
export function miLossGlobal(
  ctx: GpuContext,
  o: { s: GpuTensor; pbar: GpuTensor; loss: GpuTensor; own: GpuTensor },
): KernelCall[] {
  const [N, E] = o.s.shape as [number, number];
  const bindings: Binding[] = [
    { name: "s", tensor: o.s },
    { name: "g", tensor: o.pbar },
    { name: "p", tensor: o.own },
    { name: "l", tensor: o.loss, write: true },
  ];
  const fields: UniformFields = [["N", "u32", N], ["E", "u32", E], ["eps", "f32", MI_EPS]];
  loopBudget(ctx, N * E + E, `mi_loss_global (${N} rows × ${E} experts)`, _TOKENS_HINT);
  const linear = `var acc = 0.0;
    for (var e = 0u; e < u.E; e = e + 1u) {
      let b = g[e];
      acc = acc + b * log(b + u.eps) + (log(b + u.eps) + b / (b + u.eps)) * (p[e] - b);
    }`;
  return [
    _colMean(ctx, "mi_loss_global_pbar", o.s, o.own),
    ctx.profile === "gpu"
      ? totalSum(ctx, {
        label: "mi_loss_global",
        bindings,
        fields,
        count: "u.N * u.E",
        term: "s[k] * log(s[k] + u.eps)",
        finish: `${linear}
    l[0] = acc - total / f32(u.N);`,
      })
      : _single(
        ctx,
        "mi_loss_global",
        bindings,
        fields,
        `
  ${linear}
  var h = 0.0;
  for (var k = 0u; k < u.N * u.E; k = k + 1u) { h = h + s[k] * log(s[k] + u.eps); }
  l[0] = acc - h / f32(u.N);`,
      ),
  ];
}

/** dS = (dl/N)·[c(pbar) − log(S+ε) − S/(S+ε)] with the batch's p̄ given. */
export function miLossGlobalBackward(
  ctx: GpuContext,
  o: { s: GpuTensor; pbar: GpuTensor; dl: GpuTensor; ds: GpuTensor },
): KernelCall {
  return _miBackward(ctx, "mi_loss_global_backward", o);
}

/** loss (1,) = E · Σ_e (f_e/k) P_e; f = column means of mask, P = of S; scratch fp (2E,). */
export function switchLoss(
  ctx: GpuContext,
  o: { s: GpuTensor; mask: GpuTensor; loss: GpuTensor; k: number; f: GpuTensor; p: GpuTensor },
): KernelCall[] {
  return [
    _colMean(ctx, "switch_f", o.mask, o.f),
    _colMean(ctx, "switch_p", o.s, o.p),
    _switchTotal(ctx, "switch_loss", o),
  ];
}

/**
 * loss = E · Σ_e (f_e/k) p_e from column means already in f and p; k = 0 divides by Σ_e f_e instead (1 when
 * it is 0; the shares of a varying number of routed experts per token, core/ref/losses.ts `switchK`).
 */
function _switchTotal(
  ctx: GpuContext,
  label: string,
  o: { s: GpuTensor; loss: GpuTensor; k: number; f: GpuTensor; p: GpuTensor },
): KernelCall {
  return _single(
    ctx,
    label,
    [{ name: "f", tensor: o.f }, { name: "p", tensor: o.p }, { name: "l", tensor: o.loss, write: true }],
    [["E", "u32", o.s.shape[1]!], ["k", "f32", o.k]],
    `
  var acc = 0.0;${o.k > 0 ? "" : _SHARES_K}
  for (var e = 0u; e < u.E; e = e + 1u) { acc = acc + f[e] / ${o.k > 0 ? "u.k" : "kk"} * p[e]; }
  l[0] = f32(u.E) * acc;`,
  );
}

/** WGSL of `kk`, the Switch divisor of k = 0: Σ_e f[e], or 1 when that is 0. */
const _SHARES_K = `
  var kk = 0.0;
  for (var e = 0u; e < u.E; e = e + 1u) { kk = kk + f[e]; }
  if (kk <= 0.0) { kk = 1.0; }`;

/** The Switch loss of a micro-batch against the batch's routed shares f (given); scratch p (E,). */
export function switchLossGlobal(
  ctx: GpuContext,
  o: { s: GpuTensor; f: GpuTensor; loss: GpuTensor; k: number; p: GpuTensor },
): KernelCall[] {
  return [_colMean(ctx, "switch_global_p", o.s, o.p), _switchTotal(ctx, "switch_loss_global", o)];
}

/** dS[t, e] = dl · E · f_e / (k · N). */
export function switchLossBackward(
  ctx: GpuContext,
  o: { s: GpuTensor; mask: GpuTensor; dl: GpuTensor; ds: GpuTensor; k: number; f: GpuTensor },
): KernelCall[] {
  return [
    _colMean(ctx, "switch_backward_f", o.mask, o.f),
    _switchBackward(ctx, "switch_loss_backward", o),
  ];
}

/** dS = dl · E · f / (k · N) with the batch's routed shares f given. */
export function switchLossGlobalBackward(
  ctx: GpuContext,
  o: { s: GpuTensor; f: GpuTensor; dl: GpuTensor; ds: GpuTensor; k: number },
): KernelCall {
  return _switchBackward(ctx, "switch_loss_global_backward", o);
}

function _switchBackward(
  ctx: GpuContext,
  label: string,
  o: { s: GpuTensor; f: GpuTensor; dl: GpuTensor; ds: GpuTensor; k: number },
): KernelCall {
  const [N, E] = o.s.shape as [number, number];
  return simpleKernel(ctx, {
    label,
    bindings: [{ name: "f", tensor: o.f }, { name: "dl", tensor: o.dl }, {
      name: "ds",
      tensor: o.ds,
      write: true,
    }],
    fields: [["n", "u32", N * E], ["E", "u32", E], ["kN", "f32", (o.k > 0 ? o.k : 1) * N]],
    invocations: N * E,
    body: o.k > 0 ? `  ds[i] = dl[0] * f32(u.E) * f[i % u.E] / u.kN;` : `${_SHARES_K}
  ds[i] = dl[0] * f32(u.E) * f[i % u.E] / (kk * u.kN);`,
  });
}

/** loss (1,) = mean_t logsumexp(x_t)²; x (N, E). */
export function zLoss(ctx: GpuContext, o: { logits: GpuTensor; loss: GpuTensor }): KernelCall {
  const [N, E] = o.logits.shape as [number, number];
  return _single(
    ctx,
    "z_loss",
    [{ name: "x", tensor: o.logits }, { name: "l", tensor: o.loss, write: true }],
    [["N", "u32", N], [
      "V",
      "u32",
      E,
    ]],
    `
  var acc = 0.0;
  for (var t = 0u; t < u.N; t = t + 1u) {
    let b = t * u.V;${_ROW_LSE.replaceAll("\n", "\n  ")}
    acc = acc + lse * lse;
  }
  l[0] = acc / f32(u.N);`,
  );
}

/** dx = dl · (2/N) · lse_t · softmax(x_t). */
export function zLossBackward(
  ctx: GpuContext,
  o: { logits: GpuTensor; dl: GpuTensor; dx: GpuTensor },
): KernelCall {
  const [N, E] = o.logits.shape as [number, number];
  return simpleKernel(ctx, {
    label: "z_loss_backward",
    bindings: [{ name: "x", tensor: o.logits }, { name: "dl", tensor: o.dl }, {
      name: "dx",
      tensor: o.dx,
      write: true,
    }],
    fields: [["n", "u32", N], ["V", "u32", E]],
    invocations: N,
    workgroup: 8,
    body: `  let b = i * u.V;${_ROW_LSE}
  let sc = dl[0] * 2.0 * lse / f32(u.n);
  for (var j = 0u; j < u.V; j = j + 1u) { dx[b + j] = sc * exp(x[b + j] - lse); }`,
  });
}

/**
 * Embedding lookup and its deterministic scatter-add gradient (each vocabulary row walks a chain of its
 * own tokens — no float atomics, same result every run), and the row-periodic add of learned positions with
 * its gradient.
 *
 * @module
 */
import type { GpuTensor } from "../buffers.ts";
import type { GpuContext } from "../device.ts";
import type { KernelCall } from "../dispatch.ts";
import { loopBudget, simpleKernel, vecGroup } from "./common.ts";

/** y (N, d) = w[ids]; ids (N,) u32, w (V, d). */
export function embedding(ctx: GpuContext, o: { ids: GpuTensor; w: GpuTensor; y: GpuTensor }): KernelCall {
  const d = o.w.shape[1]!, n = o.y.size;
  return simpleKernel(ctx, {
    label: "embedding",
    bindings: [{ name: "ids", tensor: o.ids }, { name: "w", tensor: o.w }, {
      name: "y",
      tensor: o.y,
      write: true,
    }],
    fields: [["n", "u32", n], ["d", "u32", d], ["vocab", "u32", o.w.shape[0]!]],
    invocations: n,
    body: `  let t = i / u.d; let id = min(ids[t], u.vocab - 1u);
  y[i] = w[id * u.d + i % u.d];`,
  });
}

/**
 * y = wte[ids] + wpe[pos] (N, d) in one dispatch: decoding's token and position embeddings and their sum
 * (core/plan/fuse_decode.ts). Ids and positions past their tables are clamped, as in {@linkcode embedding}.
 */
export function embeddingPair(
  ctx: GpuContext,
  o: { ids: GpuTensor; wte: GpuTensor; pos: GpuTensor; wpe: GpuTensor; y: GpuTensor },
): KernelCall {
  const d = o.wte.shape[1]!, n = o.y.size;
  return simpleKernel(ctx, {
    label: "embedding_pair",
    bindings: [
      { name: "ids", tensor: o.ids },
      { name: "wte", tensor: o.wte },
      { name: "pos", tensor: o.pos },
      { name: "wpe", tensor: o.wpe },
      { name: "y", tensor: o.y, write: true },
    ],
    fields: [["n", "u32", n], ["d", "u32", d], ["vocab", "u32", o.wte.shape[0]!], [
      "T",
      "u32",
      o.wpe.shape[0]!,
    ]],
    invocations: n,
    body: `  let t = i / u.d; let j = i % u.d;
  y[i] = wte[min(ids[t], u.vocab - 1u) * u.d + j] + wpe[min(pos[t], u.T - 1u) * u.d + j];`,
  });
}

/** The u32 words {@linkcode embeddingGrad} needs as scratch: a chain head per vocabulary row, a link per token. */
export function embeddingGradScratch(vocab: number, tokens: number): number {
  return vocab + tokens;
}

/**
 * dw (V, d): Σ of dy rows by token id; ids (N,), dy (N, d); `links` holds
 * {@linkcode embeddingGradScratch} u32 words. Three dispatches, no float atomics: clear the chain heads; one
 * invocation per token finds the token's next occurrence (and, for a first occurrence, writes the chain head
 * of its id); one invocation per (row, columns) then walks its row's chain. Each row sums its tokens' dy rows
 * in ascending token order from zero, the order a scan over all tokens would use, so the result is the same
 * every run — and it reads only its own tokens (a scan read all N ids for each of the V rows: V·N steps,
 * ~9% of a BPE-4096 training step on llvmpipe). Ids ≥ V (the forward clamps them) contribute nothing.
 */
export function embeddingGrad(
  ctx: GpuContext,
  o: { ids: GpuTensor; dy: GpuTensor; dw: GpuTensor; links: GpuTensor },
): KernelCall[] {
  const d = o.dw.shape[1]!, vocab = o.dw.shape[0]!, tokens = o.ids.size;
  loopBudget(
    ctx,
    tokens,
    `embedding_grad (${tokens} tokens)`,
    "Lower train.micro_batch × data.seq_len (the tokens one micro-step sums over)",
  );
  if (o.links.size < embeddingGradScratch(vocab, tokens)) {
    throw new RangeError(`embedding_grad: links holds ${o.links.size} words, needs ${vocab + tokens}`);
  }
  const NONE = "0xffffffffu";
  const links = { name: "links", tensor: o.links, type: "u32" as const };
  const clear = simpleKernel(ctx, {
    label: "embedding_grad_clear",
    bindings: [{ ...links, write: true }],
    fields: [["n", "u32", vocab]],
    invocations: vocab,
    body: `  links[i] = ${NONE};`,
  });
  const link = simpleKernel(ctx, {
    label: "embedding_grad_link",
    bindings: [{ name: "ids", tensor: o.ids }, { ...links, write: true }],
    fields: [["n", "u32", tokens], ["vocab", "u32", vocab]],
    invocations: tokens,
    body: `  let id = ids[i];
  var next = ${NONE};
  if (id < u.vocab) {
    var first = true;
    for (var t = 0u; t < i; t = t + 1u) { if (ids[t] == id) { first = false; break; } }
    for (var t = i + 1u; t < u.n; t = t + 1u) { if (ids[t] == id) { next = t; break; } }
    if (first) { links[id] = i; }
  }
  links[u.vocab + i] = next;`,
  });
  // The chain walk: t runs through the row's tokens in ascending order (each link points forward).
  const walk = (add: string) =>
    `  var t = links[v];
  loop {
    if (t == ${NONE}) { break; }
${add}
    t = links[u.vocab + t];
  }`;
  if (d % 4 === 0) {
    // G vec4s of one row per invocation.
    const G = vecGroup(d), groups = d / (4 * G);
    const accs = Array.from({ length: G }, (_, g) => g);
    const gather = simpleKernel(ctx, {
      label: "embedding_grad",
      bindings: [
        links,
        { name: "dy", tensor: o.dy, type: "vec4<f32>" },
        { name: "dw", tensor: o.dw, write: true, type: "vec4<f32>" },
      ],
      fields: [["n", "u32", o.dw.size / (4 * G)], ["d4", "u32", d / 4], ["vocab", "u32", vocab]],
      invocations: o.dw.size / (4 * G),
      body: `  let v = i / ${groups}u;
  let c = (i % ${groups}u) * ${G}u;
${accs.map((g) => `  var a${g} = vec4<f32>(0.0);`).join("\n")}
${
        walk(`    let r = t * u.d4 + c;
${accs.map((g) => `    a${g} = a${g} + dy[r + ${g}u];`).join("\n")}`)
      }
  let o = v * u.d4 + c;
${accs.map((g) => `  dw[o + ${g}u] = a${g};`).join("\n")}`,
    });
    return [clear, link, gather];
  }
  const gather = simpleKernel(ctx, {
    label: "embedding_grad",
    bindings: [links, { name: "dy", tensor: o.dy }, { name: "dw", tensor: o.dw, write: true }],
    fields: [["n", "u32", o.dw.size], ["d", "u32", d], ["vocab", "u32", vocab]],
    invocations: o.dw.size,
    body: `  let v = i / u.d; let j = i % u.d;
  var acc = 0.0;
${walk(`    acc = acc + dy[t * u.d + j];`)}
  dw[i] = acc;`,
  });
  return [clear, link, gather];
}

/** y (N, d) = x + p[n mod period]; p (period, d). */
export function addRows(ctx: GpuContext, o: { x: GpuTensor; p: GpuTensor; y: GpuTensor }): KernelCall {
  const [period, d] = o.p.shape as [number, number];
  return simpleKernel(ctx, {
    label: "add_rows",
    bindings: [{ name: "x", tensor: o.x }, { name: "p", tensor: o.p }, {
      name: "y",
      tensor: o.y,
      write: true,
    }],
    fields: [["n", "u32", o.y.size], ["d", "u32", d], ["period", "u32", period]],
    invocations: o.y.size,
    body: `  y[i] = x[i] + p[((i / u.d) % u.period) * u.d + i % u.d];`,
  });
}

/** out (period, d): rows of dy (N, d) summed by row mod period. */
export function sumRowsMod(ctx: GpuContext, o: { dy: GpuTensor; out: GpuTensor }): KernelCall {
  const [period, d] = o.out.shape as [number, number], rows = o.dy.size / d;
  return simpleKernel(ctx, {
    label: "sum_rows_mod",
    bindings: [{ name: "dy", tensor: o.dy }, { name: "o", tensor: o.out, write: true }],
    fields: [["n", "u32", o.out.size], ["d", "u32", d], ["period", "u32", period], ["rows", "u32", rows]],
    invocations: o.out.size,
    body: `  let r0 = i / u.d; let j = i % u.d;
  var acc = 0.0;
  for (var r = r0; r < u.rows; r = r + u.period) { acc = acc + dy[r * u.d + j]; }
  o[i] = acc;`,
  });
}

/** y (rows, d) = x + b (d). */
export function biasAdd(ctx: GpuContext, o: { x: GpuTensor; b: GpuTensor; y: GpuTensor }): KernelCall {
  if (o.b.size % 4 === 0) {
    // Rows of a multiple of 4: whole vec4s of x, b and y (memory bound; vec4 is ~2× scalar on llvmpipe).
    const v = "vec4<f32>" as const;
    return simpleKernel(ctx, {
      label: "bias_add_vec4",
      bindings: [{ name: "x", tensor: o.x, type: v }, { name: "b", tensor: o.b, type: v }, {
        name: "y",
        tensor: o.y,
        write: true,
        type: v,
      }],
      fields: [["n", "u32", o.y.size / 4], ["d", "u32", o.b.size / 4]],
      invocations: o.y.size / 4,
      body: `  y[i] = x[i] + b[i % u.d];`,
    });
  }
  return simpleKernel(ctx, {
    label: "bias_add",
    bindings: [{ name: "x", tensor: o.x }, { name: "b", tensor: o.b }, {
      name: "y",
      tensor: o.y,
      write: true,
    }],
    fields: [["n", "u32", o.y.size], ["d", "u32", o.b.size]],
    invocations: o.y.size,
    body: `  y[i] = x[i] + b[i % u.d];`,
  });
}

/** out (d) = column sums of x (rows, d). */
export function sumRows(ctx: GpuContext, o: { x: GpuTensor; out: GpuTensor }): KernelCall {
  const d = o.out.size;
  loopBudget(
    ctx,
    o.x.size / d,
    `sum_rows (${o.x.size / d} rows)`,
    "Lower train.micro_batch × data.seq_len (the tokens one micro-step sums over)",
  );
  return simpleKernel(ctx, {
    label: "sum_rows",
    bindings: [{ name: "x", tensor: o.x }, { name: "o", tensor: o.out, write: true }],
    fields: [["n", "u32", d], ["rows", "u32", o.x.size / d]],
    invocations: d,
    body: `  var acc = 0.0;
  for (var r = 0u; r < u.rows; r = r + 1u) { acc = acc + x[r * u.n + i]; }
  o[i] = acc;`,
  });
}

/**
 * Model FLOPs of a training step, counted on the planned graph (docs/performance.md "MFU"): for every node
 * of the train-dense schedule, 2·M·N·K per matmul, and for causal attention the products over the lower
 * triangle of each (sequence, query head): QKᵀ and P·V forward (2·2·D per query–key pair), dQ, dK, dV and dP
 * backward (twice the forward). Elementwise work, norms, softmax, losses and the optimizer are not counted,
 * nor what a kernel recomputes (attention's backward recomputes P): the convention of model FLOPs
 * utilization. A step runs the schedule once per micro-step; the router statistics pass of gradient
 * accumulation (a forward per micro-batch, plan.ts) is overhead of the implementation and is not counted
 * either.
 *
 * @module
 */
import { attrsOf, type Node } from "../graph/ir.ts";
import type { Schedule } from "../graph/schedule.ts";
import type { TrainPlan } from "./plan.ts";

/** FLOPs of one execution of a schedule, by kind. */
export interface GraphFlops {
  matmul: number;
  attention: number;
  total: number;
}

/** The model FLOPs of one node: matmul and attention (forward and backward); 0 for every other op. */
export function nodeFlops(n: Node): { matmul: number; attention: number } {
  switch (n.op) {
    case "matmul": {
      const [m, nn] = n.outputs[0]!.shape as [number, number];
      const a = n.inputs[0]!.shape, k = attrsOf(n, "matmul").transA ? a[0]! : a[1]!;
      return { matmul: 2 * m * nn * k, attention: 0 };
    }
    case "attention":
      return { matmul: 0, attention: _attentionForward(n) };
    case "attention_backward":
      return { matmul: 0, attention: 2 * _attentionForward(n) };
    default:
      return { matmul: 0, attention: 0 };
  }
}

/** Causal attention's forward over q (B, T, Hq, D): QKᵀ and P·V over T(T+1)/2 pairs per (sequence, head). */
function _attentionForward(n: Node): number {
  const [B, T, Hq, D] = n.inputs[0]!.shape as [number, number, number, number];
  return 2 * 2 * B * Hq * D * ((T * (T + 1)) / 2);
}

/** The model FLOPs of one execution of `s`. */
export function scheduleFlops(s: Schedule): GraphFlops {
  let matmul = 0, attention = 0;
  for (const n of s.nodes) {
    const f = nodeFlops(n);
    matmul += f.matmul;
    attention += f.attention;
  }
  return { matmul, attention, total: matmul + attention };
}

/** The model FLOPs of one optimizer step of a training plan: its schedule times the micro-steps. */
export function trainStepFlops(p: TrainPlan): GraphFlops {
  const f = scheduleFlops(p.schedule), k = p.accumulation;
  return { matmul: k * f.matmul, attention: k * f.attention, total: k * f.total };
}

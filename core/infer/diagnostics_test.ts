import { deepStrictEqual as assertEquals, ok as assert, throws as assertThrows } from "node:assert/strict";
import {
  activeShare,
  coactivation,
  entropyBits,
  expertLoad,
  jointCounts,
  mutualInformationBits,
  routingEntropy,
  RoutingTally,
  top1,
  top1Changed,
} from "./diagnostics.ts";

const near = (a: number, b: number, what: string) =>
  assert(Math.abs(a - b) <= 1e-12, `${what}: ${a} vs ${b}`);

Deno.test("top1 takes each token's most probable expert, ties to the lower index; expertLoad shares them", () => {
  const assign = top1([0.2, 0.8, 0.5, 0.5, 0.7, 0.3], 2);
  assertEquals(Array.from(assign), [1, 0, 0]);
  assertEquals(Array.from(expertLoad(assign, 2)), [2 / 3, 1 / 3]);
  assertEquals(Array.from(expertLoad([2, 2, 0, 2], 4)), [0.25, 0, 0.75, 0]);
  assertThrows(() => top1([0.5, 0.5, 1], 2), /3 values are not rows of 2 experts/);
});

Deno.test("routingEntropy is the mean per-token entropy in nats, 0 · ln 0 = 0", () => {
  // (ln 2 + 0) / 2: a uniform token over two experts, then a one-hot one.
  near(routingEntropy([0.5, 0.5, 1, 0], 2), Math.LN2 / 2, "two tokens");
  near(routingEntropy([0.25, 0.25, 0.25, 0.25], 4), Math.log(4), "uniform over 4");
  // −(0.7 ln 0.7 + 0.2 ln 0.2 + 0.1 ln 0.1) = 0.8018185525433373
  near(routingEntropy([0.7, 0.2, 0.1], 3), 0.8018185525433373, "0.7/0.2/0.1");
});

Deno.test("top1Changed is the share of tokens whose top-1 expert differs between two evaluations", () => {
  assertEquals(top1Changed([0, 1, 2, 3], [0, 1, 3, 3]), 0.25);
  assertEquals(top1Changed([1, 1], [1, 1]), 0);
  assertThrows(() => top1Changed([0], [0, 1]), /1 tokens against 2/);
});

Deno.test("coactivation counts the tokens for which both experts run, over all tokens; its diagonal is activeShare", () => {
  // Tokens run {0, 1}, {1, 2} and {0, 1, 2}.
  const mask = [1, 1, 0, 0, 1, 1, 1, 1, 1];
  assertEquals(Array.from(coactivation(mask, 3)), [2, 2, 1, 2, 3, 2, 1, 2, 2].map((c) => c / 3));
  assertEquals(Array.from(activeShare(mask, 3)), [2 / 3, 1, 2 / 3]);
});

Deno.test("mutualInformationBits from joint counts of expert and domain: hand-computed cases", () => {
  // Expert = domain: H(domain) = 1 bit; independent: 0.
  assertEquals(mutualInformationBits(jointCounts([0, 0, 1, 1], [0, 0, 1, 1], 2, 2), 2, 2), 1);
  assertEquals(mutualInformationBits(jointCounts([0, 1, 0, 1], [0, 0, 1, 1], 2, 2), 2, 2), 0);
  // [[3, 1], [1, 3]] of 8: 2 · 3/8 · log2((3/8) / (1/4)) + 2 · 1/8 · log2((1/8) / (1/4)) = ¾ log2 1.5 − ¼.
  near(mutualInformationBits([3, 1, 1, 3], 2, 2), 0.75 * Math.log2(1.5) - 0.25, "[[3,1],[1,3]]");
  // Three experts, two domains: [[2, 0], [1, 1], [0, 4]]: p(e) = (¼, ¼, ½), p(d) = (⅜, ⅝).
  const want = 0.25 * Math.log2(8 / 3) + 0.125 * Math.log2(4 / 3) + 0.125 * Math.log2(4 / 5) +
    0.5 * Math.log2(8 / 5);
  near(mutualInformationBits([2, 0, 1, 1, 0, 4], 3, 2), want, "3×2");
  near(entropyBits([3, 5]), -(3 / 8) * Math.log2(3 / 8) - (5 / 8) * Math.log2(5 / 8), "H(3/8, 5/8)");
  assert(want <= entropyBits([3, 5]), "MI is at most H(domain)");
  // A label ≥ D is unlabelled and left out.
  assertEquals(Array.from(jointCounts([0, 1, 1], [1, 0, 255], 2, 2)), [0, 1, 1, 0]);
  assertEquals(mutualInformationBits([0, 0, 0, 0], 2, 2), 0);
});

Deno.test("RoutingTally over two batches equals the functions over all their tokens at once", () => {
  const probs = [0.6, 0.3, 0.1, 0.2, 0.5, 0.3, 0.1, 0.1, 0.8, 0.4, 0.4, 0.2, 0.3, 0.3, 0.4];
  const mask = [1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 1];
  const labels = [0, 1, 1, 0, 1];
  const tally = new RoutingTally(2, "mlp", 3, 2);
  tally.add(probs.slice(0, 6), mask.slice(0, 6), labels.slice(0, 2));
  tally.add(probs.slice(6), mask.slice(6), labels.slice(2));
  const assign = top1(probs, 3);
  assertEquals(Array.from(tally.top1()), Array.from(assign));
  assertEquals(Array.from(assign), [0, 1, 2, 0, 2]);
  const d = tally.finish([0, 1, 1, 1, 2]);
  assertEquals([d.layer, d.kind, d.experts, d.tokens], [2, "mlp", 3, 5]);
  assertEquals(d.load_top1, Array.from(expertLoad(assign, 3)));
  assertEquals(d.load_active, Array.from(activeShare(mask, 3)));
  near(d.entropy, routingEntropy(probs, 3), "entropy");
  assertEquals(d.coactivation.flat(), Array.from(coactivation(mask, 3)));
  // Joint counts: expert 0 with domains 0, 0; expert 1 with 1; expert 2 with 1, 1.
  near(d.mi_domain_bits!, mutualInformationBits([2, 0, 0, 1, 0, 2], 3, 2), "MI");
  near(d.domain_entropy_bits!, entropyBits([2, 3]), "H(domain)");
  assertEquals(d.top1_changed, 0.4);
  // Without a mask every expert runs; without labels there is no MI.
  const all = new RoutingTally(0, "attention", 3, 0);
  all.add(probs, null, null);
  const a = all.finish();
  assertEquals([a.load_active, a.mi_domain_bits, a.domain_entropy_bits, a.top1_changed], [
    [1, 1, 1],
    null,
    null,
    null,
  ]);
  assertEquals(a.coactivation.flat(), new Array(9).fill(1));
});

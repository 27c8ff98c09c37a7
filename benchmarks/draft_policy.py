"""Draft-length policy comparison by predicted model-call time (robust to CPU contention).

    python benchmarks/draft_policy.py                       # both tables
    python benchmarks/draft_policy.py --part batch --agreements 0.9

For each controlled pair, runs bild under several drafting rules and prices each run's own model
calls (gen.stats) with one cost table measured at the same batch size. Large greedy is priced the
same way: one prefill and one single-token step per further token.

  policy  exact verification at batch 1: fallback threshold x max_small_steps x draft schedule
  batch   max_small_steps x batch size (1, 2, 4, 8), exact and BiLD (rollback) verification, default
          fallback threshold: how the best draft length moves once a verify pass is compute-bound; plus
          exact verification without the batch fill (DraftVerifyLoop.fill_batch_drafts = False)
"""

import argparse
import statistics

import torch

import bild
from bild.analysis.cost_model import measure_costs, predict_time
from bild.decoding import DraftVerifyLoop
from bild.pairs.controlled import build_controlled_pair, make_prompts

NEW, PROMPT = 64, 16
POLICIES = {
    "fb0.6 k10 const": dict(fallback_threshold=0.6, max_small_steps=10),
    "fb0.6 k10 heur": dict(fallback_threshold=0.6, max_small_steps=10, draft_schedule="heuristic"),
    "fb0.3 k10 const": dict(fallback_threshold=0.3, max_small_steps=10),
    "fb0.4 k20 const": dict(fallback_threshold=0.4, max_small_steps=20),
    "fb0.6 k16 const": dict(fallback_threshold=0.6, max_small_steps=16),
    "fb0 k5 const": dict(fallback_threshold=0.0, max_small_steps=5),
    "fb0 k5 heur": dict(fallback_threshold=0.0, max_small_steps=5, draft_schedule="heuristic"),
    "fb0 k10 const": dict(fallback_threshold=0.0, max_small_steps=10),
}
BATCHES, STEPS = (1, 2, 4, 8), (2, 3, 4, 6, 10)


def greedy_time(costs):
    return predict_time(
        {"verify_lengths": [1] * (NEW - 1), "small_forwards": 0}, costs, small_prefills=[], large_prefills=[PROMPT]
    )


def mean_predicted(gen, prompts, costs):
    t, tpc = [], []
    for p in prompts:
        gen.generate(p, max_new_tokens=NEW, min_new_tokens=NEW)
        t.append(predict_time(gen.stats, costs))
        tpc.append(gen.stats.tokens_per_large_call)
    return statistics.mean(t), statistics.mean(tpc)


def policy_table(small, large):
    costs = measure_costs(small, large, forward_lens=[1, 2, 4, 8, 12, 16, 21], repeats=7)
    prompts = make_prompts(8000, 6)
    greedy = greedy_time(costs)
    print(f"  large greedy predicted {greedy * 1000:.0f} ms, c = {costs.cost_ratio:.3f}")
    for name, kw in POLICIES.items():
        t, tpc = mean_predicted(bild.BiLDGenerator(small, large, verification="exact", **kw), prompts, costs)
        print(
            f"  {name:18s} predicted {t * 1000:7.0f} ms  speedup {greedy / t:5.2f}x  tokens/large call {tpc:.2f}",
            flush=True,
        )


def batch_table(small, large):
    for B in BATCHES:
        costs = measure_costs(small, large, forward_lens=[1, 2, 3, 4, 6, 8, 11], repeats=5, batch_size=B)
        prompts = make_prompts(8000, 3, batch_size=B)
        greedy = greedy_time(costs)
        print(
            f"  batch {B}: small step {costs.small(1) * 1e3:.1f} ms, large step {costs.large(1) * 1e3:.1f} ms, "
            f"verify(5) {costs.large(5) * 1e3:.1f} ms, verify(11) {costs.large(11) * 1e3:.1f} ms",
            flush=True,
        )
        for mode, fill in (("exact", True), ("exact", False), ("rollback", True)):
            if B == 1 and not fill:
                continue  # the fill only acts in batches
            DraftVerifyLoop.fill_batch_drafts = fill
            cells = []
            for k in STEPS:
                t, _ = mean_predicted(
                    bild.BiLDGenerator(small, large, verification=mode, max_small_steps=k), prompts, costs
                )
                cells.append(f"k={k} {greedy / t:.2f}x")
            name = mode if fill else "exact, no batch fill"
            print(f"    {name:21s} " + "  ".join(cells), flush=True)
        DraftVerifyLoop.fill_batch_drafts = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["policy", "batch", "both"], default="both")
    ap.add_argument("--agreements", type=float, nargs="+", default=[0.9, 0.77, 0.4])
    args = ap.parse_args()
    torch.set_num_threads(1)
    for target in args.agreements:
        small, large, info = build_controlled_pair("llama", agreement=target, calib_prompts=4)
        print(f"agreement {info.agreement:.2f} (target {target})", flush=True)
        if args.part in ("policy", "both"):
            policy_table(small, large)
        if args.part in ("batch", "both"):
            batch_table(small, large)


if __name__ == "__main__":
    main()

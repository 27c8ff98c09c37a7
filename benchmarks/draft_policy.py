"""Draft-length policy comparison by predicted model-call time (robust to CPU contention).

    python benchmarks/draft_policy.py

For each controlled pair, runs exact speculative decoding under several drafting rules and prices
each run's own model calls (gen.stats) with one measured cost table. Large greedy is priced the same
way: one prefill and one single-token step per further token.
"""
import statistics

import torch

import bild
from bild.controlled import build_controlled_pair, make_prompts
from bild.cost_model import measure_costs, predict_time

NEW, PROMPT = 64, 16
POLICIES = {
    "fb0.6 k10 const": dict(fallback_threshold=0.6, max_small_steps=10),
    "fb0.6 k10 heur": dict(fallback_threshold=0.6, max_small_steps=10, draft_schedule="heuristic"),
    "fb0.3 k10 const": dict(fallback_threshold=0.3, max_small_steps=10),
    "fb0 k5 const": dict(fallback_threshold=0.0, max_small_steps=5),
    "fb0 k5 heur": dict(fallback_threshold=0.0, max_small_steps=5, draft_schedule="heuristic"),
    "fb0 k10 const": dict(fallback_threshold=0.0, max_small_steps=10),
}

torch.set_num_threads(1)
for target in (0.9, 0.77, 0.4):
    small, large, info = build_controlled_pair("llama", agreement=target, calib_prompts=4)
    costs = measure_costs(small, large, forward_lens=[1, 2, 4, 8, 12, 16], repeats=7)
    prompts = make_prompts(8000, 6)
    greedy = predict_time({"verify_lengths": [1] * (NEW - 1), "small_forwards": 0}, costs,
                          small_prefills=[], large_prefills=[PROMPT])
    print(f"agreement {info.agreement:.2f} (target {target}); large greedy predicted {greedy * 1000:.0f} ms")
    for name, kw in POLICIES.items():
        gen = bild.BiLDGenerator(small, large, verification="exact", **kw)
        t, tpc = [], []
        for p in prompts:
            gen.generate(p, max_new_tokens=NEW, min_new_tokens=NEW)
            t.append(predict_time(gen.stats, costs))
            tpc.append(gen.stats.tokens_per_large_call)
        mean_t = statistics.mean(t)
        print(f"  {name:18s} predicted {mean_t * 1000:7.0f} ms  speedup {greedy / mean_t:5.2f}x  "
              f"tokens/large call {statistics.mean(tpc):.2f}")

"""Tree drafts against chains on a controlled Llama pair (greedy, batch 1), interleaved.

    python benchmarks/tree_drafts.py --agreement 0.65 --depths 2,4 --trees 2,4 --dtype bfloat16 --device cuda

Builds `bild.pairs.controlled` pairs from a config (no download), then per prompt runs, one after the other:
large greedy, bild at defaults, chains of fixed depth D (`fallback_threshold=0, max_small_steps=D`), and trees
`draft_tree=k` at each depth D. Prints per method the median speedup over large greedy (wall time), tokens per
round, and how many outputs equal large greedy's (in half precision a verify pass may round a near-tie the other
way: see the README's half-precision section). No figure here is a claim until measured on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import bild
from bild.pairs.controlled import build_controlled_pair, make_prompts


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agreement", type=float, default=0.65)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--depths", default="2,4", help="fixed draft depths of the chains and trees")
    p.add_argument("--trees", default="2,4", help="tree widths k")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    small, large, info = build_controlled_pair(
        "llama", a.agreement, hidden=a.hidden, layers=a.layers, vocab=a.vocab, device=a.device, dtype=dtype
    )
    prompts = make_prompts(a.vocab, a.prompts, device=a.device)
    depths = [int(x) for x in a.depths.split(",")]
    methods = {"large greedy": None, "bild defaults": bild.BiLDGenerator(small, large)}
    for d in depths:
        methods[f"chain D={d}"] = bild.BiLDGenerator(small, large, fallback_threshold=0, max_small_steps=d)
        for k in (int(x) for x in a.trees.split(",")):
            methods[f"tree k={k} D={d}"] = bild.BiLDGenerator(
                small, large, fallback_threshold=0, max_small_steps=d, draft_tree=k
            )
    methods["tree k=4 defaults"] = bild.BiLDGenerator(small, large, draft_tree=4)
    kw = dict(max_new_tokens=a.new_tokens, do_sample=False)
    times = {m: [] for m in methods}
    per_round = {m: [] for m in methods}
    same = {m: 0 for m in methods}
    for rep in range(a.reps + 1):  # the first repetition warms up (probes, learned costs) and is not timed
        for ids in prompts:
            ref = None
            for name, gen in methods.items():
                sync(a.device)
                t0 = time.perf_counter()
                out = large.generate(ids, **kw) if gen is None else gen.generate(ids, **kw)
                sync(a.device)
                dt = time.perf_counter() - t0
                if gen is None:
                    ref = out
                if rep:
                    times[name].append(dt)
                    same[name] += bool(torch.equal(out, ref))
                    if gen is not None:
                        per_round[name].append(gen.stats.new_tokens / (gen.stats.rounds + 1))
    base = statistics.median(times["large greedy"])
    n = a.reps * len(prompts)
    print(
        f"\n`python benchmarks/tree_drafts.py --agreement {a.agreement} --depths {a.depths} --trees {a.trees} "
        f"--dtype {a.dtype} --device {a.device}`: measured agreement {info.agreement:.2f}, {n} runs of "
        f"{a.new_tokens} tokens per method, {torch.get_num_threads()} threads\n"
    )
    print("| method | speedup (median) | tokens / round | = large greedy |")
    print("|---|---|---|---|")
    for name in methods:
        tpr = f"{statistics.mean(per_round[name]):.2f}" if per_round[name] else "1.00"
        print(f"| {name} | {base / statistics.median(times[name]):.2f}x | {tpr} | {same[name]}/{n} |")


if __name__ == "__main__":
    main()

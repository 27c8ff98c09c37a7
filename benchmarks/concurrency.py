"""Throughput of calls from 2 threads against 1 thread, side by side (interleaved), with outputs checked.

    python benchmarks/concurrency.py                   # controlled Llama pair (hidden 256 x 8 layers), ~2 min
    python benchmarks/concurrency.py --smoke           # tiny pair, seconds
    python benchmarks/concurrency.py --torch_threads 2 --methods bild,large

Each repetition runs the same list of calls (one prompt each, greedy, `--new_tokens` tokens) twice: once on one
thread, once split between two threads sharing one `BiLDGenerator` (`large.generate` alone for "large"); the
order of the two alternates between repetitions. Throughput = new tokens / wall time. Every output of the
threaded runs must equal the one-thread run's (exit status 1 otherwise). torch's intra-op threads are set by
`--torch_threads` (default 1: the two Python threads then have a core each on a 2-core machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import bild  # noqa: E402
from bild.pairs.controlled import build_controlled_pair, make_prompts  # noqa: E402


def run_calls(call, prompts, threads: int):
    """(seconds, outputs) for all prompts, split round-robin between `threads` threads."""
    outs = [None] * len(prompts)
    errors = []

    def worker(k):
        for i in range(k, len(prompts), threads):
            try:
                outs[i] = call(prompts[i])
            except Exception as e:  # noqa: BLE001 - reported, fails the run
                errors.append(repr(e))

    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} calls failed, first: {errors[0]}")
    return time.perf_counter() - t0, outs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=8, help="calls per run (split between the threads)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--new_tokens", type=int, default=48)
    ap.add_argument("--agreement", type=float, default=0.8)
    ap.add_argument("--torch_threads", type=int, default=1)
    ap.add_argument("--methods", default="bild,large", help="comma list of: bild, bild_rollback, large")
    ap.add_argument("--smoke", action="store_true", help="a tiny pair (hidden 64 x 4 layers, vocab 500)")
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    size = dict(hidden=64, layers=4, vocab=500) if args.smoke else dict(hidden=256, layers=8, vocab=4000)
    small, large, info = build_controlled_pair("llama", args.agreement, seed=0, **size)
    prompts = [p for p in make_prompts(size["vocab"], args.calls, length=16, seed=7)]
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    gens = {
        "bild": bild.BiLDGenerator(small, large),
        "bild_rollback": bild.BiLDGenerator(small, large, rollback_threshold=5.0),
    }
    calls = {name: (lambda g: lambda x: g.generate(x, **kw))(g) for name, g in gens.items()}
    calls["large"] = lambda x: large.generate(x, **kw)
    methods = args.methods.split(",")
    print(
        f"pair: controlled llama {size}, agreement {info.agreement:.2f}; torch threads {args.torch_threads}; "
        f"{args.calls} calls x {args.new_tokens} tokens per run, {args.reps} reps"
    )
    ok = True
    with torch.no_grad():
        for name in methods:
            call = calls[name]
            run_calls(call, prompts[:2], 1)  # warm-up (probes, learned costs)
            tps = {1: [], 2: []}
            for rep in range(args.reps):
                ref = None
                for threads in (1, 2) if rep % 2 == 0 else (2, 1):
                    dt, outs = run_calls(call, prompts, threads)
                    tps[threads].append(args.calls * args.new_tokens / dt)
                    if ref is None:
                        ref = outs
                    elif not all(torch.equal(a, b) for a, b in zip(ref, outs)):
                        ok = False
                        print(f"  {name}: outputs differ between 1 and 2 threads (rep {rep})")
            one, two = statistics.median(tps[1]), statistics.median(tps[2])
            ratios = [b / a for a, b in zip(tps[1], tps[2])]
            print(
                f"{name:14s} 1 thread {one:7.1f} tok/s   2 threads {two:7.1f} tok/s   2/1 = {two / one:.2f}x "
                f"(per rep {min(ratios):.2f}-{max(ratios):.2f})"
            )
    print("outputs identical across thread counts:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

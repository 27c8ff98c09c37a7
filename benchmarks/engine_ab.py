"""A/B of two engine versions on one controlled pair, interleaved in ONE process (same prompts, same
settings, alternating order): did a change make the engine slower?

    git archive <old-commit> src/bild | tar -x -C /tmp/old && mv /tmp/old/src/bild /tmp/old/bild_old
    python benchmarks/engine_ab.py --old /tmp/old --batch_size 1 4

The old package is imported as `bild_old` (its imports are relative). Both run exact speculative decoding
with a fixed draft (fallback 0, `--k` drafts: the same decisions in both versions), greedy; outputs must be
identical. Prints per batch size the median over prompts and repeats of t(new) / t(old).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import bild  # noqa: E402
from bild.pairs.controlled import build_controlled_pair, make_prompts  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="folder holding the old package as bild_old/")
    ap.add_argument("--batch_size", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--family", default="llama", choices=["llama", "t5"])
    ap.add_argument("--agreement", type=float, default=0.9)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.old)
    import bild_old  # noqa: E402

    small, large, info = build_controlled_pair(
        args.family, args.agreement, hidden=args.hidden, layers=args.layers, seed=0
    )
    kw = dict(verification="exact", fallback_threshold=0.0, max_small_steps=args.k)
    engines = {"old": bild_old.BiLDGenerator(small, large, **kw), "new": bild.BiLDGenerator(small, large, **kw)}
    print(
        f"{args.family} pair hidden {args.hidden} x {args.layers} layers, agreement {args.agreement}, exact k={args.k}, "
        f"{args.threads} thread(s), torch {torch.__version__}"
    )
    for B in args.batch_size:
        prompts = make_prompts(info.vocab, args.prompts, 16, batch_size=B, seed=1)
        gkw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
        for e in engines.values():  # warm-up (layout probes, allocator)
            e.generate(prompts[0], **gkw)
        ratios, times = [], {"old": [], "new": []}
        for rep in range(args.repeats):
            for i, x in enumerate(prompts):
                order = ["old", "new"] if (i + rep) % 2 == 0 else ["new", "old"]
                t, out = {}, {}
                for name in order:
                    t0 = time.perf_counter()
                    out[name] = engines[name].generate(x, **gkw)
                    t[name] = time.perf_counter() - t0
                    times[name].append(t[name])
                assert torch.equal(out["old"], out["new"]), "outputs differ"
                ratios.append(t["new"] / t["old"])
        print(
            f"batch {B}: t(new)/t(old) median {statistics.median(ratios):.3f} over {len(ratios)} runs "
            f"(min {min(ratios):.3f}, max {max(ratios):.3f}); median s/run old {statistics.median(times['old']):.3f}, "
            f"new {statistics.median(times['new']):.3f}; outputs identical"
        )


if __name__ == "__main__":
    main()

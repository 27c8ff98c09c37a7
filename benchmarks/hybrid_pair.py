"""A hybrid model pair (Qwen3-Next-shaped: gated-delta-rule linear attention and full attention, 3 : 1) under
speculation: bild at default arguments against large greedy and transformers' assisted generation at its defaults,
same prompts, interleaved, outputs compared. Needs transformers >= 5.25 (earlier releases cannot roll recurrent
states back, and bild refuses the family there).

    python benchmarks/hybrid_pair.py                                  # agreements 0.6 and 0.9, batch 1
    python benchmarks/hybrid_pair.py --agreements 0.9 --prompts 4 --new_tokens 48

The pair is `bild.pairs.controlled.build_controlled_pair(family="qwen3_next")`: a random large model and a small
model made of its first two layers (one linear-attention, one attention layer), the large model's later layers
scaled until the greedy agreement is the one asked for. Per prompt the three methods run in a rotating order after
one untimed warm-up of each; the table gives the median over prompts of t(large greedy) / t(method) and how many
outputs equal large greedy's. It also reports what recording the recurrent states costs in memory: the bytes the
cache records per token of a verify pass (large model) and per draft step (small model), from a `ModelAdapter`
fed as the engine feeds it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import torch
import transformers

import bild
from bild.adapters import ModelAdapter, state_layers
from bild.pairs.controlled import build_controlled_pair, make_prompts


def recorded_bytes_per_token(model, prompt: torch.Tensor, n: int) -> float:
    """Bytes of recurrent states recorded per token while a forward of `n` tokens waits for its rollback."""
    a = ModelAdapter(model)
    a.times = None
    a.start(1, prompt.device)
    a.feed(prompt, [[True] * prompt.shape[1]], keep=1)
    a.feed(prompt[:, :n], [[True] * n], keep=1)
    total = 0
    for layer in state_layers(a.cache):
        for states in getattr(layer, "recurrent_states_history", {}).values():
            total += sum(t.numel() * t.element_size() for t in states)
        total += sum(t.numel() * t.element_size() for t in layer.conv_states.values() if torch.is_tensor(t))
    return total / n


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agreements", type=float, nargs="+", default=[0.6, 0.9])
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--prompt_len", type=int, default=32)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if not hasattr(transformers.DynamicCache, "get_recurrent_states_to_keep"):
        raise SystemExit(
            f"transformers {transformers.__version__} cannot roll recurrent states back: needs 5.25 or later"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print(
        f"# hybrid pair: Qwen3-Next-shaped, hidden {args.hidden}, {args.layers} layers (small: 2), vocab "
        f"{args.vocab}, fp32, CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, torch {torch.__version__}"
    )
    print(
        f"# {args.prompts} prompts x {args.new_tokens} new tokens, batch 1, greedy; speedup = median over prompts of "
        "t(large greedy) / t(method)"
    )
    print(
        "| agreement (calibrated / target) | method | speedup vs large greedy | vs assisted | identical to large "
        "greedy | bild policy |"
    )
    print("|---|---|---|---|---|---|")
    for agreement in args.agreements:
        small, large, info = build_controlled_pair(
            "qwen3_next",
            agreement,
            hidden=args.hidden,
            layers=args.layers,
            small_layers=2,
            vocab=args.vocab,
            calib_new_tokens=32,
        )
        prompts = make_prompts(args.vocab, args.prompts, args.prompt_len, seed=77)
        gen = bild.BiLDGenerator(small, large)
        kw = dict(max_new_tokens=args.new_tokens, do_sample=False)
        methods = {
            "large greedy": lambda p: large.generate(p, **kw),
            "transformers assisted (defaults)": lambda p: large.generate(p, assistant_model=small, **kw),
            "bild (defaults)": lambda p: gen.generate(p, **kw),
        }
        for fn in methods.values():  # warm-up, untimed
            fn(prompts[0])
        times = {m: [] for m in methods}
        same = {m: 0 for m in methods}
        for i, p in enumerate(prompts):
            names = list(methods)
            names = names[i % len(names) :] + names[: i % len(names)]
            outs = {}
            for m in names:
                dt, outs[m] = timed(lambda: methods[m](p))
                times[m].append(dt)
            for m in methods:
                same[m] += torch.equal(outs[m], outs["large greedy"])
        speed = {m: statistics.median(a / b for a, b in zip(times["large greedy"], times[m])) for m in methods}
        label = f"{info.agreement:.2f} / {agreement:.2f}"
        policy = gen.stats.policy or {}
        for m in methods:
            vs = speed[m] / speed["transformers assisted (defaults)"]
            note = (
                f"drafting {policy.get('drafting', '?')}, draft length {policy.get('draft_length', '?')}"
                if m.startswith("bild")
                else ""
            )
            print(f"| {label} | {m} | {speed[m]:.2f}x | {vs:.2f}x | {same[m]}/{len(prompts)} | {note} |")
    p = prompts[0]
    print(
        f"\nrecording (fp32): large model {recorded_bytes_per_token(large, p, 8) / 1024:.1f} KiB per token of a verify "
        f"pass; small model {recorded_bytes_per_token(small, p, 1) / 1024:.1f} KiB per draft step (held until the "
        "round's rollback)"
    )


if __name__ == "__main__":
    main()

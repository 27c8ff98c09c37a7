"""The adaptive draft policy (the default) against the best fixed policy, on pairs of different calibration.

    python benchmarks/adaptive_policy.py                      # the three pairs at batch 1, the 0.9 pair at batch 8
    python benchmarks/adaptive_policy.py --pairs under_high --batch_size 1 --prompts 4

Pairs (``bild.pairs.controlled.build_controlled_pair``: a random Llama-like large model, hidden 512 x 16 layers,
vocab 8000, and a small model made of its first layer; the later layers are scaled until the greedy
agreement is the target; the shared LM head is then rescaled, which changes no argmax, so that the small
model's mean top probability is the target confidence):

  under_high   agreement 0.9, confidence 0.27   under-confident, high agreement
  under_low    agreement 0.4, confidence 0.15   under-confident, low agreement
  over_low     agreement 0.4, confidence 0.9    over-confident, low agreement
  calibrated   agreement 0.9, confidence 0.9    (the batch-8 pair)

Methods, interleaved per prompt (order rotating) in ONE process after an untimed warm-up of each (the
warm-up also lets the exact default learn costs and acceptance, as a user's first call would):

  large greedy        large.generate, the reference time and output
  assisted default    transformers' assisted generation at its defaults (batch 1 only)
  exact auto          BiLDGenerator(verification="exact") at DEFAULT thresholds (adaptive policy): the library's
                      default since 0.4 (the same as BiLDGenerator(small, large))
  exact k=K           fixed drafts of K tokens (fallback_threshold=0, max_small_steps=K), K in 2, 4, 6, 10
  exact 0.6/10        the previous default (fallback_threshold=0.6, max_small_steps=10)
  BiLD auto           BiLDGenerator(verification="rollback") at DEFAULT thresholds (0.4: the per-row, per-call
                      policy on timing-free costs, bild.policies.RowwisePolicy)
  BiLD f/K            rollback with fallback_threshold f in (0, 0.6) and max_small_steps K in 2, 4, 6, 10

Speedup: median over prompts of t(large greedy) / t(method). "same" counts outputs equal to large greedy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from controlled_pair import assistant_config  # noqa: E402

from bild import BiLDGenerator  # noqa: E402
from bild.pairs.controlled import build_controlled_pair, make_prompts  # noqa: E402

PAIRS = {"under_high": (0.9, 0.27), "under_low": (0.4, 0.15), "over_low": (0.4, 0.9), "calibrated": (0.9, 0.9)}
FIXED = (2, 4, 6, 10)


def methods(small, large, batch):
    """name -> callable(x, **kw) returning the output; generators persist across prompts."""
    m = {"large greedy": lambda x, **kw: large.generate(x, **kw)}
    if batch == 1:

        def assisted(x, **kw):
            with assistant_config(small, None):
                return large.generate(x, assistant_model=small, **kw)

        m["assisted default"] = assisted
    gens = {"exact auto": BiLDGenerator(small, large, verification="exact")}
    gens.update(
        {
            f"exact k={k}": BiLDGenerator(small, large, verification="exact", fallback_threshold=0.0, max_small_steps=k)
            for k in FIXED
        }
    )
    gens["exact 0.6/10"] = BiLDGenerator(small, large, verification="exact", fallback_threshold=0.6, max_small_steps=10)
    gens["BiLD auto"] = BiLDGenerator(small, large, verification="rollback")
    gens.update(
        {
            f"BiLD {f:g}/{k}": BiLDGenerator(
                small, large, verification="rollback", fallback_threshold=f, max_small_steps=k
            )
            for f in (0.0, 0.6)
            for k in FIXED
        }
    )
    for name, g in gens.items():
        m[name] = (lambda g: lambda x, **kw: g.generate(x, **kw))(g)
    return m, gens


def run(pair_name, batch, args, log):
    agreement, confidence = PAIRS[pair_name]
    t0 = time.perf_counter()
    small, large, info = build_controlled_pair(
        "llama",
        agreement,
        confidence=confidence,
        hidden=args.hidden,
        layers=args.layers,
        vocab=args.vocab,
        seed=args.seed,
    )
    log(
        f"\n== {pair_name} (agreement {info.agreement:.3f}, small-model mean confidence "
        f"{info.small_confidence:.3f}), batch {batch}: {args.prompts} prompts x {args.new_tokens} tokens "
        f"(pair built in {time.perf_counter() - t0:.0f}s)"
    )
    prompts = make_prompts(info.vocab, args.prompts + 1, args.prompt_len, batch_size=batch, seed=args.seed + 1)
    warm, prompts = prompts[0], prompts[1:]
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    table, gens = methods(small, large, batch)
    for fn in table.values():  # warm-up (the adaptive generators measure costs and learn here)
        fn(warm, attention_mask=torch.ones_like(warm), **kw)
    times = {n: [] for n in table}
    same = {n: 0 for n in table}
    names = list(table)
    for i, x in enumerate(prompts):
        ref = None
        order = names[i % len(names) :] + names[: i % len(names)]
        outs = {}
        for name in order:
            t = time.perf_counter()
            outs[name] = table[name](x, attention_mask=torch.ones_like(x), **kw)
            times[name].append(time.perf_counter() - t)
        ref = outs["large greedy"]
        for name in names:
            same[name] += int(torch.equal(outs[name], ref))
    base = times["large greedy"]
    rows = {}
    for name in names:
        sp = statistics.median(b / t for b, t in zip(base, times[name]))
        rows[name] = dict(
            speedup=sp, same=same[name], ms_per_token=1e3 * statistics.median(times[name]) / args.new_tokens / batch
        )
        if name in gens:
            st = gens[name].stats
            rows[name].update(
                alpha=st.acceptance_rate,
                tokens_per_call=st.tokens_per_large_call,
                draftless=st.draftless_rounds / max(1, st.rounds),
            )
            if "auto" in name:
                rows[name]["policy"] = {
                    k: v for k, v in st.policy.items() if k in ("drafting", "draft_length", "alpha", "rate", "costs")
                }
    log(f"{'method':18s} {'speedup':>8s} {'same':>5s} {'ms/tok':>7s} {'alpha':>6s} {'tok/call':>8s} {'no-draft':>8s}")
    for name, r in rows.items():
        extra = f" {r['alpha']:6.2f} {r['tokens_per_call']:8.2f} {r['draftless']:8.2f}" if "alpha" in r else ""
        log(f"{name:18s} {r['speedup']:7.2f}x {r['same']:2d}/{len(prompts):<2d} {r['ms_per_token']:7.2f}{extra}")
    best_exact = max((rows[f"exact k={k}"]["speedup"], k) for k in FIXED)
    best_bild = max((rows[n]["speedup"], n) for n in rows if n.startswith("BiLD ") and n != "BiLD auto")
    summary = dict(
        exact_auto=rows["exact auto"]["speedup"],
        exact_best_fixed=best_exact[0],
        exact_best_k=best_exact[1],
        exact_auto_vs_best=rows["exact auto"]["speedup"] / best_exact[0],
        exact_auto_vs_assisted=(
            rows["exact auto"]["speedup"] / rows["assisted default"]["speedup"] if "assisted default" in rows else None
        ),
        bild_auto=rows["BiLD auto"]["speedup"],
        bild_best_fixed=best_bild[0],
        bild_best=best_bild[1],
        bild_auto_vs_best=rows["BiLD auto"]["speedup"] / best_bild[0],
    )
    log("summary: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    log(f"policy (exact auto): {rows['exact auto'].get('policy')}")
    log(f"policy (BiLD auto):  {rows['BiLD auto'].get('policy')}")
    return dict(
        pair=pair_name,
        batch=batch,
        agreement=info.agreement,
        confidence=info.small_confidence,
        rows=rows,
        summary=summary,
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", nargs="+", default=["under_high", "under_low", "over_low"], choices=sorted(PAIRS))
    ap.add_argument("--batch_size", type=int, nargs="+", default=[1])
    ap.add_argument(
        "--batch8_pair",
        default="calibrated",
        choices=sorted(PAIRS),
        help="also run this pair at batch 8 (use 'none' to skip)",
    )
    ap.add_argument("--no_batch8", action="store_true")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--prompt_len", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []

    def log(s):
        print(s, flush=True)

    log(
        f"adaptive policy benchmark, {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
        f"{args.threads} thread(s), cpu"
    )
    runs = [(p, b) for p in args.pairs for b in args.batch_size]
    if not args.no_batch8:
        runs.append((args.batch8_pair, 8))
    for pair, batch in runs:
        results.append(run(pair, batch, args, log))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))  # finished work is kept


if __name__ == "__main__":
    main()

"""First call against warm calls: no warm-up on the user's clock (issue #19).

    python benchmarks/first_call.py                          # controlled pair (agreement 0.9, calibrated)
    python benchmarks/first_call.py --pair smollm2 --cache DIR   # the offline SmolLM2 pair (`bild pair build`)
    python benchmarks/first_call.py --src /path/to/other/src # another version of the library, same protocol

Per repetition, on one prompt, greedy, `--new_tokens` tokens:

  warm process   models loaded and run, other generators of the same models have already run in this process
                 (so shared costs are learned): a NEW `BiLDGenerator(small, large)`, its first call, then
                 `--warm` more calls (the warm time is their median); `large.generate` timed alongside;
  fresh process  a new Python process loads the models and runs `large.generate` and `small.generate` once
                 (the models have run, nothing of bild has), then times the first call and the warm calls, either of a new
                 `BiLDGenerator` ("gen") or of `large.generate(..., custom_generate=bild.generate,
                 small_model=small)` ("custom_generate").

Reported: first / warm per repetition (median, min, max over repetitions) and both against large.generate.
The target is first / warm <= 1.15. Timings are wall clock on whatever else runs on the machine: say so.
The forward counts (small + large, first call and median warm call) show what the policy did, free of noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def _load(args):
    import torch

    torch.set_num_threads(args.threads)
    if args.pair == "smollm2":
        from bild.pairs.smollm2 import SAMPLE_PROMPT, chat_prompt, load_pair

        pr = load_pair(args.cache)
        enc = pr.tokenizer(chat_prompt(pr.tokenizer, SAMPLE_PROMPT), return_tensors="pt", add_special_tokens=False)
        return pr.small, pr.large, enc.input_ids, dict(pad_token_id=pr.tokenizer.pad_token_id)
    from transformers import AutoModelForCausalLM

    small = AutoModelForCausalLM.from_pretrained(Path(args.saved) / "small").eval()
    large = AutoModelForCausalLM.from_pretrained(Path(args.saved) / "large").eval()
    from bild.pairs.controlled import make_prompts

    x = make_prompts(large.config.vocab_size, 1, 16, seed=args.seed + 1)[0]
    return small, large, x, {}


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def one_generator(small, large, x, kw, warm: int, how: str):
    """(first, warm median, large median, identical to large) for a new generator or bild.generate."""
    import torch

    import bild

    stats = bild.GenerationStats()  # filled in place by each call
    if how == "gen":
        g = bild.BiLDGenerator(small, large)
        call = lambda: g.generate(x, bild_stats=stats, **kw)  # noqa: E731
    else:

        def call():
            return large.generate(
                x,
                custom_generate=bild.generate,
                small_model=small,
                bild_stats=stats,  # noqa: E731
                **kw,
            )

    t_first, out = _timed(call)
    calls_first = stats.large_forwards + stats.small_forwards
    ref = large.generate(x, **kw)
    warm_t, large_t, calls = [], [], []
    for _ in range(warm):  # interleaved with large.generate
        large_t.append(_timed(lambda: large.generate(x, **kw))[0])
        warm_t.append(_timed(call)[0])
        calls.append(stats.large_forwards + stats.small_forwards)
    return dict(
        first=t_first,
        warm=statistics.median(warm_t),
        large=statistics.median(large_t),
        same=bool(torch.equal(out, ref)),
        forwards_first=calls_first,
        forwards_warm=statistics.median(calls),
    )


def child(args):
    """A fresh process: load, run large.generate once, then one generator's first and warm calls."""
    import torch

    small, large, x, extra = _load(args)
    kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, **extra)
    with torch.no_grad():
        large.generate(x, **kw)  # the models have run once: allocation warm-up is not bild's
        small.generate(x, max_new_tokens=4, do_sample=False, **extra)
        res = one_generator(small, large, x, kw, args.warm, args.how)
    print("RESULT " + json.dumps(res), flush=True)


def summary(name, runs):
    r = [x["first"] / x["warm"] for x in runs]
    fl = [x["large"] / x["first"] for x in runs]
    wl = [x["large"] / x["warm"] for x in runs]
    line = (
        f"{name:34s} first/warm median {statistics.median(r):.3f} (min {min(r):.3f}, max {max(r):.3f}), "
        f"speedup vs large.generate: first {statistics.median(fl):.2f}x, warm {statistics.median(wl):.2f}x, "
        f"identical {sum(x['same'] for x in runs)}/{len(runs)}, n={len(runs)}; forwards (small + large) "
        f"first {statistics.median(x['forwards_first'] for x in runs)}, warm "
        f"{statistics.median(x['forwards_warm'] for x in runs)}"
    )
    print(line, flush=True)
    return dict(name=name, ratio=r, first_vs_large=fl, warm_vs_large=wl)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", choices=["controlled", "smollm2"], default="controlled")
    ap.add_argument("--cache", default=None, help="SmolLM2 pair folder (default: the library's)")
    ap.add_argument("--agreement", type=float, default=0.9)
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--new_tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=5, help="repetitions (new generators / new processes)")
    ap.add_argument("--warm", type=int, default=3, help="warm calls per generator")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--src", default=str(SRC), help="the library's source folder to measure")
    ap.add_argument("--skip", nargs="*", default=[], choices=["warm_process", "fresh_process"])
    ap.add_argument("--json")
    # internal: a fresh process
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--saved", help=argparse.SUPPRESS)
    ap.add_argument("--how", default="gen", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, args.src)
    if args.child:
        return child(args)

    import torch

    import bild

    torch.set_num_threads(args.threads)
    print(
        f"first-call benchmark, {time.strftime('%Y-%m-%d %H:%M')}, bild {bild.__version__} from {args.src}, "
        f"torch {torch.__version__}, {args.threads} thread(s), pair {args.pair}, {args.new_tokens} tokens, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    tmp = tempfile.TemporaryDirectory()
    if args.pair == "controlled":
        from bild.pairs.controlled import build_controlled_pair

        small, large, info = build_controlled_pair(
            "llama",
            args.agreement,
            confidence=args.confidence,
            hidden=args.hidden,
            layers=args.layers,
            vocab=args.vocab,
            seed=args.seed,
        )
        print(f"controlled pair: agreement {info.agreement:.3f}, confidence {info.small_confidence:.3f}", flush=True)
        small.save_pretrained(Path(tmp.name) / "small")
        large.save_pretrained(Path(tmp.name) / "large")
        args.saved = tmp.name
    results = []
    if "warm_process" not in args.skip:
        small, large, x, extra = _load(args)
        kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, **extra)
        with torch.no_grad():
            large.generate(x, **kw)
            bild.BiLDGenerator(small, large).generate(x, **kw)  # an earlier generator of the same models
            runs = [one_generator(small, large, x, kw, args.warm, "gen") for _ in range(args.reps)]
        results.append(summary("warm process, new BiLDGenerator", runs))
    if "fresh_process" not in args.skip:
        for how in ("gen", "custom_generate"):
            runs = []
            for _ in range(args.reps):
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    "--how",
                    how,
                    "--pair",
                    args.pair,
                    "--src",
                    args.src,
                    "--new_tokens",
                    str(args.new_tokens),
                    "--warm",
                    str(args.warm),
                    "--threads",
                    str(args.threads),
                    "--seed",
                    str(args.seed),
                ]
                cmd += ["--saved", args.saved] if args.saved else []
                cmd += ["--cache", args.cache] if args.cache else []
                out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": args.src})
                line = next((s for s in out.stdout.splitlines() if s.startswith("RESULT ")), None)
                if line is None:
                    print(out.stdout[-2000:], out.stderr[-2000:])
                    raise SystemExit(f"fresh process failed ({how})")
                runs.append(json.loads(line[7:]))
            results.append(summary(f"fresh process, {'new BiLDGenerator' if how == 'gen' else 'bild.generate'}", runs))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Block verification (Sun et al., ICLR 2025) against token-wise speculative sampling: kept drafts per round
on a controlled pair, at draft lengths K = 2, 4, 8.

    python benchmarks/block_verification.py                       # ~2 min on 1 thread of the 2-core CPU
    python benchmarks/block_verification.py --agreement 0.3 --prompts 8 --new_tokens 96
    python benchmarks/block_verification.py --smoke                # tiny pair, seconds

Pair: ``bild.pairs.controlled.build_controlled_pair("llama", agreement)`` (random Llama-like large model and its
first layer as the small one; greedy agreement calibrated, the small model's mean confidence equal to it).
Decoding: pure sampling (temperature 1, top_k 0), fixed drafts (``fallback_threshold=0, max_small_steps=K``), one
prompt per call. Rules ``BiLDGenerator(verification="exact")`` (token-wise) and ``"block"``, interleaved per
prompt (the order alternates), each call seeded with the prompt's seed.

Columns, per K and rule, over the drafting rounds of all prompts:
  measured     mean kept drafts per round (``verify_*``'s n_accept), +- its s.e.
  E[.|drafts]  the same with the verification's own randomness integrated out exactly, on the round's real drafts
               and p, q: token-wise sum_i prod_{j<=i} min(1, p/q); block sum_i i P(tau = i), P(tau = i) =
               h_i prod_{j>i} (1 - h_j) (``bild.verification._block_terms``). Both are computed on every round of
               both runs ("both rules on the same drafts"): the paired gain block - token-wise has a small s.e.
               The full expectation (over drafts too) is not computable at vocab 8000 (V^K draft paths).
  tok/round    committed tokens per round; ms/tok wall time per token (CPU, noisy; the recorder above adds the
               same small cost to both rules).
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import bild  # noqa: E402
import bild.decoding  # noqa: E402
from bild.pairs.controlled import build_controlled_pair, make_prompts  # noqa: E402
from bild.verification import _block_terms  # noqa: E402

RULES = ("exact", "block")


def expected_accepts(drafts, n_draft, p, q) -> tuple[torch.Tensor, torch.Tensor]:
    """E[kept drafts | drafts] [B] under the token-wise rule and under block verification (shapes as in
    `bild.verification`)."""
    K = drafts.shape[1]
    q = q[:, :K]
    in_draft = torch.arange(K, device=p.device)[None] < n_draft[:, None]
    ratio = p[:, :K].gather(-1, drafts[..., None]).squeeze(-1) / q.gather(-1, drafts[..., None]).squeeze(-1)
    token = torch.where(in_draft, ratio.clamp(max=1.0), 0.0).cumprod(-1).sum(-1)
    h, _, _ = _block_terms(drafts, n_draft, p, q)  # [B, K+1], 0 outside 1..gamma
    after = torch.cat([(1 - h).flip(-1).cumprod(-1).flip(-1)[:, 1:], h.new_ones(h.shape[0], 1)], dim=1)
    block = (torch.arange(K + 1, device=h.device) * h * after).sum(-1)  # sum_i i h_i prod_{j>i} (1 - h_j)
    return token, block


class Recorder:
    """Wraps the engine's two sampling rules: records n_accept and both rules' E[kept | drafts] per round."""

    def __init__(self):
        self.rows = []  # (n_accept, E token-wise, E block) per drafting row and round
        self.originals = {name: getattr(bild.decoding, name) for name in ("verify_exact_sampling", "verify_block")}

    def wrap(self, name):
        rule = self.originals[name]

        def recorded(drafts, n_draft, p, q, *args):
            n_acc, nxt = rule(drafts, n_draft, p, q, *args)
            token, block = expected_accepts(drafts, n_draft, p, q)
            live = n_draft > 0
            self.rows.append(torch.stack([n_acc[live].double(), token[live].double(), block[live].double()], 1))
            return n_acc, nxt

        return recorded

    def __enter__(self):
        for name in self.originals:
            setattr(bild.decoding, name, self.wrap(name))
        return self

    def __exit__(self, *exc):
        for name, f in self.originals.items():
            setattr(bild.decoding, name, f)

    def take(self) -> torch.Tensor:
        out = torch.cat(self.rows) if self.rows else torch.zeros(0, 3, dtype=torch.float64)
        self.rows = []
        return out


def mean_se(x: torch.Tensor) -> tuple[float, float]:
    return float(x.mean()), float(x.std()) / math.sqrt(max(1, x.numel()))


def run(args) -> str:
    torch.set_num_threads(args.threads)
    size = dict(hidden=64, layers=4, vocab=500) if args.smoke else {}
    t0 = time.perf_counter()
    small, large, info = build_controlled_pair("llama", args.agreement, seed=args.seed, **size)
    built = time.perf_counter() - t0
    prompts = make_prompts(info.vocab, args.prompts, length=16, seed=args.seed + 1)
    rows = {}
    for K in args.draft_lengths:
        gens = {
            rule: bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=K, verification=rule)
            for rule in RULES
        }
        rec = Recorder()
        acc = {rule: [] for rule in RULES}
        secs = {rule: 0.0 for rule in RULES}
        toks = {rule: [0, 0] for rule in RULES}  # tokens, rounds
        for n, prompt in enumerate(prompts):
            for rule in RULES if n % 2 == 0 else RULES[::-1]:
                torch.manual_seed(args.seed * 1000 + n)
                with rec:
                    t = time.perf_counter()
                    gens[rule].generate(
                        prompt, max_new_tokens=args.new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0
                    )
                    secs[rule] += time.perf_counter() - t
                acc[rule].append(rec.take())
                st = gens[rule].stats
                toks[rule][0] += st.new_tokens - 1  # the prefill's token is no round's
                toks[rule][1] += st.rounds
        both = torch.cat([torch.cat(acc[r]) for r in RULES])
        gain = mean_se(both[:, 2] - both[:, 1])
        for rule in RULES:
            a = torch.cat(acc[rule])
            rows[K, rule] = dict(
                rounds=a.shape[0],
                measured=mean_se(a[:, 0]),
                exp=mean_se(a[:, 1 if rule == "exact" else 2]),
                tok_round=toks[rule][0] / max(1, toks[rule][1]),
                ms_tok=1000 * secs[rule] / (args.prompts * args.new_tokens),
                gain=gain,
                same_drafts=mean_se(both[:, 1 if rule == "exact" else 2]),
            )
    return report(args, info, built, rows)


def report(args, info, built, rows) -> str:
    cmd = "python benchmarks/block_verification.py " + " ".join(sys.argv[1:])
    lines = [
        f"`{cmd.strip()}`",
        "",
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {args.threads} torch thread(s), "
        f"torch {torch.__version__}; pair: llama hidden {info.hidden} x {info.layers} layers, vocab {info.vocab}, "
        f"greedy agreement {info.agreement:.3f} (target {args.agreement}), built in {built:.0f}s; "
        f"{args.prompts} prompts x {args.new_tokens} tokens, sampling at temperature 1",
        "",
        "| K | rule | drafting rounds | kept drafts / round, measured | E[kept / round given the drafts] "
        "| same, both rules on all rounds | tok / round | ms / tok |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (K, rule), r in rows.items():
        lines.append(
            f"| {K} | {rule} | {r['rounds']} | {r['measured'][0]:.3f} +- {r['measured'][1]:.3f} "
            f"| {r['exp'][0]:.3f} +- {r['exp'][1]:.3f} | {r['same_drafts'][0]:.3f} "
            f"| {r['tok_round']:.2f} | {r['ms_tok']:.1f} |"
        )
    lines.append("")
    for K in args.draft_lengths:
        g = rows[K, "block"]["gain"]
        base = rows[K, "exact"]["same_drafts"][0]
        lines.append(
            f"- K = {K}: block - token-wise on the same drafts: {g[0]:+.3f} +- {g[1]:.3f} kept drafts "
            f"per round ({100 * g[0] / base:+.1f} %)"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agreement", type=float, default=0.6)
    ap.add_argument("--draft_lengths", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="a tiny pair (hidden 64 x 4 layers, vocab 500)")
    args = ap.parse_args(argv)
    print(run(args))


if __name__ == "__main__":
    main()

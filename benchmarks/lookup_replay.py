"""Prompt lookup's draft policy replayed offline along the large model's own greedy outputs: no timing, so
policies compare exactly, on the same decisions the engine would face.

    python benchmarks/lookup_replay.py --task xsum --limit 100          # the SmolLM2 pair, dev tune half
    python benchmarks/lookup_replay.py --outputs runs/xsum_tune.json    # outputs saved by an earlier run

Under greedy decoding a lookup round's outcome is known from the large model's output alone: the candidate
(the same `PromptLookupProposer`) is accepted up to its first token that differs. Each policy decides the
draft lengths, learns from the outcomes, and is charged a verify pass per round from a cost table (verify[k]
in 1-token steps: `--verify` or, by default, timed here on the large model at the task's median prompt
length). Printed: tokens per unit cost (what a speedup would be with no other overhead) and tokens per large
call, per policy, and for fixed draft lengths per kind of match (n-gram size 1 or 2) as a reference.
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

from bild.batch import BatchState  # noqa: E402
from bild.policies import AdaptivePolicy, DraftCosts, LookupPolicy, RoundRecord  # noqa: E402
from bild.proposers import PromptLookupProposer  # noqa: E402

TASKS = {
    "xsum": ("xsum", "summarization"),
    "iwslt": ("iwslt2017_de_en", "translation"),
    "wmt": ("wmt14_de_en", "translation"),
}


class Rule07(LookupPolicy):
    """0.7's lookup policy: the token-by-token rule, R over drafting rounds only, no re-probe."""

    def budgets(self, remaining):
        out = AdaptivePolicy.budgets(self, remaining)
        return [min(self.cap, x) if b and not self.probing else b for b, x in zip(out, remaining)]

    def cut(self, conf, live):
        return AdaptivePolicy.cut(self, conf, live)  # DraftPolicy.cut: asks `step` token by token

    def step(self, j, conf, live):
        if self.probing or self.threshold is not None:
            return super().step(j, conf, live)
        A = live.float() if j == 0 or self.A is None else self.A * live
        gain = A * self._a(conf)
        keep = live & (gain.sum() >= self.rate * self._dv(j))  # keep token j while it pays its verify cost
        self.A = torch.where(keep, gain, torch.zeros_like(gain))
        return keep, keep

    def no_draft(self, committed, width):
        pass


class Fixed(LookupPolicy):
    """A fixed draft length per kind of match: lengths[0] for a 1-gram match, lengths[1] for a longer one."""

    def __init__(self, lengths):
        super().__init__(None, 10)
        self.lengths = lengths

    def budgets(self, remaining):
        self.probing = False
        return [min(10, x) for x in remaining]

    def cut(self, conf, live):
        n1 = float(conf[0, 0]) >= 0.5  # PromptLookupProposer.confidence: bins 5-9 are 1-gram matches
        k = self.lengths[0] if n1 else self.lengths[1]
        return live & (torch.arange(live.shape[1]) < k)


def candidates(data: list[dict], ngram: int, eos: set[int], K: int = 10) -> list[list[tuple[list[int], int]]]:
    """Per output, per position t: the lookup's candidate of up to K tokens and its n-gram size, from the
    engine's own matcher (one row, its n-gram index grown as the output grows, as in a run). A smaller budget
    takes the candidate's first tokens: that is what the matcher returns for it. Computed once, shared by
    every policy."""
    out = []
    for ex in data:
        prop = PromptLookupProposer(None, ngram)
        state = BatchState.__new__(BatchState)
        state.eos_ids, state.B = eos, 1
        prop.start(state)
        corpus = ex["prompt"] + ex["gen"]
        out.append([prop._match(0, corpus[: len(ex["prompt"]) + t], K) for t in range(len(ex["gen"]))])
    return out


def replay(data: list[dict], cands: list, policy, costs: DraftCosts) -> tuple[float, float]:
    """(tokens per unit cost, tokens per large call) of `policy` along the outputs (`cands`: `candidates`)."""
    policy.begin(1, costs)
    tokens = cost = calls = 0.0
    for ex, per_t in zip(data, cands):
        g, t = ex["gen"], 0
        while t < len(g):
            budget, k = policy.budgets([len(g) - t])[0], 0
            if budget:
                cand, n = per_t[t][0][:budget], per_t[t][1]
                if cand:
                    conf = torch.tensor([[PromptLookupProposer.confidence(j, n) for j in range(len(cand))]])
                    k = int(policy.cut(conf, torch.ones_like(conf, dtype=torch.bool)).sum())
            a = 0
            while a < k and t + a < len(g) and cand[a] == g[t + a]:
                a += 1
            step = min(a + 1, len(g) - t)
            if k:
                policy.learn(
                    RoundRecord(
                        conf=[conf[0, :k].tolist()],
                        first_conf=[float(conf[0, 0])],
                        drafted=[k],
                        judged=[min(k, a + 1)],
                        accepted=[a],
                        committed=[step],
                        small_steps=0,
                        width=k,
                    )
                )
            else:
                policy.no_draft([step], 0)
            tokens += step
            cost += costs.verify_cost(k) + (costs.overhead if k else 0.0)
            calls += 1
            t += step
    return tokens / cost, tokens / calls


def timed_table(large, context: int, widths: int = 12, reps: int = 10) -> tuple[float, ...]:
    """verify[k] = median time of a (k+1)-token forward / a 1-token forward, at this context (cache cropped back)."""
    from transformers import DynamicCache

    from bild.adapters import _probe_cache_arg

    arg = _probe_cache_arg(large)[0]  # "cache" from transformers 5.24, "past_key_values" before

    ids = torch.randint(100, 20000, (1, context + widths), generator=torch.Generator().manual_seed(0))
    times = {w: [] for w in range(1, widths + 1)}
    with torch.inference_mode():
        cache = DynamicCache()
        large(input_ids=ids[:, :context], use_cache=True, **{arg: cache})
        for rep in range(reps):
            for w in range(1, widths + 1) if rep % 2 == 0 else range(widths, 0, -1):  # interleaved, both orders
                t0 = time.perf_counter()
                large(
                    input_ids=ids[:, context : context + w],
                    use_cache=True,
                    **{arg: cache},
                    attention_mask=torch.ones(1, context + w, dtype=torch.long),
                    position_ids=torch.arange(context, context + w)[None],
                )
                times[w].append(time.perf_counter() - t0)
                cache.crop(-w)
    step = statistics.median(times[1])
    return tuple(statistics.median(times[w]) / step for w in range(1, widths + 1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), default="xsum")
    p.add_argument("--part", default="tune", help="dev part the outputs come from (never test)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--max_new_tokens", type=int, default=48)
    p.add_argument(
        "--outputs",
        default=None,
        help="JSON of {prompt, gen} token lists: read if it exists, else written after generating",
    )
    p.add_argument("--verify", default=None, help="comma-separated verify[1..] in 1-token steps (default: timed)")
    p.add_argument("--ngram", type=int, default=2, help="max_matching_ngram_size")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    data, large, eos = None, None, {2}
    if a.outputs and Path(a.outputs).exists():
        data = json.loads(Path(a.outputs).read_text())
    if data is None or a.verify is None:
        from bild.pairs.recipe import dev_rows
        from bild.pairs.smollm2 import chat_prompt, format_instruction, load_pair, shared_data_dir

        pr = load_pair()
        large, tok = pr.large, pr.tokenizer
        eos = {tok.eos_token_id}
        if data is None:
            d = shared_data_dir()
            folder, task = TASKS[a.task]
            if d is None or not (d / folder / "dev.jsonl").exists():
                print(f"skipped: no shared data for {a.task}")
                return 0
            data = []
            for r in dev_rows(d / folder / "dev.jsonl", a.part, a.limit):
                ids = tok(
                    chat_prompt(tok, format_instruction(r["source"], task, 1500)),
                    return_tensors="pt",
                    add_special_tokens=False,
                )
                out = large.generate(
                    **ids, do_sample=False, max_new_tokens=a.max_new_tokens, pad_token_id=tok.eos_token_id
                )
                data.append(
                    {"prompt": ids["input_ids"][0].tolist(), "gen": out[0, ids["input_ids"].shape[1] :].tolist()}
                )
            if a.outputs:
                Path(a.outputs).write_text(json.dumps(data))
    if a.verify:
        table = (1.0,) + tuple(float(x) for x in a.verify.split(","))
        source = "given"
    else:
        context = int(statistics.median(len(x["prompt"]) for x in data))
        table = timed_table(large, context)
        source = f"timed at a {context}-token context, {a.threads} threads"
    costs = DraftCosts(0.0, table, DraftCosts.LOOKUP_OVERHEAD)
    print(
        f"{len(data)} outputs, {sum(len(x['gen']) for x in data)} tokens; verify[k] ({source}): "
        + " ".join(f"{v:.2f}" for v in table)
    )
    print("\n| policy | tokens / unit cost | tokens / large call |\n|---|---|---|")
    rows = [
        ("0.7 rule (token by token, R over drafting rounds)", Rule07(None, 10, prior=0.4)),
        ("LookupPolicy (cut, R over all rounds, re-probes)", LookupPolicy(None, 10, prior=0.4)),
    ]
    rows += [
        (f"fixed: {k1} after a 1-gram match, {k2} after a 2-gram", Fixed((k1, k2)))
        for k1, k2 in ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (0, 5))
    ]
    cands = candidates(data, a.ngram, eos)
    for name, pol in rows:
        r, c = replay(data, cands, pol, costs)
        print(f"| {name} | {r:.3f} | {c:.2f} |", flush=True)
    print("\n" + position_odds(data, cands))
    return 0


def position_odds(data: list[dict], cands: list, K: int = 10) -> str:
    """P(a copy's first j tokens are right) over every output position with a 2+-gram match, as if each
    position started a round: what a per-round rule would see if rounds started anywhere."""
    hits, n_pos = [0] * K, 0
    for ex, per_t in zip(data, cands):
        g = ex["gen"]
        for t, (cand, n) in enumerate(per_t):
            if n < 2 or not cand:
                continue
            n_pos += 1
            a = 0
            while a < len(cand) and t + a < len(g) and cand[a] == g[t + a]:
                a += 1
            for j in range(min(a, K)):
                hits[j] += 1
    p = [h / max(n_pos, 1) for h in hits]
    return f"over all {n_pos} positions with a 2+-gram match, P(first j copied tokens right), j = 1..{K}: " + " ".join(
        f"{x:.3f}" for x in p
    )


if __name__ == "__main__":
    sys.exit(main())

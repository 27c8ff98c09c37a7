"""Prompt lookup as a proposer: the same candidates as transformers' PromptLookupCandidateGenerator, output
identical to `large.generate` (greedy) or distributed as the large model (sampling), alone and combined with
the small model, through every entry point; clear errors for what makes no sense."""

import random

import pytest
import torch
from models import make_inputs, make_pair
from test_sampling import PROMPT, TEMP, N, V, accept_every_draft, chi_square_pvalue, tiny_llama
from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

import bild
import bild.acceptance
from bild.batch import BatchState
from bild.policies import ThresholdPolicy
from bild.proposers import PromptLookupProposer


def repetitive_inputs(family: str, batch: int, seed: int = 0):
    """Prompts that repeat a short phrase (so a lookup finds matches), left-padded to different lengths."""
    ids, mask = make_inputs(family, batch, seed=seed, length=12)
    g = torch.Generator().manual_seed(seed)
    for r in range(batch):
        phrase = torch.randint(3, 90, (4,), generator=g)
        n = int(mask[r].sum())
        ids[r, -n:] = phrase.repeat(3)[:n]
    return ids, mask


def lookup_candidates(tokens: list[int], num_tokens: int, ngram: int, eos: int | None = None) -> list[int]:
    """transformers' own prompt lookup (batch 1) on these tokens: the candidate it appends."""
    ref = PromptLookupCandidateGenerator(
        eos_token_id=None if eos is None else torch.tensor([eos]),
        num_output_tokens=num_tokens,
        max_matching_ngram_size=ngram,
        max_length=10_000,
    )
    out, _ = ref.get_candidates(torch.tensor([tokens]))
    return out[0, len(tokens) :].tolist()


@pytest.mark.parametrize("ngram", [1, 2, 3])
def test_candidates_equal_transformers_prompt_lookup(ngram):
    rnd = random.Random(ngram)
    st = BatchState(torch.zeros(1, 1, dtype=torch.long), None, 8, pad=0, eos_ids={2})
    checked = 0
    for _trial in range(300):
        tokens = [rnd.randrange(2, 9) for _ in range(rnd.randrange(2, 40))]
        budget = rnd.randrange(1, 12)
        prop = PromptLookupProposer(ThresholdPolicy(0.0, budget), ngram)
        prop.start(st)
        # the index is incremental: feed the tokens in two parts, as rounds would
        cut = rnd.randrange(1, len(tokens) + 1)
        prop._match(0, tokens[:cut], budget)
        got, _ = prop._match(0, tokens, budget)
        assert got == lookup_candidates(tokens, budget, ngram, eos=2), (tokens, budget)
        checked += bool(got)
    assert checked > 100  # most trials found a match


def test_encoder_input_is_searched_and_not_spanned():
    st = BatchState(torch.zeros(1, 1, dtype=torch.long), None, 8, pad=0, eos_ids=set())
    prop = PromptLookupProposer(ThresholdPolicy(0.0, 4), 2)
    prop.start(st, source_tokens=[[10, 11, 12, 13, 14]])
    assert prop._match(0, prop._corpus(0, [0, 11, 12]), 4) == ([13, 14], 2)  # stops at the source's end
    prop.start(st, source_tokens=[[10, 11, 12, 13, 14]])
    assert prop._match(0, prop._corpus(0, [0, 14]), 4) == ([], 1)  # no draft across the source's end


FAMILIES = ["llama", "gpt2", "opt", "t5", "bart"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("drafter", ["lookup", "combined"])
@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_output_equals_large_generate(family, drafter, batch):
    small, large = make_pair(family)
    ids, mask = repetitive_inputs(family, batch, seed=batch)
    kw = dict(attention_mask=mask, max_new_tokens=24, do_sample=False)
    want = large.generate(ids, **kw)
    for engine in (dict(), dict(fallback_threshold=0.3, max_small_steps=4)):  # adaptive; numeric thresholds
        gen = bild.BiLDGenerator(small if drafter == "combined" else None, large, **engine)
        out = gen.generate(ids, prompt_lookup_num_tokens=6, **kw)
        assert torch.equal(out, want), engine
        s = gen.stats
        assert s.drafted_by.get("lookup", 0) > 0
        assert sum(s.drafted_by.values()) == s.drafted and sum(s.accepted_by.values()) == s.accepted
        sources = [t for row in s.token_sources for t in row]
        assert sources.count("lookup") == s.accepted_by["lookup"]
        assert set(sources) <= {"small", "lookup", "large"}
        if drafter == "lookup":
            assert "small" not in sources and s.small_forwards == 0


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_custom_generate_with_and_without_small_model(family):
    small, large = make_pair(family)
    ids, mask = repetitive_inputs(family, 2)
    kw = dict(attention_mask=mask, max_new_tokens=20, do_sample=False)
    want = large.generate(ids, **kw)
    for sm in (None, small):
        stats = bild.GenerationStats()
        out = large.generate(
            ids,
            custom_generate=bild.generate,
            small_model=sm,
            prompt_lookup_num_tokens=10,
            max_matching_ngram_size=3,
            bild_stats=stats,
            **kw,
        )
        assert torch.equal(out, want) and stats.drafted_by.get("lookup", 0) > 0
        assert stats.policy["lookup" if sm is not None else "max_matching_ngram_size"]


def test_numeric_thresholds_draft_the_fixed_length():
    small, large = make_pair("llama")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14] * 3])
    gen = bild.BiLDGenerator(None, large, fallback_threshold=0.5, max_small_steps=3)
    gen.generate(ids, max_new_tokens=16, do_sample=False, prompt_lookup_num_tokens=5)
    budgets = [b for b in gen.stats.draft_budgets if b]
    assert budgets and budgets[0] == 5  # prompt_lookup_num_tokens, not max_small_steps
    assert max(gen.stats.verify_lengths) == 6


def lookup_sampled_joint(small, large, **engine):
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=2, verification="exact", **engine)
    torch.manual_seed(0)
    out = gen.generate(
        torch.tensor([PROMPT + PROMPT] * N),
        max_new_tokens=4,
        do_sample=True,
        temperature=TEMP,
        top_k=0,
        prompt_lookup_num_tokens=2,
    )
    P = 2 * len(PROMPT)
    t2, t3 = out[:, P + 1], out[:, P + 2]
    return torch.bincount(t2 * V + t3, minlength=V * V).reshape(V, V).double(), gen.stats


@pytest.mark.parametrize("drafter", ["lookup", "combined"])
def test_sampling_keeps_the_large_distribution(drafter, monkeypatch):
    """One-hot q for lookup drafts: speculative sampling stays exact; the control (a rule that keeps every
    draft) is caught by the same test."""
    small, large = tiny_llama(1), tiny_llama(2)
    import itertools

    seqs = torch.tensor([PROMPT + PROMPT + list(t) for t in itertools.product(range(V), repeat=3)])
    with torch.no_grad():
        logp = (large(seqs).logits[:, -4:-1] / TEMP).log_softmax(-1)
    lp = sum(logp[:, i].gather(-1, seqs[:, 2 * len(PROMPT) + i, None]).squeeze(-1) for i in range(3))
    truth = lp.exp().reshape(V, V, V).sum(0)
    sm = small if drafter == "combined" else None
    counts, st = lookup_sampled_joint(sm, large)
    assert st.drafted_by.get("lookup", 0) > N // 2 and 0 < st.accepted < st.drafted
    tv = 0.5 * (counts / N - truth).abs().sum()
    assert chi_square_pvalue(counts, truth) > 1e-4 and tv < 0.05, tv
    monkeypatch.setattr(bild.acceptance, "verify_exact_sampling", accept_every_draft)
    counts, _ = lookup_sampled_joint(sm, large)
    assert chi_square_pvalue(counts, truth) < 1e-6


def test_rollback_and_uno_take_lookup_drafts():
    small, large = make_pair("llama")
    ids, mask = repetitive_inputs("llama", 3)
    kw = dict(attention_mask=mask, max_new_tokens=20)
    want = large.generate(ids, do_sample=False, **kw)
    # rollback threshold 0 keeps only drafts equal to the large model's argmax: the large model's output
    gen = bild.BiLDGenerator(None, large, rollback_threshold=0.0, fallback_threshold=0.0, max_small_steps=4)
    assert torch.equal(gen.generate(ids, do_sample=False, prompt_lookup_num_tokens=4, **kw), want)
    assert gen.stats.drafted_by["lookup"] > 0
    gen = bild.BiLDGenerator(small, large, verification="exact", uno_epsilon=0.1)
    out = gen.generate(ids, do_sample=True, prompt_lookup_num_tokens=4, **kw)
    assert out.shape[0] == 3 and gen.stats.drafted_by.get("lookup", 0) > 0


def test_errors():
    small, large = make_pair("llama")
    ids = torch.tensor([[5, 6, 7, 5, 6]])
    with pytest.raises(ValueError, match="no drafter.*small_model.*prompt_lookup_num_tokens"):
        bild.BiLDGenerator(None, large).generate(ids, max_new_tokens=4)
    with pytest.raises(ValueError, match="no drafter"):
        large.generate(ids, custom_generate=bild.generate, max_new_tokens=4)
    with pytest.raises(ValueError, match="`prompt_lookup_num_tokens` must be"):
        bild.BiLDGenerator(small, large).generate(ids, max_new_tokens=4, prompt_lookup_num_tokens=0)
    with pytest.raises(ValueError, match="`max_matching_ngram_size` must be"):
        bild.BiLDGenerator(small, large).generate(
            ids, max_new_tokens=4, prompt_lookup_num_tokens=3, max_matching_ngram_size=-1
        )
    with pytest.raises(ValueError, match="`num_drafts` > 1.*prompt_lookup_num_tokens"):
        bild.BiLDGenerator(small, large, verification="exact", num_drafts=2).generate(
            ids, max_new_tokens=4, do_sample=True, prompt_lookup_num_tokens=3
        )


def test_adaptive_lookup_policy_learns_per_position():
    """Under the adaptive policy the lookup's acceptance is learned per draft position (and kind of match)."""
    _, large = make_pair("llama")
    ids, mask = repetitive_inputs("llama", 2)
    gen = bild.BiLDGenerator(None, large, costs=0.2)
    gen.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, prompt_lookup_num_tokens=8)
    pol = gen.lookup_policy(8, 2)
    assert pol.cap == 8 and pol.judged_total > 0
    assert gen.stats.policy["max_matching_ngram_size"] == 2


def test_the_docs_own_proposer_runs_exactly():
    """docs/proposers.md's example, as written there: a user's proposer in the loop keeps greedy output."""
    import re
    from pathlib import Path

    text = Path(__file__).resolve().parents[1].joinpath("docs", "proposers.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    _, large = make_pair("llama")
    ids, mask = repetitive_inputs("llama", 2)
    ns = {"large": large, "input_ids": ids, "attention_mask": mask}
    for b in blocks:
        exec(b, ns)  # noqa: S102 - the documentation's code
    want = large.generate(ids, attention_mask=mask, max_new_tokens=32, do_sample=False)
    assert torch.equal(ns["sequences"], want[:, : ns["sequences"].shape[1]])
    assert ns["sequences"].shape == want.shape
    assert any(s == "lookup" for row in ns["loop"].stats.token_sources for s in row)


@pytest.mark.parametrize("family", ["gpt2", "bart"])
def test_folder_takes_prompt_lookup(family):
    """The custom_generate/ folder: prompt lookup with and without a small model, as the callable gives it."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    small, large = make_pair(family)
    ids, mask = repetitive_inputs(family, 2, seed=7)
    kw = dict(
        attention_mask=mask,
        max_new_tokens=16,
        prompt_lookup_num_tokens=4,
        fallback_threshold=0.5,
        rollback_threshold=1.5,
        max_small_steps=4,
    )  # rollback: lossy, so equality shows the same decisions
    for sm in (None, small):
        want = large.generate(ids, custom_generate=bild.generate, small_model=sm, **kw)
        got = large.generate(ids, custom_generate=str(repo), trust_remote_code=True, small_model=sm, **kw)
        assert torch.equal(got, want)


def test_demo_marks_lookup_tokens():
    """`bild demo` shows who wrote each token: plain = small, {braced} = lookup, [bracketed] = large."""
    from bild.cli import render

    class Tok:
        def decode(self, ids, skip_special_tokens=False):
            return {1: "a", 2: "b", 3: "c"}[ids[0]]

    assert render(Tok(), [1, 2, 3], ["small", "lookup", "large"], color=False) == "a{b}[c]"


def rollback_reference(large, prompt: list[int], max_new: int, k: int, rb: float, eos: set[int]) -> list[int]:
    """BiLD's rollback rule over prompt-lookup drafts, cache-free, one row: every round drafts transformers'
    lookup candidate (as many tokens as fit: the last new token is the large model's), one uncached forward
    reads it, the first draft with -log p_large > rb is cut and the large model's argmax goes in its place
    (all kept: the large model's next token follows)."""
    seq = list(prompt)
    while len(seq) - len(prompt) < max_new and not (eos & set(seq[len(prompt) :])):
        room = max_new - (len(seq) - len(prompt)) - 1
        cand = lookup_candidates(seq, min(k, room), 2) if room > 0 else []
        with torch.no_grad():
            logp = large(torch.tensor([seq + cand])).logits[0, len(seq) - 1 :].log_softmax(-1)
        kept = 0
        while kept < len(cand) and -logp[kept, cand[kept]] <= rb:
            kept += 1
        seq += cand[:kept] + [int(logp[kept].argmax())]
    new = seq[len(prompt) :][:max_new]
    hit = next((i for i, t in enumerate(new) if t in eos), None)
    return new if hit is None else new[: hit + 1]


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize("rb", [0.5, 2.0, 8.0])
def test_rollback_over_lookup_drafts_equals_a_cache_free_reference(family, rb):
    """The lookup drafts under BiLD's rollback rule (the sweep's `--prompt_lookup`): each row's text equals
    `rollback_reference`, at batch 1 and in a left-padded batch of 3, and a lenient threshold keeps drafts that
    are not the large model's argmax (so the rule, not exact decoding, is what is checked; heads at sharpness 1,
    where gpt2's tiny model at the default 2 keeps only argmax drafts even at 8)."""
    _, large = make_pair(family, sharpness=1.0)
    ids, mask = repetitive_inputs(family, 3, seed=11)
    eos = large.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    max_new, k = 20, 5
    refs = [rollback_reference(large, ids[r][mask[r].bool()].tolist(), max_new, k, rb, eos) for r in range(3)]
    gen = bild.BiLDGenerator(None, large, fallback_threshold=0.0, max_small_steps=k, rollback_threshold=rb)
    for rows in ([0], [1], [2], [0, 1, 2]):
        sub_mask = mask[rows][:, int((mask[rows].sum(0) == 0).sum()) :]  # drop columns that are padding in all rows
        sub_ids = ids[rows][:, -sub_mask.shape[1] :]
        out = gen.generate(
            sub_ids, attention_mask=sub_mask, max_new_tokens=max_new, do_sample=False, prompt_lookup_num_tokens=k
        )
        pad = large.generation_config.pad_token_id
        for i, r in enumerate(rows):
            got = out[i, sub_ids.shape[1] :].tolist()
            assert got[: len(refs[r])] == refs[r], (family, rb, rows, r)
            assert all(t == pad for t in got[len(refs[r]) :])
    greedy = large.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False)
    if rb == 8.0:  # lenient: some rows leave the large model's greedy text
        assert any(greedy[r, ids.shape[1] :].tolist()[: len(refs[r])] != refs[r] for r in range(3))


def first_round_joint(large, prompt: list[int], rule: str | None, eps: float) -> tuple[torch.Tensor, float]:
    """P(t1, t2) [V * V] when the prefill samples t1 from p and the first round drafts the copy c(t1) that
    transformers' lookup finds (one token), judged by `rule` (None: exact sampling, p itself); and the
    probability that the round drafts. Keeping c has probability a = min(1, p(c) + eps); on rejection UNO
    samples from p, OPT from p without c (the residual of a one-hot q)."""
    seqs = torch.tensor([prompt + [t] for t in range(V)])
    with torch.no_grad():
        p1 = (large(torch.tensor([prompt])).logits[0, -1] / TEMP).softmax(-1).double()
        p2 = (large(seqs).logits[:, -1] / TEMP).softmax(-1).double()  # [t1, t2]
    joint, drafting = p1[:, None] * p2, 0.0
    for t1 in range(V):
        cand = lookup_candidates(prompt + [t1], 1, 2)
        if not cand or rule is None:
            continue
        c, p = cand[0], p2[t1]
        a = min(1.0, float(p[c]) + eps)
        rest = p if rule == "uno" else torch.where(torch.arange(V) == c, 0.0, p) / (1 - p[c])
        row = (1 - a) * rest
        row[c] += a
        joint[t1], drafting = p1[t1] * row, drafting + float(p1[t1])
    return joint.flatten(), drafting


@pytest.mark.parametrize("rule", ["uno", "opt"])
def test_uno_and_opt_over_lookup_drafts_follow_their_rule(rule):
    """Decoding-UNO / -OPT judging lookup drafts: the joint of the first two new tokens follows the rule's own
    distribution (`first_round_joint`), and neither the other rule's nor exact sampling's. The prompt repeats a
    phrase whose copies the tiny model finds likely enough (p(c) ~ 0.2-0.5) for UNO and OPT to differ."""
    large, eps, other = tiny_llama(2), 0.1, {"uno": "opt", "opt": "uno"}[rule]
    prompt = [4, 3, 4] * 2
    want, drafting = first_round_joint(large, prompt, rule, eps)
    gen = bild.BiLDGenerator(
        None, large, fallback_threshold=0.0, max_small_steps=1, verification="exact", **{f"{rule}_epsilon": eps}
    )
    torch.manual_seed(0)
    out = gen.generate(
        torch.tensor([prompt] * N),
        max_new_tokens=3,
        do_sample=True,
        temperature=TEMP,
        top_k=0,
        prompt_lookup_num_tokens=1,
    )
    P = len(prompt)
    counts = torch.bincount(out[:, P] * V + out[:, P + 1], minlength=V * V).double()
    assert drafting > 0.5 and gen.stats.drafted_by.get("lookup", 0) > 0.5 * N
    assert chi_square_pvalue(counts, want) > 1e-4
    assert chi_square_pvalue(counts, first_round_joint(large, prompt, other, eps)[0]) < 1e-10
    assert chi_square_pvalue(counts, first_round_joint(large, prompt, None, eps)[0]) < 1e-10

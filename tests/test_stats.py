"""Statistics mean what docs/guide.md says (checked against the cache-free reference and a hand-traced batch),
and the fidelity fixes: greedy rollback keeps the large model's argmax, criteria see scores, scores are copies."""

import copy

import pytest
import torch
from models import make_inputs, make_pair
from reference import reference_generate
from transformers import StoppingCriteria, StoppingCriteriaList

import bild

KEYS = ("drafted", "judged", "accepted", "rollbacks", "fallbacks")


@pytest.mark.parametrize("family", ["llama", "gpt2", "bart"])
@pytest.mark.parametrize("fb,rb,steps", [(0.5, 1.5, 4), (0.0, 0.7, 5)])
def test_counters_equal_the_reference_summed_over_rows(family, fb, rb, steps):
    """Rollback mode, a padded batch of 3 (rows decode as alone): the engine's counters equal those of the
    cache-free reference, which counts by the definitions in docs/guide.md."""
    small, large = make_pair(family)
    ids, mask = make_inputs(family, 3, seed=31)
    is_ed = family == "bart"
    gen = bild.BiLDGenerator(small, large, fallback_threshold=fb, rollback_threshold=rb, max_small_steps=steps)
    gen.generate(ids, attention_mask=mask, max_new_tokens=18)
    want = dict.fromkeys(KEYS, 0)
    new = 0
    for r in range(3):
        p = ids[r][mask[r].bool()].tolist()
        new += len(
            reference_generate(
                small,
                large,
                [] if is_ed else p,
                18,
                fb,
                rb,
                steps,
                "rollback",
                encoder_ids=p if is_ed else None,
                counts=want,
            )
        )
    got = {k: getattr(gen.stats, k) for k in KEYS}
    assert got == want
    assert gen.stats.new_tokens == new and want["rollbacks"] > 0 and want["accepted"] > 0
    assert gen.stats.acceptance_rate == want["accepted"] / want["judged"]
    assert gen.stats.fill_drafted == 0  # rollback mode never fills


def test_hand_traced_batch():
    """small = large: every draft is accepted. Two rows, 3 drafts a round, 8 new tokens, row 0 stops at
    an eos that is its 3rd new token (its 2nd draft).

    prefill   both rows: 1 token from the large model
    round 1   budget min(3, 8-1-1) = 3 each; row 0's draft ends at the eos (2 drafts: the small model stops
              drafting at an eos), it commits both and stops (2 judged, 2 accepted, the large model's token
              after them not committed); row 1 commits 3 drafts + 1 bonus
    round 2   row 1 only: budget min(3, 8-5-1) = 2, commits 2 drafts + 1 bonus = 8 tokens
    """
    small, large = make_pair("llama")
    small = copy.deepcopy(large)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    plain = large.generate(ids, max_new_tokens=8, eos_token_id=None, pad_token_id=0)
    eos = int(plain[0, 4 + 2])
    assert eos not in plain[1, 4:].tolist() and eos not in plain[0, 4:6].tolist()
    gen = bild.BiLDGenerator(
        small, large, fallback_threshold=0.0, max_small_steps=3, verification="rollback", rollback_threshold=0.0
    )
    out = gen.generate(ids, max_new_tokens=8, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out[1], plain[1]) and out[0, 4:7].tolist() == plain[0, 4:7].tolist()
    st = gen.stats
    assert (st.rounds, st.draftless_rounds, st.draft_budgets) == (2, 0, [3, 2])
    assert (st.drafted, st.judged, st.accepted, st.rollbacks, st.fallbacks) == (2 + 3 + 2, 2 + 3 + 2, 2 + 3 + 2, 0, 0)
    assert st.new_tokens == 3 + 8 and st.acceptance_rate == 1.0
    assert st.verify_lengths == [3, 4, 3] and st.verify_widths == [4, 3]  # per row and pass; padded width
    assert st.token_sources[0] == ["large", "small", "small"]
    assert st.token_sources[1] == ["large", "small", "small", "small", "large", "small", "small", "large"]


def test_greedy_rollback_keeps_a_draft_equal_to_the_large_argmax():
    """small = exact copy of large, rollback threshold 0: every draft is the large model's own greedy token,
    so none is rolled back (the paper's rule alone would reject all whose probability is below 1)."""
    _, large = make_pair("gpt2")
    small = copy.deepcopy(large)
    ids, mask = make_inputs("gpt2", 2, seed=3)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, rollback_threshold=0.0, max_small_steps=6)
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=30)
    assert torch.equal(out, large.generate(ids, attention_mask=mask, max_new_tokens=30))
    assert gen.stats.rollbacks == 0 and gen.stats.accepted == gen.stats.drafted > 0
    assert gen.stats.large_forwards <= 1 + -(-29 // 7)  # rounds of 6 drafts + 1 token


class StopWhenUnsure(StoppingCriteria):
    """Reads the scores: stop once the large model's top probability falls below a bound. (transformers
    documents scores as a [B, V] tensor; its own loop passes the tuple of scores so far, or None.)"""

    def __init__(self, bound):
        self.bound, self.calls = bound, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        scores = scores[-1] if isinstance(scores, tuple) else scores
        return scores.softmax(-1).amax(-1) < self.bound


def test_stopping_criteria_receive_scores():
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 1, seed=9)
    probe = large.generate(
        ids, attention_mask=mask, max_new_tokens=20, return_dict_in_generate=True, output_scores=True
    )
    tops = torch.stack(probe.scores, 1)[0].softmax(-1).amax(-1)
    bound = float(tops.median())  # stops somewhere in the middle
    want = large.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=20,
        return_dict_in_generate=True,
        output_scores=True,
        stopping_criteria=StoppingCriteriaList([StopWhenUnsure(bound)]),
    ).sequences
    crit = StopWhenUnsure(bound)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=4, verification="exact")
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=20, stopping_criteria=StoppingCriteriaList([crit]))
    assert torch.equal(out, want) and crit.calls > 0 and want.shape[1] < ids.shape[1] + 20
    assert gen.stats.accepted <= gen.stats.new_tokens - 1  # nothing accepted past the stop is counted


def test_kept_scores_are_copies_not_views_of_the_round():
    small, large = make_pair("opt")
    ids, mask = make_inputs("opt", 2, seed=4)
    gc = large.generation_config
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=5, verification="exact")
    from bild.adapters import ModelAdapter
    from bild.decoding import DraftVerifyLoop

    gc = copy.deepcopy(gc)
    gc.update(return_dict_in_generate=True, output_scores=True, output_logits=True)
    gen.policy.begin(2)
    loop = DraftVerifyLoop(ModelAdapter(small), ModelAdapter(large), gen.options, gen.policy, gc, None, None)
    loop.run(ids, mask, 12)
    V = large.config.vocab_size
    for row in loop.scores + loop.raw:
        assert row and all(t.untyped_storage().nbytes() == V * t.element_size() for t in row)

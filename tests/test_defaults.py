"""Defaults: lossless, no warm-up forwards, and outputs that are a function of the inputs.

- At default arguments `BiLDGenerator`, `bild.generate` and the `custom_generate` folder return
  `large.generate`'s output (greedy); a `rollback_threshold` alone selects BiLD's rule.
- costs="auto" runs no forward of its own: every forward a call makes is one the engine counts.
- In the lossy modes at "auto" (rollback, UNO, OPT) the text does not depend on the other rows of the batch,
  on earlier calls, or on timing (the online cost learner's clock patched to report very different costs).
- Under exact verification the learned costs do change the policy's decisions (and only those).
"""

import itertools
from pathlib import Path

import pytest
import torch
from models import make_inputs, make_pair

import bild
from bild import online_costs, timing
from bild.analysis.cost_model import ForwardCounter
from bild.policies import AdaptivePolicy, DraftCosts, RowwisePolicy

N = 24


@pytest.fixture(autouse=True)
def _fresh_costs():
    online_costs.forget()
    yield
    online_costs.forget()


def skewed_clock(seconds: float):
    """A fake timer for the online cost learner (read twice per timed forward): every forward of either
    model seems to take `seconds`, so the learned cost ratio is 1 and a verify pass costs one step."""
    ticks = itertools.count()

    def clock():
        return next(ticks) * seconds

    return clock


def test_defaults_are_exact_and_rollback_is_one_argument_away():
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 3, seed=2)
    want = large.generate(ids, attention_mask=mask, max_new_tokens=N)
    gen = bild.BiLDGenerator(small, large)
    assert gen.options.verification == "exact" and isinstance(gen.policy, AdaptivePolicy)
    for _ in range(2):
        assert torch.equal(gen.generate(ids, attention_mask=mask, max_new_tokens=N), want)
    assert torch.equal(
        large.generate(ids, attention_mask=mask, max_new_tokens=N, custom_generate=bild.generate, small_model=small),
        want,
    )
    folder = str(Path(__file__).resolve().parents[1])  # the repository: transformers reads its custom_generate/
    assert torch.equal(
        large.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=N,
            custom_generate=folder,
            trust_remote_code=True,
            small_model=small,
        ),
        want,
    )
    bild_rule = bild.BiLDGenerator(small, large, rollback_threshold=3.0)
    assert bild_rule.options.verification == "rollback" and bild_rule.options.rollback_threshold == 3.0
    assert isinstance(bild_rule.policy, RowwisePolicy)
    explicit = bild.BiLDGenerator(small, large, verification="rollback")
    assert explicit.options.rollback_threshold == 5.0
    assert (
        bild.BiLDGenerator(small, large, verification="exact", rollback_threshold=2.0).options.verification == "exact"
    )


def test_auto_costs_run_no_forward_of_their_own():
    """The first call of a fresh generator runs only the forwards its statistics count: no cost measurement."""
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 2, seed=3)
    bild.BiLDGenerator(small, large).generate(ids, attention_mask=mask, max_new_tokens=2)  # the family probes
    for kwargs in ({}, {"rollback_threshold": 3.0}):
        online_costs.forget()
        gen = bild.BiLDGenerator(small, large, **kwargs)
        with ForwardCounter(small=small, large=large) as fc:
            gen.generate(ids, attention_mask=mask, max_new_tokens=N)
        assert fc.count("small") == gen.stats.small_forwards and fc.count("large") == gen.stats.large_forwards


def _rows_alone(gen, ids, mask, **kw):
    ed = gen.large_model.config.is_encoder_decoder  # encoder-decoder: outputs start with the decoder start id
    P = 1 if ed else ids.shape[1]
    out = []
    for r in range(ids.shape[0]):
        x = ids[r][mask[r].bool()][None]
        out.append(gen.generate(x, **kw)[0, 1 if ed else x.shape[1] :].tolist())
    batched = gen.generate(ids, attention_mask=mask, **kw)
    return [batched[r, P : P + len(a)].tolist() for r, a in enumerate(out)], out


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5"])
def test_rollback_at_auto_row_in_a_batch_equals_the_row_alone(family):
    small, large = make_pair(family)
    ids, mask = make_inputs(family, 3, seed=5)
    gen = bild.BiLDGenerator(small, large, rollback_threshold=2.0)
    in_batch, alone = _rows_alone(gen, ids, mask, max_new_tokens=N)
    assert in_batch == alone
    assert gen.stats.policy["policy"] == "adaptive per row"


def test_rollback_at_auto_tenth_call_equals_first_and_ignores_the_clock(monkeypatch):
    small, large = make_pair("gpt2")
    ids, mask = make_inputs("gpt2", 3, seed=8)
    gen = bild.BiLDGenerator(small, large, rollback_threshold=1.5)
    first = gen.generate(ids, attention_mask=mask, max_new_tokens=N)
    assert gen.stats.token_sources[0].count("small") > 0  # the small model did write
    for _ in range(9):
        out = gen.generate(ids, attention_mask=mask, max_new_tokens=N)
    assert torch.equal(out, first)
    for factor in (1e-6, 10.0):  # forwards that seem free, or ten seconds each
        monkeypatch.setattr(timing, "clock", skewed_clock(factor))
        for g in (gen, bild.BiLDGenerator(small, large, rollback_threshold=1.5)):
            assert torch.equal(g.generate(ids, attention_mask=mask, max_new_tokens=N), first)
        assert torch.equal(
            large.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=N,
                custom_generate=bild.generate,
                small_model=small,
                rollback_threshold=1.5,
            ),
            first,
        )


@pytest.mark.parametrize("eps", ["uno_epsilon", "opt_epsilon"])
def test_uno_opt_at_auto_are_reproducible_under_a_seed_whatever_the_clock(eps, monkeypatch):
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 2, seed=6)
    kw = dict(attention_mask=mask, max_new_tokens=N, do_sample=True)
    gen = bild.BiLDGenerator(small, large, **{eps: 0.3})
    assert isinstance(gen.policy, RowwisePolicy)
    torch.manual_seed(11)
    first = gen.generate(ids, **kw)
    for _ in range(3):
        gen.generate(ids, **kw)
    monkeypatch.setattr(timing, "clock", skewed_clock(5.0))
    torch.manual_seed(11)
    assert torch.equal(bild.BiLDGenerator(small, large, **{eps: 0.3}).generate(ids, **kw), first)
    torch.manual_seed(11)
    assert torch.equal(gen.generate(ids, **kw), first)


def test_exact_mode_learns_costs_from_its_own_forwards(monkeypatch):
    """The learned costs follow the clock the forwards are timed with (shared by a new generator), and the
    output stays the large model's whatever they say."""
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 1, seed=4)
    want = large.generate(ids, attention_mask=mask, max_new_tokens=N)
    prior = online_costs.prior_costs(small, large, 1)
    assert online_costs.learned_costs(small, large, 1) == prior  # nothing timed yet
    assert 0 < prior.small < 1 and prior.verify[1] > 1.0
    monkeypatch.setattr(timing, "clock", skewed_clock(1.0))  # every forward "takes" 1 s: c = 1
    gen = bild.BiLDGenerator(small, large, costs="auto")
    for _ in range(3):
        assert torch.equal(gen.generate(ids, attention_mask=mask, max_new_tokens=N), want)
    learned = online_costs.learned_costs(small, large, 1)
    assert learned.small == pytest.approx(1.0) and learned.verify[5] == pytest.approx(1.0)
    other = bild.BiLDGenerator(small, large)
    assert torch.equal(other.generate(ids, attention_mask=mask, max_new_tokens=N), want)
    assert other.stats.policy["costs"]["small"] == pytest.approx(1.0)  # shared with a new generator


def _timed_forwards(monkeypatch, model, seconds: float, now: list[float]) -> None:
    """`model`'s forwards advance the fake clock `now[0]` by `seconds` (the only time that passes)."""
    import functools

    fwd = model.forward

    @functools.wraps(fwd)
    def forward(*a, **k):
        now[0] += seconds
        return fwd(*a, **k)

    monkeypatch.setattr(model, "forward", forward)


def test_round_overhead_is_a_rounds_host_time_beyond_its_forwards(monkeypatch):
    """Time passes only in forwards (large 1 s, small 0.25 s) and, for 0.5 s, in each proposal that runs the
    small model: plain rounds then record 0 s of overhead, rounds that ran the small model (those that fell
    back at the first step too) 0.5 s, and the learned costs charge a drafting round 0.5 large steps (the
    forwards' seconds are subtracted, the small model's catch-ups included). Output: the large model's."""
    from bild.proposers import ModelProposer

    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 1, seed=4)
    want = large.generate(ids, attention_mask=mask, max_new_tokens=N)
    now = [0.0]
    monkeypatch.setattr(timing, "clock", lambda: now[0])
    _timed_forwards(monkeypatch, large, 1.0, now)
    _timed_forwards(monkeypatch, small, 0.25, now)
    propose = ModelProposer.propose

    def slow_propose(self, state, allowed=None):  # 0.5 s of host work in each proposal that runs the small model
        n = self.adapter.forwards
        prop = propose(self, state, allowed)
        now[0] += 0.5 * (self.adapter.forwards > n)
        return prop

    monkeypatch.setattr(ModelProposer, "propose", slow_propose)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.5, max_small_steps=3)  # drafts most rounds
    assert torch.equal(gen.generate(ids, attention_mask=mask, max_new_tokens=N), want)
    times = online_costs.model_times(large)
    assert sum(len(d) for d in times.rounds.values()) == gen.stats.rounds  # one record per round
    for _ in range(2):
        assert torch.equal(gen.generate(ids, attention_mask=mask, max_new_tokens=N), want)
    got = {kind: list(d) for (b, kind), d in times.rounds.items()}
    assert set(got) <= {"small", "plain"} and len(got["small"]) >= online_costs.MIN_ROUND_SAMPLES
    assert got["small"] == pytest.approx([0.5] * len(got["small"]))
    assert got.get("plain", [0.0]) == pytest.approx([0.0] * len(got.get("plain", [0.0])))
    learned = online_costs.learned_costs(small, large, 1)
    assert learned.overhead == pytest.approx(0.5) and learned.small == pytest.approx(0.25)


def test_learned_costs_price_verify_widths_from_the_table_and_rounds_against_plain_ones():
    """The small model's verify costs are the large model's per-width table (as prompt lookup's), and the
    round overhead is a small-model round's host time beyond a plain round's, in large steps."""
    from bild.online_costs import verify_table

    small, large = make_pair("llama")
    tl, ts = online_costs.model_times(large), online_costs.model_times(small)
    for _ in range(online_costs.MIN_SAMPLES):
        for w, t in ((1, 10.0), (2, 11.0), (3, 12.0), (4, 16.0)):
            tl.record(1, w, t)
        ts.record(1, 1, 2.0)
    before = online_costs.learned_costs(small, large, 1)
    assert before != online_costs.prior_costs(small, large, 1)  # learned forwards...
    assert before.overhead == DraftCosts.ROUND_OVERHEAD  # ...but no round timed yet
    for _ in range(online_costs.MIN_ROUND_SAMPLES):
        tl.record_round(1, "small", 3.0)
        tl.record_round(1, "plain", 1.0)
        tl.record_round(1, "lookup", 1.5)
    got = online_costs.learned_costs(small, large, 1)
    step, slope = online_costs._line_fit(tl.medians(1), 0.1)
    assert got.verify == verify_table(tl.medians(1), slope, DraftCosts.MAX_DRAFTS)
    assert got.verify[:4] == pytest.approx((1.0, 1.1, 1.2, 1.6))
    assert got.small == pytest.approx(2.0 / step) and got.overhead == pytest.approx(2.0 / step)
    assert online_costs.lookup_costs(large, 1).overhead == pytest.approx(0.5 / step)
    assert tl.round_overhead(2, "small") is None  # another batch size: nothing timed


def test_prior_counts_compute_parameters():
    small, large = make_pair("llama")
    c = online_costs.prior_costs(small, large, 1).small
    emb, head = large.get_input_embeddings().weight.numel(), large.get_output_embeddings().weight.numel()
    ns, nl = (
        sum(p.numel() for p in m.parameters()) - emb - (1 - online_costs.HEAD_WEIGHT) * head for m in (small, large)
    )
    assert c == pytest.approx(ns / nl)
    assert online_costs.prior_costs(small, large, 8).verify[1] > online_costs.prior_costs(small, large, 1).verify[1]


def test_generators_of_the_same_models_share_what_was_learned_at_auto_costs():
    small, large = make_pair("llama")
    a, b = bild.BiLDGenerator(small, large), bild.BiLDGenerator(small, large)
    assert a.policy is b.policy  # a new generator starts where the last one left off
    assert bild.BiLDGenerator(small, large, costs=0.2).policy is not a.policy  # given costs: its own, reproducible
    assert bild.BiLDGenerator(small, large, max_small_steps=4).policy is not a.policy  # other options
    assert bild.BiLDGenerator(small, large, rollback_threshold=2.0).policy is not a.policy

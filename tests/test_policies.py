"""Draft policies: the adaptive default in isolation (synthetic rounds), reproducibility, and the explicit
numbers that keep BiLD's fixed rule."""

import pytest
import torch
from models import FAMILIES, make_inputs, make_pair

import bild
from bild.adapters import batch_layout
from bild.policies import AdaptivePolicy, DraftCosts, HeuristicPolicy, RoundRecord, ThresholdPolicy, best_draft_length

CPU_LIKE = DraftCosts(0.1, tuple(1.0 + 0.12 * k for k in range(33)))  # verify grows with its width
GPU_LIKE = DraftCosts.from_ratio(0.1)  # verify costs one large step whatever its width


def play(policy, accept_prob, rounds=200, conf=0.5, seed=0):
    """Drive a policy with synthetic rounds at batch 1: each draft is accepted with `accept_prob`, the
    small model's confidence is `conf`. Returns the budgets the policy granted and the drafts it kept."""
    g = torch.Generator().manual_seed(seed)
    budgets, kept = [], []
    for _ in range(rounds):
        b = policy.budgets([100])[0]
        budgets.append(b)
        n = 0
        for j in range(b):
            keep, more = policy.step(j, torch.tensor([conf]), torch.tensor([True]))
            if not bool(keep[0]):
                break
            n += 1
            if not bool(more[0]):
                break
        kept.append(n)
        if n == 0:
            continue
        ok = (torch.rand(n, generator=g) < accept_prob).long()
        acc = int(ok.cumprod(0).sum())
        judged = min(acc + 1, n)
        policy.learn(
            RoundRecord(
                conf=torch.full((1, n), conf),
                first_conf=torch.tensor([conf]),
                drafted=torch.tensor([n]),
                judged=torch.tensor([judged]),
                accepted=torch.tensor([acc]),
                committed=torch.tensor([acc + 1]),
                small_steps=n,
                width=n,
            )
        )
    return budgets, kept


def test_adaptive_turns_a_useless_draft_off_and_probes_rarely():
    policy = AdaptivePolicy()
    policy.begin(1, CPU_LIKE)
    budgets, _ = play(policy, accept_prob=0.0)
    late = budgets[100:]
    assert not policy.on
    assert sum(b > 0 for b in late) <= 4  # probes only: at most one per 32+ rounds once off for a while
    assert sum(b > 0 for b in budgets[:40]) < 20  # and it gets there quickly


def test_adaptive_drafts_long_for_a_perfect_draft():
    policy = AdaptivePolicy()
    policy.begin(1, GPU_LIKE)
    _, kept = play(policy, accept_prob=1.0)
    assert policy.on and policy.alpha > 0.95
    assert min(kept[50:]) >= 16  # long drafts: every one is accepted and verify width costs nothing


def test_adaptive_picks_longer_drafts_when_verify_is_cheap():
    lengths = {}
    for name, costs in (("cheap", GPU_LIKE), ("dear", CPU_LIKE)):
        policy = AdaptivePolicy()
        policy.begin(1, costs)
        _, kept = play(policy, accept_prob=0.8)
        lengths[name] = sum(kept[50:]) / len(kept[50:])
    assert lengths["cheap"] > lengths["dear"] + 1, lengths
    # the draft length the formula picks agrees
    assert best_draft_length(0.8, GPU_LIKE, 32)[0] > best_draft_length(0.8, CPU_LIKE, 32)[0]


def test_adaptive_learns_acceptance_per_confidence_and_drops_unsure_tokens():
    """Drafts at confidence 0.9 are always right, at 0.1 always wrong: after learning, a 0.1 token is
    dropped (a fallback), a 0.9 token kept."""
    policy = AdaptivePolicy()
    policy.begin(1, CPU_LIKE)
    for _ in range(60):
        policy.budgets([100])
        conf = torch.tensor([[0.95, 0.95, 0.05, 0.05]])
        policy.learn(
            RoundRecord(
                conf=conf,
                first_conf=torch.tensor([0.95]),
                drafted=torch.tensor([4]),
                judged=torch.tensor([3]),
                accepted=torch.tensor([2]),
                committed=torch.tensor([3]),
                small_steps=4,
                width=4,
            )
        )
    assert policy.budgets([100])[0] > 0
    keep_hi, _ = policy.step(0, torch.tensor([0.95]), torch.tensor([True]))
    keep_lo, _ = policy.step(1, torch.tensor([0.05]), torch.tensor([True]))
    assert bool(keep_hi[0]) and not bool(keep_lo[0])
    policy.reset()
    assert policy.judged_total == 0 and policy.alpha == pytest.approx(0.5)


def test_heuristic_schedule_is_capped_by_max_small_steps():
    policy = HeuristicPolicy(0.0, 5)
    policy.begin(2, None)
    for _ in range(10):  # always fully accepted: the budget would grow without a cap
        b = policy.budgets([100, 100])
        policy.learn(
            RoundRecord(
                conf=torch.ones(2, b[0]),
                first_conf=torch.ones(2),
                drafted=torch.tensor(b),
                judged=torch.tensor(b),
                accepted=torch.tensor(b),
                committed=torch.tensor(b) + 1,
                small_steps=b[0],
                width=b[0],
            )
        )
    assert policy.budgets([100, 100]) == [5, 5]
    policy.learn(
        RoundRecord(
            conf=torch.ones(2, 5),
            first_conf=torch.ones(2),
            drafted=torch.tensor([5, 5]),
            judged=torch.tensor([2, 5]),
            accepted=torch.tensor([1, 5]),
            committed=torch.tensor([2, 6]),
            small_steps=5,
            width=5,
        )
    )
    assert policy.budgets([100, 100]) == [4, 5]  # a rejection shrinks that row's budget by one


def test_heuristic_engine_budget_never_exceeds_the_cap():
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 3, seed=2)
    gen = bild.BiLDGenerator(
        small, large, fallback_threshold=0.0, max_small_steps=3, draft_schedule="heuristic", verification="exact"
    )
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=30)
    assert torch.equal(out, large.generate(ids, attention_mask=mask, max_new_tokens=30))
    assert max(gen.stats.draft_budgets) <= 3 and max(gen.stats.verify_widths) <= 4


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_at_default_arguments_equals_large_generate(family):
    """The adaptive policy never changes exact output, whatever it decides (costs measured here)."""
    small, large = make_pair(family)
    ids, mask = make_inputs(family, 3, seed=21)
    gen = bild.BiLDGenerator(small, large, verification="exact")
    want = large.generate(ids, attention_mask=mask, max_new_tokens=20)
    drafted = 0
    for _ in range(2):  # the policy keeps learning across calls
        assert torch.equal(gen.generate(ids, attention_mask=mask, max_new_tokens=20), want)
        drafted += gen.stats.drafted
    assert gen.stats.policy["policy"] == "adaptive" and drafted > 0
    assert (
        gen.stats.rounds
        == len(gen.stats.draft_budgets)
        == gen.stats.large_forwards - (1 if batch_layout(large) != "rows" else 3)
    )  # prefill: 1 batched, or 1 per row


@pytest.mark.parametrize("costs", [0.15, DraftCosts(0.2, (1.0, 1.1, 1.2, 1.3))])
def test_rollback_output_is_reproducible_on_fresh_generators_with_given_costs(costs):
    small, large = make_pair("gpt2")
    ids, mask = make_inputs("gpt2", 3, seed=8)
    outs, decisions = [], []
    for _ in range(2):
        gen = bild.BiLDGenerator(small, large, rollback_threshold=1.5, costs=costs)
        outs.append([gen.generate(ids, attention_mask=mask, max_new_tokens=24) for _ in range(3)])
        decisions.append((gen.stats.draft_budgets, gen.stats.fallbacks, gen.stats.policy))
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    assert decisions[0] == decisions[1]
    assert sum(gen.stats.token_sources[0].count("small") for _ in [0]) > 0  # the small model did write


def test_explicit_numbers_use_the_papers_fixed_rule():
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 1, seed=4)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.5, max_small_steps=4, rollback_threshold=2.0)
    assert isinstance(gen.policy, ThresholdPolicy) and not isinstance(gen.policy, HeuristicPolicy)
    gen.generate(ids, attention_mask=mask, max_new_tokens=16)
    assert gen.stats.policy == {"policy": "threshold", "fallback_threshold": 0.5, "max_small_steps": 4}
    assert set(gen.stats.draft_budgets) <= {0, 1, 2, 3, 4} and max(gen.stats.draft_budgets) == 4
    assert isinstance(bild.BiLDGenerator(small, large, max_small_steps=6).policy, AdaptivePolicy)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(fallback_threshold="sometimes"), "fallback_threshold"),
        (dict(max_small_steps="auto-ish"), "max_small_steps"),
        (dict(max_small_steps=0), "max_small_steps"),
        (dict(costs=-1.0), "costs"),
        (dict(costs="measured"), "costs"),
        (dict(draft_schedule="heuristic"), "draft_schedule"),
        (dict(verification="exact", uno_epsilon=0.1, opt_epsilon=0.1), "one of"),
        (dict(verification="rollback", opt_epsilon=0.1), "opt_epsilon"),
        (dict(rollback_threshold=3.0, uno_epsilon=0.1), "uno_epsilon"),  # a rollback threshold selects rollback
        (dict(verification="exact", opt_epsilon=-0.1), "opt_epsilon"),
    ],
)
def test_bad_policy_arguments_raise(kwargs, match):
    small, large = make_pair("gpt2")
    with pytest.raises(ValueError, match=match):
        bild.BiLDGenerator(small, large, **kwargs)


@pytest.mark.parametrize("eps", ["uno_epsilon", "opt_epsilon"])
def test_epsilon_with_greedy_decoding_is_refused(eps):
    small, large = make_pair("gpt2")
    ids, mask = make_inputs("gpt2", 1)
    gen = bild.BiLDGenerator(small, large, verification="exact", **{eps: 0.2})
    with pytest.raises(ValueError, match="do_sample"):
        gen.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)


def test_useless_draft_at_defaults_costs_nothing_in_quality():
    """An unrelated small model: the adaptive policy turns drafting off, and its probe rounds are judged
    exactly under greedy decoding, so even BiLD with rollback_threshold=inf (which keeps every draft it
    judges) returns the large model's greedy output, with most rounds drafting nothing."""
    _, large = make_pair("llama", seed=0)
    small, _ = make_pair("llama", seed=1)
    ids, mask = make_inputs("llama", 2, seed=5)
    gen = bild.BiLDGenerator(small, large, rollback_threshold=float("inf"), costs=0.3)
    for _ in range(3):
        out = gen.generate(ids, attention_mask=mask, max_new_tokens=40)
        assert torch.equal(out, large.generate(ids, attention_mask=mask, max_new_tokens=40))
    assert not any(r["drafting"] for r in gen.stats.policy["rows"])
    assert gen.stats.draftless_rounds > 0.7 * gen.stats.rounds

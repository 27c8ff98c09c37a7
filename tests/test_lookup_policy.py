"""Prompt lookup's policy: the per-width verify table it prices drafts with, the length it cuts a known
candidate to (checked against brute force over every length), and the re-probe that keeps one unlucky
start from switching the lookup off for good (with a control that has no re-probe and stays off)."""

import itertools
import random

import pytest
import torch

from bild.online_costs import verify_table
from bild.policies import AdaptivePolicy, DraftCosts, LookupPolicy, RoundRecord
from bild.proposers import PromptLookupProposer

conf_of = PromptLookupProposer.confidence


# -- verify_table ---------------------------------------------------------------------------------
def test_verify_table_keeps_steps_interpolates_and_extrapolates():
    # widths 1, 2, 3, 4, 7 measured (seconds, samples); 5-6 between 4 and 7; past 7: the slope
    med = {1: (10.0, 8), 2: (11.0, 5), 3: (12.0, 4), 4: (16.0, 3), 7: (19.0, 3)}
    t = verify_table(med, slope=0.5, n=8)
    want = [1.0, 1.1, 1.2, 1.6, 1.7, 1.8, 1.9, 2.4, 2.9]
    assert t == pytest.approx(want)


def test_verify_table_pools_noise_into_a_non_decreasing_fit():
    # width 3 timed faster than width 2: both get their weighted mean (pool adjacent violators)
    med = {1: (10.0, 8), 2: (13.0, 4), 3: (11.0, 2), 4: (15.0, 3)}
    t = verify_table(med, slope=0.1, n=4)
    assert t[1] == pytest.approx(1.3) and t[2] == pytest.approx((1.3 + 1.5) / 2)  # width 3: 2 < 3 times, interpolated
    med[3] = (11.0, 4)
    t = verify_table(med, slope=0.1, n=4)
    pooled = (1.3 * 4 + 1.1 * 4) / 8
    assert t[1] == pytest.approx(pooled) and t[2] == pytest.approx(pooled) and t[3] == pytest.approx(1.5)
    assert all(a <= b for a, b in zip(t, t[1:]))
    assert verify_table({2: (11.0, 5)}, 0.1, 3) is None  # no 1-token step: no table
    assert verify_table({1: (10.0, 2), 2: (11.0, 5)}, 0.1, 3) is None  # too few 1-token times


@pytest.mark.parametrize("seed", range(5))
def test_verify_table_is_the_least_squares_monotone_fit(seed):
    """Independent reference: brute force over a grid of non-decreasing sequences, weighted squared error."""
    rng = random.Random(seed)
    widths = [1, 2, 3, 4]
    med = {w: (10.0 * rng.choice([1.0, 1.2, 1.4, 1.6]), rng.randint(3, 8)) for w in widths[1:]}
    med[1] = (10.0, 8)
    t = verify_table(med, slope=0.1, n=3)
    ys = {w: med[w][0] / 10.0 for w in widths}
    wt = {w: min(med[w][1], 8) for w in widths}
    grid = [x / 100 for x in range(80, 181)]
    best = min(
        (sum(wt[w] * (v - ys[w]) ** 2 for w, v in zip(widths[1:], vs)), vs)
        for vs in itertools.combinations_with_replacement(grid, 3)
        if vs[0] >= 1.0
    )[1]
    assert list(t[1:]) == pytest.approx(list(best), abs=0.011)


# -- cut ------------------------------------------------------------------------------------------
def primed(acc: list[float], costs: DraftCosts, rate: float = 1.0) -> LookupPolicy:
    p = LookupPolicy(None, 10, prior=0.4)
    p.begin(1, costs)
    p.seen = [1000.0] * p.BINS
    p.acc = [a * 1000.0 for a in acc]
    p._est = None
    p.tokens, p.cost = rate, 1.0
    p.warm_rounds = p.WARMUP_ROUNDS  # past the warm-up probes
    return p


def brute_force_length(a: list[list[float]], lengths: list[int], costs: DraftCosts, rate: float) -> int:
    K, best, arg = max(lengths), 0.0, 0
    for k in range(1, K + 1):
        gain = 0.0
        for row, n in zip(a, lengths):
            A = 1.0
            for j in range(min(k, n)):
                A *= row[j]
                gain += A
        v = gain - rate * (costs.verify_cost(k) - 1.0 + costs.overhead)
        if v > best + 1e-9:
            best, arg = v, k
    return arg


@pytest.mark.parametrize("seed", range(20))
def test_cut_maximises_the_rounds_value(seed):
    rng = random.Random(seed)
    table = [1.0]
    for _ in range(12):
        table.append(table[-1] + rng.choice([0.02, 0.1, 0.3]))
    costs = DraftCosts(0.0, tuple(table), rng.choice([0.0, 0.02, 0.5]))
    acc = [rng.random() for _ in range(10)]
    B = rng.choice([1, 1, 3])
    pol = primed(acc, costs, rate=rng.choice([1.0, 1.5, 2.5]))
    ngram = [rng.choice([1, 2]) for _ in range(B)]
    lengths = [rng.randint(1, 10) for _ in range(B)]
    K = max(lengths)
    conf = torch.tensor([[conf_of(j, n) for j in range(K)] for n in ngram])
    live = torch.arange(K)[None] < torch.tensor(lengths)[:, None]
    keep = pol.cut(conf, live)
    a = [[acc[pol._bin(float(conf[r, j]))] for j in range(K)] for r in range(B)]
    k = brute_force_length(a, lengths, costs, pol.rate)
    assert keep.sum(1).tolist() == [min(k, n) for n in lengths]


def test_cut_pays_for_a_costly_token_before_cheap_ones():
    """A cost step at the third draft (as MKL's at a 4-token forward) with copies accepted 0.9 onwards: the
    whole candidate pays, a token-by-token rule stops before the step."""
    costs = DraftCosts(0.0, (1.0, 1.1, 1.2, 1.9, 1.95, 2.0, 2.05, 2.1, 2.15), 0.0)
    pol = primed([0.9] * 5 + [0.3] * 5, costs, rate=2.0)
    conf = torch.tensor([[conf_of(j, 2) for j in range(8)]])
    live = torch.ones(1, 8, dtype=torch.bool)
    assert int(pol.cut(conf, live).sum()) == 8  # a token-by-token rule stops at 2: 0.729 < 2.0 x (1.9 - 1.2)


# -- re-probe -------------------------------------------------------------------------------------
class NoReprobe(LookupPolicy):
    """Control: the rule alone (0.7's LookupPolicy budgets)."""

    def budgets(self, remaining):
        out = AdaptivePolicy.budgets(self, remaining)
        return [min(self.cap, x) if b and not self.probing else b for b, x in zip(out, remaining)]


def run_rounds(policy: LookupPolicy, rounds: list[tuple[int, bool]]) -> list[int]:
    """Drive the policy as the loop does; rounds: (match n-gram size, whether its copy is right). Returns the
    drafts per round."""
    costs = DraftCosts(0.0, tuple(1.0 + 0.15 * k for k in range(33)), 0.02)
    policy.begin(1, costs)
    out = []
    for n, right in rounds:
        budget = policy.budgets([48])[0]
        if not budget:
            out.append(0)
            continue
        conf = torch.tensor([[conf_of(j, n) for j in range(min(budget, 10))]])
        k = int(policy.cut(conf, torch.ones_like(conf, dtype=torch.bool)).sum())
        out.append(k)
        if k:
            acc = k if right else 0
            policy.learn(
                RoundRecord(
                    conf=[conf[0, :k].tolist()],
                    first_conf=[float(conf[0, 0])],
                    drafted=[k],
                    judged=[min(k, acc + 1)],
                    accepted=[acc],
                    committed=[acc + 1],
                    small_steps=0,
                    width=k,
                )
            )
    return out


def test_an_unlucky_start_does_not_switch_the_lookup_off_for_good():
    """First rounds: 2-gram copies are wrong, 1-gram copies right (so drafting stays on overall); then the
    text turns copyable. With re-probes the 2-gram copies are checked again and drafted; the control never
    checks them again."""
    bad = [(2, False), (1, True)] * 20
    good = [(2, True)] * 300
    with_probe = run_rounds(LookupPolicy(None, 10, prior=0.4), bad + good)
    control = run_rounds(NoReprobe(None, 10, prior=0.4), bad + good)
    assert sum(control[-100:]) == 0  # the deadlock this guards against
    assert sum(k > 0 for k in with_probe[-100:]) >= 95 and sum(with_probe[-100:]) >= 300  # copies of 3+ tokens


def test_rate_counts_rounds_the_lookup_left_to_the_large_model():
    """R is the run's rate: a 3-token drafting round (2 drafts, verify 1.3 + 0.02) then a plain 1-token round,
    over and over, makes (3 + 1) / (1.32 + 1) tokens per unit cost, not the drafting rounds' 3 / 1.32."""
    costs = DraftCosts(0.0, (1.0, 1.15, 1.3, 1.45), 0.02)
    pol = primed([0.9] * 10, costs)
    for _ in range(200):
        pol.learn(
            RoundRecord(
                conf=[[conf_of(0, 2), conf_of(1, 2)]],
                first_conf=[conf_of(0, 2)],
                drafted=[2],
                judged=[2],
                accepted=[2],
                committed=[3],
                small_steps=0,
                width=2,
            )
        )
        pol.no_draft([1], 0)
    assert pol.rate == pytest.approx(4 / 2.32, rel=0.05)


def test_rounds_another_drafter_drafted_are_not_plain_rounds():
    """With the small model drafting too (combined), a round without a lookup draft but with a small-model draft
    (width > 0) is not a plain step: it does not enter the lookup's R."""
    pol = primed([0.9] * 10, DraftCosts(0.0, (1.0, 1.15, 1.3), 0.02), rate=1.5)
    before = pol.rate
    pol.no_draft([3], 2)
    assert pol.rate == before
    pol.no_draft([1], 0)
    assert pol.rate < before


def test_reprobe_interval_doubles_only_when_spent_and_resets_after_a_kept_draft():
    costs = DraftCosts(0.0, tuple(1.0 + 0.15 * k for k in range(33)), 0.02)
    pol = primed([0.01] * 10, costs)  # the rule keeps nothing
    conf = torch.tensor([[conf_of(j, 2) for j in range(6)]])
    live = torch.ones_like(conf, dtype=torch.bool)
    for _ in range(pol.probe_every):
        assert pol.budgets([48]) == [10] and not pol.probing
        assert int(pol.cut(conf, live).sum()) == 0
    assert pol.budgets([48]) == [pol.probe_length] and pol.probing  # re-probe
    pol.cut(conf[:, :0], live[:, :0])  # no candidate this round: the probe is not spent
    assert pol.cut_every == pol.probe_every
    assert pol.budgets([48]) == [pol.probe_length] and pol.probing
    k = pol.probe_length  # the candidate is the budget's length
    assert int(pol.cut(conf[:, :k], live[:, :k]).sum()) == k  # spent on a candidate
    assert pol.cut_every == 2 * pol.probe_every and pol.cut_rounds == 0
    pol.acc = [0.95 * n for n in pol.seen]  # copies turn right: the rule keeps one, the interval resets
    pol._est = None
    pol.budgets([48])
    assert int(pol.cut(conf, live).sum()) > 0 and pol.cut_every == pol.probe_every


def test_lookup_costs_use_the_per_width_table_of_the_runs_forwards():
    from bild import online_costs

    large = torch.nn.Linear(2, 2)  # any CPU module: timings are keyed by the model object
    large.device, large.dtype = torch.device("cpu"), torch.float32
    times = online_costs.model_times(large)
    for w, t in ((1, 10.0), (2, 11.0), (3, 12.0), (4, 16.0)):
        for _ in range(4):
            times.record(1, w, t)
    got = online_costs.lookup_costs(large, 1)
    slope = online_costs._line_fit(times.medians(1), online_costs.prior_slope("cpu", 1))[1]
    assert got.verify == verify_table(times.medians(1), slope, DraftCosts.MAX_DRAFTS)
    assert got.verify[:4] == pytest.approx((1.0, 1.1, 1.2, 1.6)) and got.small == 0.0
    assert online_costs.lookup_costs(large, 1, learned=False).verify[3] == pytest.approx(1 + 3 * online_costs.CPU_SLOPE)
    online_costs.forget(large)


def test_the_engine_counts_plain_rounds_in_the_lookups_rate(monkeypatch):
    """`PromptLookupProposer.settle` tells the policy about every round without a lookup draft."""
    from models import make_pair

    import bild

    _, large = make_pair("llama")
    calls = []
    orig = LookupPolicy.no_draft
    monkeypatch.setattr(LookupPolicy, "no_draft", lambda self, c, w: (calls.append((list(c), w)), orig(self, c, w)))
    gen = bild.BiLDGenerator(None, large, costs=0.2)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12] * 2 + [40, 41]])
    gen.generate(ids, max_new_tokens=24, do_sample=False, prompt_lookup_num_tokens=6)
    assert len(calls) == gen.stats.draftless_rounds > 0
    assert all(w == 0 for _, w in calls)

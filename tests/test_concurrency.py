"""Calls from several threads at once return what the same calls return one at a time, and never raise.

A generator shared by threads, two generators of the same models and `large.generate(custom_generate=...)`
share the learned policies of the pair (`bild.generator._POLICIES`) and the learned costs
(`bild.online_costs`); each call decides with its own session of a policy (`DraftPolicy.open`) and counts into
its own `GenerationStats`. Sampling calls use top_k=1, so that their text does not depend on how the threads'
random draws interleave (UNO / OPT with a tiny epsilon accept a wrong draft with probability ~1e-9).
"""

import random
import threading

import pytest
import torch
from models import make_inputs, make_pair

import bild
from bild import generator, online_costs
from bild.policies import AdaptivePolicy, DraftCosts, RoundRecord

N = 20
SAMPLE = dict(do_sample=True, top_k=1)
MODES = {  # name -> (engine options, generate options)
    "exact": ({}, {}),
    "exact_sampling": ({}, SAMPLE),
    "block": ({"verification": "block"}, SAMPLE),
    "fixed": ({"fallback_threshold": 0.0, "max_small_steps": 4}, {}),
    "rollback": ({"rollback_threshold": 5.0}, {}),
    "rollback_fixed": ({"rollback_threshold": 3.0, "fallback_threshold": 0.5, "max_small_steps": 5}, {}),
    "uno": ({"uno_epsilon": 1e-9}, SAMPLE),
    "opt": ({"opt_epsilon": 1e-9}, SAMPLE),
    "batch_drafts": ({"num_drafts": 2}, SAMPLE),
    "lookup": ({}, {"prompt_lookup_num_tokens": 4}),  # no small model: prompt lookup alone
    "combined": ({}, {"prompt_lookup_num_tokens": 4}),
    "combined_rollback": ({"rollback_threshold": 5.0}, {"prompt_lookup_num_tokens": 3}),
}
NO_SMALL = ("lookup",)


@pytest.fixture(autouse=True)
def _fresh():
    online_costs.forget()
    yield
    online_costs.forget()


def _calls(family, small, large):
    """(name, how, mode, inputs) for every mode x batch size x entry point."""
    calls = []
    for i, (name, mode) in enumerate(MODES.items()):
        for b in (1, 3):
            ids, mask = make_inputs(family, b, seed=10 * i + b)
            for how in ("shared", "second", "custom"):
                calls.append((name, how, mode, ids, mask))
    return calls


def _run(family, small, large, gens, call):
    name, how, (engine, gen_kw), ids, mask = call
    stats = bild.GenerationStats()
    kw = dict(attention_mask=mask, max_new_tokens=N, bild_stats=stats, **gen_kw)
    if how == "custom":
        out = large.generate(
            ids, custom_generate=bild.generate, small_model=None if name in NO_SMALL else small, **engine, **kw
        )
    else:
        out = gens[how, name].generate(ids, **kw)
    return out, stats.new_tokens


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_soak_threads_mixed_modes_and_batch_sizes(family, one_thread):
    small, large = make_pair(family)
    gens = {
        (how, name): bild.BiLDGenerator(None if name in NO_SMALL else small, large, **engine)
        for how in ("shared", "second")
        for name, (engine, _) in MODES.items()
    }
    calls = _calls(family, small, large)
    if family == "t5":  # the aligned layout and an encoder: fewer calls
        calls = [c for c in calls if c[0] in ("exact", "rollback", "uno", "lookup", "combined_rollback")]
    want = [_run(family, small, large, gens, c) for c in calls]  # one at a time
    for c, (out, _) in zip(calls, want):  # the lossless modes give the large model's text
        if c[0] in ("exact", "exact_sampling", "block", "fixed", "batch_drafts", "lookup", "combined"):
            ref = large.generate(c[3], attention_mask=c[4], max_new_tokens=N)
            assert torch.equal(out, ref), c[:2]
    threads, results, errors = 3, [], []

    def worker(k):
        order = list(range(len(calls)))
        random.Random(k).shuffle(order)
        for j in order:
            try:
                results.append((j, *_run(family, small, large, gens, calls[j])))
            except Exception as e:  # noqa: BLE001 - counted: none may happen
                errors.append((calls[j][:2], repr(e)))

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    assert len(results) == threads * len(calls)
    diffs = [
        (calls[j][:2], n, want[j][1]) for j, out, n in results if not torch.equal(out, want[j][0]) or n != want[j][1]
    ]
    assert diffs == []


def test_policy_sessions_fold_back_and_merge():
    """One session at a time: the shared policy ends as if it had decided itself. Two at once: the acceptance
    counts of both are kept."""
    costs = DraftCosts(0.1, tuple(1.0 + 0.1 * k for k in range(33)), 0.0)

    def rounds(p, accepted, n=6):
        for _ in range(n):
            p.budgets([100])
            p.learn(
                RoundRecord(
                    conf=[[0.55] * 4],
                    first_conf=[0.55],
                    drafted=[4],
                    judged=[min(4, accepted + 1)],
                    accepted=[accepted],
                    committed=[accepted + 1],
                    small_steps=4,
                    width=4,
                )
            )

    direct, shared = AdaptivePolicy(), AdaptivePolicy()
    direct.begin(1, costs)
    rounds(direct, 4)
    s = shared.open(1, costs)
    rounds(s, 4)
    assert shared.judged_total == 0  # nothing reaches the shared policy before the call ends
    shared.close(s)
    assert shared.seen == direct.seen and shared.acc == direct.acc and shared.on == direct.on
    a, b = shared.open(3, costs), shared.open(1, costs)
    before = list(shared.seen)
    rounds(a, 0)
    rounds(b, 4)
    shared.close(a)
    shared.close(b)
    assert shared.judged_total == direct.judged_total + 6 + 24
    assert sum(shared.seen) == pytest.approx(sum(before) + 6 + 24)


def test_learned_policy_tables_stay_bounded():
    small, large = make_pair("llama")
    ids = torch.tensor([[1, 5, 9, 13]])
    for k in range(1, generator.POLICIES_PER_MODEL + 6):
        large.generate(ids, max_new_tokens=2, custom_generate=bild.generate, small_model=small, max_small_steps=k)
        large.generate(
            ids,
            max_new_tokens=2,
            custom_generate=bild.generate,
            small_model=small,
            max_small_steps=k,
            rollback_threshold=5.0,
        )  # lossy: a fresh policy per call, never kept
    assert len(generator._POLICIES[large]) == generator.POLICIES_PER_MODEL
    gen = bild.BiLDGenerator(small, large)
    for k in range(1, generator.POLICIES_PER_MODEL + 3):
        gen.generate(ids, max_new_tokens=2, prompt_lookup_num_tokens=k)
    assert len(gen.lookup_policies) == generator.POLICIES_PER_MODEL
    times = online_costs.model_times(large)
    for b in range(1, online_costs.MAX_BATCH_SIZES + 5):
        times.record(b, 1, 0.01)
    assert len({rows for rows, _ in times.times}) == online_costs.MAX_BATCH_SIZES


def test_each_call_has_its_own_stats():
    small, large = make_pair("llama")
    gen = bild.BiLDGenerator(small, large)
    one, two = bild.GenerationStats(), bild.GenerationStats()
    gen.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=5, bild_stats=one)
    gen.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=9, bild_stats=two)
    assert (one.new_tokens, two.new_tokens) == (5, 9) and gen.stats is two
    gen.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=3)
    assert gen.stats.new_tokens == 3 and two.new_tokens == 9

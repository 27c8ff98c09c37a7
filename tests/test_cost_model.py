"""Cost model: predictions are sums of their parts; the hook counter counts forwards."""

from types import SimpleNamespace

import pytest
import torch

from bild.analysis.cost_model import (
    CallRecord,
    CostTable,
    ForwardCounter,
    engine_efficiency,
    measure_costs,
    predict_breakdown,
    predict_time,
    to_call_record,
)
from bild.pairs.controlled import build_controlled_pair, make_prompts

TINY = dict(hidden=64, layers=4, vocab=512, calib_prompts=4, calib_new_tokens=24)


def hand_costs(**kw):
    return CostTable(
        small_forward={1: 1.0, 2: 1.5, 3: 2.0},
        large_forward={1: 10.0, 2: 11.0, 3: 12.0, 4: 14.0},
        small_prefill={16: 3.0, 26: 4.0},
        large_prefill={16: 30.0, 26: 40.0},
        prompt_len=16,
        **kw,
    )


def test_predict_time_is_sum_of_parts_on_hand_made_record():
    costs = hand_costs()
    stats = {"small_steps": 5, "verify_lengths": [3, 1, 4, 4], "prefills": 1}
    expected = 3.0 + 5 * 1.0 + 30.0 + (12.0 + 10.0 + 14.0 + 14.0)
    parts = predict_breakdown(stats, costs)
    assert parts == {"small_prefill": 3.0, "small_steps": 5.0, "large_prefill": 30.0, "large_verify": 50.0}
    assert predict_time(stats, costs) == pytest.approx(expected)
    assert engine_efficiency(stats, costs, 2 * expected) == pytest.approx(0.5)


def test_engine_stats_object_and_dict_agree():
    costs = hand_costs()
    # an engine's GenerationStats: forwards include the prefills
    stats = SimpleNamespace(small_forwards=6, large_forwards=5, verify_lengths=[3, 1, 4, 4])
    rec = to_call_record(stats)
    assert rec.small_steps == [1] * 5 and rec.small_prefills == [None] and rec.large_prefills == [None]
    assert rec.small_forwards == 6 and rec.large_forwards == 5
    assert predict_time(stats, costs) == predict_time(vars(stats), costs) == pytest.approx(3 + 5 + 30 + 50)


def test_interpolation_extrapolation_and_prefill_lengths():
    costs = hand_costs()
    assert costs.large(5) == pytest.approx(16.0)  # linear extrapolation from (3, 12), (4, 14)
    assert costs.small(0) == pytest.approx(0.5)
    assert costs.large_prefill_time(21) == pytest.approx(35.0)
    assert costs.cost_ratio == pytest.approx(0.1)
    rec = CallRecord(small_steps=[2, 1], verify_lengths=[2], small_prefills=[16], large_prefills=[26])
    assert predict_time(rec, costs) == pytest.approx(3.0 + 1.5 + 1.0 + 40.0 + 11.0)
    assert predict_time(rec + rec, costs) == pytest.approx(2 * predict_time(rec, costs))


def test_encoder_decoder_parts():
    costs = hand_costs(small_encoder=7.0, large_encoder=7.0, is_encoder_decoder=True)
    costs.small_prefill = {1: 2.0}
    costs.large_prefill = {1: 20.0}
    stats = {"small_steps": [1, 1], "verify_lengths": [3], "prefills": 1}
    parts = predict_breakdown(stats, costs)
    assert parts["small_encoder"] == 7.0 and parts["large_encoder"] == 7.0
    assert predict_time(stats, costs) == pytest.approx(2 + 2 + 20 + 12 + 14)
    assert predict_time(stats, costs, encoder_calls=(0, 1)) == pytest.approx(2 + 2 + 20 + 12 + 7)


def test_cost_table_roundtrip():
    costs = hand_costs()
    d = costs.as_dict()
    d["large_forward"] = {str(k): v for k, v in d["large_forward"].items()}  # as after JSON
    assert CostTable.from_dict(d) == costs


@pytest.fixture(scope="module")
def llama_pair():
    return build_controlled_pair("llama", 0.8, **TINY)


def test_forward_counter_counts_greedy_generate(llama_pair):
    small, large, _ = llama_pair
    x = make_prompts(512, 1, 10, batch_size=2)[0]
    with ForwardCounter(small=small, large=large) as fc:
        large.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=7, do_sample=False)
        assert fc.count("large") == 7 and fc.count("small") == 0
        assert fc.count("large", "prefill") == 1
        assert fc.tokens("large", "prefill") == [10] and fc.tokens("large", "step") == [1] * 6
        assert all(c.batch == 2 for c in fc.calls)
        assert [c.past for c in fc.calls] == list(range(0, 0 + 1)) + list(range(10, 16))
        rec = fc.record()
        assert rec.large_prefills == [10] and rec.verify_lengths == [1] * 6 and rec.small_forwards == 0
        fc.reset()
        small(x)
        assert fc.count("small") == 1 and fc.count("large") == 0
    small(x)  # hooks removed on exit
    assert fc.count("small") == 1


def test_forward_counter_sees_assisted_generation(llama_pair):
    small, large, _ = llama_pair
    x = make_prompts(512, 1, 10)[0]
    mask = torch.ones_like(x)
    ref = large.generate(x, attention_mask=mask, max_new_tokens=12, do_sample=False)
    with ForwardCounter(small=small, large=large) as fc:
        out = large.generate(x, attention_mask=mask, max_new_tokens=12, do_sample=False, assistant_model=small)
    assert torch.equal(out, ref)
    rec = fc.record()
    assert rec.small_prefills == [10]
    assert len(rec.large_prefills) == 1 and rec.large_prefills[0] > 10  # prompt + first drafts in one pass
    # every large call after the first verifies >= 1 token; the last token comes from the last call
    assert all(n >= 1 for n in rec.verify_lengths)
    assert 1 <= rec.large_forwards <= 12


def test_forward_counter_t5_counts_encoder():
    small, large, _ = build_controlled_pair("t5", None, alpha=0.05, **TINY)
    x = make_prompts(512, 1, 9)[0]
    with ForwardCounter(large=large, small=small) as fc:
        large.generate(x, max_new_tokens=5, do_sample=False)
    rec = fc.record()
    assert rec.large_encoder_calls == 1 and rec.large_prefills == [1] and rec.verify_lengths == [1] * 4
    assert fc.shared_encoder  # the small model uses the large model's encoder module


def test_measure_costs_tiny(llama_pair):
    small, large, _ = llama_pair
    costs = measure_costs(small, large, prompt_len=8, new_tokens=8, max_verify=3, repeats=2, warmup=1)
    assert sorted(costs.small_forward) == sorted(costs.large_forward) == [1, 2, 3]
    assert sorted(costs.large_prefill) == [8, 11] and costs.past_len == 12
    assert all(t > 0 for t in list(costs.large_forward.values()) + list(costs.small_prefill.values()))
    assert predict_time({"small_steps": 2, "verify_lengths": [3], "prefills": 1}, costs) > 0


def test_best_fixed_draft_uses_measured_verify_costs():
    from bild.analysis.cost_model import best_fixed_draft

    costs = hand_costs()
    # a = 1: gamma drafts always accepted -> per token (gamma * 1 + large(gamma+1)) / (gamma+1)
    b = best_fixed_draft(costs, 1.0, max_gamma=3)
    assert b["gamma"] == 3 and b["tokens_per_round"] == 4
    assert b["seconds_per_token"] == pytest.approx((3 * 1.0 + 14.0) / 4)
    assert b["speedup"] == pytest.approx(10.0 / ((3 + 14.0) / 4))
    # a = 0: drafting never pays; the best is the shortest draft, slower than plain decoding
    assert best_fixed_draft(costs, 0.0, max_gamma=3)["gamma"] == 1


def test_engine_stats_match_forward_hooks(llama_pair):
    bild = pytest.importorskip("bild")
    if not hasattr(bild, "BiLDGenerator"):
        pytest.skip("engine not available")
    small, large, _ = llama_pair
    x = make_prompts(512, 1, 10, batch_size=2)[0]
    for verification in ("exact", "rollback"):
        gen = bild.BiLDGenerator(small, large, verification=verification, costs=0.1)  # given: no timing forwards
        # warm-up: a model's first batched call runs the masked-slot probe (two small forwards, once per model)
        gen.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=2, do_sample=False)
        assert small._bild_holes_ok and large._bild_holes_ok
        with ForwardCounter(small=small, large=large) as fc:
            gen.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=20, do_sample=False)
        rec = fc.record()
        st = gen.stats
        assert st.small_forwards == rec.small_forwards and st.large_forwards == rec.large_forwards
        assert list(st.verify_widths) == rec.verify_lengths  # what each batched forward computed per row
        # the stats-based record has the same calls (small steps as 1-token forwards)
        from_stats = to_call_record(st)
        assert from_stats.small_forwards == rec.small_forwards
        assert from_stats.verify_lengths == rec.verify_lengths
        assert len(from_stats.large_prefills) == len(rec.large_prefills) == 1


@pytest.mark.parametrize("name", ["mistral", "gemma2", "lfm2"])
def test_measure_costs_on_sliding_window_and_convolution_caches(name):
    """Caches the engine accepts whose layers drop or fold past tokens (sliding window, LFM2's convolution
    state): the timed forwards crop them back after every call, past the 4-token window."""
    from zoo import make_zoo_pair

    small, large = make_zoo_pair(name)
    costs = measure_costs(small, large, prompt_len=6, new_tokens=8, max_verify=3, repeats=2, warmup=1)
    assert costs.past_len == 10 and sorted(costs.large_forward) == [1, 2, 3]
    assert all(t > 0 for t in list(costs.small_forward.values()) + list(costs.large_forward.values()))

"""Costs are learned on a device whose forwards run asynchronously (CUDA) from the host reads the engine makes
anyway (`bild.timing.ReadClock`), with no read added.

A fake device on the CPU: `bild.timing.synchronous` says the CPU is asynchronous, a forward's call returns at
once and queues its dictated seconds, and the fake clock advances by what is queued only when the host reads a
tensor (`.tolist()`, `.item()`, ...), as a CUDA stream does. Timing a forward around its call then sees
0 s; the learned costs must equal what the fake device dictated.
"""

import functools

import pytest
import torch
from models import make_inputs, make_pair
from test_host_reads import READS, count_reads

import bild
from bild import online_costs, timing

N = 24
LARGE, SLOPE, SMALL = 1.0, 0.1, 0.25  # a large forward of n tokens: LARGE (1 + SLOPE (n - 1)) s; small: SMALL s


@pytest.fixture
def fake_device(monkeypatch):
    """Returns `install(small, large, asynchronous=True)`: the models' forwards queue their seconds, reads
    pay them. `asynchronous=False` keeps the CPU's timing around the call (which then sees no time pass)."""
    now, queued = [0.0], [0.0]
    monkeypatch.setattr(timing, "clock", lambda: now[0])
    for name in READS:
        original = getattr(torch.Tensor, name)

        def read(self, *a, _original=original, **k):
            now[0] += queued[0]
            queued[0] = 0.0
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, read)

    def queue(model, seconds):
        fwd = model.forward

        @functools.wraps(fwd)
        def forward(*a, **k):
            out = fwd(*a, **k)
            ids = k.get("input_ids", k.get("decoder_input_ids"))
            queued[0] += seconds(ids.shape[1])
            return out

        monkeypatch.setattr(model, "forward", forward)

    def install(small, large, asynchronous=True):
        monkeypatch.setattr(timing, "synchronous", lambda device: not asynchronous)
        queue(large, lambda n: LARGE * (1 + SLOPE * (n - 1)))
        queue(small, lambda n: SMALL)

    return install


@pytest.mark.parametrize("batch", [1, 3])
def test_costs_learned_at_the_reads_equal_the_devices(fake_device, batch):
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", batch, seed=4)
    want = large.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False)
    fake_device(small, large)
    prior = online_costs.prior_costs(small, large, batch)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.3, max_small_steps=4)  # drafts most rounds
    for _ in range(3):
        assert torch.equal(gen.generate(ids, attention_mask=mask, max_new_tokens=N), want)
    assert gen.stats.small_forwards > 0
    learned = online_costs.learned_costs(small, large, batch)
    assert learned != prior
    assert learned.small == pytest.approx(SMALL / LARGE)
    widths = {
        n
        for (b, n), d in online_costs.model_times(large).times.items()
        if b == batch and len(d) >= online_costs.MIN_WIDTH_SAMPLES
    }
    assert 1 in widths and len(widths) >= 2
    for n in widths:
        assert learned.verify[n - 1] == pytest.approx(1 + SLOPE * (n - 1))
    # time passes only in forwards: no round spends any beyond them
    rounds = online_costs.model_times(large).rounds
    assert rounds and all(t == pytest.approx(0.0) for d in rounds.values() for t in d)
    assert learned.overhead == pytest.approx(0.0)


def test_lookup_costs_learned_at_the_reads(fake_device):
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 1, seed=4)
    ids = torch.cat([ids, ids, ids], 1)  # repeats: prompt lookup drafts
    mask = torch.ones_like(ids)
    kw = dict(max_new_tokens=N, do_sample=False, prompt_lookup_num_tokens=3)
    want = bild.BiLDGenerator(None, large).generate(ids, attention_mask=mask, **kw)
    fake_device(small, large)
    gen = bild.BiLDGenerator(None, large, verification="exact")
    for _ in range(3):
        assert torch.equal(gen.generate(ids, attention_mask=mask, **kw), want)
    costs = online_costs.lookup_costs(large, 1)
    assert costs.verify[0] == 1.0 and costs.verify[1] == pytest.approx(1 + SLOPE)


def test_timing_around_the_call_sees_nothing_on_an_asynchronous_device(fake_device):
    """The CPU's way (time a forward around its call) on the fake device: every forward "takes" 0 s, nothing
    is recorded and the prior stands. This is what the read clock is for."""
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 1, seed=4)
    fake_device(small, large, asynchronous=False)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.3, max_small_steps=4)
    for _ in range(3):
        gen.generate(ids, attention_mask=mask, max_new_tokens=N)
    assert online_costs.learned_costs(small, large, 1) == online_costs.prior_costs(small, large, 1)


def test_tree_forwards_are_timed_at_the_reads(fake_device):
    """Tree drafts (`draft_tree`) on the asynchronous device: every forward recorded is the device's time for its
    width (the small model's per depth, the large model's over the whole tree), and the output is exact."""
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 1, seed=4)
    want = large.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False)
    fake_device(small, large)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=3, draft_tree=2)
    for _ in range(3):
        assert torch.equal(gen.generate(ids, attention_mask=mask, max_new_tokens=N), want)
    large_times = online_costs.model_times(large).times
    assert any(n >= 5 and d for (b, n), d in large_times.items())  # tree passes: 2 chains x up to 3 drafts
    for (_b, n), d in large_times.items():
        assert list(d) == pytest.approx([LARGE * (1 + SLOPE * (n - 1))] * len(d)), n
    small_times = online_costs.model_times(small).times
    assert small_times and all(list(d) == pytest.approx([SMALL] * len(d)) for d in small_times.values())


@pytest.mark.parametrize("mode", ["greedy", "sample-exact", "auto-exact", "tree"])
def test_the_read_clock_adds_no_read(mode, monkeypatch):
    """tests/test_host_reads.py's budget, with forwards timed at the reads (a real clock)."""
    monkeypatch.setattr(timing, "synchronous", lambda device: False)
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 1 if mode == "tree" else 4, seed=4)
    kw = dict(fallback_threshold=0.3, max_small_steps=4, verification="exact")
    if mode == "tree":
        kw.update(draft_tree=2)
    gen_kw = dict(max_new_tokens=24)
    if mode == "sample-exact":
        gen_kw.update(do_sample=True, top_k=0)
    elif mode == "auto-exact":
        kw = dict(verification="exact")  # the adaptive policy on learned costs
    gen = bild.BiLDGenerator(small, large, **kw)
    gen.generate(ids, attention_mask=mask, **gen_kw)
    torch.manual_seed(0)
    with count_reads([small, large]) as state:
        gen.generate(ids, attention_mask=mask, **gen_kw)
    s = gen.stats
    assert s.rounds > 3
    assert state["reads"] <= s.small_forwards + s.rounds + 3, (state["reads"], s.small_forwards, s.rounds)
    assert online_costs.model_times(large).medians(ids.shape[0])  # timed at the reads

"""Batched cache layouts (`bild.adapters`): masked slots are reclaimed, and "aligned" models (T5) see every
row contiguous and ending at the last slot at each forward; outputs stay those of `large.generate`."""

import pytest
import torch
from models import make_inputs, make_pair

import bild
from bild.adapters import ModelAdapter, batch_layout


@pytest.fixture
def forwards(monkeypatch):
    """Records, at each forward, the adapter's layout state just before the model runs."""
    seen = []
    feed = ModelAdapter.feed

    def recording_feed(self, ids, valid, keep):
        if self.length and self._needs_repack():
            self.compact()
        if len(self.slots) == 6:  # the test's batch (not a layout probe's)
            seen.append(
                dict(
                    layout=self.layout,
                    length=self.length,
                    longest=max(self.n_valid),
                    slots=[list(s) for s in self.slots],
                )
            )
        return feed(self, ids, valid, keep)

    monkeypatch.setattr(ModelAdapter, "feed", recording_feed)
    return seen


@pytest.fixture
def started(monkeypatch):
    """The adapters the engine starts (each one's `compactions` can be read after the call)."""
    adapters = []
    start = ModelAdapter.start

    def recording_start(self, *a, **k):
        adapters.append(self)
        return start(self, *a, **k)

    monkeypatch.setattr(ModelAdapter, "start", recording_start)
    return adapters


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize("verification", ["rollback", "exact"])
def test_cache_tracks_the_longest_row(family, verification, forwards):
    small, large = make_pair(family)
    ids, mask = make_inputs(family, 6, seed=8)
    gen = bild.BiLDGenerator(
        small, large, verification=verification, fallback_threshold=0.5, max_small_steps=5, rollback_threshold=2.0
    )
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=60)
    if verification == "exact":
        assert torch.equal(out, large.generate(ids, attention_mask=mask, max_new_tokens=60))
    assert forwards and all(f["layout"] == batch_layout(large) for f in forwards)
    # at every forward the cache holds at most 1.25x the longest row's tokens (+4 slots)
    assert max(f["length"] - 1.25 * f["longest"] for f in forwards) <= 4
    if batch_layout(large) == "aligned":  # every row contiguous, ending at the last slot
        for f in forwards:
            for s in f["slots"]:
                assert not s or s == list(range(f["length"] - len(s), f["length"]))


def test_compaction_happens_and_keeps_outputs(forwards, started):
    """Rows that accept different numbers of drafts leave holes; the cache is re-packed, and the batch still
    equals each row decoded alone."""
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 6, seed=8)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.5, max_small_steps=5, rollback_threshold=2.0)
    batched = gen.generate(ids, attention_mask=mask, max_new_tokens=60)
    assert sum(a.compactions for a in started) > 0
    P = ids.shape[1]
    for r in range(6):
        x = ids[r : r + 1, mask[r].bool()]
        single = gen.generate(x, max_new_tokens=60)
        assert batched[r, P : P + single.shape[1] - x.shape[1]].tolist() == single[0, x.shape[1] :].tolist()


def test_finished_rows_cost_no_repacking(forwards, started):
    """T5 rows that hit eos early feed filler, so they never force a re-pack; output = large.generate."""
    small, large = make_pair("t5")
    ids, mask = make_inputs("t5", 6, seed=8)
    free = large.generate(ids, attention_mask=mask, max_new_tokens=30)
    eos = int(free[0, 4])  # a token row 0 writes early: rows finish at different steps
    gen = bild.BiLDGenerator(small, large, verification="exact", fallback_threshold=0.5, max_small_steps=5)
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=30, eos_token_id=eos, pad_token_id=0)
    want = large.generate(ids, attention_mask=mask, max_new_tokens=30, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out, want)
    finished = (out[:, 1:] == eos).any(1)
    assert 0 < int(finished.sum()) < 6  # some rows finish early, some run on
    for f in forwards:  # aligned at every forward, finished rows included
        for s in f["slots"]:
            assert not s or s == list(range(f["length"] - len(s), f["length"]))
    # re-packing at most once per model per round (rows diverge by acceptance), not at every forward
    assert sum(a.compactions for a in started) <= 2 * gen.stats.rounds + 2
    assert gen.stats.small_forwards + gen.stats.large_forwards > 4 * gen.stats.rounds  # (forwards outnumber it)

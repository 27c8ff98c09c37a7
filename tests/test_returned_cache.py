"""`return_dict_in_generate=True` returns the large model's cache as transformers does (every returned token but
the last), so that a conversation continues from it: `large.generate(more, past_key_values=out.past_key_values)`
equals a fresh call on the whole sequence. Batches of several rows return None (their cache holds masked slots
where rows took different numbers of tokens, a layout transformers' cache and mask cannot express). A `streamer`
that transformers drops before calling `bild.generate` is warned about."""

import warnings

import pytest
import torch
from models import make_inputs, make_pair

import bild

# the spelling users write, on every supported release (5.24 names it `cache` and warns)
pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
ENGINES = ({}, {"fallback_threshold": 0.0, "max_small_steps": 4}, {"rollback_threshold": 5.0})


def _continue(large, out, extra, **kw):
    """(continued from the returned cache, fresh) greedy continuations of out.sequences + `extra`."""
    more = torch.cat([out.sequences, torch.tensor([extra])], 1)
    if large.config.is_encoder_decoder:
        kw = dict(kw, decoder_input_ids=more)
        more = kw.pop("encoder_ids")
    else:
        kw["attention_mask"] = torch.cat(
            [kw.pop("mask"), torch.ones(1, more.shape[1] - kw.pop("P"), dtype=torch.long)], 1
        )
    cached = large.generate(more, past_key_values=out.past_key_values, max_new_tokens=8, **kw)
    fresh = large.generate(more, max_new_tokens=8, **kw)
    return cached, fresh


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("padded", [False, True])
def test_decoder_only_cache_continues_a_conversation(engine, padded, one_thread):
    small, large = make_pair("llama")
    ids = torch.tensor([[0, 0, 1, 17, 42, 9, 33]]) if padded else torch.tensor([[1, 17, 42, 9, 33]])
    mask = (ids != 0).long()
    want = large.generate(ids, attention_mask=mask, max_new_tokens=12, return_dict_in_generate=True)
    for how in ("generator", "custom"):
        if how == "generator":
            out = bild.BiLDGenerator(small, large, **engine).generate(
                ids, attention_mask=mask, max_new_tokens=12, return_dict_in_generate=True
            )
        else:
            out = large.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=12,
                return_dict_in_generate=True,
                custom_generate=bild.generate,
                small_model=small,
                **engine,
            )
        if not engine.get("rollback_threshold"):
            assert torch.equal(out.sequences, want.sequences)
        cache = out.past_key_values
        assert cache is not None and cache.get_seq_length() == out.sequences.shape[1] - 1
        assert want.past_key_values.get_seq_length() == want.sequences.shape[1] - 1  # as transformers does
        cached, fresh = _continue(large, out, [5, 61], mask=mask, P=ids.shape[1])
        assert torch.equal(cached, fresh)


def test_cache_after_an_eos_inside_accepted_drafts():
    """The engine's cache may hold accepted drafts past the row's stop; the returned one ends where the output does."""
    small, large = make_pair("llama")
    ids = torch.tensor([[1, 17, 42, 9, 33]])
    seq = large.generate(ids, max_new_tokens=12)[0].tolist()
    eos = seq[9]  # a token the large model writes: make it the eos
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=6)
    out = gen.generate(ids, max_new_tokens=12, eos_token_id=eos, return_dict_in_generate=True)
    want = large.generate(ids, max_new_tokens=12, eos_token_id=eos, return_dict_in_generate=True)
    assert torch.equal(out.sequences, want.sequences) and out.sequences.shape[1] <= 10
    assert out.past_key_values.get_seq_length() == want.past_key_values.get_seq_length()
    cached, fresh = _continue(large, out, [5], mask=torch.ones_like(ids), P=ids.shape[1])
    assert torch.equal(cached, fresh)


@pytest.mark.parametrize("engine", ENGINES)
def test_encoder_decoder_cache_continues(engine, one_thread):
    small, large = make_pair("t5")
    enc = torch.tensor([[17, 42, 9, 33, 2]])
    out = bild.BiLDGenerator(small, large, **engine).generate(enc, max_new_tokens=10, return_dict_in_generate=True)
    want = large.generate(enc, max_new_tokens=10, return_dict_in_generate=True)
    if not engine.get("rollback_threshold"):
        assert torch.equal(out.sequences, want.sequences)
    assert type(out.past_key_values) is type(want.past_key_values)
    assert out.past_key_values.get_seq_length() == out.sequences.shape[1] - 1
    cached, fresh = _continue(large, out, [5, 61], encoder_ids=enc)
    assert torch.equal(cached, fresh)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_batches_return_no_cache(family):
    small, large = make_pair(family)
    ids, mask = make_inputs(family, 3, seed=1)
    out = bild.BiLDGenerator(small, large).generate(
        ids, attention_mask=mask, max_new_tokens=6, return_dict_in_generate=True
    )
    assert out.past_key_values is None
    assert torch.equal(out.sequences, large.generate(ids, attention_mask=mask, max_new_tokens=6))


class Recorder:
    def __init__(self):
        self.tokens = []

    def put(self, value):
        self.tokens += value.reshape(-1).tolist()

    def end(self):
        pass


def test_a_streamer_dropped_by_custom_generate_warns():
    """transformers hands a custom_generate callable no `streamer`: bild says so (it streams through
    BiLDGenerator.generate)."""
    small, large = make_pair("llama")
    ids = torch.tensor([[1, 17, 42]])
    lost = Recorder()
    with pytest.warns(UserWarning, match="`streamer` passed to .* is dropped by transformers"):
        out = large.generate(ids, max_new_tokens=5, custom_generate=bild.generate, small_model=small, streamer=lost)
    assert lost.tokens == ids[0].tolist()  # transformers put the prompt in, nothing followed
    kept = Recorder()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = bild.BiLDGenerator(small, large).generate(ids, max_new_tokens=5, streamer=kept)
        large.generate(ids, max_new_tokens=5, custom_generate=bild.generate, small_model=small)
    assert not [w for w in caught if "streamer" in str(w.message)]
    assert torch.equal(out, again) and kept.tokens == out[0].tolist()


@pytest.mark.parametrize("name", ["mistral", "bart"])
def test_row_by_row_families_return_transformers_cache(name, one_thread):
    """Families whose batches decode row by row: at batch 1 the cache is transformers'. Mistral (sliding-window
    layers) continues exactly; BART's continuation from a cache differs from a fresh call in transformers itself
    (its positions), and bild's cache continues as transformers' own does."""
    from zoo import make_zoo_pair

    small, large = make_zoo_pair("mistral") if name == "mistral" else make_pair("bart")
    ed = large.config.is_encoder_decoder
    ids = torch.tensor([[1, 17, 42, 9, 33, 2]]) if ed else torch.tensor([[1, 17, 42, 9, 33]])
    out = bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=4).generate(
        ids, max_new_tokens=12, return_dict_in_generate=True
    )
    want = large.generate(ids, max_new_tokens=12, return_dict_in_generate=True)
    assert torch.equal(out.sequences, want.sequences)
    conts = []
    for o in (out, want):
        more = torch.cat([o.sequences, torch.tensor([[5, 61]])], 1)
        kw = dict(decoder_input_ids=more) if ed else {}
        conts.append(large.generate(ids if ed else more, past_key_values=o.past_key_values, max_new_tokens=8, **kw))
    assert torch.equal(*conts)
    if not ed:
        assert torch.equal(conts[0], large.generate(more, max_new_tokens=8))

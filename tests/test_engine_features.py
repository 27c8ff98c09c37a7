"""generate() arguments, cache reuse, drop-in entry points and bad input."""

from pathlib import Path

import pytest
import torch
from models import ENCODER_DECODER, make_inputs, make_pair
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

import bild
from bild.generator import generate as bild_generate

REPO = Path(__file__).resolve().parents[1]


class Recorder(BaseStreamer):
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


def count_fed_tokens(model):
    """Forward hook on the decoder: number of token positions fed, over all calls."""
    fed = []

    def hook(module, args, kwargs):
        ids = kwargs.get("decoder_input_ids") if model.config.is_encoder_decoder else kwargs.get("input_ids")
        fed.append(ids.shape[1])

    return fed, model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize("verification", ["rollback", "exact"])
def test_caches_are_reused(family, verification):
    small, large = make_pair(family)
    ids, mask = make_inputs(family, 1, seed=0)
    # built first: its capability probes (bild.adapters.capabilities) run once per model, not per call
    gen = bild.BiLDGenerator(
        small, large, fallback_threshold=0.4, rollback_threshold=2.5, max_small_steps=4, verification=verification
    )
    fed_s, h1 = count_fed_tokens(small)
    fed_l, h2 = count_fed_tokens(large)
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=20)
    h1.remove(), h2.remove()
    s = gen.stats
    prompt = 1 if family in ENCODER_DECODER else ids.shape[1]
    rejected = s.drafted - s.accepted
    assert s.drafted > 0 and rejected > 0 and s.accepted > 0
    assert fed_l[0] == prompt  # the prompt is read once, in the prefill
    # after the prefill the large model reads each committed token once, plus the drafts it rejected;
    # the last new token is read only if it was a draft (an eos the large model verified)
    assert sum(fed_l) == s.large_tokens_fed
    assert prompt + (s.new_tokens - 1) + rejected <= sum(fed_l) <= prompt + s.new_tokens + rejected
    # the small model reads the prompt once (in its first pass) and never a committed token twice
    assert sum(fed_s) == s.small_tokens_fed <= prompt + s.new_tokens - 1 + rejected
    assert len(fed_l) == s.large_forwards and len(fed_s) == s.small_forwards
    assert out.shape[1] == prompt + s.new_tokens


def test_eos_mid_draft_is_verified_and_ends_the_row():
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 1, seed=3)
    free = bild.BiLDGenerator(small, large, fallback_threshold=0.0, verification="exact", max_small_steps=6)
    ref = free.generate(ids, attention_mask=mask, max_new_tokens=20)
    P = ids.shape[1]
    eos = int(ref[0, P + 5])  # a token the pair writes mid-way: make it the eos
    for v in ("exact", "rollback"):
        gen = bild.BiLDGenerator(
            small, large, fallback_threshold=0.0, verification=v, rollback_threshold=float("inf"), max_small_steps=6
        )
        out = gen.generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=0)
        want = (
            large.generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=0)
            if v == "exact"
            else None
        )
        first_eos = out[0, P:].tolist().index(eos)
        assert out.shape[1] == P + first_eos + 1  # nothing after the eos
        if want is not None:
            assert torch.equal(out, want)


@pytest.mark.parametrize("n", [1, 2, 7, 13])
def test_max_new_tokens_exact(n):
    small, large = make_pair("gpt2")
    ids, mask = make_inputs("gpt2", 2, seed=1)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, rollback_threshold=float("inf"), max_small_steps=5)
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=n, eos_token_id=None)
    assert out.shape[1] == ids.shape[1] + n and gen.stats.new_tokens == 2 * n


def test_processors_eos_lists_and_scores_match_large_generate():
    small, large = make_pair("opt")
    ids, mask = make_inputs("opt", 3, seed=2)
    kw = dict(
        attention_mask=mask,
        max_new_tokens=12,
        repetition_penalty=1.3,
        min_new_tokens=5,
        eos_token_id=[2, 7],
        no_repeat_ngram_size=3,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
    )
    ref = large.generate(ids, **kw)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, verification="exact", max_small_steps=4)
    out = gen.generate(ids, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    assert gen.stats.accepted > 0
    assert len(out.scores) == len(ref.scores) and len(out.logits) == len(ref.logits)
    for a, b, _row_done in zip(out.scores, ref.scores, range(len(ref.scores))):
        live = torch.isfinite(b).any(-1) & (a != 0).any(-1)
        torch.testing.assert_close(a[live], b[live], rtol=1e-4, atol=1e-4)


class StopAfterToken(StoppingCriteria):
    def __init__(self, token):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


def test_stopping_criteria_and_streamer():
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 1, seed=4)
    P = ids.shape[1]
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, verification="exact", max_small_steps=6)
    full = gen.generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=None)
    stop_tok = int(full[0, P + 6])
    crit = StoppingCriteriaList([StopAfterToken(stop_tok)])
    want = large.generate(ids, attention_mask=mask, max_new_tokens=20, eos_token_id=None, stopping_criteria=crit)
    rec = Recorder()
    out = gen.generate(
        ids, attention_mask=mask, max_new_tokens=20, eos_token_id=None, stopping_criteria=crit, streamer=rec
    )
    assert torch.equal(out, want) and int(out[0, -1]) == stop_tok
    assert rec.ended and rec.chunks[0] == ids[0].tolist()
    assert sum(rec.chunks[1:], []) == out[0, P:].tolist()


@pytest.mark.parametrize("steps", [10, "auto"])
def test_sampling_runs_through_warpers_and_seeds_reproduce(steps):
    small, large = make_pair("gpt_neox")
    ids, mask = make_inputs("gpt_neox", 3, seed=6)

    # with costs given, a fresh generator makes the same decisions: the same seed gives the same output
    def make():
        return bild.BiLDGenerator(
            small,
            large,
            fallback_threshold=0.3,
            rollback_threshold=3.0,  # noqa: E731
            max_small_steps=steps,
            costs=0.2,
        )

    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=True, temperature=0.7, top_k=20, top_p=0.9)
    torch.manual_seed(1)
    a = make().generate(ids, **kw)
    torch.manual_seed(1)
    gen = make()
    b = gen.generate(ids, **kw)
    assert torch.equal(a, b) and a.shape[1] <= ids.shape[1] + 10
    # top_k=1 leaves one-hot processed distributions: drafts are never unsure, and any draft other than
    # the large model's argmax has cross-entropy inf, so BiLD reduces to the large model's greedy output
    torch.manual_seed(2)
    topk1 = gen.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=True, top_k=1)
    assert torch.equal(topk1, large.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False))
    assert gen.stats.fallbacks == 0 and gen.stats.accepted > 0


@pytest.mark.parametrize("family", ["gpt2", "bart"])
def test_custom_generate_callable_and_folder_equal_generator(family):
    small, large = make_pair(family)
    ids, mask = make_inputs(family, 2, seed=7)
    opts = dict(fallback_threshold=0.5, rollback_threshold=1.5, max_small_steps=4)
    gen = bild.BiLDGenerator(small, large, **opts)
    want = gen.generate(ids, attention_mask=mask, max_new_tokens=12)
    stats = bild.GenerationStats()
    via_callable = large.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=12,
        custom_generate=bild.generate,
        small_model=small,
        bild_stats=stats,
        **opts,
    )
    assert torch.equal(via_callable, want)
    assert stats.as_dict() == gen.stats.as_dict()
    via_folder = large.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=12,
        custom_generate=str(REPO),
        trust_remote_code=True,
        small_model=small,
        **opts,
    )
    assert torch.equal(via_folder, want)


BAD = [
    (dict(fallback_threshold=1.5), "fallback_threshold"),
    (dict(fallback_threshold=-0.1), "fallback_threshold"),
    (dict(fallback_threshold="high"), "fallback_threshold"),
    (dict(rollback_threshold=-1), "rollback_threshold"),
    (dict(rollback_threshold=float("nan")), "rollback_threshold"),
    (dict(max_small_steps=0), "max_small_steps"),
    (dict(max_small_steps=2.5), "max_small_steps"),
    (dict(verification="lossless"), "verification"),
    (dict(uno_epsilon=-0.1, verification="exact"), "uno_epsilon"),
    (dict(uno_epsilon=0.1, verification="rollback"), "uno_epsilon"),  # 0.4: uno alone is fine (exact by default)
    (dict(draft_schedule="fast"), "draft_schedule"),
]


@pytest.mark.parametrize("kwargs,name", BAD)
def test_bad_engine_arguments(kwargs, name):
    small, large = make_pair("llama")
    with pytest.raises(ValueError, match=name):
        bild.BiLDGenerator(small, large, **kwargs)
    with pytest.raises(ValueError, match=name):  # same check through the drop-in
        large.generate(
            torch.tensor([[5, 6]]), custom_generate=bild_generate, small_model=small, max_new_tokens=2, **kwargs
        )


def test_bad_pairs_and_generate_arguments():
    small, large = make_pair("llama")
    other_small, _ = make_pair("t5")
    with pytest.raises(ValueError, match="small_model"):
        large.generate(torch.tensor([[5, 6]]), custom_generate=bild.generate, max_new_tokens=2)
    with pytest.raises(ValueError, match="decoder-only"):
        bild.BiLDGenerator(other_small, large)
    import copy

    wide = copy.deepcopy(small)
    wide.resize_token_embeddings(200)
    with pytest.raises(ValueError, match="width"):
        bild.BiLDGenerator(wide, large)
    odd = copy.deepcopy(small)
    odd.generation_config.eos_token_id = 5
    with pytest.raises(ValueError, match="eos_token_id"):
        bild.BiLDGenerator(odd, large)
    gen = bild.BiLDGenerator(small, large)
    ids = torch.tensor([[5, 6, 7]])
    calls = []
    hook = large.register_forward_pre_hook(lambda *a: calls.append(1))
    for kwargs, name in (
        (dict(num_beams=2), "num_beams"),
        (dict(num_return_sequences=2, do_sample=True), "num_return_sequences"),
        (dict(use_cache=False), "use_cache"),
    ):
        with pytest.raises(ValueError, match=name):
            gen.generate(ids, max_new_tokens=3, **kwargs)
    with pytest.raises(ValueError, match="streamer"):
        gen.generate(torch.tensor([[5, 6], [7, 8]]), max_new_tokens=3, streamer=Recorder())
    hook.remove()
    assert not calls  # rejected before any forward pass


@pytest.mark.parametrize("family", ["llama", "bart"])
def test_token_sources_count_accepted_drafts(family):
    small, large = make_pair(family)
    ids, mask = make_inputs(family, 3, seed=2)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.4, rollback_threshold=2.0, max_small_steps=4)
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=15)
    src = gen.stats.token_sources
    assert len(src) == 3 and sum(len(row) for row in src) == gen.stats.new_tokens
    # every kept draft is a token the small model wrote, unless the row ended inside the draft
    assert 0 < sum(row.count("small") for row in src) <= gen.stats.accepted
    P = 1 if family in ENCODER_DECODER else ids.shape[1]
    assert all(len(row) <= out.shape[1] - P for row in src)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batch_fill_after_fallback_keeps_greedy_output(family, monkeypatch):
    """Exact verification in a batch: rows that fell back draft on while another row drives; the output
    still equals large.generate, and more tokens are drafted (and accepted) than without the fill."""
    small, large = make_pair(family)
    ids, mask = make_inputs(family, 4, seed=3)
    ref = large.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False)
    runs = {}
    for fill in (True, False):
        monkeypatch.setattr(bild.decoding.DraftVerifyLoop, "fill_batch_drafts", fill)
        gen = bild.BiLDGenerator(small, large, fallback_threshold=0.6, max_small_steps=6, verification="exact")
        out = gen.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False)
        assert torch.equal(out, ref)
        runs[fill] = gen.stats
    assert runs[True].fallbacks > 0
    assert runs[False].fill_drafted == runs[False].fill_accepted == 0  # fill drafts are counted apart
    assert runs[True].drafted + runs[True].fill_drafted > runs[False].drafted
    assert runs[True].accepted + runs[True].fill_accepted > runs[False].accepted
    assert runs[True].fill_accepted > 0


def test_streamer_on_a_family_decoded_row_by_row():
    """A left-padded prompt of batch 1 on a family decoded row by row (Mistral's sliding window) streams its
    tokens and ends the stream."""
    from zoo import make_zoo_pair

    small, large = make_zoo_pair("mistral")
    ids = torch.tensor([[0, 0, 5, 9, 13, 17, 21]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    rec = Recorder()
    gen = bild.BiLDGenerator(small, large, verification="exact", fallback_threshold=0.0, max_small_steps=3)
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=10, streamer=rec, pad_token_id=0)
    assert torch.equal(out, large.generate(ids, attention_mask=mask, max_new_tokens=10, pad_token_id=0))
    assert rec.ended and [t for c in rec.chunks[1:] for t in c] == out[0, ids.shape[1] :].tolist()


def _cache_of(layer_kind):
    """`bild.caches.new_cache` building every layer as `layer_kind` (a cache layer kind bild has not seen)."""
    from transformers import DynamicCache

    def new_cache(model):
        cache = DynamicCache(config=model.config)
        cache.layers = [layer_kind() for _ in cache.layers]
        return cache

    return new_cache


def test_unseen_cache_layer_kinds_are_probed(monkeypatch):
    """A cache layer kind bild has not seen is probed (the engine's feeds and rollbacks against uncached
    forwards): one whose crop keeps everything (a recurrent state that cannot be rolled back) is refused before
    any work, naming the layer kind; one that rolls back as a KV layer does decodes as `large.generate`."""
    from transformers.cache_utils import DynamicLayer

    class StatefulLayer(DynamicLayer):
        def crop(self, tokens_to_remove):  # keeps what it was given, as a recurrent state without a record
            pass

    class UnseenLayer(DynamicLayer):
        pass

    ids = torch.tensor([[5, 6, 7, 9]])
    small, large = make_pair("llama")
    want = large.generate(ids, max_new_tokens=12, do_sample=False)
    monkeypatch.setattr(bild.caches, "new_cache", _cache_of(StatefulLayer))
    with pytest.raises(ValueError, match="small_model.*StatefulLayer.*does not give the logits of an uncached"):
        bild.BiLDGenerator(*make_pair("llama"))
    small, large = make_pair("llama")
    monkeypatch.setattr(bild.caches, "new_cache", _cache_of(UnseenLayer))
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=4)
    assert bild.families.rollback_is_exact(large) and large.__dict__["_bild_rollback_ok"]
    assert torch.equal(gen.generate(ids, max_new_tokens=12), want) and gen.stats.rollbacks > 0

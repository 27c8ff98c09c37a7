"""Feature drafts (EAGLE): the engine binds a FeatureDraft to the large model; outputs stay exact, the draft reads
the large model's features of committed tokens (checked against an uncached reference), bad pairs are refused."""

import functools

import pytest
import torch
from models import make_inputs, make_pair
from test_sampling import PROMPT, TEMP, N, chi_square_pvalue, exact_joint, tiny_llama
from transformers import LlamaConfig, LlamaForCausalLM

import bild
import bild.proposers
from bild.feature_draft import FeatureDraft


def feature_pair(seed=0):
    """A 3-layer Llama and a FeatureDraft of its first layer whose fc reads the features a little: they change
    ~60 % of its argmaxes, and it still agrees with the large model on some tokens."""
    _, large = make_pair("llama", seed)
    draft = FeatureDraft.from_large(large, layer=0).eval()
    d = large.config.hidden_size
    with torch.no_grad():
        draft.fc.weight[:, d:] += 0.01 * torch.randn(d, d, generator=torch.Generator().manual_seed(seed))
    return draft, large


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(
    "engine",
    [
        dict(fallback_threshold=0.0, max_small_steps=4, verification="exact"),
        dict(verification="block", fallback_threshold=0.0, max_small_steps=3),
        dict(),
        dict(fallback_threshold=0.0, lookup=3),
    ],
)
def test_greedy_equals_large_generate(batch, engine, one_thread):
    draft, large = feature_pair()
    ids, mask = make_inputs("llama", batch)
    kw = dict(max_new_tokens=24, do_sample=False)
    ref = large.generate(ids, attention_mask=mask, **kw)
    engine = dict(engine)
    lookup = engine.pop("lookup", None)
    gen = bild.BiLDGenerator(draft, large, **engine)
    out = gen.generate(ids, attention_mask=mask, **kw, **({"prompt_lookup_num_tokens": lookup} if lookup else {}))
    assert torch.equal(out, ref)
    if engine.get("fallback_threshold") == 0.0:
        assert gen.stats.drafted > 0 and gen.stats.accepted > 0
    assert draft.store is None  # unbound after the call
    assert not large.base_model._forward_hooks


@pytest.mark.parametrize(
    "engine",
    [
        dict(fallback_threshold=0.0, max_small_steps=3, verification="exact"),
        dict(fallback_threshold=0.4, max_small_steps=4, rollback_threshold=2.0),  # uneven drafts, no batch fill
        dict(fallback_threshold=0.0, max_small_steps=3, verification="exact", lookup=2),  # rounds the draft skips
        dict(),
    ],
)  # the adaptive default (drafting off for some rounds)
def test_the_draft_reads_the_large_models_features_of_committed_tokens(engine, one_thread, monkeypatch):
    """Every draft forward: a real token at position p reads h_{p-1} = the large model's feature there (uncached
    reference over the final sequence) when p - 1 is committed and read by the large model, else the draft's own
    output at p - 1 (its previous step). Rows of a ragged batch keep their own positions."""
    draft, large = feature_pair(1)
    ids, mask = make_inputs("llama", 3)
    seen, real = [], []  # real: the fed tokens' mask of the forward in progress (masked slots read nothing)
    original, original_forward = FeatureDraft._previous, FeatureDraft.forward

    def spy(self, pos, emb, bound):
        h = original(self, pos, emb, bound)
        if bound:
            seen.append(
                (
                    pos.clone(),
                    real[-1],
                    h.clone(),
                    None if self._last_h is None else self._last_h.clone(),
                    None if self._last_pos is None else self._last_pos.clone(),
                    list(self.store.large.n_valid),
                )
            )
        return h

    @functools.wraps(original_forward)  # the engine reads the signature (position_ids)
    def forward(self, input_ids=None, attention_mask=None, **kw):
        n = input_ids.shape[1]
        real.append(
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask[:, -n:].bool()
        )
        return original_forward(self, input_ids=input_ids, attention_mask=attention_mask, **kw)

    monkeypatch.setattr(FeatureDraft, "_previous", spy)
    monkeypatch.setattr(FeatureDraft, "forward", forward)
    engine = dict(engine)
    lookup = engine.pop("lookup", None)
    gen = bild.BiLDGenerator(draft, large, **engine)
    out = gen.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=16,
        do_sample=False,
        **({"prompt_lookup_num_tokens": lookup} if lookup else {}),
    )
    assert gen.stats.drafted > 0
    with torch.no_grad():  # the large model's features over each row's final tokens, no cache
        feats = []
        for r in range(out.shape[0]):
            row = out[r][torch.cat([mask[r].bool(), torch.ones(out.shape[1] - mask.shape[1], dtype=torch.bool)])]
            feats.append(large.base_model(row[None]).last_hidden_state[0])
    from_large = from_own = 0
    for pos, real, h, last_h, last_pos, held in seen:
        for r in range(pos.shape[0]):
            for j in range(pos.shape[1]):
                if not real[r, j]:
                    continue
                q = int(pos[r, j]) - 1
                if q < 0:
                    assert torch.all(h[r, j] == 0)
                elif q < held[r]:
                    assert torch.allclose(h[r, j], feats[r][q], atol=1e-4), (r, q)
                    from_large += 1
                else:
                    assert last_pos is not None and int(last_pos[r]) == q and torch.equal(h[r, j], last_h[r])
                    from_own += 1
    assert from_large > 20 and from_own > 5


def test_first_draft_of_a_round_is_the_uncached_drafts_argmax(one_thread, monkeypatch):
    """The first token drafted each round equals the argmax of the draft run without a cache over the committed
    sequence with the large model's features (h_{p-1} for every committed token)."""
    draft, large = feature_pair(2)
    ids = make_inputs("llama", 1)[0]
    firsts = []
    original = bild.proposers.ModelProposer.propose

    def spy(self, state, allowed=None):
        p = original(self, state, allowed)
        if p.drafts[0]:
            firsts.append((state.cur[0], p.drafts[0][0]))
        return p

    monkeypatch.setattr(bild.proposers.ModelProposer, "propose", spy)
    gen = bild.BiLDGenerator(draft, large, fallback_threshold=0.0, max_small_steps=2, verification="exact")
    out = gen.generate(ids, max_new_tokens=20, do_sample=False)
    assert len(firsts) > 3
    with torch.no_grad():
        h = large.base_model(out).last_hidden_state
        for cur, tok in firsts:
            seq = out[:, :cur]
            prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, : cur - 1]], 1)
            ref = draft(input_ids=seq, features=prev, use_cache=False).logits[0, -1].argmax()
            assert int(ref) == tok


def test_sampling_keeps_the_large_distribution(one_thread):
    large = tiny_llama(2)
    draft = FeatureDraft.from_large(large).eval()
    with torch.no_grad():
        draft.fc.weight.add_(0.5 * torch.randn(draft.fc.weight.shape, generator=torch.Generator().manual_seed(0)))
    truth = exact_joint(large)
    gen = bild.BiLDGenerator(draft, large, fallback_threshold=0.0, max_small_steps=2, verification="exact")
    torch.manual_seed(0)
    out = gen.generate(torch.tensor([PROMPT] * N), max_new_tokens=4, do_sample=True, temperature=TEMP, top_k=0)
    t2, t3 = out[:, len(PROMPT) + 1], out[:, len(PROMPT) + 2]
    counts = torch.bincount(t2 * 8 + t3, minlength=64).reshape(8, 8).double()
    assert gen.stats.drafted > 0 and 0 < gen.stats.accepted < gen.stats.drafted
    tv = 0.5 * (counts / N - truth).abs().sum()
    assert chi_square_pvalue(counts, truth) > 1e-4 and tv < 0.05


def test_custom_generate_and_a_pruned_head(one_thread):
    draft, large = feature_pair(3)
    bild.prune_draft_vocabulary(draft, list(range(0, large.config.vocab_size, 2)))
    ids, mask = make_inputs("llama", 2)
    kw = dict(max_new_tokens=16, do_sample=False)
    ref = large.generate(ids, attention_mask=mask, **kw)
    out = large.generate(
        ids,
        attention_mask=mask,
        custom_generate=bild.generate,
        small_model=draft,
        fallback_threshold=0.0,
        verification="exact",
        **kw,
    )
    assert torch.equal(out, ref)


def test_save_and_load_round_trip(tmp_path, one_thread):
    draft, large = feature_pair(4)
    bild.prune_draft_vocabulary(draft, list(range(0, large.config.vocab_size, 3)))
    draft.save_pretrained(tmp_path)
    back = bild.load_draft(tmp_path).eval()
    assert isinstance(back, FeatureDraft)
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path)  # a plain Llama without fc: refused, with the way
    with pytest.raises(ValueError, match="bild.load_draft"):
        bild.BiLDGenerator(plain, large)
    ids = make_inputs("llama", 1)[0]
    feats = torch.randn(1, ids.shape[1], large.config.hidden_size)
    with torch.no_grad():
        a = draft(input_ids=ids, features=feats, use_cache=False).logits
        b = back(input_ids=ids, features=feats, use_cache=False).logits
    assert torch.allclose(a, b)


def test_refusals():
    draft, large = feature_pair()
    with pytest.raises(ValueError, match="num_drafts"):
        bild.BiLDGenerator(draft, large, num_drafts=2, verification="exact")
    other = LlamaForCausalLM(
        LlamaConfig(
            **{
                **large.config.to_dict(),
                "hidden_size": 48,
                "head_dim": 12,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
            }
        )
    )
    with pytest.raises(ValueError, match="hidden_size|width"):
        bild.BiLDGenerator(draft, other)
    _, t5_large = make_pair("t5")
    with pytest.raises(ValueError, match="decoder-only|encoder"):
        bild.BiLDGenerator(draft, t5_large)
    _, opt_large = make_pair("opt")  # its forward calls its decoder, not its base model: no features to read
    opt_draft = FeatureDraft.from_large(large)
    opt_draft.resize_token_embeddings(opt_large.config.vocab_size)
    with pytest.raises(ValueError, match="base model"):
        bild.BiLDGenerator(opt_draft, opt_large)
    with pytest.raises(ValueError, match="wraps a FeatureDraft"):
        bild.BiLDGenerator(
            torch.compile(draft, backend="eager"), large
        )  # eager: no inductor import (its deprecated jit)


def test_one_call_at_a_time(one_thread):
    """A second binding while a call holds the draft is an error, not a silent switch to zero features."""
    draft, large = feature_pair()
    gen = bild.BiLDGenerator(draft, large, fallback_threshold=0.0, verification="exact")
    ids = make_inputs("llama", 1)[0]
    original = bild.proposers.ModelProposer.propose
    errors = []

    def nested(self, state, allowed=None):
        try:
            gen.generate(ids, max_new_tokens=2, do_sample=False)
        except RuntimeError as e:
            errors.append(str(e))
        return original(self, state, allowed)

    bild.proposers.ModelProposer.propose = nested
    try:
        gen.generate(ids, max_new_tokens=3, do_sample=False)
    finally:
        bild.proposers.ModelProposer.propose = original
    assert errors and "one call at a time" in errors[0]
    assert draft.store is None and not large.base_model._forward_hooks

"""Non-finite logits: a draft's NaN / inf never changes or stops the output; the large model's are treated as
`large.generate` treats them; a model whose probe forward is non-finite is refused by name.

A model's forward is wrapped (after its capability probes ran) to write NaN or +inf into the logits that
follow the input tokens of one class: a function of the text, so the same positions are poisoned however a
call is split into forwards.
"""

import warnings

import pytest
import torch
from models import make_inputs, make_pair
from test_sampling import PROMPT, TEMP, V, chi_square_pvalue, exact_joint, tiny_llama
from test_sampling import N as SAMPLES

import bild
from bild.adapters import batch_layout, capabilities

NEW = 24


def poison(model, value: float, every: int = 3, whole_row: bool = True):
    """Wrap `model`'s forward: the logits after each input token t with t % every == 0 get `value` (the whole
    vector, or one entry). The probes run first, on the plain forward."""
    capabilities(model)
    batch_layout(model)
    plain = model.forward

    def forward(*args, **kwargs):
        out = plain(*args, **kwargs)
        ids = kwargs.get("input_ids", kwargs.get("decoder_input_ids"))
        hit = ids[:, ids.shape[1] - out.logits.shape[1] :] % every == 0  # [B, positions with logits]
        if whole_row:
            out.logits[hit] = value
        else:
            out.logits[..., 3][hit] = value
        return out

    model.forward = forward
    return model


@pytest.mark.parametrize("value,whole_row", [(float("nan"), True), (float("inf"), False)])
@pytest.mark.parametrize(
    "engine",
    [
        {},
        {"verification": "block"},
        {"fallback_threshold": 0.0, "max_small_steps": 4},
        {"fallback_threshold": 0.0, "max_small_steps": 4, "verification": "block"},
    ],
)
def test_greedy_output_is_the_large_models(engine, value, whole_row, one_thread):
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 3, seed=5)
    want = large.generate(ids, attention_mask=mask, max_new_tokens=NEW)
    poison(small, value, whole_row=whole_row)
    gen = bild.BiLDGenerator(small, large, **engine)
    with pytest.warns(bild.BiLDRuntimeWarning, match="NaN or inf") as caught:
        out = gen.generate(ids, attention_mask=mask, max_new_tokens=NEW)
    assert torch.equal(out, want)
    st = gen.stats
    assert st.nonfinite_drafts > 0 and st.drafted > 0
    assert len([w for w in caught if "NaN or inf" in str(w.message)]) == 1  # once per call
    with warnings.catch_warnings():  # the custom_generate path gives the same
        warnings.simplefilter("ignore")
        out = large.generate(
            ids, attention_mask=mask, max_new_tokens=NEW, custom_generate=bild.generate, small_model=small, **engine
        )
    assert torch.equal(out, want)


def test_every_draft_step_non_finite_leaves_the_large_model_alone(one_thread):
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 2, seed=6)
    want = large.generate(ids, attention_mask=mask, max_new_tokens=NEW)
    poison(small, float("nan"), every=1)
    gen = bild.BiLDGenerator(small, large, fallback_threshold=0.0, max_small_steps=4, rollback_threshold=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = gen.generate(ids, attention_mask=mask, max_new_tokens=NEW)
    assert torch.equal(out, want)  # even BiLD's lossy rule: no draft ever reaches the large model
    assert gen.stats.drafted == 0 and gen.stats.nonfinite_drafts > 0


@pytest.fixture(scope="module")
def sampling_pair():
    return tiny_llama(1), tiny_llama(2)


@pytest.mark.parametrize("verification", ["exact", "block"])
@pytest.mark.parametrize(
    "value,whole_row,fixed", [(float("nan"), True, True), (float("inf"), False, True), (float("nan"), True, False)]
)
def test_sampling_keeps_the_large_distribution(sampling_pair, verification, value, whole_row, fixed):
    small, large = sampling_pair
    truth = exact_joint(large)
    poisoned = tiny_llama(1)
    poison(poisoned, value, every=2, whole_row=whole_row)
    thresholds = dict(fallback_threshold=0.0, max_small_steps=2) if fixed else {}  # else the defaults
    gen = bild.BiLDGenerator(poisoned, large, verification=verification, **thresholds)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = gen.generate(
            torch.tensor([PROMPT] * SAMPLES), max_new_tokens=4, do_sample=True, temperature=TEMP, top_k=0
        )
    t2, t3 = out[:, len(PROMPT) + 1], out[:, len(PROMPT) + 2]
    counts, st = torch.bincount(t2 * V + t3, minlength=V * V).reshape(V, V).double(), gen.stats
    assert st.nonfinite_drafts > 0 and 0 < st.accepted < st.drafted  # drafts both kept and rejected
    assert chi_square_pvalue(counts, truth) > 1e-4 and 0.5 * (counts / SAMPLES - truth).abs().sum() < 0.05


def test_non_finite_large_model_does_what_large_generate_does(one_thread):
    small, large = make_pair("llama")
    ids, mask = make_inputs("llama", 3, seed=7)
    poison(large, float("nan"), every=5)
    want = large.generate(ids, attention_mask=mask, max_new_tokens=NEW)  # argmax over NaN: transformers' token
    for engine in ({}, {"fallback_threshold": 0.0, "max_small_steps": 4}, {"rollback_threshold": 5.0}):
        out = bild.BiLDGenerator(small, large, **engine).generate(ids, attention_mask=mask, max_new_tokens=NEW)
        if not engine.get("rollback_threshold"):
            assert torch.equal(out, want), engine
    with pytest.raises(RuntimeError) as theirs:
        torch.manual_seed(0)
        large.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=True)
    for engine in ({}, {"fallback_threshold": 0.0, "max_small_steps": 4}):
        with pytest.raises(RuntimeError) as ours:
            torch.manual_seed(0)
            bild.BiLDGenerator(small, large, **engine).generate(
                ids, attention_mask=mask, max_new_tokens=NEW, do_sample=True
            )
        assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("role", ["small_model", "large_model"])
def test_a_model_with_non_finite_probe_logits_is_refused_by_name(role):
    small, large = make_pair("llama")
    broken = {"small_model": small, "large_model": large}[role]
    with torch.no_grad():
        next(p for n, p in broken.named_parameters() if "layers.0" in n).fill_(float("nan"))
    with pytest.raises(ValueError, match=f"`{role}`.*non-finite logits"):
        bild.BiLDGenerator(small, large)
    with pytest.raises(ValueError, match=f"`{role}`.*non-finite logits"):
        large.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=3, custom_generate=bild.generate, small_model=small)
    assert V == 8 and TEMP > 0

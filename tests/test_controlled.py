"""Controlled-agreement pairs: the builder reaches the agreement it is asked for."""

import pytest
import torch

from bild.pairs.controlled import build_controlled_pair, make_prompts, measure_agreement, set_alpha

TINY = dict(hidden=64, layers=4, vocab=512, calib_prompts=8, calib_new_tokens=48)
TOL = 0.05


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(min(2, old))
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("target", [0.9, 0.6])
def test_llama_pair_reaches_agreement(target):
    small, large, info = build_controlled_pair("llama", target, tolerance=TOL, **TINY)
    assert info.converged
    assert abs(info.agreement - target) <= TOL
    # the reported value is what an independent measurement on the same prompts gives
    prompts = make_prompts(TINY["vocab"], TINY["calib_prompts"], info.calib_prompt_len, seed=10_000 + info.seed)
    assert measure_agreement(small, large, prompts, TINY["calib_new_tokens"]) == pytest.approx(info.agreement, abs=1e-6)
    # structure: small = first layer, sharing embeddings / norm / head with the large model
    assert small.config.num_hidden_layers == 1 and large.config.num_hidden_layers == 4
    assert small.model.layers[0] is large.model.layers[0]
    assert small.get_input_embeddings() is large.get_input_embeddings()
    assert small.get_output_embeddings() is large.get_output_embeddings()
    assert small.model.norm is large.model.norm
    # greedy text is not degenerate
    assert info.distinct_fraction > 0.3
    # the shared head was rescaled so that the small model is calibrated on average
    assert info.small_confidence == pytest.approx(info.agreement, abs=0.01)


def test_qwen3_next_pair_reaches_agreement_and_decodes_exactly():
    """The hybrid family: the small model is the large one's first two layers (one linear-attention, one
    attention layer); on releases that roll recurrent states back bild decodes the pair as large greedy."""
    import transformers

    import bild

    small, large, info = build_controlled_pair("qwen3_next", 0.8, tolerance=TOL, small_layers=2, **TINY)
    assert info.converged and abs(info.agreement - 0.8) <= TOL
    assert small.config.layer_types == ["linear_attention", "full_attention"]
    assert all(a is b for a, b in zip(small.model.layers, large.model.layers[:2]))
    assert small.get_output_embeddings() is large.get_output_embeddings()
    with pytest.raises(ValueError, match="small_layers >= 2"):
        build_controlled_pair("qwen3_next", 0.8, **TINY)
    if hasattr(transformers.DynamicCache, "get_recurrent_states_to_keep"):
        x = make_prompts(TINY["vocab"], 1, 12)[0]
        want = large.generate(x, max_new_tokens=16, do_sample=False)
        assert torch.equal(bild.BiLDGenerator(small, large).generate(x, max_new_tokens=16), want)


def test_t5_pair_reaches_agreement():
    small, large, info = build_controlled_pair("t5", 0.8, tolerance=TOL, **TINY)
    assert info.converged and abs(info.agreement - 0.8) <= TOL
    assert small.config.num_decoder_layers == 1 and large.config.num_decoder_layers == 4
    assert small.get_encoder() is large.get_encoder()
    assert small.decoder.block[0] is large.decoder.block[0]
    assert info.distinct_fraction > 0.3
    # generate works for both (T5 needs num_decoder_layers <= num_layers)
    x = make_prompts(TINY["vocab"], 1, 12)[0]
    out = small.generate(x, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 6)


def test_alpha_zero_means_identical_models_and_set_alpha():
    small, large, info = build_controlled_pair("llama", None, alpha=1e-12, confidence=None, **TINY)
    assert info.agreement == 1.0
    x = make_prompts(TINY["vocab"], 1, 10)[0]
    with torch.no_grad():
        torch.testing.assert_close(small(x).logits, large(x).logits, atol=1e-4, rtol=1e-4)
    set_alpha(large, 1.0)
    assert measure_agreement(small, large, make_prompts(TINY["vocab"], 4, 16, seed=3), 32) < 0.9


def test_same_seed_same_weights_and_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    _, a, _ = build_controlled_pair("llama", None, alpha=0.1, **TINY)
    after = torch.rand(1)
    _, b, _ = build_controlled_pair("llama", None, alpha=0.1, **TINY)
    assert torch.equal(before, after)  # the global RNG stream is not consumed
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_bf16_pair_builds():
    small, large, info = build_controlled_pair("llama", 0.8, dtype=torch.bfloat16, tolerance=0.08, **TINY)
    assert large.dtype == torch.bfloat16 and small.dtype == torch.bfloat16
    assert abs(info.agreement - 0.8) <= 0.08


def test_bad_arguments():
    with pytest.raises(ValueError):
        build_controlled_pair("gpt7", 0.9, **TINY)
    with pytest.raises(ValueError):
        build_controlled_pair("llama", 1.5, **TINY)
    with pytest.raises(ValueError):
        build_controlled_pair("t5", 0.9, encoder_layers=2, **TINY)


def test_agreement_on_a_given_continuation():
    """`agreement_on` (one small forward over the whole continuation) against the small model's argmax recomputed
    prefix by prefix, on large greedy's continuation."""
    from bild.pairs.controlled import agreement_on

    small, large, _ = build_controlled_pair("llama", None, alpha=0.3, **TINY)
    x = torch.cat(make_prompts(TINY["vocab"], 3, 10, seed=5))
    gen = large.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False)[:, 10:]
    hits = []
    with torch.no_grad():
        for j in range(gen.shape[1]):
            hits.append(small(torch.cat([x, gen[:, :j]], 1)).logits[:, -1].argmax(-1) == gen[:, j])
    want = torch.stack(hits).float().mean().item()
    assert 0.0 < want < 1.0  # both kinds of position occur
    assert agreement_on(small, x, gen) == pytest.approx(want, abs=1e-6)
    assert agreement_on(small, x, gen) == pytest.approx(measure_agreement(small, large, x, 12), abs=1e-6)

"""Fidelity with transformers' generate: every argument `GenerationConfig` has, on a left-padded batch of a
family of each batch layout, is either honoured exactly (greedy, exact verification, drafts verified: the
output equals `large.generate` on the same input) or refused up front with a ValueError naming it.

`FIELDS` maps every field of `GenerationConfig()` to what is expected; a field without an entry fails
`test_every_generation_config_field_has_an_entry`, so an argument a later transformers adds shows up here.
Then the individual cases of issue #22 (padded rows of row-by-row families, the user's eos / length criteria,
classifier-free guidance, decoder_attention_mask, Whisper / pixel encoders, inputs_embeds / encoder_outputs,
MPT's use_cache default, stop_strings and per-step attentions)."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from models import make_inputs, make_pair
from transformers import GenerationConfig, StoppingCriteriaList
from transformers.generation import CompileConfig
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria
from transformers.utils import ModelOutput
from zoo import make_zoo_pair

import bild
from bild.adapters import batch_layout

NEW = 10
STEPS = 4  # fixed drafts of 4 (fallback_threshold=0): drafts are verified every round


# -- families, one per batch layout, and their left-padded batches --------------------------------------
@functools.cache
def family(name: str):
    """(small, large, ids, mask, ctx): a pair, a padded batch of 2 and tokens its greedy output holds
    (ctx["first"]: row 0's first new token, ctx["hot"]: its third, used as an eos that stops it early)."""
    if name == "mistral":
        small, large = make_zoo_pair("mistral")  # sliding window of 4: the padding lies inside it
        for m in (small, large):
            m.generation_config.max_length = None
    else:
        small, large = make_pair(name)
    encdec = large.config.is_encoder_decoder
    ids, mask = make_inputs("t5" if encdec else "llama", 2, seed=1, length=7)
    if not encdec:  # row 1 left-padded by 4
        mask[1, :4] = 0
        ids[1, :4] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = large.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    P = 1 if encdec else ids.shape[1]
    return small, large, ids, mask, {"first": int(out[0, P]), "hot": int(out[0, P + 2]), "P": P}


LAYOUTS = {"llama": "holes", "t5": "aligned", "mistral": "rows", "bart": "rows"}


def test_layouts_cover_every_batch_layout():
    for name, layout in LAYOUTS.items():
        assert batch_layout(family(name)[1]) == layout, name


# -- what every GenerationConfig field is expected to do ----------------------------------------------
# kind: "exact" (output equal to large.generate; where large.generate raises, bild raises the same), "refused"
# (ValueError naming the field), "sampled" (sampling: token by token under the same seed with the large model
# alone, and with drafts under top_k=1), "drafter" (a drafter's knob: greedy output equal to large.generate without
# it), "meta" (bookkeeping, not an argument). value: the kwargs, from ctx.
def _kw(**kw):
    return lambda ctx: kw


FIELDS = {
    "max_length": ("exact", lambda c: dict(max_length=c["P"] + 7, max_new_tokens=None)),
    "max_new_tokens": ("exact", _kw(max_new_tokens=7)),
    "min_length": ("exact", lambda c: dict(min_length=c["P"] + 6, eos_token_id=c["hot"])),
    "min_new_tokens": ("exact", lambda c: dict(min_new_tokens=6, eos_token_id=c["hot"])),
    "early_stopping": ("exact", _kw(early_stopping=True)),  # beam search only
    "max_time": ("exact", _kw(max_time=1e-9)),  # both stop after the first token
    "stop_strings": ("refused", _kw(stop_strings=["ab"])),
    "do_sample": ("sampled", _kw(do_sample=True)),
    "num_beams": ("refused", _kw(num_beams=2)),
    "use_mtp": ("refused", _kw(use_mtp=True)),
    "use_cache": ("refused", _kw(use_cache=False)),
    "cache_implementation": ("refused", _kw(cache_implementation="static")),
    "cache_config": ("refused", _kw(cache_config={"nbits": 4})),
    "max_cache_len": ("exact", _kw(max_cache_len=64)),
    "temperature": ("sampled", _kw(temperature=0.7)),
    "top_k": ("sampled", _kw(top_k=5)),
    "top_p": ("sampled", _kw(top_p=0.8)),
    "min_p": ("sampled", _kw(min_p=0.05)),
    "top_h": ("sampled", _kw(top_h=0.5)),
    "typical_p": ("sampled", _kw(typical_p=0.8)),
    "epsilon_cutoff": ("sampled", _kw(epsilon_cutoff=3e-3)),
    "eta_cutoff": ("sampled", _kw(eta_cutoff=3e-3)),
    "repetition_penalty": ("exact", _kw(repetition_penalty=1.5)),
    "encoder_repetition_penalty": ("exact", _kw(encoder_repetition_penalty=20.0)),
    "length_penalty": ("exact", _kw(length_penalty=0.5)),  # beam search only
    "no_repeat_ngram_size": ("exact", _kw(no_repeat_ngram_size=1)),
    "bad_words_ids": ("exact", lambda c: dict(bad_words_ids=[[c["hot"]]])),
    "renormalize_logits": ("exact", _kw(renormalize_logits=True, repetition_penalty=1.5)),
    "forced_bos_token_id": ("exact", _kw(forced_bos_token_id=5)),
    "forced_eos_token_id": ("exact", _kw(forced_eos_token_id=2)),
    "remove_invalid_values": ("exact", _kw(remove_invalid_values=True)),
    "exponential_decay_length_penalty": (
        "exact",
        lambda c: dict(exponential_decay_length_penalty=(2, 3.0), eos_token_id=c["hot"]),
    ),
    "suppress_tokens": ("exact", lambda c: dict(suppress_tokens=[c["hot"]])),
    "begin_suppress_tokens": ("exact", lambda c: dict(begin_suppress_tokens=[c["first"]])),
    "sequence_bias": ("exact", lambda c: dict(sequence_bias={(c["hot"],): -20.0})),
    "token_healing": ("refused", _kw(token_healing=True)),
    "guidance_scale": ("refused", _kw(guidance_scale=1.5)),
    "watermarking_config": ("exact", _kw(watermarking_config={"bias": 30.0, "greenlist_ratio": 0.25})),
    "num_return_sequences": ("refused", _kw(num_return_sequences=2)),
    "output_attentions": ("refused", _kw(output_attentions=True, return_dict_in_generate=True)),
    "output_hidden_states": ("refused", _kw(output_hidden_states=True, return_dict_in_generate=True)),
    "output_scores": ("exact", _kw(output_scores=True, return_dict_in_generate=True)),
    "output_logits": ("exact", _kw(output_logits=True, return_dict_in_generate=True)),
    "return_dict_in_generate": ("exact", _kw(return_dict_in_generate=True)),
    "pad_token_id": ("exact", lambda c: dict(pad_token_id=3, eos_token_id=c["hot"])),
    "bos_token_id": ("exact", _kw(bos_token_id=4)),
    "eos_token_id": ("exact", lambda c: dict(eos_token_id=[c["hot"], 2])),
    "encoder_no_repeat_ngram_size": ("exact", _kw(encoder_no_repeat_ngram_size=1)),
    "decoder_start_token_id": ("exact", _kw(decoder_start_token_id=3)),
    "is_assistant": ("refused", _kw(is_assistant=True)),  # a flag for the assistant's own generate
    # assisted-decoding knobs: without an assistant model they switch nothing on
    "num_assistant_tokens": ("exact", _kw(num_assistant_tokens=3)),
    "num_assistant_tokens_schedule": ("exact", _kw(num_assistant_tokens_schedule="constant")),
    "assistant_confidence_threshold": ("exact", _kw(assistant_confidence_threshold=0.2)),
    # prompt lookup: a drafter, so the greedy output is large.generate's without it (which batches, where
    # transformers' own prompt lookup is batch 1 only)
    "prompt_lookup_num_tokens": ("drafter", _kw(prompt_lookup_num_tokens=3)),
    "max_matching_ngram_size": ("exact", _kw(max_matching_ngram_size=3)),
    "assistant_early_exit": ("refused", _kw(assistant_early_exit=1)),
    "assistant_lookbehind": ("exact", _kw(assistant_lookbehind=5)),
    "target_lookbehind": ("exact", _kw(target_lookbehind=5)),
    "assistant_ensemble_weight": ("exact", _kw(assistant_ensemble_weight=0.5)),
    "speculation_type": ("refused", _kw(speculation_type="dflash")),
    "compile_config": ("exact", _kw(compile_config=CompileConfig(fullgraph=False))),
    "disable_compile": ("exact", _kw(disable_compile=True)),
    "continuous_batching_config": ("refused", _kw(continuous_batching_config={"block_size": 16})),
    "low_memory": ("exact", _kw(low_memory=True)),  # contrastive search only
    "penalty_alpha": ("refused", _kw(penalty_alpha=0.6, top_k=4)),
    "dola_layers": ("refused", _kw(dola_layers="low")),
    "diversity_penalty": ("refused", _kw(diversity_penalty=0.5)),
    "num_beam_groups": ("refused", _kw(num_beam_groups=2)),
    "constraints": ("refused", _kw(constraints=[object()])),
    "force_words_ids": ("refused", _kw(force_words_ids=[[5]])),
    # transformers' chunked prefill of an encoder-decoder ignores the encoder's padding: refused for those
    "prefill_chunk_size": (lambda name: "refused" if name in ("t5", "bart") else "exact", _kw(prefill_chunk_size=3)),
    "_from_model_config": ("meta", None),
    "transformers_version": ("meta", None),
}


def test_every_generation_config_field_has_an_entry():
    missing = sorted(set(GenerationConfig().to_dict()) - set(FIELDS))
    assert not missing, f"GenerationConfig fields with no entry in FIELDS (decide: exact or refused): {missing}"


# -- comparisons -------------------------------------------------------------------------------------
def bild_generate(small, large, ids, mask, fb=0.0, **kw):
    gen = bild.BiLDGenerator(
        small,
        large,
        fallback_threshold=fb,
        max_small_steps=STEPS,
        verification="exact",
        num_drafts=kw.pop("num_drafts", 1),
    )
    return gen.generate(ids, attention_mask=mask, **kw)


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def assert_same(ref, out):
    if isinstance(ref, torch.Tensor):
        assert torch.equal(ref, out), f"\nlarge.generate {ref.tolist()}\nbild           {out.tolist()}"
        return
    assert isinstance(out, ModelOutput) and type(out) is type(ref)
    assert_same(ref.sequences, out.sequences)
    for name in ("scores", "logits"):
        a, b = getattr(ref, name), getattr(out, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert len(a) == len(b), name
            for x, y in zip(a, b):
                fin = torch.isfinite(x)
                assert torch.equal(fin, torch.isfinite(y)), name
                assert torch.allclose(x[fin], y[fin], atol=1e-4, rtol=1e-4), name


def compare(small, large, ids, mask, fb=0.0, **kw):
    """bild (exact, greedy unless kw says otherwise) against large.generate on the same input; where
    large.generate raises, bild must raise the same kind of error."""
    kw = {"max_new_tokens": NEW, "do_sample": False, **kw}
    try:
        ref = _quiet(lambda: large.generate(ids, attention_mask=mask, **kw))
    except Exception as e:  # noqa: BLE001 - what transformers refuses, bild refuses too
        with pytest.raises(type(e)):
            _quiet(lambda: bild_generate(small, large, ids, mask, fb=fb, **kw))
        return None
    out = _quiet(lambda: bild_generate(small, large, ids, mask, fb=fb, **kw))
    assert_same(ref, out)
    return ref


def compare_sampled(small, large, ids, mask, kw, layout):
    """Sampling: (1) the large model alone through the engine draws the same tokens as large.generate under
    the same seed (its processors and warpers applied the same way, one draw per step); rows decoded one by
    one draw in another order, so the row-by-row layout checks one padded row. (2) With drafts (and with
    num_drafts=2 where rows decode together), under top_k=1 added, equal to large.generate."""
    kw = {"max_new_tokens": NEW, **kw, "do_sample": True}
    if layout == "rows":
        ids, mask = ids[1:], mask[1:]
    torch.manual_seed(0)
    ref = _quiet(lambda: large.generate(ids, attention_mask=mask, **kw))
    torch.manual_seed(0)
    out = _quiet(lambda: bild_generate(small, large, ids, mask, fb=1.0, **kw))
    assert_same(ref, out)
    narrow = {**kw, "top_k": 1}
    ref = _quiet(lambda: large.generate(ids, attention_mask=mask, **narrow))
    assert_same(ref, _quiet(lambda: bild_generate(small, large, ids, mask, **narrow)))
    if layout != "rows":
        assert_same(ref, _quiet(lambda: bild_generate(small, large, ids, mask, num_drafts=2, **narrow)))


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_generation_config_field(name, field):
    kind, make = FIELDS[field]
    kind = kind(name) if callable(kind) else kind
    if kind == "meta":
        assert field in ("_from_model_config", "transformers_version")
        return
    small, large, ids, mask, ctx = family(name)
    kw = make(ctx)
    if kind == "refused":
        with pytest.raises(ValueError, match=field):
            _quiet(lambda: bild_generate(small, large, ids, mask, max_new_tokens=NEW, **kw))
    elif kind == "sampled":
        compare_sampled(small, large, ids, mask, kw, LAYOUTS[name])
    elif kind == "drafter":
        ref = _quiet(lambda: large.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False))
        assert_same(
            ref, _quiet(lambda: bild_generate(small, large, ids, mask, max_new_tokens=NEW, do_sample=False, **kw))
        )
    else:
        compare(small, large, ids, mask, **kw)


# fields whose entry must change large.generate's greedy output in at least one family: the equality above
# then shows that bild applies them (and not only that both ignore them)
EFFECTIVE = (
    "max_length",
    "max_new_tokens",
    "min_length",
    "min_new_tokens",
    "max_time",
    "repetition_penalty",
    "encoder_repetition_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "renormalize_logits",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "sequence_bias",
    "watermarking_config",
    "pad_token_id",
    "eos_token_id",
    "encoder_no_repeat_ngram_size",
    "decoder_start_token_id",
)


@pytest.mark.parametrize("field", EFFECTIVE)
def test_exact_fields_change_the_output(field):
    changed = []
    for name in LAYOUTS:
        _, large, ids, mask, ctx = family(name)
        plain = _quiet(lambda: large.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False))
        kw = {"max_new_tokens": NEW, "do_sample": False, **FIELDS[field][1](ctx)}
        try:
            out = _quiet(lambda: large.generate(ids, attention_mask=mask, **kw))
        except Exception:  # noqa: BLE001 - not for this family
            continue
        changed.append(out.shape != plain.shape or not torch.equal(out, plain))
    assert any(changed), f"{field}: no family's output changed; pick a value that shows whether it is applied"


# -- issue #22, case by case ------------------------------------------------------------------------------
def padded_row(name: str, n: int = 4, width: int = 9):
    """A zoo pair and one prompt of n tokens left-padded to width."""
    small, large = make_zoo_pair(name)
    for m in (small, large):
        m.generation_config.max_length = None
    ids = torch.tensor([[0] * (width - n) + [5 + 4 * i for i in range(n)]])
    out = _quiet(lambda: large.generate(ids, attention_mask=(ids != 0).long(), max_new_tokens=NEW, do_sample=False))
    return small, large, ids, (ids != 0).long(), {"first": int(out[0, width]), "hot": int(out[0, width + 2])}


CASE1 = {
    "repetition_penalty": lambda c: dict(repetition_penalty=1.3),
    "min_new_tokens": lambda c: dict(min_new_tokens=6, eos_token_id=c["hot"]),
    "begin_suppress_tokens": lambda c: dict(begin_suppress_tokens=[c["first"]]),
    "min_length": lambda c: dict(min_length=15, eos_token_id=c["hot"]),
    "forced_eos_token_id": lambda c: dict(forced_eos_token_id=2),
}


@pytest.mark.parametrize("fb", [0.0, 1.0])
@pytest.mark.parametrize("arg", list(CASE1))
@pytest.mark.parametrize("name", ["phi3", "mistral", "gemma2"])
def test_padded_prompt_of_a_row_by_row_family(name, arg, fb):
    """Case 1: a left-padded prompt (batch 1) of a row-by-row family: length-dependent processors count the
    padded prompt, as in large.generate; also with the large model alone (fallback_threshold=1)."""
    small, large, ids, mask, ctx = padded_row(name)
    assert batch_layout(large) == "rows"
    compare(small, large, ids, mask, fb=fb, **CASE1[arg](ctx))


@pytest.mark.parametrize("name", ["llama", "t5"])
def test_padded_batch_with_num_drafts(name):
    """Case 1 with num_drafts rows (sampling, top_k=1 so that it is comparable token by token): the processors
    see each prompt's padded row."""
    small, large, ids, mask, ctx = family(name)
    kw = dict(
        max_new_tokens=NEW, do_sample=True, top_k=1, repetition_penalty=1.5, min_new_tokens=6, eos_token_id=ctx["hot"]
    )
    ref = _quiet(lambda: large.generate(ids, attention_mask=mask, **kw))
    assert_same(ref, _quiet(lambda: bild_generate(small, large, ids, mask, num_drafts=2, **kw)))


@pytest.mark.parametrize("name", ["gpt2", "mistral"])
def test_users_eos_and_length_criteria(name):
    """Case 2: the user's EosTokenCriteria / MaxLengthCriteria replace transformers' own (as in its generate)."""
    if name == "gpt2":
        small, large = make_pair("gpt2")
        ids, mask = torch.tensor([[5, 9, 13, 17]]), None
    else:
        small, large, ids, mask, _ = padded_row("mistral")
    P = ids.shape[1]
    out = _quiet(lambda: large.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False))
    for crit in (MaxLengthCriteria(P + 4), EosTokenCriteria(int(out[0, P + 3]))):
        ref = compare(small, large, ids, mask, max_new_tokens=12, stopping_criteria=StoppingCriteriaList([crit]))
        assert ref.shape[1] == P + 4


def test_guidance_scale_is_refused():
    """Case 3."""
    small, large = make_pair("gpt2")
    with pytest.raises(ValueError, match="guidance_scale"):
        bild_generate(small, large, torch.tensor([[5, 9, 13]]), None, max_new_tokens=NEW, guidance_scale=1.5)


@pytest.mark.parametrize("fb", [0.0, 1.0])
@pytest.mark.parametrize("name", ["t5", "bart"])
def test_decoder_attention_mask(name, fb):
    """Case 4: a left-padded decoder prompt is decoded as transformers does (its mask honoured)."""
    small, large = make_pair(name)
    ids = torch.tensor([[5, 6, 2, 0], [7, 8, 2, 0]])
    start = large.generation_config.decoder_start_token_id
    dec = torch.tensor([[start, start, start, 7], [start, start, 11, 7]])
    dmask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    plain = _quiet(
        lambda: large.generate(ids, attention_mask=(ids != 0).long(), decoder_input_ids=dec, max_new_tokens=NEW)
    )
    ref = compare(small, large, ids, (ids != 0).long(), fb=fb, decoder_input_ids=dec, decoder_attention_mask=dmask)
    assert not torch.equal(ref, plain)  # the mask matters
    with pytest.raises(ValueError, match="decoder_attention_mask"):
        bild_generate(
            small,
            large,
            ids,
            (ids != 0).long(),
            decoder_input_ids=dec,
            max_new_tokens=NEW,
            decoder_attention_mask=torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]]),
        )


def _whisper(layers):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(
        vocab_size=96,
        d_model=32,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=8,
        max_source_positions=16,
        max_target_positions=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        tie_word_embeddings=False,
        init_std=0.2,
    )
    return WhisperForConditionalGeneration(cfg).eval()


def test_whisper_input_features():
    """Case 5: Whisper (encoder input `input_features`, its own generate) decodes exactly, features given
    positionally, as `input_features=` or through custom_generate."""
    large, small = _whisper(3), _whisper(1)
    with torch.no_grad():
        large.proj_out.weight.mul_(2.0 / large.proj_out.weight.std())
    small.load_state_dict(large.state_dict(), strict=False)
    feats = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(0))
    for kw in (dict(), dict(repetition_penalty=1.3), dict(return_dict_in_generate=True, output_scores=True)):
        ref = _quiet(lambda: large.generate(feats, max_new_tokens=NEW, **kw))
        gen = bild.BiLDGenerator(small, large, fallback_threshold=0, max_small_steps=STEPS, verification="exact")
        assert_same(ref, _quiet(lambda: gen.generate(feats, max_new_tokens=NEW, **kw)))
        assert_same(ref, _quiet(lambda: gen.generate(input_features=feats, max_new_tokens=NEW, **kw)))
        assert_same(
            ref,
            _quiet(
                lambda: large.generate(
                    input_features=feats,
                    max_new_tokens=NEW,
                    custom_generate=bild.generate,
                    small_model=small,
                    fallback_threshold=0.0,
                    max_small_steps=STEPS,
                    verification="exact",
                    **kw,
                )
            ),
        )


def test_pixel_encoders_are_refused():
    """Case 5: encoders of other non-token inputs (pixel_values) are refused before any work."""
    from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    enc = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=8
    )
    dec = GPT2Config(vocab_size=96, n_embd=32, n_layer=1, n_head=4, add_cross_attention=True, is_decoder=True)
    model = VisionEncoderDecoderModel(VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)).eval()
    with pytest.raises(ValueError, match="pixel_values"):
        bild.BiLDGenerator(model, model)


@pytest.mark.parametrize("name", ["gpt2", "t5"])
def test_inputs_embeds_and_encoder_outputs(name):
    """Case 6: inputs_embeds are refused; encoder_outputs without the encoder input are refused when the small
    model drafts (it encodes the input itself), and exact with the large model alone."""
    small, large = make_pair(name)
    ids = torch.tensor([[5, 9, 13, 2]])
    embeds = large.get_input_embeddings()(ids)
    with pytest.raises(ValueError, match="inputs_embeds"):
        _quiet(lambda: bild_generate(small, large, None, None, inputs_embeds=embeds, max_new_tokens=NEW))
    if name == "t5":
        enc = large.get_encoder()(input_ids=ids)
        with pytest.raises(ValueError, match="encoder_outputs"):
            _quiet(lambda: bild_generate(small, large, None, None, encoder_outputs=enc, max_new_tokens=NEW))
        ref = _quiet(lambda: large.generate(encoder_outputs=enc, max_new_tokens=NEW, do_sample=False))
        assert_same(
            ref,
            _quiet(
                lambda: bild_generate(
                    small, large, None, None, fb=1.0, encoder_outputs=enc, max_new_tokens=NEW, do_sample=False
                )
            ),
        )


def test_mpt_default_use_cache():
    """Case 7: MPT's config says use_cache=False, a default the user did not choose: decoded (exactly)."""
    small, large = make_zoo_pair("mpt")
    for m in (small, large):
        m.config.use_cache = m.generation_config.use_cache = False
        m.generation_config.max_length = None
    ids = torch.tensor([[0, 0, 5, 9, 13, 17]])
    compare(small, large, ids, (ids != 0).long(), repetition_penalty=1.3)
    with pytest.raises(ValueError, match="use_cache"):  # chosen: refused
        llama_small, llama_large = make_pair("llama")
        bild_generate(llama_small, llama_large, ids, None, max_new_tokens=NEW, use_cache=False)


def _tokenizer():
    """A character-level tokenizer over the 96 ids: id i is chr(32 + i)."""
    from tokenizers import Regex, Tokenizer
    from tokenizers.decoders import Fuse
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Split
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({chr(32 + i): i for i in range(96)}, unk_token=" "))
    tok.pre_tokenizer, tok.decoder = Split(Regex("."), "isolated"), Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_stop_strings_and_per_step_outputs():
    """Case 8: transformers does not hand `tokenizer` to a custom_generate callable, so `stop_strings` is
    refused with the way round it (a StopStringCriteria, which is exact); per-step attentions / hidden
    states are refused."""
    from transformers.generation.stopping_criteria import StopStringCriteria

    small, large = make_pair("gpt2")
    ids = torch.tensor([[5, 9, 13, 17]])
    tok = _tokenizer()
    with pytest.raises(ValueError, match="stop_strings"):
        bild_generate(small, large, ids, None, max_new_tokens=NEW, stop_strings=["x"], tokenizer=tok)
    out = _quiet(lambda: large.generate(ids, max_new_tokens=12, do_sample=False))
    stop = tok.decode(out[0, 6:8])  # two tokens that end at the 4th new token
    crit = StoppingCriteriaList([StopStringCriteria(tok, [stop])])
    ref = compare(small, large, ids, None, max_new_tokens=12, stopping_criteria=crit)
    assert ref.shape[1] < out.shape[1]
    for name in ("output_attentions", "output_hidden_states"):
        with pytest.raises(ValueError, match=name):
            bild_generate(small, large, ids, None, max_new_tokens=NEW, return_dict_in_generate=True, **{name: True})


def test_position_ids():
    """position_ids as the attention mask implies them are exact; others are refused."""
    small, large, ids, mask, _ = family("llama")
    implied = (mask.cumsum(-1) - 1).clamp(min=0)
    compare(small, large, ids, mask, position_ids=implied)
    with pytest.raises(ValueError, match="position_ids"):
        _quiet(lambda: bild_generate(small, large, ids, mask, max_new_tokens=NEW, position_ids=implied + 3))


def test_forward_without_position_ids_decodes_with_its_padding():
    """WhisperForCausalLM's forward does not name `position_ids`, so transformers' generate numbers its tokens
    by cache slot, padding included: the engine decodes its rows with their padding and gives the same."""
    small, large = make_zoo_pair("whisper_decoder")
    assert batch_layout(large) == "rows"
    ids = torch.tensor([[5, 9, 13, 17, 21, 25], [0, 0, 0, 7, 11, 15]])
    mask = (ids != 0).long()
    ref = compare(small, large, ids, mask, repetition_penalty=1.3)
    alone = _quiet(lambda: large.generate(ids[1:, 3:], max_new_tokens=NEW, do_sample=False, repetition_penalty=1.3))
    assert ref[1, 6:].tolist() != alone[0, 3:].tolist()  # transformers' padded row is not the row alone

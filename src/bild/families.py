"""Which models the engine decodes exactly, decided before any work (`check_model`): families checked and
refused (with why), encoder inputs checked, and for caches with a recurrent or unseen kind of layer a probe
running the engine's own feeds and rollbacks through a `ModelAdapter` (`rollback_is_exact`), with the
transformers release from which each recurrent family decodes exactly (`RECURRENT_EXACT_FROM`).

(These names were in `bild.adapters` up to 0.12 and are still reachable there: `bild/__init__.py`.)
"""

from __future__ import annotations

import torch
import transformers
from transformers import PreTrainedModel

from ._compat import TRANSFORMERS_NEWEST, _release
from .adapters import ModelAdapter
from .caches import PLAIN_LAYERS, _close, _unrollable_window, cache_layer_kinds
from .devices import execution_device
from .probes import NON_FINITE, NOT_CONTINUED, _probe_inputs, _probe_tokens, capabilities

# a feed of n tokens (> 0) or a rollback of -n tokens (<= 0; 0 settles): the loop's operations on one model (a
# prefill, verify passes, single draft steps, rollbacks into a verify pass and across draft steps)
ROLLBACK_OPS = (5, 3, -2, 1, 1, 1, -2, 4, 0, 1, 2, -2, 1, 3, -3, 1)


@torch.no_grad()
def rollback_is_exact(model: PreTrainedModel) -> bool:
    """Whether the engine rolls this model's cache back exactly: `ROLLBACK_OPS` run through a `ModelAdapter`
    (the engine's own feeds and crops, recurrent states recorded as it records them) must give, at every fed
    position, the logits of an uncached forward over the tokens kept. Run for caches with layers other than
    full-attention and sliding-window ones (linear-attention and state-space layers, and kinds bild has not
    seen); cached on the model."""
    cached = model.__dict__.get("_bild_rollback_ok")
    if cached is not None:
        return cached
    dev, vocab = execution_device(model), int(model.config.get_text_config().vocab_size)
    g = torch.Generator().manual_seed(0)
    ok = True
    try:
        a = ModelAdapter(model)
        a.times = None  # the probe's forwards are no measurement
        a.__dict__["layout"] = "rows"
        seq: list[int] = []
        enc = None
        if a.is_encoder_decoder:
            enc = a.encode(torch.tensor([_probe_tokens(model, 3)], device=dev), None)
        a.start(1, dev, enc)
        for op in ROLLBACK_OPS:
            if op <= 0:
                del seq[len(seq) + op :]
                a.keep_first([len(seq)])
                continue
            new = torch.randint(3, max(vocab - 1, 4), (op,), generator=g).tolist()
            got = a.feed(torch.tensor([new], device=dev), [[True] * op], keep=op)[0]
            seq += new
            inputs = _probe_inputs(model, seq)
            if enc is not None:
                inputs["encoder_outputs"] = enc["encoder_outputs"]
            want = model(**inputs, use_cache=False).logits[0, -op:].float()
            if not all(_close(w, x, model.dtype) for w, x in zip(want, got)):
                ok = False
                break
    except Exception:  # noqa: BLE001 - a cache this release cannot roll back (or feed after a crop)
        ok = False
    model.__dict__["_bild_rollback_ok"] = ok
    return ok


# families with a recurrent state (linear-attention / state-space layers) that the engine decodes exactly from this
# transformers release on, the first that records recurrent states for `crop` (measured by tests/test_families.py
# on the releases CI runs; the family test fails where this table and the probes disagree)
RECURRENT_EXACT_FROM = {
    t: "5.25.0"
    for t in (
        "bailing_hybrid",
        "falcon_h1",
        "granitemoehybrid",
        "kimi_linear",
        "mamba2",
        "nemotron_h",
        "olmo_hybrid",
        "qwen3_5_moe_text",
        "qwen3_5_text",
        "qwen3_next",
        "zamba2",
    )
}


def rollback_problem(model: PreTrainedModel) -> str:
    """Why the engine cannot roll this model's cache back on the installed transformers ("" if it can)."""
    kinds = cache_layer_kinds(model)
    if kinds <= PLAIN_LAYERS or rollback_is_exact(model):
        return ""
    return (
        f"its cache holds {', '.join(sorted(kinds - PLAIN_LAYERS))} layers (a recurrent, convolution or "
        "state-space state), and the engine's rollback of them (transformers' recorded states and `crop`) "
        f"does not give the logits of an uncached forward on transformers {transformers.__version__}"
    )


def working_release(model: PreTrainedModel) -> str:
    """For a refused model with a recurrent state: which transformers release decodes its family exactly."""
    if cache_layer_kinds(model) <= PLAIN_LAYERS:
        return ""
    first = RECURRENT_EXACT_FROM.get(model.config.model_type)
    if first is None:
        return (
            f"; no transformers release bild was tested with (up to {TRANSFORMERS_NEWEST}) rolls this family's "
            "state back exactly"
        )
    if _release(transformers.__version__) < _release(first):
        return (
            f"; transformers {first} or later rolls its recurrent state back and bild decodes it exactly there "
            f"(`pip install 'transformers>={first}'`)"
        )
    return f" (bild decoded this family exactly on transformers {first})"


# families checked and found wrong under the draft-verify loop (tests/test_families.py), with the reason
_REFUSED_TYPES = {
    "prophetnet": "it predicts n-grams over a decoder that takes one cached token at a time, so several drafts "
    "cannot be verified in one forward",
    "xlm-prophetnet": "it predicts n-grams over a decoder that takes one cached token at a time, so several "
    "drafts cannot be verified in one forward",
    "fsmt": "its decoder builds the causal mask only without a cache, so the tokens of a cached multi-token "
    "verify pass see each other",
    "cpmant": "its attention over the cache fails on a multi-token verify pass",
    "moshi": "its decoder applies a full causal mask over sliding-window cache layers, so even its own generate "
    "differs with and without a cache",
}


# encoder-decoders whose encoder takes something other than token ids (`main_input_name`), checked exact against
# their own generate (tests/test_generate_fidelity.py); the others (pixel_values: VisionEncoderDecoder, Donut,
# Pix2Struct; Speech2Text, SpeechEncoderDecoder) are refused
_CHECKED_ENCODER_INPUTS = {"whisper": "input_features"}


def check_model(model: PreTrainedModel, role: str) -> None:
    """Refuse, before any work, a model the engine cannot decode correctly."""
    name = type(model).__name__
    reason = _REFUSED_TYPES.get(model.config.model_type)
    if reason:
        raise ValueError(f"`{role}` ({name}) is not supported: {reason}")
    enc_input = getattr(model, "main_input_name", "input_ids")
    if (
        model.config.is_encoder_decoder
        and enc_input != "input_ids"
        and _CHECKED_ENCODER_INPUTS.get(model.config.model_type) != enc_input
    ):
        raise ValueError(
            f"`{role}` ({name}) is not supported: its encoder takes `{enc_input}`, not token ids, and "
            "the engine is checked exact on such encoders for Whisper only"
        )
    if _unrollable_window(model):
        raise ValueError(
            f"`{role}` ({name}) is not supported with this transformers release: its cache mixes "
            "sliding-window state into other layers, and this release cannot roll sliding-window "
            "layers back (bild.adapters.window_rollback_works; 5.24 can)"
        )
    caps = capabilities(model)
    if caps.cache_problem == NON_FINITE:
        raise ValueError(
            f"`{role}` ({name}) {NON_FINITE}: check its weights and dtype (a float16 model that "
            "overflows: load it in float32 or bfloat16)"
        )
    if caps.cache_arg is None:
        raise ValueError(
            f"`{role}` ({name}) {caps.cache_problem}: the engine feeds each model only the tokens it "
            "has not read, so it cannot decode this model"
            + (" with this transformers release" if caps.cache_problem == NOT_CONTINUED else "")
            + working_release(model)
        )
    problem = rollback_problem(model)
    if problem:
        raise ValueError(
            f"`{role}` ({name}, model type {model.config.model_type!r}) cannot be decoded exactly: "
            f"{problem}{working_release(model)}"
        )

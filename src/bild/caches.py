"""KV caches the engine can roll back: their creation (`new_cache`), what they record for `crop` (`record_past`),
their layer kinds, and whether this transformers release rolls sliding-window layers back (a probe on a tiny
Mistral, `window_rollback_works`). Layers with a recurrent state are rolled back through transformers' record of
it; `bild.families.rollback_is_exact` probes a model's whole rollback. `_close` / `_finite` compare a probe's
logits (here, the lowest module that probes; `bild.probes` and `bild.adapters` use them too)."""

from __future__ import annotations

import functools
import warnings

import torch
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel

CACHE_ARGS = ("cache", "past_key_values")  # the current name first: the old one warns on transformers >= 5.24


def new_cache(model: PreTrainedModel):
    """A fresh cache the engine can roll back: a DynamicCache (in an EncoderDecoderCache for encoder-decoders)
    with the model's layer kinds. Sliding-window layers keep only their window and are rolled back through
    `activate_past_recording` where this transformers release does that correctly (`window_rollback_works`,
    a probe); elsewhere they keep every slot as full layers (the mask still applies the window)."""
    cfg = model.config
    if cfg.is_encoder_decoder:
        return EncoderDecoderCache(DynamicCache(config=cfg), DynamicCache(config=cfg))
    cache = DynamicCache(config=cfg)
    if _window_layers(cache) and not window_rollback_works():
        return DynamicCache()  # full layers (check_model refused models with other kinds of layer here)
    record_past(cache, 1)
    return cache


def record_past(cache, states: int) -> None:
    """Have the cache record what `crop` needs to roll it back: sliding-window layers their past slots, layers
    with a recurrent state (linear attention, state-space) the state after each of the last `states` tokens of a
    forward (transformers' `recurrent_states_to_keep`, 5.25 on; older releases take no size, and the rollback
    probe refuses their recurrent layers). Features are probed, not versions checked."""
    if not hasattr(cache, "activate_past_recording"):
        return
    if hasattr(cache, "get_recurrent_states_to_keep"):
        cache.activate_past_recording(recurrent_states_to_keep=states)
    else:
        cache.activate_past_recording()


def state_layers(cache) -> list:
    """The decoder's cache layers that keep a convolution or recurrent state rather than one slot per token
    (linear attention, state-space layers): a crop restores them from what `record_past` recorded."""
    return [layer for layer in _self_attention_layers(cache) if hasattr(layer, "conv_states")]


PLAIN_LAYERS = {"DynamicLayer", "DynamicSlidingWindowLayer"}  # cache layers whose rollback needs no model probe


def _window_layers(cache) -> bool:
    """The cache has sliding-window layers (which keep only their window) and only those besides full ones."""
    kinds = {type(layer).__name__ for layer in getattr(cache, "layers", [])}
    return "DynamicSlidingWindowLayer" in kinds and kinds <= {"DynamicLayer", "DynamicSlidingWindowLayer"}


def _unrollable_window(model: PreTrainedModel) -> bool:
    """Sliding-window state mixed into other kinds of layer (linear attention + window), on a release that
    cannot roll window layers back: no full-layer replacement exists, so the model is refused."""
    if model.config.is_encoder_decoder:
        return False
    cache = DynamicCache(config=model.config)
    windowed = any("Sliding" in type(layer).__name__ for layer in cache.layers)
    return windowed and not _window_layers(cache) and not window_rollback_works()


@functools.lru_cache(maxsize=1)
def window_rollback_works() -> bool:
    """Whether this transformers release rolls sliding-window cache layers back exactly: on a tiny 1-layer
    Mistral with a 3-token window (built from a config, seeded), a sequence of the engine's operations
    (multi-token feeds past the window, crops, single steps) must give the logits of uncached forwards over
    the same tokens. True on 5.24; on 5.17 a feed after a crop fails on the mask's size."""
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=3,
        max_position_embeddings=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = MistralForCausalLM(cfg).eval()
    return any(_window_ops_exact(m, name) for name in CACHE_ARGS)


@torch.no_grad()
def _window_ops_exact(m, arg: str) -> bool:
    cache = DynamicCache(config=m.config)
    if not hasattr(cache, "activate_past_recording"):
        return False
    cache.activate_past_recording()
    seq, g = [], torch.Generator().manual_seed(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for op in (5, 1, 3, -2, 1, 4, -3, 1, 1, 2, -1, 1):
                if op < 0:
                    cache.crop(op)
                    del seq[op:]
                    continue
                new = torch.randint(3, 32, (op,), generator=g).tolist()
                out = m(input_ids=torch.tensor([new]), use_cache=True, **{arg: cache}).logits[0, -1]
                seq += new
                if not _close(m(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1], out, torch.float32):
                    return False
    except Exception:  # noqa: BLE001 - this release cannot do it (or takes no such keyword)
        return False
    return True


def _self_attention_layers(cache) -> list:
    """The cache layers that hold the decoder's own tokens (not an encoder-decoder's cross-attention)."""
    return (cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache).layers


def _finite(logits: torch.Tensor) -> bool:
    """No NaN, no +inf, and some finite value (-inf alone is a masked token)."""
    return not bool(logits.isnan().any() or logits.isposinf().any()) and bool(logits.isfinite().any())


def _close(plain: torch.Tensor, other: torch.Tensor, dtype: torch.dtype) -> bool:
    """A probe's two logit vectors agree, up to the dtype's rounding (relative to the logits' scale); non-finite
    logits agree with nothing."""
    if not (_finite(plain) and _finite(other)):
        return False
    tol = (1e-3 if dtype == torch.float32 else 3e-2) * float(plain.abs().max().clamp(min=1.0))
    return bool(torch.allclose(plain, other, rtol=0, atol=tol))


def cache_layer_kinds(model: PreTrainedModel) -> set[str]:
    """The class names of the layers of a fresh cache for this model (the decoder's, for encoder-decoders)."""
    return {type(layer).__name__ for layer in _self_attention_layers(new_cache(model))}

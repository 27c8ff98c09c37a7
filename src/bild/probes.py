"""Capability probes: how the engine calls a model's forward (the cache keyword, per-row positions,
`logits_to_keep`), found once per model by tiny forwards (`capabilities`), not by reading how the forward is
spelled. Also the probe inputs the other probes share (`_probe_inputs`, `_probe_tokens`)."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from . import caches
from .caches import CACHE_ARGS, _close, _finite
from .devices import execution_device


# -- what a model can do, found by running it (not by reading how its forward is spelled) ----------------
@dataclass(frozen=True)
class Capabilities:
    """How the engine calls a model's forward, found once per model by `capabilities`.

    cache_arg        the keyword under which the forward fills a KV cache passed in: "cache" (transformers
                     >= 5.24), "past_key_values" (earlier releases), None (refused, for `cache_problem`)
    takes_positions  decoder-only, and `position_ids` changes its output (per-row positions can go in)
    logits_to_keep   the forward honours `logits_to_keep` (only the last positions' logits are computed)
    """

    cache_arg: str | None
    takes_positions: bool
    logits_to_keep: bool
    cache_problem: str = ""  # why cache_arg is None


def capabilities(model: PreTrainedModel) -> Capabilities:
    """Probe the model with tiny forwards (cached on the model as `_bild_caps`). A forward wrapped by
    accelerate hooks, PEFT, `torch.compile` or a plain `def forward(*args, **kwargs)` is probed the same way:
    what counts is what the model does with an argument, not whether its signature names it."""
    caps = model.__dict__.get("_bild_caps")
    if caps is None:
        arg, problem = _probe_cache_arg(model)
        caps = Capabilities(arg, _probe_positions(model), _probe_logits_to_keep(model), problem)
        model.__dict__["_bild_caps"] = caps
    return caps


def _accepts(model, name: str, unknown: bool | None) -> bool | None:
    """Whether the forward's signature names `name`, as transformers' generate reads it (a PEFT model's base
    model's forward; `functools.wraps` wrappers followed): True if it does, False if it names other arguments
    but not this one, `unknown` if it names none (`*args, **kwargs`)."""
    spelled = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    try:
        params = inspect.signature(spelled.forward).parameters
    except (TypeError, ValueError):
        return unknown
    if name in params:
        return True
    named = [p for p in params.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return False if named else unknown


def _probe_inputs(model: PreTrainedModel, ids: list[int]) -> dict:
    """Inputs for a decoder step over `ids`: decoder-only `input_ids`; encoder-decoder `decoder_input_ids`
    over a stand-in encoder output (zeros), so models whose encoder takes features or pixels probe alike."""
    dev, cfg = execution_device(model), model.config
    t = torch.tensor([ids], device=dev)
    if not cfg.is_encoder_decoder:
        return {"input_ids": t}
    d = getattr(cfg, "d_model", None) or getattr(cfg, "hidden_size", None)
    enc = BaseModelOutput(last_hidden_state=torch.zeros(1, 2, int(d), device=dev, dtype=model.dtype))
    return {"decoder_input_ids": t, "encoder_outputs": enc}


def _probe_tokens(model: PreTrainedModel, n: int) -> list[int]:
    vocab = int(model.config.get_text_config().vocab_size)
    return [(7 * i + 3) % max(vocab - 3, 1) + 3 for i in range(1, n + 1)]


NON_FINITE = "gives non-finite logits (NaN or inf) on a probe forward over 4 tokens"


NOT_FILLED = "has no KV cache (given one as `cache` or `past_key_values`, its forward does not fill it)"


NOT_CONTINUED = (
    "does not continue from its KV cache as from one pass (4 tokens through the cache as 2 + 2 or "
    "2 + 1 + 1 give other logits than 4 at once), so a multi-token verify pass would differ from its "
    "own decoding"
)


@torch.no_grad()
def _probe_cache_arg(model: PreTrainedModel) -> tuple[str | None, str]:
    """The keyword under which the forward keeps a KV cache we pass and continues from it, as the engine
    uses it: per name tried, 4 tokens fed through a fresh cache at once, as 2 + 2 (a verify pass) and as
    2 + 1 + 1 (draft steps) must fill it and give the same last logits. Deprecation warnings are caught: a
    name that warns is used only when no other works. Returns (keyword or None, why None)."""
    t, fallback, ran, problem = _probe_tokens(model, 4), None, False, NOT_FILLED
    for name in CACHE_ARGS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outs, filled = [], True
                for i, cuts in enumerate(((0, 4), (0, 2, 4), (0, 2, 3, 4))):
                    cache = caches.new_cache(model)
                    for a, b in zip(cuts, cuts[1:]):
                        out = model(**_probe_inputs(model, t[a:b]), use_cache=True, **{name: cache})
                        ran = ran or i == 0
                    filled = filled and _cached_tokens(cache) == 4
                    outs.append(out.logits[0, -1].float())
            except Exception:  # noqa: BLE001 - a keyword the forward rejects, or a cache it cannot continue from
                if outs and filled:  # it kept 4 tokens at once, then failed to continue in pieces
                    problem = NOT_CONTINUED
                continue
        if not filled:
            continue
        if not all(_finite(o) for o in outs):
            return None, NON_FINITE
        if not all(_close(outs[0], o, model.dtype) for o in outs[1:]):
            problem = NOT_CONTINUED
            continue
        if not any(
            issubclass(w.category, (FutureWarning, DeprecationWarning)) and name in str(w.message) for w in caught
        ):
            return name, ""
        fallback = fallback or name
    if not ran:  # the probe's inputs do not fit this model at all: trust its signature
        fallback = next((n for n in CACHE_ARGS if _accepts(model, n, False)), None)
    return fallback, "" if fallback else problem


def _cached_tokens(cache) -> int:
    try:
        return int(cache.get_seq_length())
    except Exception:  # noqa: BLE001 - a cache of layers without a length (the model wrote no KV into it)
        return 0


@torch.no_grad()
def _probe_positions(model: PreTrainedModel) -> bool:
    """Decoder-only models: per-row `position_ids` go in where transformers' generate passes them, i.e. the
    forward (a PEFT model's base model's; `functools.wraps` wrappers followed) names them. A forward whose
    signature names another argument but not this one gets none, as in transformers (WhisperForCausalLM
    numbers tokens by cache slot, padding included, so it is decoded row by row with its padding). A
    forward that names nothing (a plain `def forward(*args, **kwargs)` wrapper) is probed: positions go in
    when moving one token's position changes the logits."""
    if model.config.is_encoder_decoder:
        return False
    said = _accepts(model, "position_ids", None)
    if said is not None:
        return said
    t = _probe_tokens(model, 3)
    try:
        a, b = (
            model(
                **_probe_inputs(model, t),
                position_ids=torch.tensor([p], device=execution_device(model)),
                use_cache=False,
            )
            .logits[0, -1]
            .float()
            for p in ([0, 1, 2], [0, 1, 5])
        )
    except Exception:  # noqa: BLE001 - rejects the argument
        return False
    return not torch.equal(a, b)


@torch.no_grad()
def _probe_logits_to_keep(model: PreTrainedModel) -> bool:
    """The forward computes only the last positions' logits when asked: said by its signature, or for one
    that names nothing, seen in the shape of a 2-token forward's logits with `logits_to_keep=1`."""
    said = _accepts(model, "logits_to_keep", None)
    if said is not None:
        return said
    try:
        return (
            model(**_probe_inputs(model, _probe_tokens(model, 2)), logits_to_keep=1, use_cache=False).logits.shape[1]
            == 1
        )
    except Exception:  # noqa: BLE001 - rejects the argument
        return False

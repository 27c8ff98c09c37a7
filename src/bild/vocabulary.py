"""Pruned draft vocabulary (FR-Spec, Zhao et al., ACL 2025): the small model's head over a subset of tokens.

A draft's LM head over a large vocabulary can cost more than its decoder layers (SmolLM2: 49,152 x 576
multiply-adds per token, ~8 of its layers). `prune_draft_vocabulary` replaces the head by a Linear over the
most frequent tokens and records the map in `model.config`; the engine (`bild.adapters.ModelAdapter`)
scatters the narrow logits into a full-width row (`widen_logits`) whose other entries are `OUTSIDE`, so the
draft's probabilities outside the subset are 0. Verification reads the large model over the full vocabulary:
exact decoding stays exact.

    bild.prune_draft_vocabulary(small, token_ids)            # in place; returns `small`
    small.save_pretrained(path)                              # the map goes into config.json
    small = bild.load_draft(path)                            # from_pretrained + the narrow head again
"""

from __future__ import annotations

import operator
import re

import torch
from torch import nn

from . import timing
from .bild_warnings import moved_names

CONFIG_KEY = "bild_draft_vocabulary"  # config entry: {"token_ids": [...], "vocab_size": V, "head": "lm_head"}
# logit of the tokens outside the subset: exp(OUTSIDE - max) is 0 in float32, as for -inf, but a row stays finite
# after a temperature or repetition penalty, so logits processors that ban every subset token (a forced token
# outside it) leave the draft a uniform choice among the others instead of an all -inf row (NaN probabilities);
# verification judges any draft distribution exactly
OUTSIDE = -1e30


def draft_vocabulary(model) -> tuple[list[int], int] | None:
    """(token_ids, full vocabulary size) recorded by `prune_draft_vocabulary`, or None (a full head)."""
    entry = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    if not entry:
        return None
    return [int(i) for i in entry["token_ids"]], int(entry["vocab_size"])


def token_index(model, device) -> tuple[torch.Tensor, int] | None:
    """(token ids [V_sub] on `device`, V) of a pruned head, for `widen_logits`; None for a full head. Cached on
    the model (the engine asks on every call)."""
    entry = getattr(model.config, CONFIG_KEY, None)
    if not entry:
        return None
    cached = model.__dict__.get("_bild_token_index")
    if cached is None or cached[0] is not entry or cached[1].device != torch.device(device):
        cached = (entry, torch.tensor(entry["token_ids"], device=device), int(entry["vocab_size"]))
        model.__dict__["_bild_token_index"] = cached
    return cached[1], cached[2]


def _check_ids(token_ids, width: int) -> list[int]:
    """Sorted distinct ids in [0, width); ValueError naming `token_ids` otherwise."""
    if isinstance(token_ids, torch.Tensor):
        token_ids = token_ids.flatten().tolist()
    try:
        token_ids = list(token_ids)
        ids = sorted({operator.index(i) for i in token_ids})  # ints (numpy's too), not floats or strings
    except TypeError:
        raise ValueError(f"`token_ids` must be integer token ids, got {token_ids!r:.80}") from None
    if any(isinstance(i, bool) for i in token_ids):
        raise ValueError("`token_ids` must be integer token ids, got booleans")
    if not ids:
        raise ValueError("`token_ids` is empty: the draft needs at least one token")
    if ids[0] < 0 or ids[-1] >= width:
        raise ValueError(f"`token_ids` must lie in [0, {width}) (the head's width), got {ids[0]}..{ids[-1]}")
    return ids


class DraftHead(nn.Module):
    """A pruned output head: `rows`, a Linear d -> V_sub. Saved as `<head>.rows.weight`, so a checkpoint never
    holds a `<head>.weight` of the wrong shape (transformers refuses those, and ties a missing one)."""

    def __init__(self, rows: nn.Linear):
        super().__init__()
        self.rows = rows

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., V_sub]."""
        return self.rows(hidden)

    weight = property(lambda self: self.rows.weight)  # what code reading a head's Linear looks for
    bias = property(lambda self: self.rows.bias)
    in_features = property(lambda self: self.rows.in_features)
    out_features = property(lambda self: self.rows.out_features)


def prune_draft_vocabulary(model, token_ids):
    """Replace `model`'s output head [V, d] by a `DraftHead` [len(token_ids), d] over `token_ids` (rows copied,
    bias too), in place, and record the map in `model.config` so that `save_pretrained` keeps it.

    `token_ids`: token ids (list, range or tensor; sorted and deduplicated here) in [0, V). The head is untied
    from the input embeddings (a copy of its rows; the input embeddings keep all V rows); the map is
    `config.bild_draft_vocabulary` = {"token_ids", "vocab_size", "head"}. Pruning a pruned model again takes a
    subset of its tokens. Reload with `load_draft`. Returns `model`.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, (nn.Linear, DraftHead)):
        raise ValueError(f"`model` ({type(model).__name__}) has no nn.Linear output head to prune")
    known = draft_vocabulary(model)
    full = known[1] if known else head.out_features
    ids = _check_ids(token_ids, full)
    rows = _rows_of(ids, known[0] if known else None)
    _set_head(model, _linear(head.weight[rows], None if head.bias is None else head.bias[rows]), ids, full)
    return model


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> DraftHead:
    """A DraftHead holding copies of `weight` [V_sub, d] and `bias` [V_sub]."""
    rows = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        rows.weight.copy_(weight)
        if bias is not None:
            rows.bias.copy_(bias)
    return DraftHead(rows)


def _rows_of(ids: list[int], current: list[int] | None) -> torch.Tensor:
    """Rows of the current head that hold `ids` (the ids themselves for a full head)."""
    if current is None:
        return torch.tensor(ids)
    where = {t: r for r, t in enumerate(current)}
    missing = [t for t in ids if t not in where]
    if missing:
        raise ValueError(
            f"`token_ids` holds {len(missing)} tokens the pruned head lacks (e.g. {missing[:5]}): "
            "a pruned head can only be pruned further"
        )
    return torch.tensor([where[t] for t in ids])


def _set_head(model, head: DraftHead, ids: list[int], full: int) -> None:
    name = _head_name(model)
    _untie(model, name)
    model.set_output_embeddings(head)
    setattr(model.config, CONFIG_KEY, {"token_ids": ids, "vocab_size": full, "head": name})
    model.__dict__.pop("_bild_compute_params", None)  # the cost prior counts the head's size
    timing.forget(model)  # times learned with the full head no longer apply


def _head_name(model) -> str:
    head = model.get_output_embeddings()
    return next(n for n, m in model.named_modules() if m is head)


def _untie(model, name: str) -> None:
    """Stop transformers tying the head to the input embeddings, for this model only: its tie map without the
    head (`tie_weights()` reads `_tied_weights_keys`). `config.tie_word_embeddings` is left alone: T5 reads
    it on load to decide whether to scale its decoder output, and ties its encoder's embeddings by it."""
    key = f"{name}.weight"
    for attr in ("_tied_weights_keys", "all_tied_weights_keys"):
        tied = getattr(model, attr, None)
        if tied:
            setattr(model, attr, {k: v for k, v in tied.items() if not re.fullmatch(k, key)})


def widen_logits(logits: torch.Tensor, index: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """logits [..., V_sub] over the token ids `index` [V_sub] -> [..., vocab_size], `OUTSIDE` elsewhere."""
    full = logits.new_full((*logits.shape[:-1], vocab_size), OUTSIDE)
    return full.index_copy_(-1, index, logits)


# names of 0.12 that moved to a module above this one (`bild_warnings.moved_names`)
_MOVED = {"load_draft": "drafts", "_saved_tensors": "drafts"}
__getattr__ = moved_names(__name__, _MOVED)

"""Feature drafts (EAGLE, Li et al., ICML 2024): a one-layer draft that reads the large model's features.

A token-level small model must guess the large model's next token from tokens alone. A feature draft also
reads the large model's last hidden state h (after its final norm, what its LM head reads) at the position
before: at position p its input is fc([embed(x_p); h_{p-1}]), one decoder layer and a norm give a predicted
feature h'_p, and the head (the large model's, or a pruned subset of its rows) gives the draft's next token.
While drafting, h_{p-1} is the draft's own h'_{p-1}; for committed tokens it is the large model's feature,
recorded by a forward hook during the large model's prefill and verify passes. Verification is unchanged:
exact decoding stays exact whatever the draft proposes.

    draft = FeatureDraft.from_large(large)          # untrained: fc, one layer (a copy of the large model's
    ...train (bild.pairs.feature_training)...       # last), norm and head; embeddings shared by value
    BiLDGenerator(draft, large).generate(...)       # the engine binds the draft to the large model per call

`FeatureDraft` is a `LlamaForCausalLM` (one layer), so the engine drives its cache like any small model's.
Supported large models: decoder-only, taking `position_ids` (features are stored by position), with a base
model returning `last_hidden_state`; `num_drafts` = 1. Anything else is refused with a ValueError.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .devices import to_device
from .probes import capabilities
from .vocabulary import CONFIG_KEY as VOCAB_KEY
from .vocabulary import draft_vocabulary, prune_draft_vocabulary

CONFIG_KEY = "bild_feature_draft"  # config entry: {"large_hidden_size": d}
# the cache keyword of the installed transformers' LlamaModel (5.24 renamed `past_key_values` to `cache`)
_INNER_CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def is_feature_draft(model) -> bool:
    return isinstance(model, FeatureDraft)


class FeatureStore:
    """The large model's features by (row, position) during one call: `h` [B, capacity, d]. A forward hook
    on the large model's base model writes the feature of every real (unmasked) token the engine's passes feed
    it; the large adapter's `n_valid[r]` (host: the tokens its cache holds, all committed) says which positions
    hold features of committed tokens (a verify pass also writes its rejected drafts' positions, past it)."""

    def __init__(self, large_adapter):
        self.large = large_adapter
        self.h: torch.Tensor | None = None
        base = large_adapter.model.base_model
        self.handle = base.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs, output) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is None or cache is not self.large.cache:
            return  # not the engine's pass (a probe of the model's layout runs on its own cache)
        h = getattr(output, "last_hidden_state", None)
        pos, mask = kwargs.get("position_ids"), kwargs.get("attention_mask")
        if h is None or pos is None:
            raise RuntimeError(
                "the large model's base model gave no `last_hidden_state` / took no "
                "`position_ids`: a feature draft cannot read it"
            )
        B, n, d = h.shape
        cap = max(self.large.n_valid) + 1  # host: positions the large cache holds after this forward
        if self.h is None or self.h.shape[0] != B or self.h.shape[1] < cap + 1:
            old, self.h = self.h, h.new_zeros(B, 2 * cap + 16, d)
            if old is not None and old.shape[0] == B:
                self.h[:, : old.shape[1]] = old
        valid = torch.ones(B, n, dtype=torch.bool, device=h.device) if mask is None else mask[:, -n:].bool()
        idx = torch.where(valid, pos, self.h.shape[1] - 1)  # masked slots write the scratch slot at the end
        self.h.scatter_(1, idx[..., None].expand(B, n, d), h.detach().to(self.h.dtype))

    def lookup(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [B, n] positions -> (features [B, n, d], known [B, n]: q is a position the large cache holds)."""
        held = to_device(self.large.n_valid, q.device)[:, None]  # host -> device, no sync
        known = (q >= 0) & (q < held)
        if self.h is None:
            return None, known & False
        idx = q.clamp(0, self.h.shape[1] - 1)
        return self.h.gather(1, idx[..., None].expand(*q.shape, self.h.shape[-1])), known

    def close(self) -> None:
        self.handle.remove()


class FeatureDraft(LlamaForCausalLM):
    """Llama decoder layer(s) over fc([embed(x_p); h_{p-1}]) (one from `from_large`, a token draft's from
    `from_draft`). Input embeddings and (unless pruned) the head
    are copies of the large model's. Outside a bound call (training, probes) it reads the features passed as
    `features` [B, n, d] (h_{p-1} for each fed token), or zeros."""

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        d = config.hidden_size
        self.fc = nn.Linear(2 * d, d, bias=False)
        self.store: FeatureStore | None = None
        self._own = None  # the engine's adapter of this draft, while bound
        self._last_h: torch.Tensor | None = None  # [B, d] own output at each row's last real fed position
        self._last_pos: torch.Tensor | None = None  # [B]

    @classmethod
    def _shaped_like(cls, config, dtype) -> FeatureDraft:
        """An untrained FeatureDraft of `config` (a Llama config dict) with an untied head."""
        cfg = LlamaConfig.from_dict(config)
        cfg.tie_word_embeddings, cfg.architectures = False, ["FeatureDraft"]
        setattr(cfg, CONFIG_KEY, {"large_hidden_size": cfg.hidden_size})
        return cls(cfg).to(dtype)

    @torch.no_grad()
    def _read_tokens_only(self) -> FeatureDraft:
        """fc = [I, 0]: the draft reads the token embedding alone (h enters at zero weight)."""
        d = self.config.hidden_size
        self.fc.weight.zero_()
        self.fc.weight[:, :d] = torch.eye(d)
        return self

    @classmethod
    def from_large(cls, large, layer: int = -1) -> FeatureDraft:
        """An untrained one-layer draft shaped after `large` (a Llama-like decoder-only model): its input
        embeddings, head and final norm copied, its decoder layer a copy of the large model's layer `layer`, and
        fc reading the token embedding only."""
        if large.config.model_type != "llama":
            raise ValueError(f"FeatureDraft.from_large copies a Llama layer; `large` is {large.config.model_type!r}")
        draft = cls._shaped_like({**large.config.to_dict(), "num_hidden_layers": 1}, large.dtype)
        with torch.no_grad():
            draft.model.embed_tokens.weight.copy_(large.get_input_embeddings().weight)
            draft.lm_head.weight.copy_(large.get_output_embeddings().weight)
            draft.model.layers[0].load_state_dict(large.base_model.layers[layer].state_dict())
            draft.model.norm.load_state_dict(large.base_model.norm.state_dict())
        return draft._read_tokens_only()

    @classmethod
    def from_draft(cls, small) -> FeatureDraft:
        """A feature draft that starts as `small` (a Llama token draft of the large model's width, pruned head
        included): its layers, norm, head and embeddings, with fc reading the token embedding only, so it
        drafts exactly as `small` until trained to read the features."""
        if small.config.model_type != "llama":
            raise ValueError(f"FeatureDraft.from_draft takes a Llama draft; `small` is {small.config.model_type!r}")
        draft = cls._shaped_like({k: v for k, v in small.config.to_dict().items() if k != VOCAB_KEY}, small.dtype)
        vocab = draft_vocabulary(small)
        if vocab is not None:
            prune_draft_vocabulary(draft, vocab[0])
        state = small.state_dict()
        if "lm_head.weight" in draft.state_dict() and "lm_head.weight" not in state:  # tied: the embeddings
            state = {**state, "lm_head.weight": small.get_input_embeddings().weight}
        missing, unexpected = draft.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"fc.weight"}:
            raise ValueError(f"`small` does not fit a FeatureDraft: missing {missing}, unexpected {unexpected}")
        return draft._read_tokens_only()

    # -- binding to a large model for one call -------------------------------------------------------
    def bind(self, large_adapter, own_adapter) -> None:
        """For one call: read the features of `large_adapter`'s passes, in the passes `own_adapter` makes (a
        probe of this model, on its own cache, reads zeros). One call at a time: RuntimeError while bound."""
        if self.store is not None:
            raise RuntimeError(
                "this FeatureDraft is already decoding another call (another thread or an "
                "unfinished generator): a FeatureDraft serves one call at a time"
            )
        self.store, self._own = FeatureStore(large_adapter), own_adapter
        self._last_h = self._last_pos = None

    def unbind(self) -> None:
        if self.store is not None:
            self.store.close()
        self.store = self._own = self._last_h = self._last_pos = None

    # -- forward -------------------------------------------------------------------------------------
    def _previous(self, pos: torch.Tensor, emb: torch.Tensor, bound: bool) -> torch.Tensor:
        """h_{p-1} for each fed position p [B, n]: the large model's feature where its cache holds p - 1, else
        the draft's own output at p - 1 (its last step), else zeros."""
        q = pos - 1
        h = emb.new_zeros(emb.shape)
        if not bound:  # a plain forward or a probe: zeros, so any split of a pass agrees
            return h
        if self._last_h is not None and self._last_h.shape[0] == pos.shape[0]:
            own = (q == self._last_pos[:, None])[..., None]
            h = torch.where(own, self._last_h[:, None].to(h.dtype), h)
        feats, known = self.store.lookup(q)
        if feats is not None:
            h = torch.where(known[..., None], feats.to(h.dtype), h)
        return h

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        past_key_values=None,
        features=None,
        logits_to_keep=0,
        **kwargs,
    ):
        """input_ids [B, n]; features [B, n, d] (h_{p-1} per token; None: bound or own features, see
        `_previous`). Returns logits [B, keep, V_head] and the predicted features as `hidden_states[0]`."""
        B, n = input_ids.shape
        emb = self.model.embed_tokens(input_ids)
        past = cache if cache is not None else past_key_values
        if past is not None:
            kwargs[_INNER_CACHE_ARG] = past
        if position_ids is None:
            start = past.get_seq_length() if past is not None else 0
            position_ids = torch.arange(start, start + n, device=input_ids.device)[None].expand(B, n)
        real = (
            torch.ones(B, n, dtype=torch.bool, device=input_ids.device)
            if attention_mask is None
            else attention_mask[:, -n:].bool()
        )
        bound = features is None and self.store is not None and past is not None and past is self._own.cache
        prev = features.to(emb.dtype) if features is not None else self._previous(position_ids, emb, bound)
        x = self.fc(torch.cat([emb, prev], -1))
        out = self.model(inputs_embeds=x, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        h = out.last_hidden_state  # the predicted features h'_p
        if bound:  # each row's last real output (on the device: no read)
            last = (real.long() * torch.arange(1, n + 1, device=h.device)).argmax(-1)  # [B]
            rows = torch.arange(B, device=h.device)
            keep_old = ~real.any(-1)
            new_h, new_pos = h[rows, last].detach(), position_ids[rows, last]
            if self._last_h is not None and self._last_h.shape[0] == B:
                new_h = torch.where(keep_old[:, None], self._last_h, new_h)
                new_pos = torch.where(keep_old, self._last_pos, new_pos)
            self._last_h, self._last_pos = new_h, new_pos
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) and logits_to_keep else slice(None)
        logits = self.lm_head(h[:, keep])
        return CausalLMOutputWithPast(logits=logits, hidden_states=(h,))  # the cache: the one passed in


def wrapped_feature_draft(model) -> bool:
    """A FeatureDraft inside a wrapper (torch.compile's OptimizedModule, a PEFT model): the engine would not see
    it as one."""
    inner = getattr(model, "_orig_mod", None)
    if inner is None and hasattr(model, "get_base_model"):
        inner = model.get_base_model()
    return inner is not None and inner is not model and is_feature_draft(inner)


def check_feature_pair(draft, large, num_drafts: int = 1) -> None:
    """ValueError unless the engine can bind `draft` (a FeatureDraft) to `large`: a decoder-only large model
    taking `position_ids`, whose base model (where the hook sits) runs in its forward and returns features of
    the draft's width; `num_drafts` = 1."""
    name = type(large).__name__
    if large.config.is_encoder_decoder:
        raise ValueError("a FeatureDraft `small_model` needs a decoder-only `large_model`")
    if num_drafts != 1:
        raise ValueError("`num_drafts` > 1 is not supported with a FeatureDraft `small_model`")
    base = getattr(large, "base_model", None)
    if base is None or base is large:
        raise ValueError(f"`large_model` ({name}) has no base model whose features a FeatureDraft can read")
    if not capabilities(large).takes_positions:
        raise ValueError(
            f"a FeatureDraft `small_model` stores features by position; `large_model` ({name}) takes no `position_ids`"
        )
    width = large.__dict__.get("_bild_feature_width")  # the probe below runs once per large model
    if width is None:
        width = large.__dict__["_bild_feature_width"] = _probe_feature_width(large, base)
    head = large.get_output_embeddings()
    if width != draft.config.hidden_size or (head is not None and head.weight.shape[-1] != width):
        raise ValueError(
            f"the FeatureDraft reads features of width {draft.config.hidden_size}; `large_model`'s "
            f"base model gives {width} (its head reads {head.weight.shape[-1] if head is not None else '?'})"
        )


def check_small_draft(small, large, num_drafts: int = 1) -> None:
    """The feature-draft checks for a `small_model`: a wrapped FeatureDraft is refused, a FeatureDraft must fit
    `large` (`check_feature_pair`); other small models pass."""
    if wrapped_feature_draft(small):
        raise ValueError(
            "`small_model` wraps a FeatureDraft (torch.compile / PEFT): pass the FeatureDraft itself, "
            "which the engine binds to the large model"
        )
    if not is_feature_draft(small) and getattr(getattr(small, "config", None), CONFIG_KEY, None):
        raise ValueError(
            "`small_model` was saved as a FeatureDraft but loaded as "
            f"{type(small).__name__} (without its fc): load it with bild.load_draft(path)"
        )
    if is_feature_draft(small):
        check_feature_pair(small, large, num_drafts)


def _probe_feature_width(large, base) -> int:
    """One-token forward of `large` with a hook on `base`: the width of the features it returns; ValueError if
    the forward never runs `base` or it returns no `last_hidden_state` (OPT's forward calls its decoder)."""
    seen = []
    handle = base.register_forward_hook(
        lambda m, a, k, out: seen.append(getattr(out, "last_hidden_state", None)), with_kwargs=True
    )
    try:
        with torch.no_grad():
            large(
                input_ids=torch.zeros(1, 1, dtype=torch.long, device=next(large.parameters()).device),
                position_ids=torch.zeros(1, 1, dtype=torch.long, device=next(large.parameters()).device),
                use_cache=False,
            )
    finally:
        handle.remove()
    if not seen or seen[0] is None:
        raise ValueError(
            f"`large_model` ({type(large).__name__}) does not run its base model in its forward (or "
            "it returns no `last_hidden_state`): a FeatureDraft cannot read its features"
        )
    return int(seen[0].shape[-1])

"""One adapter per model: the only place that knows about model families.

The decoding loop sees every model through `ModelAdapter`: feed tokens, get logits, keep a prefix.
The adapter owns the KV cache and a per-row mask over cache slots. In a batch, rows that take fewer
tokens than others in a forward leave masked "holes" in the cache; rejected draft tokens are masked
out and, once they are at the end of every row, cropped. Nothing kept is ever recomputed.

Holes need a model that takes explicit `position_ids` and whose every cache layer is a plain
`DynamicLayer` (decoder-only Llama, GPT-2, GPT-NeoX, OPT, ...). The generator decodes the others row by
row, with each row's padding removed (`supports_holes` is False):
- encoder-decoder decoders (T5, BART, Marian): positions come from the slot index;
- no `position_ids` argument (Bloom, MPT);
- sliding-window layers (Mistral, Qwen2/3, Gemma 2/3, Phi-3, Starcoder2, Cohere2, ...) and gpt-neo's local
  attention: masked slots would use up the window; linear-attention / convolution layers (LFM2): masked
  slots would enter the state.
Models without a KV cache (openai-gpt) are refused (`check_model`).
"""
from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel


class ModelAdapter:
    """Incremental decoding over one model's cache.

    State: `mask` [B, L] bool over cache slots, `n_valid` [B] number of tokens each row holds.
    """

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.is_encoder_decoder = bool(model.config.is_encoder_decoder)
        params = inspect.signature(model.forward).parameters
        self._takes_positions = not self.is_encoder_decoder and "position_ids" in params
        self._logits_to_keep = "logits_to_keep" in params
        self.tokens_fed = 0
        self.forwards = 0

    @functools.cached_property
    def supports_holes(self) -> bool:
        """Masked cache slots are ignored exactly (see the module docstring). Asked only for batches or
        padded prompts: the first time it runs a two-forward probe on the model (cached on the model)."""
        return self._takes_positions and _plain_attention(self.model)

    # -- setup --------------------------------------------------------------------------------------
    def start(self, batch_size: int, device: torch.device, encoder_kwargs: dict | None = None) -> None:
        """Fresh cache. `encoder_kwargs` (encoder-decoder only): `encoder_outputs` and `attention_mask`."""
        cfg = self.model.config
        if self.is_encoder_decoder:
            self.cache = EncoderDecoderCache(DynamicCache(config=cfg), DynamicCache(config=cfg))
        else:
            self.cache = DynamicCache(config=cfg)
        if hasattr(self.cache, "activate_past_recording"):  # sliding-window / linear-attention layers
            self.cache.activate_past_recording()
        self.encoder_kwargs = encoder_kwargs or {}
        self.mask = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)
        self.n_valid = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.dense = True  # no masked slot anywhere: the model may skip building an attention mask

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> dict:
        """Run the encoder once (encoder-decoder models). Returns the kwargs `start` takes."""
        enc = self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return {"encoder_outputs": enc, "attention_mask": attention_mask}

    # -- the two operations the loop uses -----------------------------------------------------------
    @torch.no_grad()
    def feed(self, ids: torch.Tensor, valid: torch.Tensor, keep: int) -> torch.Tensor:
        """Append `ids` [B, n] to the cache; `valid` [B, n] marks real tokens (False = hole).

        Returns float32 logits [B, keep, V] of the last `keep` positions.
        """
        if not bool(valid.all()) and not self.supports_holes:
            raise RuntimeError("this model cannot take masked slots; run its batch row by row")
        pos = self.n_valid[:, None] + valid.long().cumsum(-1) - 1
        self.mask = torch.cat([self.mask, valid], dim=1)
        self.dense = self.dense and bool(valid.all())
        kwargs = {"past_key_values": self.cache, "use_cache": True}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = keep
        if self.is_encoder_decoder:
            kwargs.update(self.encoder_kwargs, decoder_input_ids=ids)
        else:
            kwargs.update(input_ids=ids, attention_mask=None if self.dense else self.mask.long())
            if self._takes_positions:
                kwargs["position_ids"] = pos.clamp(min=0)
        out = self.model(**kwargs)
        self.n_valid = self.n_valid + valid.sum(-1)
        self.tokens_fed += int(valid.sum())
        self.forwards += 1
        return out.logits[:, -keep:].float()

    def keep_first(self, counts: torch.Tensor) -> None:
        """Roll back: row r keeps its first `counts[r]` tokens; later slots are masked, and slots masked
        in every row at the end of the cache are cropped."""
        counts = torch.minimum(counts, self.n_valid)
        if bool((counts == self.n_valid).all()):
            return
        self.mask = self.mask & (self.mask.long().cumsum(-1) <= counts[:, None])
        self.n_valid = counts
        live = self.mask.any(0).nonzero()
        new_len = int(live[-1]) + 1 if live.numel() else 0
        drop = self.mask.shape[1] - new_len
        if drop > 0:
            self.cache.crop(-drop)
            self.mask = self.mask[:, :new_len]
        self.dense = bool(self.mask.all())


def _plain_attention(model: PreTrainedModel) -> bool:
    """Every layer a full-attention `DynamicLayer`, and masked slots inside a sequence change nothing
    (`_holes_are_ignored`): masked cache slots are then ignored exactly."""
    cfg = model.config
    layers = DynamicCache(config=cfg).layers
    if any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        return False  # sliding-window, linear-attention / convolution layers
    if "local" in (getattr(cfg, "attention_layers", None) or []):
        return False  # gpt-neo's slot-indexed local window
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return False  # a window applied through the mask on plain layers (Moshi): it counts slots
    return _holes_are_ignored(model)


@torch.no_grad()
def _holes_are_ignored(model: PreTrainedModel) -> bool:
    """Feed 4 tokens in two cached steps as the engine does, once plainly ([t1 t2], [t3 t4]) and once with
    a masked slot after t1 ([t1 _ t2], [t3 t4]) at the same positions; the last logits must agree. Some
    models take `position_ids` yet derive positions or biases from the slot index or the cache length
    (BartForCausalLM, TrOCR, Whisper's decoder, GIT, Moshi). Checked once per model."""
    cached = getattr(model, "_bild_holes_ok", None)
    if cached is not None:
        return cached
    vocab, dev = int(model.config.vocab_size), model.device
    t = [(7 * i + 3) % max(vocab - 3, 1) + 3 for i in range(1, 5)]

    def run(first, first_mask, first_pos):
        cache = DynamicCache(config=model.config)
        mask = torch.tensor([first_mask], device=dev)
        model(input_ids=torch.tensor([first], device=dev), attention_mask=mask,
              position_ids=torch.tensor([first_pos], device=dev), past_key_values=cache, use_cache=True)
        mask = torch.cat([mask, torch.ones(1, 2, dtype=mask.dtype, device=dev)], 1)
        out = model(input_ids=torch.tensor([t[2:]], device=dev), attention_mask=mask,
                    position_ids=torch.tensor([[2, 3]], device=dev), past_key_values=cache, use_cache=True)
        return out.logits[0, -1].float()
    try:
        plain = run(t[:2], [1, 1], [0, 1])
        holed = run([t[0], 0, t[1]], [1, 0, 1], [0, 1, 1])
    except Exception:  # noqa: BLE001 - a model that cannot even run this cannot take holes
        ok = False
    else:
        tol = (1e-3 if model.dtype == torch.float32 else 3e-2) * float(plain.abs().max().clamp(min=1.0))
        ok = bool(torch.allclose(plain, holed, rtol=0, atol=tol))
    model._bild_holes_ok = ok
    return ok


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


def check_model(model: PreTrainedModel, role: str) -> None:
    """Refuse, before any work, a model the engine cannot decode correctly."""
    name = type(model).__name__
    params = inspect.signature(model.forward).parameters
    if "past_key_values" not in params:
        raise ValueError(f"`{role}` ({name}) has no KV cache (its forward takes no `past_key_values`): the engine "
                         "feeds each model only the tokens it has not read, so it cannot decode this model")
    reason = _REFUSED_TYPES.get(model.config.model_type)
    if reason:
        raise ValueError(f"`{role}` ({name}) is not supported: {reason}")


def encoder_row(encoder_kwargs: dict, row: int) -> dict:
    """Encoder kwargs (`encoder_outputs`, `attention_mask`) of one row of a batch: encoder-decoder
    batches are decoded row by row over one batched encoder pass."""
    enc = encoder_kwargs["encoder_outputs"]
    sliced = type(enc)(last_hidden_state=enc.last_hidden_state[row : row + 1])
    mask = encoder_kwargs.get("attention_mask")
    return {"encoder_outputs": sliced, "attention_mask": None if mask is None else mask[row : row + 1]}


def vocab_width(model: PreTrainedModel) -> int:
    """Width of the model's logits."""
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)

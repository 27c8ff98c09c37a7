"""Checks of what the user passes, before any work: the model pair (`check_pair`, `check_widths`; each model
alone: `bild.families.check_model`), the prompt and inputs (`check_prompt`, `check_inputs`, `check_token_ids`,
`check_mask`) and the generation config (`check_generation_config`). Each refusal is a ValueError (TypeError for
a wrong type) naming the argument and what is allowed."""

from __future__ import annotations

import torch
from transformers import GenerationConfig, PreTrainedModel

from .adapters import vocab_width
from .families import check_model
from .precision import check_dtypes
from .vocabulary import draft_vocabulary


def check_pair(small: PreTrainedModel, large: PreTrainedModel) -> None:
    """The two models must share the vocabulary (the small model's head may cover a recorded subset of it) and
    special tokens."""
    if small is None:
        raise ValueError("`small_model` is required: pass the draft model, e.g. small_model=AutoModelFor...(...)")
    check_dtypes(small, large)
    if bool(small.config.is_encoder_decoder) != bool(large.config.is_encoder_decoder):
        raise ValueError("`small_model` and the large model must both be decoder-only or both encoder-decoder")
    for role, m in (("small_model", small), ("large_model", large)):
        check_model(m, role)
    check_widths(small, large)
    for name in ("eos_token_id", "pad_token_id", "decoder_start_token_id"):
        a, b = (getattr(m.generation_config, name, None) for m in (small, large))
        norm = lambda x: None if x is None else tuple(sorted(x)) if isinstance(x, (list, tuple)) else (x,)  # noqa: E731
        if a is not None and b is not None and norm(a) != norm(b):
            raise ValueError(f"the small and large models have different `{name}` ({a} vs {b})")


def check_widths(small: PreTrainedModel, large: PreTrainedModel) -> None:
    """The small model's logits cover the large model's vocabulary, or a subset of it recorded by
    `bild.prune_draft_vocabulary`; the large model's head is never pruned (verification reads all of it)."""
    if draft_vocabulary(large) is not None:
        raise ValueError(
            "the large model's head is pruned (bild.prune_draft_vocabulary): verification needs its "
            "full vocabulary; prune the small model only"
        )
    ws, wl, pruned = vocab_width(small), vocab_width(large), draft_vocabulary(small)
    if pruned is None:
        if ws != wl:
            hint = " (a narrower draft head needs its token map: bild.prune_draft_vocabulary)" if ws < wl else ""
            raise ValueError(
                f"the small and large models' logits differ in width ({ws} vs {wl}): "
                f"they must share one vocabulary{hint}"
            )
        return
    ids, full = pruned
    if full != wl or len(ids) != ws or ids[-1] >= wl:
        raise ValueError(
            f"`small_model` records a pruned vocabulary of {len(ids)} of {full} tokens, but its head "
            f"gives {ws} logits and the large model's {wl}"
            + (": load a saved pruned draft with bild.load_draft" if ws == full else "")
        )


# generation-config fields that switch transformers to a decoding the draft-verify loop does not do, or that
# need what a custom_generate callable is not given: (field, is it switched on?, why it is refused)
_REFUSED_FIELDS = (
    (
        "guidance_scale",
        lambda v: v is not None and v != 1,
        "classifier-free guidance mixes in an unconditional forward pass at every step, which the draft-verify "
        "loop does not run",
    ),
    ("penalty_alpha", lambda v: bool(v), "contrastive search is another decoding method"),
    ("dola_layers", lambda v: v is not None, "DoLa decoding contrasts the model's layers, another decoding method"),
    ("num_beam_groups", lambda v: (v or 1) > 1, "group beam search is another decoding method"),
    ("diversity_penalty", lambda v: bool(v), "it belongs to group beam search, another decoding method"),
    ("constraints", lambda v: v is not None, "constrained beam search is another decoding method"),
    ("force_words_ids", lambda v: v is not None, "constrained beam search is another decoding method"),
    ("use_mtp", lambda v: bool(v), "multi-token prediction is transformers' own assisted decoding"),
    (
        "assistant_early_exit",
        lambda v: v is not None,
        "early-exit self-speculation is transformers' own assisted decoding",
    ),
    ("is_assistant", lambda v: bool(v), "it marks the assistant's own generate inside transformers' assisted decoding"),
    ("speculation_type", lambda v: v is not None, "it selects transformers' own speculative decoding"),
    ("continuous_batching_config", lambda v: v is not None, "continuous batching is another generation path"),
    (
        "token_healing",
        lambda v: bool(v),
        "it needs `tokenizer`, which transformers does not pass to a custom_generate callable",
    ),
    (
        "stop_strings",
        lambda v: v is not None,
        "it needs `tokenizer`, which transformers does not pass to a "
        "custom_generate callable; pass `stopping_criteria=StoppingCriteriaList([StopStringCriteria(tokenizer, "
        "stop_strings)])` instead",
    ),
    (
        "cache_implementation",
        lambda v: v not in (None, "dynamic", "dynamic_full"),
        "the engine keeps its own dynamic KV caches (rolled back on rejection)",
    ),
    ("cache_config", lambda v: v is not None, "the engine keeps its own dynamic KV caches (rolled back on rejection)"),
)


def check_generation_config(
    gc: GenerationConfig, batch_size: int | None = None, streamer=None, model: PreTrainedModel | None = None
) -> None:
    """What the draft-then-verify loop cannot do (`model`: the large model, whose own generation config tells
    a default from a choice)."""
    if (gc.num_beams or 1) > 1:
        raise ValueError(
            f"`num_beams`={gc.num_beams} is not supported: BiLD decodes greedily or by sampling (num_beams=1)"
        )
    if (gc.num_return_sequences or 1) > 1:
        raise ValueError(
            f"`num_return_sequences`={gc.num_return_sequences} is not supported: repeat the prompt in the batch instead"
        )
    for name, on, why in _REFUSED_FIELDS:
        value = getattr(gc, name, None)
        if on(value):
            raise ValueError(f"`{name}`={value!r} is not supported: {why}")
    if gc.return_dict_in_generate:
        for name in ("output_attentions", "output_hidden_states"):
            if getattr(gc, name, None):
                raise ValueError(
                    f"`{name}`=True with `return_dict_in_generate` is not supported: the draft-verify "
                    "loop runs its forward passes over several tokens and rows at once and does not "
                    "collect per-step attentions or hidden states"
                )
    if getattr(gc, "prefill_chunk_size", None) and model is not None and model.config.is_encoder_decoder:
        raise ValueError(
            f"`prefill_chunk_size`={gc.prefill_chunk_size} is not supported for encoder-decoders: "
            "transformers' chunked prefill of one gives other output than its one-pass prefill on a "
            "padded encoder input, and the engine prefills in one pass"
        )
    # a model whose own config switches the cache off (MPT) decodes with one all the same: only a choice refuses
    if gc.use_cache is False and model is not None and model.generation_config.use_cache is not False:
        raise ValueError("`use_cache`=False is not supported: the engine works on both models' KV caches")
    if streamer is not None and batch_size is not None and batch_size > 1:
        raise ValueError("`streamer` supports batch size 1 only, as in transformers")


def check_token_ids(ids, name: str, model=None) -> None:
    """`ids` must be a 2-D tensor of integer token ids with at least one row and one column (transformers fails
    deep inside the forward on each of these, or takes float ids), inside `model`'s vocabulary when given."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of token ids [batch, length], got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"`{name}` must hold integer token ids (torch.long), got {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(
            f"`{name}` must be a 2-D tensor [batch, length] of token ids, got shape {list(ids.shape)}"
            + (" (add a batch dimension: ids[None])" if ids.dim() == 1 else "")
        )
    if ids.shape[0] == 0:
        raise ValueError(f"`{name}` has 0 rows (shape {list(ids.shape)}): pass at least one prompt")
    if ids.shape[1] == 0:
        raise ValueError(
            f"`{name}` has 0 tokens per row (shape {list(ids.shape)}): pass at least one token per "
            "prompt (e.g. the BOS token)"
        )
    try:
        V = getattr(model.get_input_embeddings(), "num_embeddings", None) if model is not None else None
    except (AttributeError, NotImplementedError):
        V = None
    if V is not None and bool(((ids < 0) | (ids >= V)).any()):
        raise ValueError(
            f"`{name}` holds token ids outside the model's vocabulary [0, {V}): "
            f"min {int(ids.min())}, max {int(ids.max())}"
        )


def check_mask(mask, ids, name: str = "attention_mask", ids_name: str = "input_ids") -> None:
    """A mask must be a tensor of `ids`' shape ([batch, length], 1 = token, 0 = padding)."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor [batch, length] of 0/1, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(
            f"`{name}` must have the shape of `{ids_name}`, {list(ids.shape)} (one 0/1 per token), "
            f"got {list(mask.shape)}"
        )


def check_prompt(model, inputs, kwargs: dict) -> None:
    """The prompt as the user passed it to `BiLDGenerator.generate`, before any work: token ids (the encoder's for
    an encoder-decoder whose encoder reads tokens) and masks of their shape."""
    ids = inputs if inputs is not None else kwargs.get("input_ids")
    tokens = getattr(model, "main_input_name", "input_ids") == "input_ids"
    if ids is not None and tokens:
        check_token_ids(ids, "input_ids", model)
        check_mask(kwargs.get("attention_mask"), ids)
    dec = kwargs.get("decoder_input_ids")
    if dec is not None and model.config.is_encoder_decoder:
        check_token_ids(dec, "decoder_input_ids", model.get_decoder() if hasattr(model, "get_decoder") else None)
        check_mask(kwargs.get("decoder_attention_mask"), dec, "decoder_attention_mask", "decoder_input_ids")


def check_inputs(model, input_ids, inputs_tensor, model_kwargs: dict, uses_small: bool) -> None:
    """Input forms the engine cannot take exactly, refused before any work."""
    if model_kwargs.get("inputs_embeds") is not None:
        raise ValueError(
            "`inputs_embeds` is not supported: the engine feeds token ids to both models (and the "
            "small model has its own embeddings); pass `input_ids`"
        )
    ed = model.config.is_encoder_decoder
    check_token_ids(input_ids, "decoder_input_ids" if ed else "input_ids", None if ed else model)
    if not ed:
        check_mask(model_kwargs.get("attention_mask"), input_ids)
    elif (
        getattr(model, "main_input_name", "input_ids") == "input_ids"
        and isinstance(inputs_tensor, torch.Tensor)
        and not inputs_tensor.is_floating_point()
        and not bool((inputs_tensor < 0).all())
    ):
        # (all negative: transformers' stand-in beside `encoder_outputs`)
        check_token_ids(inputs_tensor, "input_ids", model)
        check_mask(model_kwargs.get("attention_mask"), inputs_tensor)
    pos = model_kwargs.get("position_ids")
    if pos is not None and not model.config.is_encoder_decoder:
        mask = model_kwargs.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask.long()
        implied = mask.cumsum(-1) - 1
        if pos.shape != input_ids.shape:  # transformers derives them from the mask: a mask of another shape
            raise ValueError(
                f"`attention_mask` (or `position_ids`) must have the shape of `input_ids`, "
                f"{list(input_ids.shape)}, got {list(pos.shape)}"
            )
        if bool(((pos.to(implied.device) != implied) & mask.bool()).any()):
            raise ValueError(
                "`position_ids` other than those the attention mask implies are not supported: the "
                "engine numbers each row's tokens itself"
            )
    if not model.config.is_encoder_decoder:
        return
    no_input = inputs_tensor is None or (not inputs_tensor.is_floating_point() and bool((inputs_tensor < 0).all()))
    if uses_small and no_input:  # transformers fills the missing encoder input with -100
        raise ValueError(
            "`encoder_outputs` without the encoder's input is not supported: the small model encodes "
            "the input itself; pass `input_ids` (or the encoder input)"
        )
    mask = model_kwargs.get("decoder_attention_mask")
    if mask is not None and bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError("`decoder_attention_mask` is supported for left padding only (zeros, then ones, per row)")

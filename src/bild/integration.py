"""Entry used by the `custom_generate/` folder (Hub repo or local path)."""

from __future__ import annotations

from .generator import BiLDGenerator, _policy_for

_ENGINE_ARGS = (
    "fallback_threshold",
    "rollback_threshold",
    "max_small_steps",
    "verification",
    "uno_epsilon",
    "draft_schedule",
    "opt_epsilon",
    "costs",
    "num_drafts",
)
# `generate` arguments transformers passes through that mean "not used" when None
_DROP_IF_NONE = (
    "generation_config",
    "logits_processor",
    "stopping_criteria",
    "prefix_allowed_tokens_fn",
    "synced_gpus",
    "assistant_model",
    "streamer",
    "negative_prompt_ids",
    "negative_prompt_attention_mask",
)


def generate_from_hub(model, small_model=None, **kwargs):
    """`generate(model=large, **generate_arguments)` as transformers calls a loaded custom_generate."""
    engine = {k: kwargs.pop(k) for k in _ENGINE_ARGS if k in kwargs}
    for k in _DROP_IF_NONE:
        if k in kwargs and kwargs[k] is None:
            kwargs.pop(k)
    if kwargs.get("assistant_model") is not None:
        raise ValueError("`assistant_model` cannot be combined with BiLD's custom_generate: pass `small_model`")
    gen = BiLDGenerator(small_model, model, **engine)
    gen.policy = _policy_for(small_model, model, gen.options)  # keeps learning across calls, as `bild.generate`
    return gen.generate(**kwargs)

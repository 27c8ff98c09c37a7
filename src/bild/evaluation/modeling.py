"""Loading the model pair and generating one batch in each ``--mode``.

:class:`BatchGenerator` separates the three steps of a batch so that only ``generate`` is timed:
``encode`` (tokenise, move to device), ``generate`` (the model call) and ``decode`` (strip the
prompt or decoder-start token, count new tokens, detokenise). Encoder-decoder models (T5, mT5,
BART, Marian) are the main case; decoder-only pairs get left padding and the prompt is stripped.

The task prompt is ``prompt_template`` with ``{source}`` replaced by ``source_prefix + source``.
A decoder-only model whose tokenizer has a chat template (an instruct model) gets that prompt as a
user turn through ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``, as the offline
pair's :func:`bild.pairs.smollm2.chat_prompt` does, unless ``chat_template`` is off.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import EvalConfig

logger = logging.getLogger(__name__)


@dataclass
class ModelBundle:
    """The tokenizer and the models a run needs (``small`` or ``large`` may be None)."""

    tokenizer: Any
    large: Any
    small: Any
    is_encoder_decoder: bool
    device: Any


def resolve_device(cfg: EvalConfig, state: Any = None):
    """``--device auto``: the process's accelerate device when launched with several, else cuda if available."""
    import torch

    if cfg.device != "auto":
        return torch.device(cfg.device)
    if state is not None and getattr(state, "device", None) is not None and state.num_processes > 1:
        return state.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device) -> str:
    """Human-readable accelerator name, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu (x86_64)'."""
    import platform

    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{getattr(device, 'type', device)} ({platform.processor() or platform.machine()})"


def _torch_dtype(name: str):
    import torch

    return "auto" if name == "auto" else getattr(torch, name)


def _load_model(path: str, dtype: str, device):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from ..drafts import load_draft

    config = AutoConfig.from_pretrained(path)
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    # load_draft: from_pretrained, plus a pruned draft head (bild.prune_draft_vocabulary) put back
    model = load_draft(path, cls, config=config, dtype=_torch_dtype(dtype))
    return model.to(device).eval(), bool(config.is_encoder_decoder)


def load_tokenizer(cfg: EvalConfig):
    """The tokenizer of ``--tokenizer``, else of the large model, else of the small one.

    If ``--tokenizer`` cannot be loaded (e.g. a Hub id from a config file while offline with local
    models), the models' own tokenizers are tried, with a warning; the name used is stored on the
    tokenizer as ``bild_source``.
    """
    from transformers import AutoTokenizer

    candidates = [
        name
        for name in dict.fromkeys(
            (cfg.tokenizer, cfg.large if cfg.needs_large else None, cfg.small if cfg.needs_small else None)
        )
        if name
    ]
    errors = []
    for name in candidates:
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            errors.append(f"{name}: {exc}")
            continue
        if errors:
            logger.warning("tokenizer %s could not be loaded; using the one of %s", candidates[0], name)
        tokenizer.bild_source = name
        return tokenizer
    raise OSError("no tokenizer could be loaded:\n" + "\n".join(errors))


def load_models(cfg: EvalConfig, device) -> ModelBundle:
    """Load the tokenizer and whichever of the two models ``cfg.mode`` needs."""
    large = small = None
    kinds = []
    if cfg.needs_large:
        large, kind = _load_model(cfg.large, cfg.dtype, device)
        kinds.append(kind)
    if cfg.needs_small:
        small, kind = _load_model(cfg.small, cfg.dtype, device)
        kinds.append(kind)
    if len(set(kinds)) > 1:
        raise ValueError("--small and --large must both be encoder-decoder or both decoder-only models")
    if large is not None and small is not None:
        v_large, v_small = large.config.get_text_config().vocab_size, small.config.get_text_config().vocab_size
        if v_large != v_small:
            logger.warning(
                "small and large vocabularies differ (%d vs %d); they must share a tokenizer", v_small, v_large
            )
    tokenizer = load_tokenizer(cfg)
    is_encoder_decoder = kinds[0]
    if not is_encoder_decoder:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return ModelBundle(tokenizer, large, small, is_encoder_decoder, device)


def task_prompt(cfg: EvalConfig, source: str) -> str:
    """``prompt_template`` with ``{source}`` replaced by ``source_prefix + source``."""
    return cfg.prompt_template.replace("{source}", cfg.source_prefix + source)


def uses_chat_template(cfg: EvalConfig, tokenizer: Any, is_encoder_decoder: bool) -> bool:
    """Whether prompts go through the tokenizer's chat template: on, decoder-only, and it has one."""
    return bool(cfg.chat_template and not is_encoder_decoder and getattr(tokenizer, "chat_template", None))


def _truncate_tokens(tokenizer: Any, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def count_new_tokens(generated, eos_token_ids: Sequence[int]) -> list[int]:
    """Tokens generated per row: up to and including the first EOS, else the whole row.

    ``generated`` holds only the new part (no prompt, no decoder-start token); padding after an
    EOS is not counted.
    """
    counts = []
    eos = set(eos_token_ids)
    for row in generated.tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in eos), len(row))
        counts.append(end)
    return counts


def _eos_ids(model, tokenizer) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]


def _jsonable(value: Any) -> Any:
    """Engine statistics as plain JSON values (tensors and numpy scalars become numbers)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and value != value:  # NaN is not valid JSON
        return None
    return value


class BatchGenerator:
    """Encode, generate (greedy) and decode a batch in one of the five modes."""

    def __init__(self, cfg: EvalConfig, bundle: ModelBundle):
        self.cfg = cfg
        self.bundle = bundle
        self.engine = None
        if cfg.mode in ("bild", "exact"):
            import bild

            if not hasattr(bild, "BiLDGenerator"):
                raise RuntimeError("this bild installation has no BiLDGenerator; --mode bild/exact needs the engine")
            self.engine = bild.BiLDGenerator(
                bundle.small,
                bundle.large,
                fallback_threshold=cfg.fallback_threshold,
                rollback_threshold=cfg.rollback_threshold,
                max_small_steps=cfg.max_small_steps,
                verification="rollback" if cfg.mode == "bild" else "exact",
            )
        self.reference_model = bundle.small if cfg.mode == "small" else bundle.large
        self.eos_ids = _eos_ids(self.reference_model, bundle.tokenizer)
        self.chat_template = uses_chat_template(cfg, bundle.tokenizer, bundle.is_encoder_decoder)

    def prompts(self, sources: Sequence[str]) -> list[str]:
        """The text each model reads: the task prompt, through the chat template when it applies.

        With a chat template, ``max_source_length`` truncates the source text (in tokens) before it
        goes into the template, so the template's generation prompt is never cut off.
        """
        if not self.chat_template:
            return [task_prompt(self.cfg, s) for s in sources]
        from ..pairs.smollm2 import chat_prompt

        tok = self.bundle.tokenizer
        return [
            chat_prompt(tok, task_prompt(self.cfg, _truncate_tokens(tok, s, self.cfg.max_source_length)))
            for s in sources
        ]

    def encode(self, sources: Sequence[str]) -> dict[str, Any]:
        """Tokenise :meth:`prompts` (truncated to ``max_source_length``) onto the device.

        Chat-templated text already holds the model's special tokens, so none are added to it.
        """
        texts = self.prompts(sources)
        if self.chat_template:
            enc = self.bundle.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        else:
            enc = self.bundle.tokenizer(
                texts, truncation=True, max_length=self.cfg.max_source_length, padding=True, return_tensors="pt"
            )
        return {k: v.to(self.bundle.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def generate(self, enc: dict[str, Any]):
        """The timed model call: greedy decoding of at most ``max_target_length`` new tokens."""
        kwargs = dict(max_new_tokens=self.cfg.max_target_length, do_sample=False, num_beams=1)
        if not self.bundle.is_encoder_decoder:
            kwargs["pad_token_id"] = self.bundle.tokenizer.pad_token_id
        mode = self.cfg.mode
        if mode == "large":
            return self.bundle.large.generate(**enc, **kwargs)
        if mode == "small":
            return self.bundle.small.generate(**enc, **kwargs)
        if mode == "assisted":
            return self.bundle.large.generate(**enc, assistant_model=self.bundle.small, **kwargs)
        if self.cfg.prompt_lookup:
            kwargs["prompt_lookup_num_tokens"] = self.cfg.prompt_lookup
        return self.engine.generate(enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs)

    def decode(self, enc: dict[str, Any], sequences) -> tuple[list[str], list[int]]:
        """Predictions and new-token counts (prompt or decoder-start token removed)."""
        if hasattr(sequences, "sequences"):
            sequences = sequences.sequences
        start = 1 if self.bundle.is_encoder_decoder else enc["input_ids"].shape[1]
        generated = sequences[:, start:]
        texts = self.bundle.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [t.strip() for t in texts], count_new_tokens(generated, self.eos_ids)

    def last_stats(self) -> dict[str, Any] | None:
        """The engine's statistics for the last batch (bild/exact), else None."""
        if self.engine is None:
            return None
        stats = self.engine.stats
        return _jsonable(stats.as_dict() if hasattr(stats, "as_dict") else dict(vars(stats)))

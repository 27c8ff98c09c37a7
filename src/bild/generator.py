"""Public entry points: `BiLDGenerator` and the `custom_generate` callable `generate`.

Both go through `large_model.generate`, so transformers prepares everything it normally does
(generation config, logits processors, stopping criteria, special tokens, the encoder pass);
`generate` below is then called in place of transformers' decoding loop.
"""
from __future__ import annotations

import copy
import math

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation.utils import GenerateDecoderOnlyOutput, GenerateEncoderDecoderOutput

from .adapters import ModelAdapter, encoder_row, vocab_width
from .decoding import DecodeOptions, DraftVerifyLoop
from .stats import GenerationStats

VERIFICATIONS = ("rollback", "exact")
DRAFT_SCHEDULES = ("constant", "heuristic")


def check_options(fallback_threshold, rollback_threshold, max_small_steps, verification="rollback",
                  uno_epsilon=0.0, draft_schedule="constant") -> DecodeOptions:
    """Validate the engine's own arguments; raise ValueError naming the argument and what is allowed."""
    def number(name, x):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
            raise ValueError(f"`{name}` must be a number, got {x!r}")
    number("fallback_threshold", fallback_threshold)
    if not 0.0 <= fallback_threshold <= 1.0:
        raise ValueError(f"`fallback_threshold` must be in [0, 1], got {fallback_threshold}")
    number("rollback_threshold", rollback_threshold)
    if rollback_threshold < 0:
        raise ValueError(f"`rollback_threshold` must be >= 0 or float('inf'), got {rollback_threshold}")
    if isinstance(max_small_steps, bool) or not isinstance(max_small_steps, int) or max_small_steps < 1:
        raise ValueError(f"`max_small_steps` must be an integer >= 1, got {max_small_steps!r}")
    if verification not in VERIFICATIONS:
        raise ValueError(f"`verification` must be one of {VERIFICATIONS}, got {verification!r}")
    number("uno_epsilon", uno_epsilon)
    if uno_epsilon < 0:
        raise ValueError(f"`uno_epsilon` must be >= 0, got {uno_epsilon}")
    if uno_epsilon > 0 and verification != "exact":
        raise ValueError("`uno_epsilon` > 0 needs verification='exact' (Decoding-UNO relaxes the exact check)")
    if draft_schedule not in DRAFT_SCHEDULES:
        raise ValueError(f"`draft_schedule` must be one of {DRAFT_SCHEDULES}, got {draft_schedule!r}")
    return DecodeOptions(float(fallback_threshold), float(rollback_threshold), max_small_steps, verification,
                         float(uno_epsilon), draft_schedule)


def check_pair(small: PreTrainedModel, large: PreTrainedModel) -> None:
    """The two models must share the vocabulary and special tokens."""
    if small is None:
        raise ValueError("`small_model` is required: pass the draft model, e.g. small_model=AutoModelFor...(...)")
    if bool(small.config.is_encoder_decoder) != bool(large.config.is_encoder_decoder):
        raise ValueError("`small_model` and the large model must both be decoder-only or both encoder-decoder")
    for role, m in (("small_model", small), ("large_model", large)):
        if getattr(m, "_is_stateful", False) or not m._supports_default_dynamic_cache():
            raise ValueError(f"`{role}` ({type(m).__name__}) keeps a recurrent or custom cache that cannot be "
                             "cropped on rollback; use a model with a standard KV cache")
    ws, wl = vocab_width(small), vocab_width(large)
    if ws != wl:
        raise ValueError(f"the small and large models' logits differ in width ({ws} vs {wl}): "
                         "they must share one vocabulary")
    for name in ("eos_token_id", "pad_token_id", "decoder_start_token_id"):
        a, b = (getattr(m.generation_config, name, None) for m in (small, large))
        norm = lambda x: None if x is None else tuple(sorted(x)) if isinstance(x, (list, tuple)) else (x,)  # noqa: E731
        if a is not None and b is not None and norm(a) != norm(b):
            raise ValueError(f"the small and large models have different `{name}` ({a} vs {b})")


def check_generation_config(gc: GenerationConfig, batch_size: int | None = None, streamer=None) -> None:
    """What the draft-then-verify loop cannot do."""
    if (gc.num_beams or 1) > 1:
        raise ValueError(f"`num_beams`={gc.num_beams} is not supported: BiLD decodes greedily or by sampling "
                         "(num_beams=1)")
    if (gc.num_return_sequences or 1) > 1:
        raise ValueError(f"`num_return_sequences`={gc.num_return_sequences} is not supported: repeat the "
                         "prompt in the batch instead")
    if gc.use_cache is False:
        raise ValueError("`use_cache`=False is not supported: the engine works on both models' KV caches")
    if streamer is not None and batch_size is not None and batch_size > 1:
        raise ValueError("`streamer` supports batch size 1 only, as in transformers")


def generate(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
             small_model=None, fallback_threshold: float = 0.6, rollback_threshold: float = 5.0,
             max_small_steps: int = 10, verification: str = "rollback", uno_epsilon: float = 0.0,
             draft_schedule: str = "constant", inputs_tensor=None, bild_streamer=None, bild_stats=None,
             **model_kwargs):
    """Draft-then-verify decoding as a transformers `custom_generate` callable.

    ``large.generate(ids, custom_generate=bild.generate, small_model=small, fallback_threshold=0.6, ...)``

    transformers calls this with its prepared `input_ids` (decoder start ids for encoder-decoder
    models), logits processors, stopping criteria and generation config. Pass `bild_stats=GenerationStats()`
    to read the counters back. transformers does not forward `streamer` to custom callables; use
    `BiLDGenerator.generate` (or `bild_streamer=`) to stream.
    """
    opts = check_options(fallback_threshold, rollback_threshold, max_small_steps, verification, uno_epsilon,
                         draft_schedule)
    check_pair(small_model, model)
    gc = generation_config
    check_generation_config(gc, input_ids.shape[0], bild_streamer)
    stats = bild_stats if bild_stats is not None else GenerationStats()
    stats.__dict__.update(GenerationStats().__dict__)  # reset in place: callers hold this object
    max_new = gc.max_length - input_ids.shape[1]
    if bild_streamer is not None:
        bild_streamer.put(input_ids.cpu())
    small, large = ModelAdapter(small_model), ModelAdapter(model)
    attention_mask = model_kwargs.get("attention_mask")
    enc = None
    if large.is_encoder_decoder:
        enc_large = {"encoder_outputs": model_kwargs["encoder_outputs"], "attention_mask": attention_mask}
        enc_small = small.encode(inputs_tensor, attention_mask) if opts.uses_small else None
        enc = (enc_small, enc_large)
        attention_mask = None  # the decoder prompt (start ids) has no padding
    if input_ids.shape[0] > 1 and not (large.supports_holes and (small.supports_holes or not opts.uses_small)):
        # no masked cache slots for this family: decode row by row on the shared encoder outputs
        rows, sources = [], []
        for r in range(input_ids.shape[0]):
            row_enc = None if enc is None else tuple(None if e is None else encoder_row(e, r) for e in enc)
            loop = DraftVerifyLoop(small, large, opts, gc, logits_processor, stopping_criteria, None, stats)
            rows.append(loop.run(input_ids[r : r + 1], None if attention_mask is None else attention_mask[r : r + 1],
                                 max_new, row_enc))
            sources += stats.token_sources
        stats.token_sources = sources
        sequences, scores, raw = _stack_rows(rows, loop.pad)
    else:
        loop = DraftVerifyLoop(small, large, opts, gc, logits_processor, stopping_criteria, bild_streamer, stats)
        sequences, scores, raw = loop.run(input_ids, attention_mask, max_new, enc)
    stats.small_forwards, stats.large_forwards = small.forwards, large.forwards
    stats.small_tokens_fed, stats.large_tokens_fed = small.tokens_fed, large.tokens_fed
    if not gc.return_dict_in_generate:
        return sequences
    steps = sequences.shape[1] - input_ids.shape[1]
    out = dict(sequences=sequences,
               scores=_per_step(scores, steps) if gc.output_scores else None,
               logits=_per_step(raw, steps) if gc.output_logits else None)
    if large.is_encoder_decoder:
        return GenerateEncoderDecoderOutput(**out)
    return GenerateDecoderOnlyOutput(**out)


def _stack_rows(rows, pad: int):
    width = max(s.shape[1] for s, _, _ in rows)
    seqs = torch.full((len(rows), width), pad, dtype=torch.long, device=rows[0][0].device)
    for r, (s, _, _) in enumerate(rows):
        seqs[r, : s.shape[1]] = s[0]
    return seqs, [x[1][0] for x in rows], [x[2][0] for x in rows]


def _per_step(per_row: list[list[torch.Tensor]], steps: int):
    """Per-row lists of [V] scores -> tuple of `steps` tensors [B, V], as `generate` returns them
    (rows that stopped early get zeros)."""
    ref = next(x for row in per_row for x in row)
    zero = torch.zeros_like(ref)
    return tuple(torch.stack([row[t] if t < len(row) else zero for row in per_row]) for t in range(steps))


class BiLDGenerator:
    """A small and a large model of one vocabulary, decoding together.

    Args:
        small_model, large_model: `PreTrainedModel`s with a language-modelling head, both decoder-only
            or both encoder-decoder, with the same vocabulary and special tokens.
        fallback_threshold: in [0, 1]. The small model hands over to the large one when its top
            probability drops below this. 0 never falls back (fixed drafts of `max_small_steps`);
            1 means the large model writes every token (output equals `large_model.generate`).
        rollback_threshold: >= 0 or `float("inf")`. With verification="rollback", a drafted token whose
            cross-entropy -log p_large(token) exceeds this is replaced by the large model's token. inf
            never rolls back; 0 rolls back every token the large model is not certain of.
        max_small_steps: >= 1. Most tokens drafted before the large model checks them.
        verification: "rollback" (BiLD, default) or "exact" (speculative decoding: greedy output equals
            the large model's, sampling follows its distribution exactly).
        uno_epsilon: >= 0, only with "exact" and sampling: Decoding-UNO's slack (0 = lossless).
        draft_schedule: "constant" (default) or "heuristic" (grow the draft budget by 2 after a fully
            accepted draft, shrink it by 1 after a rejection, as transformers' assisted generation does).
    """

    def __init__(self, small_model: PreTrainedModel, large_model: PreTrainedModel, fallback_threshold: float = 0.6,
                 rollback_threshold: float = 5.0, max_small_steps: int = 10, verification: str = "rollback",
                 uno_epsilon: float = 0.0, draft_schedule: str = "constant"):
        self.options = check_options(fallback_threshold, rollback_threshold, max_small_steps, verification,
                                     uno_epsilon, draft_schedule)
        check_pair(small_model, large_model)
        self.small_model, self.large_model = small_model, large_model
        self.stats = GenerationStats()

    def generate(self, inputs: torch.Tensor | None = None, generation_config: GenerationConfig | None = None,
                 streamer=None, **kwargs):
        """Same arguments and return type as `large_model.generate`; `self.stats` describes the call."""
        gc = copy.deepcopy(generation_config or self.large_model.generation_config)
        gc.update(**kwargs)
        check_generation_config(gc, _batch_size(inputs, kwargs), streamer)
        o = self.options
        return self.large_model.generate(
            inputs, generation_config=generation_config, custom_generate=generate, small_model=self.small_model,
            fallback_threshold=o.fallback_threshold, rollback_threshold=o.rollback_threshold,
            max_small_steps=o.max_small_steps, verification=o.verification, uno_epsilon=o.uno_epsilon,
            draft_schedule=o.draft_schedule, bild_streamer=streamer, bild_stats=self.stats, **kwargs)


def _batch_size(inputs, kwargs) -> int | None:
    for x in (inputs, kwargs.get("input_ids"), kwargs.get("inputs_embeds")):
        if isinstance(x, torch.Tensor):
            return x.shape[0]
    return None

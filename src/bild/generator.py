"""Public entry points: `BiLDGenerator` and the `custom_generate` callable `generate`.

Both go through `large_model.generate`, so transformers prepares everything it normally does
(generation config, logits processors, stopping criteria, special tokens, the encoder pass);
`generate` below is then called in place of transformers' decoding loop.
"""
from __future__ import annotations

import copy
import math
import sys
import threading
import warnings
from collections import OrderedDict

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation.utils import GenerateDecoderOnlyOutput, GenerateEncoderDecoderOutput

import weakref

from .adapters import ModelAdapter, check_model, encoder_rows, vocab_width
from .analysis.cost_model import CostTable
from .decoding import DecodeOptions, DraftVerifyLoop
from .feature_draft import check_small_draft
from .online_costs import learned_costs, lookup_costs, prior_costs
from . import policies
from .policies import (AdaptivePolicy, DraftCosts, DraftPolicy, HeuristicPolicy, LookupPolicy, RowwisePolicy,
                       ThresholdPolicy)
from .proposers import CombinedProposer, PromptLookupProposer
from .stats import GenerationStats
from .tree import TreeLoop, check_draft_tree, check_tree_models, trees_served
from .vocabulary import draft_vocabulary

VERIFICATIONS = ("rollback", "exact", "block")
DRAFT_SCHEDULES = ("constant", "heuristic")
AUTO = "auto"
DEFAULT_ROLLBACK_THRESHOLD = 5.0  # BiLD's rule when chosen without a number


def check_options(fallback_threshold=AUTO, rollback_threshold=None, max_small_steps=AUTO, verification=None,
                  uno_epsilon=0.0, draft_schedule="constant", opt_epsilon=0.0, costs=AUTO, num_drafts=1,
                  draft_tree=None) -> DecodeOptions:
    """Validate the engine's own arguments; raise ValueError naming the argument and what is allowed.

    Defaults are lossless: `verification=None` means "exact", unless a `rollback_threshold` is given, which
    selects BiLD's rollback rule; `rollback_threshold=None` is 5.0 when the rollback rule is in force."""
    if verification is None:
        verification = "exact" if rollback_threshold is None else "rollback"
    if rollback_threshold is None:
        rollback_threshold = DEFAULT_ROLLBACK_THRESHOLD
    def number(name, x):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
            raise ValueError(f"`{name}` must be a number, got {x!r}")
    if fallback_threshold != AUTO:
        if isinstance(fallback_threshold, str):
            raise ValueError(f"`fallback_threshold` must be 'auto' or a number in [0, 1], got {fallback_threshold!r}")
        number("fallback_threshold", fallback_threshold)
        if not 0.0 <= fallback_threshold <= 1.0:
            raise ValueError(f"`fallback_threshold` must be 'auto' or in [0, 1], got {fallback_threshold}")
        fallback_threshold = float(fallback_threshold)
    number("rollback_threshold", rollback_threshold)
    if rollback_threshold < 0:
        raise ValueError(f"`rollback_threshold` must be >= 0 or float('inf'), got {rollback_threshold}")
    if max_small_steps != AUTO and (isinstance(max_small_steps, bool) or not isinstance(max_small_steps, int)
                                    or max_small_steps < 1):
        raise ValueError(f"`max_small_steps` must be 'auto' or an integer >= 1, got {max_small_steps!r}")
    if verification not in VERIFICATIONS:
        raise ValueError(f"`verification` must be one of {VERIFICATIONS}, got {verification!r}")
    for name, eps in (("uno_epsilon", uno_epsilon), ("opt_epsilon", opt_epsilon)):
        number(name, eps)
        if eps < 0:
            raise ValueError(f"`{name}` must be >= 0, got {eps}")
        if eps > 0 and verification != "exact":
            raise ValueError(f"`{name}` > 0 needs verification='exact' (it relaxes the exact check)")
    if uno_epsilon > 0 and opt_epsilon > 0:
        raise ValueError("pass one of `uno_epsilon` (Decoding-UNO) and `opt_epsilon` (Decoding-OPT), not both")
    if draft_schedule not in DRAFT_SCHEDULES:
        raise ValueError(f"`draft_schedule` must be one of {DRAFT_SCHEDULES}, got {draft_schedule!r}")
    if draft_schedule == "heuristic" and AUTO in (fallback_threshold, max_small_steps):
        raise ValueError("`draft_schedule`='heuristic' needs numbers for `fallback_threshold` and `max_small_steps` "
                         "(its budget starts at, and is capped by, max_small_steps)")
    if not (costs == AUTO or isinstance(costs, (DraftCosts, CostTable))
            or (isinstance(costs, (int, float)) and not isinstance(costs, bool) and costs > 0)):
        raise ValueError(f"`costs` must be 'auto', a cost ratio > 0 (small step / large step), a "
                         f"bild.analysis.cost_model.CostTable or a bild.policies.DraftCosts, got {costs!r}")
    if isinstance(num_drafts, bool) or not isinstance(num_drafts, int) or num_drafts < 1:
        raise ValueError(f"`num_drafts` must be an integer >= 1, got {num_drafts!r}")
    if num_drafts > 1 and verification == "block":
        raise ValueError("`num_drafts` > 1 is not supported with verification='block': block verification judges "
                         "one draft per prompt; use verification='exact' for batch speculative decoding")
    if num_drafts > 1 and verification != "exact":
        raise ValueError("`num_drafts` > 1 (batch speculative decoding) needs verification='exact'")
    if num_drafts > 1 and (uno_epsilon > 0 or opt_epsilon > 0):
        raise ValueError("`num_drafts` > 1 is lossless batch speculative decoding: it takes no `uno_epsilon` / "
                         "`opt_epsilon`")
    draft_tree = check_draft_tree(draft_tree, verification, num_drafts, uno_epsilon or opt_epsilon)
    return DecodeOptions(fallback_threshold, float(rollback_threshold), max_small_steps, verification,
                         float(uno_epsilon), draft_schedule, float(opt_epsilon), costs, num_drafts, draft_tree)


def lossy(opts: DecodeOptions) -> bool:
    """The verification rule lets a draft decision change the text: rollback, Decoding-UNO / OPT."""
    return opts.verification == "rollback" or opts.uno_epsilon > 0 or opts.opt_epsilon > 0


def make_policy(opts: DecodeOptions) -> DraftPolicy:
    """The draft policy the options ask for: adaptive when either knob is 'auto'. Under exact verification
    that is `AdaptivePolicy` (learns across calls, from learned costs: it cannot change greedy output); in
    the lossy modes `RowwisePolicy` (the same rule, per call and per row, on timing-free costs), so that
    the text is a function of the inputs there."""
    fb, steps = opts.fallback_threshold, opts.max_small_steps
    if AUTO in (fb, steps):
        cls = RowwisePolicy if lossy(opts) else AdaptivePolicy
        return cls(None if fb == AUTO else fb, None if steps == AUTO else steps)
    if opts.draft_schedule == "heuristic":
        return HeuristicPolicy(fb, steps)
    return ThresholdPolicy(fb, steps)


def resolve_costs(policy: DraftPolicy, costs, small, large, batch_size: int, prompt_len: int,
                  max_new: int) -> DraftCosts | None:
    """The policy's cost model: given, or with costs="auto" the shared online estimate for these models at this
    batch size (`bild.online_costs.learned_costs`: no forward is run for it), except for `RowwisePolicy`,
    which gets the timing-free prior at batch 1 (a row's decisions must not depend on time or batch)."""
    if not policy.needs_costs:
        return None
    if costs != AUTO:
        return given_costs(costs)
    if isinstance(policy, RowwisePolicy):
        return prior_costs(small, large, 1)
    return learned_costs(small, large, batch_size)


def given_costs(costs) -> DraftCosts:
    """`costs=` other than "auto" as `DraftCosts`: as given, from a measured table, or from a ratio."""
    if isinstance(costs, DraftCosts):
        return costs
    if isinstance(costs, CostTable):
        return DraftCosts.from_table(costs)
    return DraftCosts.from_ratio(costs)


LOOKUP_PRIOR = 0.4  # prompt lookup's acceptance before any is seen, in every position bin
DEFAULT_NGRAM = 2  # transformers' default `max_matching_ngram_size`


def check_lookup(gc: GenerationConfig, opts: DecodeOptions, has_small: bool) -> tuple[int, int] | None:
    """(prompt_lookup_num_tokens, max_matching_ngram_size) when prompt lookup is asked for, else None;
    ValueError for values or combinations the engine does not take, and when there is no drafter at all."""
    n, ngram = getattr(gc, "prompt_lookup_num_tokens", None), getattr(gc, "max_matching_ngram_size", None)
    for name, x in (("prompt_lookup_num_tokens", n), ("max_matching_ngram_size", ngram)):
        if x is not None and (isinstance(x, bool) or not isinstance(x, int) or x < 1):
            raise ValueError(f"`{name}` must be None or an integer >= 1, got {x!r}")
    if n is None:
        if not has_small:
            raise ValueError("no drafter: pass `small_model` (a draft model) and/or `prompt_lookup_num_tokens` "
                             "(prompt lookup, e.g. 10)")
        return None
    if opts.num_drafts > 1:
        raise ValueError("`num_drafts` > 1 (batch speculative decoding of M sampled drafts) cannot be combined with "
                         "`prompt_lookup_num_tokens`: prompt lookup proposes one deterministic draft per row")
    return n, ngram or DEFAULT_NGRAM


def make_lookup_policy(opts: DecodeOptions, num_tokens: int) -> DraftPolicy:
    """Prompt lookup's policy: under the adaptive policy (either knob "auto") `num_tokens` caps the draft
    length the policy picks per position; with numeric thresholds drafts are `num_tokens` long (as far as a
    match continues), as in transformers."""
    if AUTO in (opts.fallback_threshold, opts.max_small_steps):
        if lossy(opts):
            return RowwisePolicy(None, num_tokens, prior=LOOKUP_PRIOR, row_policy=LookupPolicy)
        return LookupPolicy(None, num_tokens, prior=LOOKUP_PRIOR)
    return ThresholdPolicy(0.0, num_tokens)


def resolve_lookup_costs(policy: DraftPolicy, costs, large, batch_size: int) -> DraftCosts | None:
    """Prompt lookup's costs: the verify table of the given costs (or, at "auto", the large model's learned
    one; the prior for `RowwisePolicy`) with a free draft step (`DraftCosts.for_lookup`)."""
    if not policy.needs_costs:
        return None
    if costs != AUTO:
        return given_costs(costs).for_lookup()
    if isinstance(policy, RowwisePolicy):
        return lookup_costs(large, 1, learned=False)
    return lookup_costs(large, batch_size)


def source_tokens(model, inputs_tensor, attention_mask) -> list[list[int]] | None:
    """Per row, the encoder input's tokens (padding left out) for prompt lookup; None for decoder-only
    models and non-token encoder inputs (audio features, pixels)."""
    if not model.config.is_encoder_decoder or inputs_tensor is None or inputs_tensor.is_floating_point():
        return None
    ids = inputs_tensor.tolist()
    mask = [[1] * len(r) for r in ids] if attention_mask is None else attention_mask.tolist()
    return [[t for t, m in zip(r, k) if m and t >= 0] for r, k in zip(ids, mask)]


def check_pair(small: PreTrainedModel, large: PreTrainedModel) -> None:
    """The two models must share the vocabulary (the small model's head may cover a recorded subset of it) and
    special tokens."""
    if small is None:
        raise ValueError("`small_model` is required: pass the draft model, e.g. small_model=AutoModelFor...(...)")
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
        raise ValueError("the large model's head is pruned (bild.prune_draft_vocabulary): verification needs its "
                         "full vocabulary; prune the small model only")
    ws, wl, pruned = vocab_width(small), vocab_width(large), draft_vocabulary(small)
    if pruned is None:
        if ws != wl:
            hint = (" (a narrower draft head needs its token map: bild.prune_draft_vocabulary)" if ws < wl else "")
            raise ValueError(f"the small and large models' logits differ in width ({ws} vs {wl}): "
                             f"they must share one vocabulary{hint}")
        return
    ids, full = pruned
    if full != wl or len(ids) != ws or ids[-1] >= wl:
        raise ValueError(f"`small_model` records a pruned vocabulary of {len(ids)} of {full} tokens, but its head "
                         f"gives {ws} logits and the large model's {wl}" +
                         (": load a saved pruned draft with bild.load_draft" if ws == full else ""))


# generation-config fields that switch transformers to a decoding the draft-verify loop does not do, or that
# need what a custom_generate callable is not given: (field, is it switched on?, why it is refused)
_REFUSED_FIELDS = (
    ("guidance_scale", lambda v: v is not None and v != 1,
     "classifier-free guidance mixes in an unconditional forward pass at every step, which the draft-verify "
     "loop does not run"),
    ("penalty_alpha", lambda v: bool(v), "contrastive search is another decoding method"),
    ("dola_layers", lambda v: v is not None, "DoLa decoding contrasts the model's layers, another decoding method"),
    ("num_beam_groups", lambda v: (v or 1) > 1, "group beam search is another decoding method"),
    ("diversity_penalty", lambda v: bool(v), "it belongs to group beam search, another decoding method"),
    ("constraints", lambda v: v is not None, "constrained beam search is another decoding method"),
    ("force_words_ids", lambda v: v is not None, "constrained beam search is another decoding method"),
    ("use_mtp", lambda v: bool(v), "multi-token prediction is transformers' own assisted decoding"),
    ("assistant_early_exit", lambda v: v is not None, "early-exit self-speculation is transformers' own assisted "
     "decoding"),
    ("is_assistant", lambda v: bool(v), "it marks the assistant's own generate inside transformers' assisted "
     "decoding"),
    ("speculation_type", lambda v: v is not None, "it selects transformers' own speculative decoding"),
    ("continuous_batching_config", lambda v: v is not None, "continuous batching is another generation path"),
    ("token_healing", lambda v: bool(v), "it needs `tokenizer`, which transformers does not pass to a "
     "custom_generate callable"),
    ("stop_strings", lambda v: v is not None, "it needs `tokenizer`, which transformers does not pass to a "
     "custom_generate callable; pass `stopping_criteria=StoppingCriteriaList([StopStringCriteria(tokenizer, "
     "stop_strings)])` instead"),
    ("cache_implementation", lambda v: v not in (None, "dynamic", "dynamic_full"),
     "the engine keeps its own dynamic KV caches (rolled back on rejection)"),
    ("cache_config", lambda v: v is not None, "the engine keeps its own dynamic KV caches (rolled back on rejection)"),
)


def check_generation_config(gc: GenerationConfig, batch_size: int | None = None, streamer=None,
                            model: PreTrainedModel | None = None) -> None:
    """What the draft-then-verify loop cannot do (`model`: the large model, whose own generation config tells
    a default from a choice)."""
    if (gc.num_beams or 1) > 1:
        raise ValueError(f"`num_beams`={gc.num_beams} is not supported: BiLD decodes greedily or by sampling "
                         "(num_beams=1)")
    if (gc.num_return_sequences or 1) > 1:
        raise ValueError(f"`num_return_sequences`={gc.num_return_sequences} is not supported: repeat the "
                         "prompt in the batch instead")
    for name, on, why in _REFUSED_FIELDS:
        value = getattr(gc, name, None)
        if on(value):
            raise ValueError(f"`{name}`={value!r} is not supported: {why}")
    if gc.return_dict_in_generate:
        for name in ("output_attentions", "output_hidden_states"):
            if getattr(gc, name, None):
                raise ValueError(f"`{name}`=True with `return_dict_in_generate` is not supported: the draft-verify "
                                 "loop runs its forward passes over several tokens and rows at once and does not "
                                 "collect per-step attentions or hidden states")
    if getattr(gc, "prefill_chunk_size", None) and model is not None and model.config.is_encoder_decoder:
        raise ValueError(f"`prefill_chunk_size`={gc.prefill_chunk_size} is not supported for encoder-decoders: "
                         "transformers' chunked prefill of one gives other output than its one-pass prefill on a "
                         "padded encoder input, and the engine prefills in one pass")
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
        raise ValueError(f"`{name}` must be a 2-D tensor [batch, length] of token ids, got shape {list(ids.shape)}"
                         + (" (add a batch dimension: ids[None])" if ids.dim() == 1 else ""))
    if ids.shape[0] == 0:
        raise ValueError(f"`{name}` has 0 rows (shape {list(ids.shape)}): pass at least one prompt")
    if ids.shape[1] == 0:
        raise ValueError(f"`{name}` has 0 tokens per row (shape {list(ids.shape)}): pass at least one token per "
                         "prompt (e.g. the BOS token)")
    try:
        V = getattr(model.get_input_embeddings(), "num_embeddings", None) if model is not None else None
    except (AttributeError, NotImplementedError):
        V = None
    if V is not None and bool(((ids < 0) | (ids >= V)).any()):
        raise ValueError(f"`{name}` holds token ids outside the model's vocabulary [0, {V}): "
                         f"min {int(ids.min())}, max {int(ids.max())}")


def check_mask(mask, ids, name: str = "attention_mask", ids_name: str = "input_ids") -> None:
    """A mask must be a tensor of `ids`' shape ([batch, length], 1 = token, 0 = padding)."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor [batch, length] of 0/1, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"`{name}` must have the shape of `{ids_name}`, {list(ids.shape)} (one 0/1 per token), "
                         f"got {list(mask.shape)}")


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
        raise ValueError("`inputs_embeds` is not supported: the engine feeds token ids to both models (and the "
                         "small model has its own embeddings); pass `input_ids`")
    ed = model.config.is_encoder_decoder
    check_token_ids(input_ids, "decoder_input_ids" if ed else "input_ids", None if ed else model)
    if not ed:
        check_mask(model_kwargs.get("attention_mask"), input_ids)
    elif (getattr(model, "main_input_name", "input_ids") == "input_ids" and isinstance(inputs_tensor, torch.Tensor)
          and not inputs_tensor.is_floating_point() and not bool((inputs_tensor < 0).all())):
        # (all negative: transformers' stand-in beside `encoder_outputs`)
        check_token_ids(inputs_tensor, "input_ids", model)
        check_mask(model_kwargs.get("attention_mask"), inputs_tensor)
    pos = model_kwargs.get("position_ids")
    if pos is not None and not model.config.is_encoder_decoder:
        mask = model_kwargs.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask.long()
        implied = mask.cumsum(-1) - 1
        if pos.shape != input_ids.shape:  # transformers derives them from the mask: a mask of another shape
            raise ValueError(f"`attention_mask` (or `position_ids`) must have the shape of `input_ids`, "
                             f"{list(input_ids.shape)}, got {list(pos.shape)}")
        if bool(((pos.to(implied.device) != implied) & mask.bool()).any()):
            raise ValueError("`position_ids` other than those the attention mask implies are not supported: the "
                             "engine numbers each row's tokens itself")
    if not model.config.is_encoder_decoder:
        return
    no_input = inputs_tensor is None or (not inputs_tensor.is_floating_point() and bool((inputs_tensor < 0).all()))
    if uses_small and no_input:  # transformers fills the missing encoder input with -100
        raise ValueError("`encoder_outputs` without the encoder's input is not supported: the small model encodes "
                         "the input itself; pass `input_ids` (or the encoder input)")
    mask = model_kwargs.get("decoder_attention_mask")
    if mask is not None and bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError("`decoder_attention_mask` is supported for left padding only (zeros, then ones, per row)")


# learned policies of `bild.generate` calls, per large model, then per (small model, options that shape what is
# learned), least recently used first: at most `POLICIES_PER_MODEL` per large model
_POLICIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_POLICIES_LOCK = threading.Lock()
POLICIES_PER_MODEL = 16


def _policy_for(small_model, large_model, opts: DecodeOptions, lookup: tuple[int, int] | None = None) -> DraftPolicy:
    """The shared policy of these models and options (`lookup`: prompt lookup's (num_tokens, ngram) instead of
    the small model's). Only the adaptive policy of the lossless rules learns across calls: the others (fixed
    thresholds; `RowwisePolicy` in the lossy modes) are built afresh for every call, so that nothing another
    call does can reach them."""
    fresh = make_policy(opts) if lookup is None else make_lookup_policy(opts, lookup[0])
    if not isinstance(fresh, AdaptivePolicy):
        return fresh
    key = (id(small_model), opts.fallback_threshold, opts.max_small_steps, opts.verification, opts.num_drafts,
           opts.costs == AUTO, lookup, opts.draft_tree)
    with _POLICIES_LOCK:
        per_large = _POLICIES.setdefault(large_model, OrderedDict())
        held = per_large.get(key)
        if held is not None and held[0]() is small_model:  # (not another model at a reused id)
            per_large.move_to_end(key)
            return held[1]
        per_large[key] = (weakref.ref(small_model) if small_model is not None else _none, fresh)
        while len(per_large) > POLICIES_PER_MODEL:
            per_large.popitem(last=False)
        return fresh


def _none():
    return None  # the weak reference of "no small model" (prompt lookup alone)


def _dropped_streamer():
    """The `streamer` given to transformers' `generate` that called this callable, found in its frame (transformers
    passes a custom_generate callable only the arguments its own decoding methods do not take); None elsewhere."""
    frame = sys._getframe(2)
    for _ in range(3):
        if frame is None:
            return None
        if frame.f_code.co_name == "generate" and "transformers" in frame.f_code.co_filename:
            return frame.f_locals.get("streamer")
        frame = frame.f_back
    return None


def generate(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
             small_model=None, fallback_threshold: float | str = AUTO, rollback_threshold: float | None = None,
             max_small_steps: int | str = AUTO, verification: str | None = None, uno_epsilon: float = 0.0,
             draft_schedule: str = "constant", opt_epsilon: float = 0.0, costs=AUTO, num_drafts: int = 1,
             draft_tree: int | str | None = None, inputs_tensor=None,
             bild_streamer=None, bild_stats=None, bild_policy=None, bild_lookup_policy=None, **model_kwargs):
    """Draft-then-verify decoding as a transformers `custom_generate` callable.

    ``large.generate(ids, custom_generate=bild.generate, small_model=small, ...)``, or with prompt lookup as
    transformers spells it, ``prompt_lookup_num_tokens=10`` (and `max_matching_ngram_size`), with or without
    a `small_model` (both: the lookup's draft where it finds a match, the small model's elsewhere).

    transformers calls this with its prepared `input_ids` (decoder start ids for encoder-decoder
    models), logits processors, stopping criteria and generation config. Pass `bild_stats=GenerationStats()`
    to read the counters back. The adaptive policy's state is kept per (large model, small model, options)
    across calls; pass `bild_policy=` (`bild_lookup_policy=` for prompt lookup) to use your own. transformers
    does not forward `streamer` to custom callables (bild warns when it finds one dropped); use
    `BiLDGenerator.generate` (or `bild_streamer=`) to stream. With `return_dict_in_generate=True` the output holds
    the large model's cache at batch 1 (as transformers', to continue from), None for batches.
    """
    opts = check_options(fallback_threshold, rollback_threshold, max_small_steps, verification, uno_epsilon,
                         draft_schedule, opt_epsilon, costs, num_drafts, draft_tree)
    if bild_streamer is None and _dropped_streamer() is not None:
        warnings.warn("`streamer` passed to `large.generate(..., custom_generate=bild.generate)` is dropped by "
                      "transformers before bild runs: nothing is streamed. Stream with "
                      "`bild.BiLDGenerator(...).generate(..., streamer=...)` or pass `bild_streamer=`.",
                      UserWarning, stacklevel=2)
    gc = generation_config
    lookup = check_lookup(gc, opts, small_model is not None)
    if small_model is not None:
        check_pair(small_model, model)
        check_small_draft(small_model, model, opts.num_drafts)
    else:
        check_model(model, "large_model")
    if opts.draft_tree == AUTO:  # trees where they can be served, else chains
        if not trees_served(small_model, model, lookup is not None):
            opts = copy.copy(opts)
            opts.draft_tree = None
    elif opts.draft_tree:
        check_tree_models(small_model, model, lookup is not None)
    uses_small = small_model is not None and opts.uses_small
    check_inputs(model, input_ids, inputs_tensor, model_kwargs, uses_small)
    check_generation_config(gc, input_ids.shape[0], bild_streamer, model)
    if not gc.do_sample and (opts.uno_epsilon or opts.opt_epsilon):
        raise ValueError("`uno_epsilon` / `opt_epsilon` > 0 need do_sample=True: greedy verification keeps "
                         "exactly the large model's argmax")
    if opts.num_drafts > 1 and not gc.do_sample:
        raise ValueError("`num_drafts` > 1 needs do_sample=True: under greedy decoding M drafts would be M copies")
    policy = None
    if uses_small:
        policy = bild_policy if bild_policy is not None else _policy_for(small_model, model, opts)
    lookup_policy = None
    if lookup is not None:
        lookup_policy = bild_lookup_policy if bild_lookup_policy is not None else _policy_for(
            small_model, model, opts, lookup)
    stats = bild_stats if bild_stats is not None else GenerationStats()
    stats.__dict__.update(GenerationStats().__dict__)  # reset in place: callers hold this object
    max_new = gc.max_length - input_ids.shape[1]
    if bild_streamer is not None:
        bild_streamer.put(input_ids.cpu())
    small = ModelAdapter(small_model) if uses_small else None
    large = ModelAdapter(model)
    attention_mask = model_kwargs.get("attention_mask")
    enc, src = None, None
    if lookup is not None:
        src = source_tokens(model, inputs_tensor, attention_mask)
    if large.is_encoder_decoder:
        enc_large = {"encoder_outputs": model_kwargs["encoder_outputs"], "attention_mask": attention_mask}
        enc_small = small.encode(inputs_tensor, attention_mask) if uses_small else None
        enc = (enc_small, enc_large)
        attention_mask = model_kwargs.get("decoder_attention_mask")  # the decoder prompt's padding, if any
    M = opts.num_drafts
    if M > 1:  # batch speculative decoding: M rows per prompt, rows r*M .. r*M+M-1 (collapsed at the end)
        input_ids = input_ids.repeat_interleave(M, 0)
        attention_mask = None if attention_mask is None else attention_mask.repeat_interleave(M, 0)
        enc = None if enc is None else tuple(
            None if e is None else encoder_rows(e, lambda x: x.repeat_interleave(M, 0)) for e in enc)
        if not (large.supports_holes and small.supports_holes):
            raise ValueError(f"`num_drafts` > 1 needs models whose batches decode together; "
                             f"{type(model).__name__} / {type(small_model).__name__} decode row by row "
                             "(see bild.adapters)")
    B = input_ids.shape[0]
    tree = opts.draft_tree if uses_small and B == 1 else None
    if isinstance(opts.draft_tree, int) and uses_small and B > 1:
        warnings.warn(f"`draft_tree`={opts.draft_tree} runs at batch 1: this batch of {B} drafts chains",
                      UserWarning, stacklevel=2)

    def loop(batch, prompt_len, slot=None, streamer=None):
        """A loop over `batch` rows, with its own sessions of the shared policies (`DraftPolicy.open`)."""
        sessions.clear()
        session = None
        if uses_small:
            costs = resolve_costs(policy, opts.costs, small_model, model, batch, prompt_len, max_new)
            session = policy.open(batch // M, costs)  # the policy sees prompts; forwards run batch rows
            sessions.append((policy, session))
        args = (small, large, opts, session, gc, logits_processor, stopping_criteria, streamer, stats)
        lp = (TreeLoop(*args, batch_slot=slot, width=tree) if tree and batch == 1
              else DraftVerifyLoop(*args, batch_slot=slot))  # its proposer: the small model, or none
        if lookup is not None:
            lk_session = lookup_policy.open(batch, resolve_lookup_costs(lookup_policy, opts.costs, model, batch))
            sessions.append((lookup_policy, lk_session))
            lk = PromptLookupProposer(lk_session, lookup[1])
            lp.proposer = CombinedProposer(lk, lp.proposer) if uses_small else lk
        return lp

    def run(lp, *args):
        try:
            return lp.run(*args)
        finally:  # what the call learned goes back to the shared policies, also when it failed
            for shared, session in sessions:
                shared.close(session)

    sessions: list = []

    if B > 1 and not (large.supports_holes and (not uses_small or small.supports_holes)):
        # rows of this family cannot leave masked cache slots for one another: decode row by row, each with its
        # prompt padding where transformers has it (what its logits processors and criteria count, and what
        # sliding windows and slot positions see), on the shared encoder outputs for encoder-decoder models
        rows, sources = [], []
        for r in range(B):
            row_enc = None if enc is None else tuple(
                None if e is None else encoder_rows(e, lambda x: x[r : r + 1]) for e in enc)
            lp = loop(1, input_ids.shape[1], slot=(r, B))
            row_mask = None if attention_mask is None else attention_mask[r : r + 1]
            rows.append(run(lp, input_ids[r : r + 1], row_mask, max_new, row_enc, None if src is None else [src[r]]))
            sources += stats.token_sources
        stats.token_sources = sources
        sequences, scores, raw = _stack_rows(input_ids, rows, lp.pad)
    else:
        lp = loop(B, input_ids.shape[1], streamer=bild_streamer)
        sequences, scores, raw = run(lp, input_ids, attention_mask, max_new, enc, src)
    if M > 1:
        sequences, scores, raw = sequences[::M], scores[::M], raw[::M]
        stats.token_sources = stats.token_sources[::M]
        input_ids = input_ids[::M]
    if small is not None:
        stats.small_forwards, stats.small_tokens_fed = small.forwards, small.tokens_fed
    stats.large_forwards, stats.large_tokens_fed = large.forwards, large.tokens_fed
    stats.policy = lp.proposer.describe()
    if not gc.return_dict_in_generate:
        return sequences
    steps = sequences.shape[1] - input_ids.shape[1]
    out = dict(sequences=sequences,
               scores=_per_step(scores, steps) if gc.output_scores else None,
               logits=_per_step(raw, steps) if gc.output_logits else None)
    if B == 1 and gc.use_cache is not False:
        out[_CACHE_FIELD] = returned_cache(large, sequences.shape[1], attention_mask)
    if large.is_encoder_decoder:
        return GenerateEncoderDecoderOutput(**out)
    return GenerateDecoderOnlyOutput(**out)


# the output field transformers returns the cache in: `cache` from 5.24, `past_key_values` before (a field probed)
_CACHE_FIELD = "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"


def returned_cache(large: ModelAdapter, length: int, prompt_mask: torch.Tensor | None):
    """The large model's cache as transformers' generate returns it, for a batch of one row `length` columns long:
    every column but the last one, in the slots transformers gives them (the prompt's padding masked). None where
    the engine's cache holds another layout (the padding slots were re-packed away), and for caches with a
    recurrent state (hybrid and state-space models)."""
    keep = length - 1
    P = 0 if prompt_mask is None else prompt_mask.shape[1]
    want = [True] * keep
    if prompt_mask is not None:
        want[:P] = [bool(x) for x in prompt_mask[0].tolist()]
    if large.length < keep or large.mask[0, :keep].tolist() != want:
        return None
    if large.recorded:  # a recurrent state: its record went with the last round's rollback, so it cannot be cut back
        return None
    if large.length > keep:
        large.cache.crop(keep - large.length)
    return large.cache


def _stack_rows(input_ids, rows, pad: int):
    """Rows decoded one by one -> the batch layout transformers returns: each row's (padded) prompt, then
    its new tokens, then padding."""
    P = input_ids.shape[1]
    new = [seq[0, P:] for seq, _, _ in rows]
    seqs = torch.full((len(rows), P + max(x.numel() for x in new)), pad, dtype=torch.long, device=input_ids.device)
    seqs[:, :P] = input_ids
    for r, x in enumerate(new):
        seqs[r, P : P + x.numel()] = x
    return seqs, [x[1][0] for x in rows], [x[2][0] for x in rows]


def _per_step(per_row: list[list[torch.Tensor]], steps: int):
    """Per-row lists of [V] scores -> tuple of `steps` tensors [B, V], as `generate` returns them
    (rows that stopped early get zeros)."""
    ref = next(x for row in per_row for x in row)
    zero = torch.zeros_like(ref)
    return tuple(torch.stack([row[t] if t < len(row) else zero for row in per_row]) for t in range(steps))


class BiLDGenerator:
    """A small and a large model of one vocabulary, decoding together.

    At default arguments the output is the large model's: exactly `large_model.generate`'s under greedy
    decoding, the large model's distribution under sampling (speculative decoding with the adaptive draft
    policy). One argument away, `rollback_threshold=`, is BiLD's lossy rollback rule.

    Args:
        small_model, large_model: `PreTrainedModel`s with a language-modelling head, both decoder-only
            or both encoder-decoder, with the same vocabulary and special tokens.
        fallback_threshold: "auto" (default) or a number in [0, 1]. "auto": the adaptive draft policy
            decides per token when the small model hands over (see `bild.policies.AdaptivePolicy`; in the
            lossy modes `bild.policies.RowwisePolicy`, the same rule per call and per row). A number is
            BiLD's rule: hand over when the small model's top probability drops below it. 0 never falls
            back (fixed drafts of `max_small_steps`); 1 means the large model writes every token (output
            equals `large_model.generate`).
        rollback_threshold: None (default) or >= 0 or `float("inf")`. A number selects BiLD's rollback rule
            (unless `verification` says otherwise): a drafted token whose cross-entropy -log p_large(token)
            exceeds it is replaced by the large model's token (with greedy decoding a draft equal to the
            large model's argmax is always kept); inf never rolls back. None: 5.0 when
            verification="rollback" is passed without a number.
        max_small_steps: "auto" (default: the adaptive policy picks the draft length from the costs and the
            acceptance it sees, at most 32) or an integer >= 1: most tokens drafted per round.
        verification: None (default: "exact", or "rollback" when `rollback_threshold` is given), "exact"
            (speculative decoding: greedy output equals the large model's, sampling follows its distribution
            exactly), "block" (Sun et al.'s block verification, `bild.verification.verify_block`: lossless
            too, judges the draft as one block and keeps at least as many drafts in expectation as "exact";
            greedy decoding is "exact"'s check; no epsilon, num_drafts 1) or "rollback" (BiLD's rule, lossy).
        uno_epsilon / opt_epsilon: >= 0, one of them, only with "exact" and sampling: Yin et al.'s slack
            (accept with min(1, (p + eps) / q)); on rejection UNO resamples from p, OPT from
            norm(max(0, p - q)). 0 is lossless speculative sampling for both.
        draft_schedule: "constant" (default) or "heuristic" (with numeric thresholds: the budget shrinks
            by 1 after a rejection and grows by 2 after a fully accepted draft, capped by max_small_steps).
        costs: what the adaptive policy assumes a model call costs: "auto" (default), a cost ratio c (small
            step / large step; a verify pass costs one large step, the papers' GPU assumption), a
            `bild.analysis.cost_model.CostTable` or a `bild.policies.DraftCosts`. "auto" never times a
            dedicated forward: under exact verification it starts from a parameter-count prior and learns
            from the call's own forwards, shared by all generators of these models in the process
            (`bild.online_costs`; CPU only, the prior elsewhere); in the lossy modes it is the timing-free
            prior alone, so that the text never depends on timing.
        num_drafts: M >= 1 (default 1). M > 1 is Yin et al.'s batch speculative decoding (their Alg. 4):
            M independent drafts per prompt in one batched small-model pass, one large pass over all of
            them, depth-first verification at the first position (lossless). Needs exact verification,
            do_sample=True and a family whose batches decode together (README: supported families).
        draft_tree: None or "off" (default: one chain of drafts per round), "auto" (per round a chain or a tree of
            4, from the tokens per unit of cost measured so far, `bild.tree.WidthChooser`; chains where trees
            cannot be served) or an integer k >= 2: tree drafts
            (`bild.tree`): the small model's k candidates for the first draft position, each continued into a
            chain, verified by the large model in one pass under a tree attention mask; the longest accepted
            path is kept. Exact (greedy: the large model's output; sampling: its distribution, by SpecInfer's
            multi-draft rule). Needs verification "exact", num_drafts 1, no prompt lookup, and decoder-only
            models with full-attention caches that pass a tree-mask probe (else a ValueError naming
            `draft_tree`); runs at batch 1 (a batch drafts chains, with a warning).

    Under exact verification the draft policy (`self.policy`) keeps learning across calls (`reset_policy()`
    forgets); with costs="auto" it is shared by every generator and `bild.generate` call of these two models
    with the same options in the process (a new generator starts where the last one left off). With costs
    given, each generator has its own (fresh generators make the same decisions). In the lossy modes at
    "auto" it starts afresh for every call and every row.

    Calls may come from several threads at once: each decides with its own session of the policy
    (`DraftPolicy.open` / `close`) and counts into its own `GenerationStats` (`bild_stats=`, else a new one;
    `self.stats` is the last finished call's).
    """

    def __init__(self, small_model: PreTrainedModel, large_model: PreTrainedModel,
                 fallback_threshold: float | str = AUTO, rollback_threshold: float | None = None,
                 max_small_steps: int | str = AUTO, verification: str | None = None, uno_epsilon: float = 0.0,
                 draft_schedule: str = "constant", opt_epsilon: float = 0.0, costs=AUTO, num_drafts: int = 1,
                 draft_tree: int | str | None = None):
        self.options = check_options(fallback_threshold, rollback_threshold, max_small_steps, verification,
                                     uno_epsilon, draft_schedule, opt_epsilon, costs, num_drafts, draft_tree)
        if isinstance(self.options.draft_tree, int):
            check_tree_models(small_model, large_model, False)
        if small_model is not None:
            check_pair(small_model, large_model)
            check_small_draft(small_model, large_model, num_drafts)
        else:  # prompt lookup alone: `generate` then needs `prompt_lookup_num_tokens`
            check_model(large_model, "large_model")
        self.small_model, self.large_model = small_model, large_model
        # with costs="auto" everything the adaptive policy knows is learned online, so it is shared: a new
        # generator of these models starts where the last one left off
        self.shared = self.options.costs == AUTO and AUTO in (self.options.fallback_threshold,
                                                              self.options.max_small_steps) and not lossy(self.options)
        self.policy = (_policy_for(small_model, large_model, self.options) if self.shared
                       else make_policy(self.options))
        # per (num_tokens, ngram) asked for, least recently used first (at most POLICIES_PER_MODEL)
        self.lookup_policies: OrderedDict[tuple[int, int], DraftPolicy] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = GenerationStats()  # the last finished call's (each call fills its own)

    def lookup_policy(self, num_tokens: int, ngram: int) -> DraftPolicy:
        """Prompt lookup's policy for these settings (shared like `self.policy`)."""
        key = (num_tokens, ngram)
        with self._lock:
            if key not in self.lookup_policies:
                self.lookup_policies[key] = (_policy_for(self.small_model, self.large_model, self.options, key)
                                             if self.shared else make_lookup_policy(self.options, num_tokens))
                while len(self.lookup_policies) > POLICIES_PER_MODEL:
                    self.lookup_policies.popitem(last=False)
            self.lookup_policies.move_to_end(key)
            return self.lookup_policies[key]

    def reset_policy(self) -> None:
        """Forget what the draft policies learned (shared with the other generators of these models when
        costs="auto"; learned costs are kept: `bild.online_costs.forget()` drops them)."""
        with policies._LOCK:  # a call running now folds its session in as a concurrent one (`DraftPolicy.close`)
            for p in [self.policy, *self.lookup_policies.values()]:
                p.reset()
                p._version = getattr(p, "_version", 0) + 1

    def generate(self, inputs: torch.Tensor | None = None, generation_config: GenerationConfig | None = None,
                 streamer=None, bild_stats: GenerationStats | None = None, **kwargs):
        """Same arguments and return type as `large_model.generate`. Each call counts into its own
        `GenerationStats`: `bild_stats=` (filled in place), else a new one; `self.stats` is then the last
        finished call's (with calls from several threads, pass `bild_stats=` to get each call's own)."""
        stats = bild_stats if bild_stats is not None else GenerationStats()
        gc = copy.deepcopy(generation_config or self.large_model.generation_config)
        gc.update(**kwargs)
        check_prompt(self.large_model, inputs, kwargs)
        check_generation_config(gc, _batch_size(inputs, kwargs), streamer)
        o = self.options
        lookup = check_lookup(gc, o, self.small_model is not None)
        if lookup is not None:
            kwargs["bild_lookup_policy"] = self.lookup_policy(*lookup)
        out = self.large_model.generate(  # `inputs` only when given: Whisper's generate names it input_features
            *(() if inputs is None else (inputs,)), generation_config=generation_config, custom_generate=generate,
            small_model=self.small_model,
            fallback_threshold=o.fallback_threshold, rollback_threshold=o.rollback_threshold,
            max_small_steps=o.max_small_steps, verification=o.verification, uno_epsilon=o.uno_epsilon,
            draft_schedule=o.draft_schedule, opt_epsilon=o.opt_epsilon, costs=o.costs, num_drafts=o.num_drafts,
            draft_tree=o.draft_tree, bild_streamer=streamer,
            bild_stats=stats, bild_policy=self.policy, **kwargs)
        self.stats = stats
        return out


def _batch_size(inputs, kwargs) -> int | None:
    for x in (inputs, kwargs.get("input_ids"), kwargs.get("inputs_embeds")):
        if isinstance(x, torch.Tensor):
            return x.shape[0]
    return None

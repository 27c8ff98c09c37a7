"""The engine's options: checking them (`check_options`, `check_lookup`), the draft policy they ask for
(`make_policy`, `make_lookup_policy`, and the policies shared across calls of the same models, `_policy_for`),
and the costs that policy is given (`resolve_costs`, `resolve_lookup_costs`)."""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict

from transformers import GenerationConfig

from .decoding import DecodeOptions
from .online_costs import learned_costs, lookup_costs, prior_costs
from .policies import (
    AdaptivePolicy,
    DraftCosts,
    DraftPolicy,
    HeuristicPolicy,
    LookupPolicy,
    RowwisePolicy,
    ThresholdPolicy,
)
from .timing import CostTable
from .tree import check_draft_tree

VERIFICATIONS = ("rollback", "exact", "block")
DRAFT_SCHEDULES = ("constant", "heuristic")
AUTO = "auto"
DEFAULT_ROLLBACK_THRESHOLD = 5.0  # BiLD's rule when chosen without a number


def check_options(
    fallback_threshold=AUTO,
    rollback_threshold=None,
    max_small_steps=AUTO,
    verification=None,
    uno_epsilon=0.0,
    draft_schedule="constant",
    opt_epsilon=0.0,
    costs=AUTO,
    num_drafts=1,
    draft_tree=None,
) -> DecodeOptions:
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
    if max_small_steps != AUTO and (
        isinstance(max_small_steps, bool) or not isinstance(max_small_steps, int) or max_small_steps < 1
    ):
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
        raise ValueError(
            "`draft_schedule`='heuristic' needs numbers for `fallback_threshold` and `max_small_steps` "
            "(its budget starts at, and is capped by, max_small_steps)"
        )
    if not (
        costs == AUTO
        or isinstance(costs, (DraftCosts, CostTable))
        or (isinstance(costs, (int, float)) and not isinstance(costs, bool) and costs > 0)
    ):
        raise ValueError(
            f"`costs` must be 'auto', a cost ratio > 0 (small step / large step), a "
            f"bild.analysis.cost_model.CostTable or a bild.policies.DraftCosts, got {costs!r}"
        )
    if isinstance(num_drafts, bool) or not isinstance(num_drafts, int) or num_drafts < 1:
        raise ValueError(f"`num_drafts` must be an integer >= 1, got {num_drafts!r}")
    if num_drafts > 1 and verification == "block":
        raise ValueError(
            "`num_drafts` > 1 is not supported with verification='block': block verification judges "
            "one draft per prompt; use verification='exact' for batch speculative decoding"
        )
    if num_drafts > 1 and verification != "exact":
        raise ValueError("`num_drafts` > 1 (batch speculative decoding) needs verification='exact'")
    if num_drafts > 1 and (uno_epsilon > 0 or opt_epsilon > 0):
        raise ValueError(
            "`num_drafts` > 1 is lossless batch speculative decoding: it takes no `uno_epsilon` / `opt_epsilon`"
        )
    draft_tree = check_draft_tree(draft_tree, verification, num_drafts, uno_epsilon or opt_epsilon)
    return DecodeOptions(
        fallback_threshold,
        float(rollback_threshold),
        max_small_steps,
        verification,
        float(uno_epsilon),
        draft_schedule,
        float(opt_epsilon),
        costs,
        num_drafts,
        draft_tree,
    )


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


def resolve_costs(
    policy: DraftPolicy, costs, small, large, batch_size: int, prompt_len: int, max_new: int
) -> DraftCosts | None:
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
            raise ValueError(
                "no drafter: pass `small_model` (a draft model) and/or `prompt_lookup_num_tokens` "
                "(prompt lookup, e.g. 10)"
            )
        return None
    if opts.num_drafts > 1:
        raise ValueError(
            "`num_drafts` > 1 (batch speculative decoding of M sampled drafts) cannot be combined with "
            "`prompt_lookup_num_tokens`: prompt lookup proposes one deterministic draft per row"
        )
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


# learned policies of `bild.generate` calls, per large model, then per (small model, options that shape what is
# learned), least recently used first: at most `POLICIES_PER_MODEL` per large model
_POLICIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
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
    key = (
        id(small_model),
        opts.fallback_threshold,
        opts.max_small_steps,
        opts.verification,
        opts.num_drafts,
        opts.costs == AUTO,
        lookup,
        opts.draft_tree,
    )
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

"""Public entry points: `BiLDGenerator` and the `custom_generate` callable `generate`.

Both go through `large_model.generate`, so transformers prepares everything it normally does
(generation config, logits processors, stopping criteria, special tokens, the encoder pass);
`generate` below is then called in place of transformers' decoding loop.
"""

from __future__ import annotations

import copy
import sys
import threading
import warnings
from collections import OrderedDict

import torch
from transformers import GenerationConfig, PreTrainedModel
from transformers.generation.utils import GenerateDecoderOnlyOutput, GenerateEncoderDecoderOutput

from . import policies
from .adapters import ModelAdapter, encoder_rows
from .bild_warnings import BiLDWarning

# names that lived here up to 0.12 (option checks and policy construction: bild.options; pair, input and
# generation-config checks: bild.checks), re-exported so that `bild.generator.X` keeps working
from .checks import (  # noqa: F401,E402
    _REFUSED_FIELDS,
    check_generation_config,
    check_inputs,
    check_mask,
    check_pair,
    check_prompt,
    check_token_ids,
    check_widths,
)
from .decoding import (
    DecodeOptions,  # noqa: F401,E402
    DraftVerifyLoop,
)
from .families import check_model
from .feature_draft import check_small_draft
from .online_costs import learned_costs, lookup_costs, prior_costs  # noqa: F401,E402
from .options import (  # noqa: F401,E402
    _POLICIES,
    _POLICIES_LOCK,
    AUTO,
    DEFAULT_NGRAM,
    DEFAULT_ROLLBACK_THRESHOLD,
    DRAFT_SCHEDULES,
    LOOKUP_PRIOR,
    POLICIES_PER_MODEL,
    VERIFICATIONS,
    _none,
    _policy_for,
    check_lookup,
    check_options,
    given_costs,
    lossy,
    make_lookup_policy,
    make_policy,
    resolve_costs,
    resolve_lookup_costs,
)
from .policies import (  # noqa: F401,E402
    AdaptivePolicy,
    DraftCosts,
    DraftPolicy,
    HeuristicPolicy,
    LookupPolicy,
    RowwisePolicy,
    ThresholdPolicy,
)
from .precision import check_dtypes
from .proposers import CombinedProposer, PromptLookupProposer
from .stats import GenerationStats
from .timing import CostTable  # noqa: F401,E402
from .tree import TreeLoop, check_tree_models, trees_served
from .vocabulary import draft_vocabulary  # noqa: F401,E402


def source_tokens(model, inputs_tensor, attention_mask) -> list[list[int]] | None:
    """Per row, the encoder input's tokens (padding left out) for prompt lookup; None for decoder-only
    models and non-token encoder inputs (audio features, pixels)."""
    if not model.config.is_encoder_decoder or inputs_tensor is None or inputs_tensor.is_floating_point():
        return None
    ids = inputs_tensor.tolist()
    mask = [[1] * len(r) for r in ids] if attention_mask is None else attention_mask.tolist()
    return [[t for t, m in zip(r, k) if m and t >= 0] for r, k in zip(ids, mask)]


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


def generate(
    model,
    input_ids,
    logits_processor=None,
    stopping_criteria=None,
    generation_config=None,
    small_model=None,
    fallback_threshold: float | str = AUTO,
    rollback_threshold: float | None = None,
    max_small_steps: int | str = AUTO,
    verification: str | None = None,
    uno_epsilon: float = 0.0,
    draft_schedule: str = "constant",
    opt_epsilon: float = 0.0,
    costs=AUTO,
    num_drafts: int = 1,
    draft_tree: int | str | None = None,
    inputs_tensor=None,
    bild_streamer=None,
    bild_stats=None,
    bild_policy=None,
    bild_lookup_policy=None,
    **model_kwargs,
):
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
    opts = check_options(
        fallback_threshold,
        rollback_threshold,
        max_small_steps,
        verification,
        uno_epsilon,
        draft_schedule,
        opt_epsilon,
        costs,
        num_drafts,
        draft_tree,
    )
    if bild_streamer is None and _dropped_streamer() is not None:
        warnings.warn(
            "`streamer` passed to `large.generate(..., custom_generate=bild.generate)` is dropped by "
            "transformers before bild runs: nothing is streamed. Stream with "
            "`bild.BiLDGenerator(...).generate(..., streamer=...)` or pass `bild_streamer=`.",
            BiLDWarning,
            stacklevel=2,
        )
    gc = generation_config
    lookup = check_lookup(gc, opts, small_model is not None)
    if small_model is not None:
        check_pair(small_model, model)
        check_small_draft(small_model, model, opts.num_drafts)
    else:
        check_dtypes(None, model)
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
        raise ValueError(
            "`uno_epsilon` / `opt_epsilon` > 0 need do_sample=True: greedy verification keeps "
            "exactly the large model's argmax"
        )
    if opts.num_drafts > 1 and not gc.do_sample:
        raise ValueError("`num_drafts` > 1 needs do_sample=True: under greedy decoding M drafts would be M copies")
    policy = None
    if uses_small:
        policy = bild_policy if bild_policy is not None else _policy_for(small_model, model, opts)
    lookup_policy = None
    if lookup is not None:
        lookup_policy = (
            bild_lookup_policy if bild_lookup_policy is not None else _policy_for(small_model, model, opts, lookup)
        )
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
        enc = (
            None
            if enc is None
            else tuple(None if e is None else encoder_rows(e, lambda x: x.repeat_interleave(M, 0)) for e in enc)
        )
        if not (large.supports_holes and small.supports_holes):
            raise ValueError(
                f"`num_drafts` > 1 needs models whose batches decode together; "
                f"{type(model).__name__} / {type(small_model).__name__} decode row by row "
                "(see bild.adapters)"
            )
    B = input_ids.shape[0]
    tree = opts.draft_tree if uses_small and B == 1 else None
    if isinstance(opts.draft_tree, int) and uses_small and B > 1:
        warnings.warn(
            f"`draft_tree`={opts.draft_tree} runs at batch 1: this batch of {B} drafts chains",
            BiLDWarning,
            stacklevel=2,
        )

    def loop(batch, prompt_len, slot=None, streamer=None):
        """A loop over `batch` rows, with its own sessions of the shared policies (`DraftPolicy.open`)."""
        sessions.clear()
        session = None
        if uses_small:
            costs = resolve_costs(policy, opts.costs, small_model, model, batch, prompt_len, max_new)
            session = policy.open(batch // M, costs)  # the policy sees prompts; forwards run batch rows
            sessions.append((policy, session))
        args = (small, large, opts, session, gc, logits_processor, stopping_criteria, streamer, stats)
        lp = (
            TreeLoop(*args, batch_slot=slot, width=tree)
            if tree and batch == 1
            else DraftVerifyLoop(*args, batch_slot=slot)
        )  # its proposer: the small model, or none
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
            row_enc = (
                None
                if enc is None
                else tuple(None if e is None else encoder_rows(e, lambda x: x[r : r + 1]) for e in enc)
            )
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
    out = dict(
        sequences=sequences,
        scores=_per_step(scores, steps) if gc.output_scores else None,
        logits=_per_step(raw, steps) if gc.output_logits else None,
    )
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
        uno_epsilon, opt_epsilon: numbers >= 0, one of them, only with "exact" and sampling: Yin et al.'s slack
            (accept with min(1, (p + eps) / q)); on rejection UNO resamples from p, OPT from
            norm(max(0, p - q)). 0 is lossless speculative sampling for both.
        draft_schedule: "constant" (default) or "heuristic" (with numeric thresholds: the budget shrinks
            by 1 after a rejection and grows by 2 after a fully accepted draft, capped by max_small_steps).
        costs: what the adaptive policy assumes a model call costs: "auto" (default), a cost ratio c (small
            step / large step; a verify pass costs one large step, the papers' GPU assumption), a
            `bild.analysis.cost_model.CostTable` or a `bild.policies.DraftCosts`. "auto" never times a
            dedicated forward: under exact verification it starts from a parameter-count prior and learns
            from the call's own forwards, shared by all generators of these models in the process
            (`bild.online_costs`; on CUDA timed at the engine's own host reads); in the lossy modes it is the
            timing-free prior alone, so that the text never depends on timing.
        num_drafts: M >= 1 (default 1). M > 1 is Yin et al.'s batch speculative decoding (their Alg. 4):
            M independent drafts per prompt in one batched small-model pass, one large pass over all of
            them, depth-first verification at the first position (lossless). Needs exact verification,
            do_sample=True and a family whose batches decode together (docs: supported families).
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

    def __init__(
        self,
        small_model: PreTrainedModel,
        large_model: PreTrainedModel,
        fallback_threshold: float | str = AUTO,
        rollback_threshold: float | None = None,
        max_small_steps: int | str = AUTO,
        verification: str | None = None,
        uno_epsilon: float = 0.0,
        draft_schedule: str = "constant",
        opt_epsilon: float = 0.0,
        costs=AUTO,
        num_drafts: int = 1,
        draft_tree: int | str | None = None,
    ):
        self.options = check_options(
            fallback_threshold,
            rollback_threshold,
            max_small_steps,
            verification,
            uno_epsilon,
            draft_schedule,
            opt_epsilon,
            costs,
            num_drafts,
            draft_tree,
        )
        if isinstance(self.options.draft_tree, int):
            check_tree_models(small_model, large_model, False)
        if small_model is not None:
            check_pair(small_model, large_model)
            check_small_draft(small_model, large_model, num_drafts)
        else:  # prompt lookup alone: `generate` then needs `prompt_lookup_num_tokens`
            check_dtypes(None, large_model)
            check_model(large_model, "large_model")
        self.small_model, self.large_model = small_model, large_model
        # with costs="auto" everything the adaptive policy knows is learned online, so it is shared: a new
        # generator of these models starts where the last one left off
        self.shared = (
            self.options.costs == AUTO
            and AUTO in (self.options.fallback_threshold, self.options.max_small_steps)
            and not lossy(self.options)
        )
        self.policy = _policy_for(small_model, large_model, self.options) if self.shared else make_policy(self.options)
        # per (num_tokens, ngram) asked for, least recently used first (at most POLICIES_PER_MODEL)
        self.lookup_policies: OrderedDict[tuple[int, int], DraftPolicy] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = GenerationStats()  # the last finished call's (each call fills its own)

    def lookup_policy(self, num_tokens: int, ngram: int) -> DraftPolicy:
        """Prompt lookup's policy for these settings (shared like `self.policy`)."""
        key = (num_tokens, ngram)
        with self._lock:
            if key not in self.lookup_policies:
                self.lookup_policies[key] = (
                    _policy_for(self.small_model, self.large_model, self.options, key)
                    if self.shared
                    else make_lookup_policy(self.options, num_tokens)
                )
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

    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        streamer=None,
        bild_stats: GenerationStats | None = None,
        **kwargs,
    ):
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
            *(() if inputs is None else (inputs,)),
            generation_config=generation_config,
            custom_generate=generate,
            small_model=self.small_model,
            fallback_threshold=o.fallback_threshold,
            rollback_threshold=o.rollback_threshold,
            max_small_steps=o.max_small_steps,
            verification=o.verification,
            uno_epsilon=o.uno_epsilon,
            draft_schedule=o.draft_schedule,
            opt_epsilon=o.opt_epsilon,
            costs=o.costs,
            num_drafts=o.num_drafts,
            draft_tree=o.draft_tree,
            bild_streamer=streamer,
            bild_stats=stats,
            bild_policy=self.policy,
            **kwargs,
        )
        self.stats = stats
        return out


def _batch_size(inputs, kwargs) -> int | None:
    for x in (inputs, kwargs.get("input_ids"), kwargs.get("inputs_embeds")):
        if isinstance(x, torch.Tensor):
            return x.shape[0]
    return None

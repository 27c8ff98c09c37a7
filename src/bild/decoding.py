"""The draft-then-verify loop shared by BiLD, speculative decoding, Decoding-UNO/OPT and batch speculative
decoding (the papers' Algorithm 1; Yin et al.'s Algorithm 4 with `num_drafts`).

One round, over one `BatchState` (`batch.py`):
  propose   a proposer (`proposers.py`) drafts tokens per row: the small model under a draft policy
            (`policies.py`), prompt lookup, both, or nothing
  score     the large model reads every unchecked token in ONE forward pass (`scoring.py`)
  accept    an acceptance rule (`acceptance.py`) keeps a prefix of each draft and picks the large model's next
            token (rollback replaces the first rejected draft); with num_drafts = M it also picks, per
            prompt, the draft its M rows follow
  commit    tokens go to the output; every cache keeps exactly the committed prefix it has read, and the
            proposer's policy learns what the large model judged

The first new token comes from the large model's prefill. Model families and cache layouts are hidden
behind `ModelAdapter`; this module handles token ids and per-row bookkeeping, on the host: it reads the
device once per draft step and once per round (tests/test_host_reads.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList

from . import timing
from .acceptance import Verdict, make_rule
from .adapters import ModelAdapter
from .batch import BatchState, RowProcessors
from .devices import to_device
from .feature_draft import is_feature_draft
from .policies import DraftPolicy
from .proposers import FeatureProposer, ModelProposer, Proposal, Proposer, judged_accepted
from .scoring import Scorer
from .stats import GenerationStats


@dataclass
class DecodeOptions:
    fallback_threshold: float | str = "auto"
    rollback_threshold: float = 5.0
    max_small_steps: int | str = "auto"
    verification: str = "rollback"  # "rollback" | "exact" | "block"
    uno_epsilon: float = 0.0
    draft_schedule: str = "constant"  # "constant" | "heuristic"
    opt_epsilon: float = 0.0
    costs: object = "auto"  # see BiLDGenerator
    num_drafts: int = 1  # Yin et al.'s batch speculative decoding: M drafts per prompt (sampling, exact)
    draft_tree: int | str | None = None  # k candidates per tree branching, "auto" (`bild.tree`); None: a chain

    @property
    def uses_small(self) -> bool:
        """A fallback threshold of 1 (or more) means the small model never drafts."""
        return self.fallback_threshold == "auto" or self.fallback_threshold < 1.0

    @property
    def exact_rule(self) -> bool:
        """A lossless rule ("exact", "block"): it keeps the large model's output (greedy) or distribution
        (sampling)."""
        return self.verification in ("exact", "block")


def round_kind(prop: Proposal, small_ran: bool) -> str:
    """What a round drafted with, for its timed overhead: "small" where the small model ran (a draft step
    that fell back at once included: its host work is the small model's), else "lookup" where any row has a
    lookup draft, else "plain" (the large model alone)."""
    if small_ran:
        return "small"
    return "lookup" if any(d and src == "lookup" for src, d in zip(prop.source, prop.drafts)) else "plain"


class DraftVerifyLoop:
    """Runs one batched `generate` call: propose -> score -> accept -> commit until every row stops.
    Tensor shapes: B rows, P prompt columns, V vocabulary."""

    fill_batch_drafts = True  # see `ModelProposer._draft`; False drafts every row as it would alone

    def __init__(
        self,
        small: ModelAdapter | None,
        large: ModelAdapter,
        opts: DecodeOptions,
        policy: DraftPolicy,
        generation_config,
        logits_processor,
        stopping_criteria,
        streamer=None,
        stats: GenerationStats | None = None,
        batch_slot: tuple[int, int] | None = None,
        proposer: Proposer | None = None,
    ):
        self.large, self.small, self.opts = large, small, opts
        self.do_sample = bool(generation_config.do_sample)
        self.stats = stats if stats is not None else GenerationStats()
        self.processors_arg, self.batch_slot = logits_processor, batch_slot
        if proposer is None:  # the small model under `policy`, or nothing
            proposer = self.model_proposer(small, policy) if small is not None and opts.uses_small else Proposer()
        self.proposer = proposer
        self.clock = None  # a ReadClock where forwards run asynchronously (set per call)
        self.rule = make_rule(opts, self.do_sample)
        # transformers stops on its criteria list alone, in which a user's EosTokenCriteria / MaxLengthCriteria
        # replace the ones built from the generation config: the loop enforces the list's eos and length
        # natively, and checks the other criteria token by token
        criteria = list(stopping_criteria or [])
        self.stopping = StoppingCriteriaList(
            [c for c in criteria if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria))]
        )
        self.max_length = min((c.max_length for c in criteria if isinstance(c, MaxLengthCriteria)), default=None)
        self.streamer = streamer
        eos = getattr(generation_config, "_eos_token_tensor", None)
        if eos is None and generation_config.eos_token_id is not None:
            eos = torch.tensor(generation_config.eos_token_id).reshape(-1)
        if stopping_criteria is not None:
            eos_c = [torch.as_tensor(c.eos_token_id).reshape(-1) for c in criteria if isinstance(c, EosTokenCriteria)]
            self.eos_ids = {int(x) for t in eos_c for x in t.tolist()}
        else:
            self.eos_ids = set() if eos is None else set(eos.reshape(-1).tolist())
        pad = generation_config.pad_token_id
        if pad is None and eos is not None and eos.numel():
            pad = int(eos.reshape(-1)[0])
        self.pad = 0 if pad is None else int(pad)
        self.keep_scores = bool(generation_config.return_dict_in_generate and generation_config.output_scores)
        self.keep_logits = bool(generation_config.return_dict_in_generate and generation_config.output_logits)

    def model_proposer(self, small: ModelAdapter, policy: DraftPolicy) -> ModelProposer:
        """The small model as a proposer, with this loop's sampling and batch-fill settings."""
        o = self.opts
        args = (
            small,
            policy,
            self.processors_arg,
            self.do_sample,
            self.do_sample and o.exact_rule,
            self.fill_batch_drafts and o.exact_rule,
            self.stats,
            self.batch_slot,
        )
        if is_feature_draft(small.model):  # EAGLE: it reads the large model's features
            return FeatureProposer(*args, large=self.large)
        return ModelProposer(*args)

    # -- public -------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        max_new_tokens: int,
        encoder_kwargs: tuple[dict, dict] | None = None,
        source_tokens: list[list[int]] | None = None,
    ):
        """input_ids [B, P] (decoder-only: the prompt; encoder-decoder: the decoder start ids);
        encoder_kwargs (small, large) for encoder-decoders; source_tokens: per row, the encoder input's
        tokens (prompt lookup searches them).

        Returns sequences [B, P + T] (rows that stopped early are padded) and, per row, the lists of
        processed scores and raw logits of each new token (empty unless asked for).
        """
        B, P = input_ids.shape
        if self.max_length is not None:  # the criteria list's length (a user's MaxLengthCriteria included)
            max_new_tokens = max(1, self.max_length - P)
        st = self.state = BatchState(
            input_ids, attention_mask, max_new_tokens, self.pad, self.eos_ids, self.opts.num_drafts
        )
        self.scores = [[] for _ in range(B)]
        self.raw = [[] for _ in range(B)]
        self.sources = self.stats.token_sources = [[] for _ in range(B)]
        processors = RowProcessors(self.processors_arg, st, self.batch_slot)
        self.scorer = Scorer(self.large, st, processors, self.stats, encoder_kwargs[1] if encoder_kwargs else None)
        try:
            self.proposer.start(st, encoder_kwargs[0] if encoder_kwargs else None, source_tokens)
            processed, raw = self.scorer.prefill()
            first = st.expand(self._choose(processed[:: st.M]).tolist())  # one token per prompt
            self._commit([[t] for t in first], processed[:, None], raw[:, None], [""] * B, [0] * B)
            self.clock = timing.read_clock(self.small, self.large)  # None where forwards are timed as run
            while not all(st.done):
                self._round()
        finally:
            self.proposer.finish()
            for a in (self.small, self.large):
                if a is not None:
                    a.read_clock = None
        if self.streamer is not None:
            self.streamer.end()
        T = max(c - P for c in st.cur)
        return st.seqs[:, : P + T], self.scores, self.raw

    # -- one round ----------------------------------------------------------------------------------
    def _round(self) -> None:
        """Propose, score, accept, commit. Host reads: one per draft step (in the proposer), one verdict.
        The round's host time beyond its forwards goes to the cost estimates (on an asynchronous device the
        forwards are timed at those reads: `bild.timing.ReadClock`)."""
        timed = self.large.times is not None
        if not timed:
            self._round_body()
            return
        if self.clock is not None:
            self.clock.reset()
        t0, f0, n0 = timing.clock(), self._forward_seconds(), self._small_forwards()
        prop = self._round_body()
        overhead = timing.clock() - t0 - (self._forward_seconds() - f0)
        self.large.times.record_round(self.state.B, round_kind(prop, self._small_forwards() > n0), overhead)

    def _small_forwards(self) -> int:
        return self.small.forwards if self.small is not None else 0

    def _forward_seconds(self) -> float:
        return self.large.seconds + (self.small.seconds if self.small is not None else 0.0)

    def _round_body(self) -> Proposal:
        st = self.state
        prop = self.proposer.propose(st)
        K = max(len(x) for x in prop.drafts)
        dt = to_device([x + [self.pad] * (K - len(x)) for x in prop.drafts], st.device, torch.long).reshape(
            st.B, K
        )  # [B, K]
        p_logits, p_raw = self.scorer.score(prop.drafts, dt)
        verdict = self._accept(dt, p_logits, prop)
        if self.clock is not None:  # the verdict was read: the verify pass has run
            self.clock.read()
        if verdict.pick is not None:  # batch speculative decoding: every draft of a prompt continues the chosen one
            idx = to_device(verdict.pick, st.device)
            p_logits, p_raw = p_logits.index_select(0, idx), p_raw.index_select(0, idx)
            prop.drafts = [prop.drafts[c] for c in verdict.pick]
            self.scorer.select_rows(verdict.pick)
            self.proposer.select_rows(verdict.pick)
        n_acc = verdict.n_accept
        new = [[] if st.done[r] else prop.drafts[r][: n_acc[r]] + [verdict.next_token[r]] for r in range(st.B)]
        before = list(st.cur)
        committed = self._commit(new, p_logits, p_raw, prop.source, n_acc)
        self.scorer.keep([b + a for b, a in zip(before, n_acc)])
        self.proposer.settle(n_acc, committed, before, p_logits.shape[1] - 1)
        self._count(prop, n_acc, committed)
        return prop

    def _accept(self, dt: torch.Tensor, p_logits: torch.Tensor, prop: Proposal) -> Verdict:
        """The acceptance rule over the round's drafts (dt: [B, K], padded); without drafts (and without
        num_drafts) the large model writes the next token."""
        if not dt.shape[1] and self.opts.num_drafts == 1:
            return Verdict([0] * self.state.B, self._choose(p_logits[:, 0]).tolist())
        n_draft = to_device([len(x) for x in prop.drafts], dt.device)
        return self.rule.judge(dt, n_draft, p_logits, prop)

    def _count(self, prop: Proposal, n_acc: list[int], committed: list[int]) -> None:
        """Statistics of a round (definitions in `stats.py`). Only committed tokens count: a row that
        stopped part-way through its accepted drafts counts the drafts before the stop."""
        st, lead = self.stats, self.state.lead
        judged, accepted = judged_accepted(prop.own, n_acc, committed)
        st.rounds += 1
        st.draft_budgets.append(max(lead(prop.budget)))
        st.draftless_rounds += not any(lead(prop.drafts))
        for d, k, j, acc, a, c, src in zip(
            *(lead(x) for x in (prop.drafts, prop.own, judged, accepted, n_acc, committed, prop.source))
        ):
            if not d:
                continue
            st.drafted += k
            st.judged += j
            st.accepted += acc
            st.rollbacks += int(a < k and a < c)
            st.fill_drafted += len(d) - k
            st.fill_accepted += max(0, min(a, c) - k)
            st.drafted_by[src] = st.drafted_by.get(src, 0) + k
            st.accepted_by[src] = st.accepted_by.get(src, 0) + acc

    # -- helpers ------------------------------------------------------------------------------------
    def _choose(self, scores: torch.Tensor) -> torch.Tensor:
        if self.do_sample:
            return torch.multinomial(scores.softmax(-1), 1).squeeze(-1)
        return scores.argmax(-1)

    def _commit(
        self, new: list[list[int]], processed: torch.Tensor, raw: torch.Tensor, source: list[str], n_drafted: list[int]
    ) -> list[int]:
        """Append each row's new tokens, stopping at eos, the length limit or a stopping criterion.
        The first n_drafted[r] tokens of row r were written by its drafter (`source[r]`). Returns the number
        of tokens each row committed."""
        st = self.state
        committed = [0] * st.B
        writes: tuple[list, list, list] = ([], [], [])  # (row, column, token) of every new token: one device write
        for r in range(st.B):
            if st.done[r] or not new[r]:
                continue
            for j, tok in enumerate(new[r]):
                if len(self.stopping):  # criteria read the sequence: it must be up to date
                    st.seqs[r, st.cur[r]] = tok
                else:
                    for w, x in zip(writes, (r, st.cur[r], tok)):
                        w.append(x)
                st.cur[r] += 1
                committed[r] += 1
                if st.history is not None:
                    st.history[r].append(tok)
                self.sources[r].append(source[r] if j < n_drafted[r] else "large")
                if self.keep_scores:  # a copy: a view would keep the round's whole [B, K+1, V] tensor alive
                    self.scores[r].append(processed[r, j].clone())
                if self.keep_logits:
                    self.raw[r].append(raw[r, j].clone())
                if self.streamer is not None and r % st.M == 0:
                    self.streamer.put(torch.tensor([tok]))
                stop = tok in self.eos_ids or st.cur[r] - st.P >= st.max_new
                if not stop and len(self.stopping):
                    stop = bool(self.stopping(st.seqs[r : r + 1, : st.cur[r]], processed[r : r + 1, j]).any())
                if stop:
                    st.done[r] = True
                    break
        if writes[0]:
            rows, cols, toks = (to_device(w, st.seqs.device) for w in writes)
            st.seqs[rows, cols] = toks
        if st.M > 1:  # the M rows of a prompt stop together, as its first row does (time-based criteria)
            for r in range(st.B):
                lead = r - r % st.M
                st.done[r], st.cur[r], committed[r] = st.done[lead], st.cur[lead], committed[lead]
        self.stats.new_tokens += sum(st.lead(committed))
        return committed

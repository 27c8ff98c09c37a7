"""Proposers: where drafts come from (the "propose" step of propose -> score -> accept -> commit).

A proposer is asked once per round for per-row drafts and told afterwards what the large model kept:

    start(state, encoder_kwargs, source_tokens)   a call begins (a model proposer starts its cache)
    propose(state, allowed) -> Proposal           drafts for rows with allowed[r] (None: every row)
    settle(verdict_n_accept, committed, before)   after the commit: roll back caches, let the policy learn
    select_rows(pick)                             batch speculative decoding: row r now continues row pick[r]

Proposers:
    Proposer              (the base) proposes nothing: the large model writes every token
    ModelProposer         the small model drafts token by token under a `DraftPolicy` (BiLD's fallback, the
                          adaptive rule); with exact verification in a batch, rows that stopped fill in while
                          another row drafts ("batch fill": those slots are computed anyway)
    PromptLookupProposer  copies the continuation of the last n-gram of a row from earlier in the row (its
                          prompt, what it has generated, and for encoder-decoders the encoder input): no model
                          call; its policy learns acceptance per draft position and picks the length
    CombinedProposer      the lookup where it finds a match, the small model for the other rows
    FeatureProposer       a ModelProposer whose small model is a `FeatureDraft` (EAGLE): bound to the large
                          model for the call, it reads the large model's features of committed tokens

Drafts are host lists (the loop's bookkeeping lives on the host); `Proposal.draft_probs` gives the
probabilities q the drafts were drawn from, one-hot for a deterministic drafter.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .adapters import ModelAdapter
from .batch import BatchState, CacheReader, RowProcessors
from .bild_warnings import BiLDRuntimeWarning
from .devices import to_device
from .policies import DraftPolicy, RoundRecord


@dataclass
class Proposal:
    """One round's drafts (B rows, K = longest draft).

    drafts    per row, drafted token ids (a row's own drafts first, then batch-fill drafts)
    own       per row, drafts the row wrote before its policy stopped it (the rest is batch fill)
    source    per row, the drafter that wrote them: "small", "lookup", or "" (no draft)
    budget    per row, the most drafts its policy allowed
    probing   per row, drafts of a policy's probe round (under greedy decoding judged by the exact rule)
    q         [B, K', V] (K' >= K) model probabilities the drafts were drawn from (exact sampling), or None
    """

    drafts: list[list[int]]
    own: list[int]
    source: list[str]
    budget: list[int]
    probing: list[bool]
    q: torch.Tensor | None = None

    @classmethod
    def empty(cls, B: int) -> Proposal:
        return cls([[] for _ in range(B)], [0] * B, [""] * B, [0] * B, [False] * B)

    def draft_probs(self, dt: torch.Tensor, V: int) -> torch.Tensor:
        """dt [B, K] padded drafts -> q [B, K, V]: the model's probabilities where a model drew the row's
        drafts, one-hot of the drafts for a deterministic drafter (lookup)."""
        K = dt.shape[1]
        onehot = torch.nn.functional.one_hot(dt, V).float()
        if self.q is None:
            return onehot
        det = to_device([s == "lookup" for s in self.source], dt.device, torch.bool)[:, None, None]
        return torch.where(det, onehot, self.q[:, :K].to(onehot.dtype))


def judged_accepted(own: list[int], n_accept: list[int], committed: list[int]) -> tuple[list[int], list[int]]:
    """Own drafts judged (up to and including the first rejection, within what the row committed) and
    accepted, per row."""
    judged = [min(a + 1, k, c) for a, k, c in zip(n_accept, own, committed)]
    return judged, [min(a, j) for a, j in zip(n_accept, judged)]


class Proposer:
    """Interface; the default proposes nothing."""

    name = ""
    policy: DraftPolicy | None = None

    def start(
        self, state: BatchState, encoder_kwargs: dict | None = None, source_tokens: list[list[int]] | None = None
    ) -> None:
        self.state = state

    def propose(self, state: BatchState, allowed: list[bool] | None = None) -> Proposal:
        return Proposal.empty(state.B)

    def settle(self, n_accept: list[int], committed: list[int], before: list[int], width: int) -> None:
        pass

    def budgets(self, state: BatchState, allowed: list[bool] | None) -> tuple[list[int], list[bool]]:
        """Per row, the drafts the policy allows this round (it decides per prompt; with num_drafts each of
        the prompt's M rows gets that budget) and whether the round is one of its probes."""
        remaining = state.remaining()
        if allowed is not None:
            remaining = [n if a else 0 for n, a in zip(remaining, allowed)]
        budget = state.expand(self.policy.budgets(state.lead(remaining)))
        probing = self.policy.probing
        return budget, (state.expand(probing) if isinstance(probing, list) else [bool(probing)] * state.B)

    def select_rows(self, pick: list[int]) -> None:
        pass

    def finish(self) -> None:
        """The call ended (normally or not): release what `start` took."""

    def describe(self) -> dict:
        return {"policy": "large model only"}


class ModelProposer(Proposer):
    """The small model drafts up to its policy's budget per row; the policy stops a row (fallback, or
    enough). One host read per draft step: tokens, the policy's answers and the confidences together."""

    name = "small"

    def __init__(
        self,
        adapter: ModelAdapter,
        policy: DraftPolicy,
        processors,
        do_sample: bool,
        keep_q: bool,
        fill: bool,
        stats,
        batch_slot: tuple[int, int] | None = None,
    ):
        """processors: transformers' logits processors (applied to the draft's scores too); keep_q: return
        the draft probabilities (sampling under a lossless rule); fill: batch fill; batch_slot: see
        `RowProcessors`."""
        self.adapter, self.policy, self.do_sample, self.keep_q, self.fill = adapter, policy, do_sample, keep_q, fill
        self.processors_arg, self.stats, self.batch_slot = processors, stats, batch_slot

    def start(self, state, encoder_kwargs=None, source_tokens=None):
        self.state = state
        self.reader = CacheReader(self.adapter, state)
        self.processors = RowProcessors(self.processors_arg, state, self.batch_slot)
        self.adapter.start(state.B, state.device, encoder_kwargs)
        self.round = None

    def propose(self, state, allowed=None):
        budget, probing = self.budgets(state, allowed)
        if not any(budget):  # nothing to draft: no forward
            self.round = None
            empty = Proposal.empty(state.B)
            empty.probing = probing
            return empty
        self.round = d = self._draft(budget)
        return Proposal(d.drafts, d.own, ["small" if x else "" for x in d.drafts], budget, probing, d.q)

    def _draft(self, budget: list[int]) -> _Draft:
        """In a batch under exact verification a row that stopped keeps drafting while another row still
        drafts (batch fill); BiLD's rollback rule would accept those, so it does not fill. Every row feeds a
        token at every step (a row that stopped feeds one that `settle` drops: a masked slot where the model
        takes positions, a token otherwise, so draft steps keep "aligned" rows contiguous)."""
        st, B = self.state, self.state.B
        logits, offset, _, n = self.reader.catch_up()
        logits = CacheReader.last(logits, offset, n)
        drafts, read, qs = [[] for _ in range(B)], [0] * B, []
        conf_h: list[list[float]] = [[] for _ in range(B)]
        own = [0] * B
        active = [b > 0 for b in budget]  # rows drafting this step
        driving = list(active)  # rows writing their own draft: the batch drafts while one is left
        fill = self.fill and B > 1
        first_conf, steps = None, 1
        for j in range(max(budget)):
            probs = self.processors(logits, drafts).softmax(-1)
            # NaN or +inf in a row's logits (an fp16 overflow, a broken draft) make its probabilities NaN: the row's
            # draft ends there (its token is dropped, the large model writes the next one); a uniform stand-in keeps
            # sampling and the policy away from the NaN (a softmax with a NaN has NaN everywhere)
            bad = probs.isnan().any(-1)
            probs = probs.nan_to_num(nan=1.0 / probs.shape[-1])
            tok = torch.multinomial(probs, 1).squeeze(-1) if self.do_sample else probs.argmax(-1)
            conf = probs.max(-1).values
            live = to_device([d and a for d, a in zip(driving, active)], st.device)
            keep, more = self.policy.step(j, conf, live)
            keep, more = keep & ~bad, more & ~bad
            tok_l, keep_l, more_l, conf_l, bad_l = torch.stack(
                [tok.double(), keep.double(), more.double(), conf.double(), bad.double()]
            ).tolist()  # one read
            if self.adapter.read_clock is not None:  # the step's forward has run (an asynchronous device)
                self.adapter.read_clock.read()
            if any(bad_l):
                self._non_finite(st.lead([a and b > 0 for a, b in zip(active, bad_l)]))
            if first_conf is None:
                first_conf = [c if a and not b else None for c, a, b in zip(conf_l, active, bad_l)]
            mine = [a and d and k > 0 for a, d, k in zip(active, driving, keep_l)]
            self.stats.fallbacks += sum(
                a and d and not k and not b
                for a, d, k, b in zip(*(st.lead(x) for x in (active, driving, keep_l, bad_l)))
            )
            driving = [m and x > 0 for m, x in zip(mine, more_l)]
            any_driving = any(driving)
            if self.keep_q:
                qs.append(probs)
            for r in range(B):
                own[r] += mine[r]
                take = mine[r] or (fill and active[r] and any_driving and not bad_l[r])
                if take:
                    drafts[r].append(int(tok_l[r]))
                    conf_h[r].append(conf_l[r])
                active[r] = take and len(drafts[r]) < budget[r] and int(tok_l[r]) not in st.eos_ids
                driving[r] = driving[r] and active[r]
            if not any(driving):
                break
            for r in range(B):
                read[r] += active[r]
            filler = not self.adapter.masks_filler  # rows that stopped feed a token `settle` drops
            logits = self.adapter.feed(tok[:, None], [[a or filler] for a in active], keep=1)[:, -1]
            steps += 1
        return _Draft(drafts, torch.stack(qs, 1) if qs else None, read, own, conf_h, first_conf, steps)

    def _non_finite(self, rows: list[bool]) -> None:
        """Count draft steps with non-finite logits; warn at the call's first."""
        if not any(rows):
            return
        if not self.stats.nonfinite_drafts:
            warnings.warn(
                "the small model's logits hold NaN or inf: those draft steps are dropped and the large "
                "model writes the tokens (the output is unchanged; counted in "
                "GenerationStats.nonfinite_drafts). Check the draft model's weights and dtype.",
                BiLDRuntimeWarning,
                stacklevel=2,
            )
        self.stats.nonfinite_drafts += sum(rows)

    def settle(self, n_accept, committed, before, width):
        d = self.round
        if d is None:  # no draft: the cache catches up at the next draft
            return
        self.reader.keep(self._kept(before, d.read, n_accept))
        judged, accepted = judged_accepted(d.own, n_accept, committed)
        lead = self.state.lead
        self.policy.learn(
            RoundRecord(
                conf=lead(d.conf),
                first_conf=lead(d.first_conf),
                drafted=lead(d.own),
                judged=lead(judged),
                accepted=lead(accepted),
                committed=lead(committed),
                small_steps=d.steps,
                width=width,
            )
        )

    def _kept(self, before: list[int], read: list[int], n_accept: list[int]) -> list[int]:
        """Per row, the committed columns the cache keeps after a round: what it held, plus the accepted drafts it
        read (`read[r]` drafts were fed)."""
        return [b + min(r, a) for b, r, a in zip(before, read, n_accept)]

    def select_rows(self, pick):
        self.reader.select_rows(pick)
        d = self.round
        if d is not None:
            d.read, d.own, d.conf, d.first_conf = ([x[c] for c in pick] for x in (d.read, d.own, d.conf, d.first_conf))

    def describe(self):
        return self.policy.describe()


class FeatureProposer(ModelProposer):
    """The small model is a `FeatureDraft` (EAGLE): for the call it is bound to the large model's adapter,
    whose forwards record the features of the tokens they read (`bild.feature_draft.FeatureStore`)."""

    def __init__(self, *args, large: ModelAdapter, **kwargs):
        super().__init__(*args, **kwargs)
        self.large = large

    def start(self, state, encoder_kwargs=None, source_tokens=None):
        self.adapter.model.bind(self.large, self.adapter)
        super().start(state, encoder_kwargs, source_tokens)

    def _kept(self, before, read, n_accept):
        """Drafts were read with the draft's own features: the cache keeps only the committed columns it read
        with the large model's (`before`), and re-reads accepted drafts with those at the next catch-up, as
        EAGLE does (one more token per draft in the catch-up pass)."""
        return list(before)

    def finish(self):
        self.adapter.model.unbind()


@dataclass
class _Draft:
    """What the small model's draft steps left (B rows): drafts, q [B, steps, V] (exact sampling only),
    read[r] drafts in its cache, own[r] drafts before the policy stopped the row, conf[r] its top
    probability at each draft, first_conf[r] at the first step (None: the row did not draft), steps."""

    drafts: list[list[int]]
    q: torch.Tensor | None
    read: list[int]
    own: list[int]
    conf: list[list[float]]
    first_conf: list[float | None]
    steps: int


class PromptLookupProposer(Proposer):
    """Prompt lookup (transformers' `prompt_lookup_num_tokens`, vLLM's `ngram`): for n from
    `max_ngram` down to 1, find the first earlier occurrence of the row's last n tokens in its own tokens
    (for encoder-decoders, the encoder input first) and draft what followed it, up to the policy's budget.

    The policy sees a "confidence" that is the draft's position and the match's n-gram size, binned:
    bin = min(j, 4) + 5 * (n == 1), so an adaptive policy learns acceptance per position and kind of match
    (a copy's first token is the uncertain one; once it holds the next ones usually follow). Drafts are
    deterministic (q is one-hot). No device work: an incremental n-gram index per row on the host."""

    name = "lookup"
    NO_SOURCE = -1  # separates the encoder input from the decoder's tokens (no n-gram spans the two)

    def __init__(self, policy: DraftPolicy, max_ngram: int = 2):
        self.policy, self.max_ngram = policy, max_ngram

    def start(self, state, encoder_kwargs=None, source_tokens=None):
        self.state = state
        self.source = [list(s) + [self.NO_SOURCE] for s in source_tokens] if source_tokens else [[]] * state.B
        self.index: list[dict] = [{} for _ in range(state.B)]  # n-gram -> end of its first occurrence
        self.indexed = [0] * state.B  # corpus positions indexed, per row
        self.round = None

    def _corpus(self, r: int, tokens: list[int]) -> list[int]:
        return self.source[r] + tokens

    def _match(self, r: int, corpus: list[int], budget: int) -> tuple[list[int], int]:
        """(continuation of the row's last n-gram, n) for the largest n with an earlier occurrence."""
        idx, L = self.index[r], len(corpus)
        for i in range(self.indexed[r], L):  # index the n-grams ending at the new positions (first occurrence)
            for n in range(1, self.max_ngram + 1):
                if i + 1 >= n:
                    idx.setdefault(tuple(corpus[i + 1 - n : i + 1]), i + 1)
        self.indexed[r] = L
        for n in range(min(self.max_ngram, L), 0, -1):
            end = idx.get(tuple(corpus[L - n :]))
            if end is not None and end < L:
                cont = corpus[end : end + budget]
                stop = next((j for j, t in enumerate(cont) if t == self.NO_SOURCE or t in self.state.eos_ids), None)
                if stop is not None:  # no draft across the source's end, none past an eos (as transformers)
                    cont = cont[:stop]
                return cont, n  # the first earlier occurrence of the longest n-gram decides, as in transformers
        return [], 0

    @staticmethod
    def confidence(j: int, n: int) -> float:
        return (min(j, 4) + 5 * (n == 1) + 0.5) / 10

    def propose(self, state, allowed=None):
        B = state.B
        budget, probing = self.budgets(state, allowed)
        tokens = state.tokens() if any(budget) else None
        cands, ngram = [[] for _ in range(B)], [0] * B
        for r in range(B):
            if budget[r]:
                cands[r], ngram[r] = self._match(r, self._corpus(r, tokens[r]), budget[r])
        drafts, conf = self._cut(cands, ngram)
        self.round = (drafts, conf, [c[0] if c else None for c in conf])
        src = ["lookup" if d else "" for d in drafts]
        return Proposal(drafts, [len(d) for d in drafts], src, budget, probing)

    def _cut(self, cands: list[list[int]], ngram: list[int]):
        """The policy's cut of each row's candidate (`DraftPolicy.cut`, host tensors: no device read)."""
        B, K = len(cands), max((len(c) for c in cands), default=0)
        drafts, conf = [[] for _ in range(B)], [[] for _ in range(B)]
        if K == 0:
            return drafts, conf
        c = torch.tensor([[self.confidence(j, n) for j in range(K)] for n in ngram], dtype=torch.float32)
        live = torch.arange(K)[None, :] < torch.tensor([len(x) for x in cands])[:, None]
        kept = self.policy.cut(c, live).cumprod(1).sum(1).tolist()  # the kept prefix
        for r in range(B):
            drafts[r], conf[r] = cands[r][: kept[r]], c[r, : kept[r]].tolist()
        return drafts, conf

    def settle(self, n_accept, committed, before, width):
        drafts, conf, first = self.round
        own = [len(d) for d in drafts]
        if not any(own):
            self.policy.no_draft(committed, width)  # no lookup draft (width 0: a plain round)
            return
        judged, accepted = judged_accepted(own, n_accept, committed)
        self.policy.learn(
            RoundRecord(
                conf=conf,
                first_conf=first,
                drafted=own,
                judged=judged,
                accepted=accepted,
                committed=committed,
                small_steps=0,
                width=width,
            )
        )

    def describe(self):
        return {**self.policy.describe(), "max_matching_ngram_size": self.max_ngram}


class CombinedProposer(Proposer):
    """Prompt lookup where it proposes a draft, the small model for the other rows (one verify pass)."""

    name = "combined"

    def __init__(self, lookup: PromptLookupProposer, model: ModelProposer):
        self.lookup, self.model = lookup, model

    def start(self, state, encoder_kwargs=None, source_tokens=None):
        self.state = state
        self.lookup.start(state, None, source_tokens)
        self.model.start(state, encoder_kwargs)

    def propose(self, state, allowed=None):
        a = self.lookup.propose(state, allowed)
        rest = [not d and (allowed is None or allowed[r]) for r, d in enumerate(a.drafts)]
        b = self.model.propose(state, rest)
        from_lookup = [bool(d) for d in a.drafts]
        merged = [
            [x if f else y for x, y, f in zip(u, v, from_lookup)]
            for u, v in (
                (a.drafts, b.drafts),
                (a.own, b.own),
                (a.source, b.source),
                (a.budget, b.budget),
                (a.probing, b.probing),
            )
        ]
        return Proposal(*merged, q=b.q)

    def settle(self, n_accept, committed, before, width):
        self.lookup.settle(n_accept, committed, before, width)
        self.model.settle(n_accept, committed, before, width)

    def finish(self):
        self.model.finish()

    def describe(self):
        return {"policy": "combined", "lookup": self.lookup.describe(), "small": self.model.describe()}

"""The draft-then-verify loop shared by BiLD, speculative decoding and Decoding-UNO.

One round, per row of the batch:
  draft     the small model writes tokens from its own cache until its top probability falls below
            `fallback_threshold` (fallback: that token is dropped) or `max_small_steps` are written;
            in a batch under exact verification, a row that fell back drafts on while another row
            drafts (those slots are computed anyway)
  verify    the large model reads every unchecked token in ONE forward pass
  accept    a verification rule (see `verification.py`) keeps a prefix of the draft and picks the
            large model's next token (rollback replaces the first rejected draft)
  commit    tokens go to the output; both caches keep exactly the committed prefix they have read

The first new token comes from the large model's prefill. Model families are hidden behind
`ModelAdapter`; this module only handles token ids, probabilities and per-row bookkeeping.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList

from .adapters import ModelAdapter
from .stats import GenerationStats
from .verification import verify_exact_greedy, verify_exact_sampling, verify_rollback


@dataclass
class DecodeOptions:
    fallback_threshold: float = 0.6
    rollback_threshold: float = 5.0
    max_small_steps: int = 10
    verification: str = "rollback"  # "rollback" | "exact"
    uno_epsilon: float = 0.0
    draft_schedule: str = "constant"  # "constant" | "heuristic"

    @property
    def uses_small(self) -> bool:
        """A fallback threshold of 1 (or more) means the large model writes every token."""
        return self.fallback_threshold < 1.0


class DraftVerifyLoop:
    """Runs one batched `generate` call. Tensor shapes: B rows, P prompt columns, V vocabulary."""

    fill_batch_drafts = True  # see `_draft`; False drafts every row as it would alone (for measurements)

    def __init__(self, small: ModelAdapter | None, large: ModelAdapter, opts: DecodeOptions, generation_config,
                 logits_processor, stopping_criteria, streamer=None, stats: GenerationStats | None = None):
        self.small, self.large, self.opts = small if opts.uses_small else None, large, opts
        self.do_sample = bool(generation_config.do_sample)
        self.processors = logits_processor if logits_processor is not None else []
        # length and eos are enforced exactly by the loop; other criteria are checked token by token
        self.stopping = StoppingCriteriaList(
            [c for c in (stopping_criteria or []) if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria))])
        self.streamer = streamer
        self.stats = stats if stats is not None else GenerationStats()
        eos = getattr(generation_config, "_eos_token_tensor", None)
        if eos is None and generation_config.eos_token_id is not None:
            eos = torch.tensor(generation_config.eos_token_id).reshape(-1)
        self.eos = eos
        self.eos_ids = set() if eos is None else set(eos.reshape(-1).tolist())
        pad = generation_config.pad_token_id
        if pad is None and eos is not None and eos.numel():
            pad = int(eos.reshape(-1)[0])
        self.pad = 0 if pad is None else int(pad)
        self.keep_scores = bool(generation_config.return_dict_in_generate and generation_config.output_scores)
        self.keep_logits = bool(generation_config.return_dict_in_generate and generation_config.output_logits)

    # -- public -------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, max_new_tokens: int,
            encoder_kwargs: tuple[dict, dict] | None = None):
        """input_ids [B, P] (decoder-only: the prompt; encoder-decoder: the decoder start ids).

        Returns sequences [B, P + T] (rows that stopped early are padded) and, per row, the lists of
        processed scores and raw logits of each new token (empty unless asked for).
        """
        B, P = input_ids.shape
        dev = input_ids.device
        self.P, self.B, self.max_new = P, B, max_new_tokens
        if self.eos is not None:
            self.eos = self.eos.to(dev)
        self.seqs = torch.full((B, P + max_new_tokens), self.pad, dtype=torch.long, device=dev)
        self.seqs[:, :P] = input_ids
        self.seq_valid = torch.ones(B, P + max_new_tokens, dtype=torch.bool, device=dev)
        if attention_mask is not None:
            self.seq_valid[:, :P] = attention_mask.bool()
        self.cur = [P] * B  # committed length per row
        self.fed = {id(a): [0] * B for a in (self.small, self.large) if a is not None}
        self.done = [False] * B
        self.scores = [[] for _ in range(B)]
        self.raw = [[] for _ in range(B)]
        self.sources = self.stats.token_sources = [[] for _ in range(B)]
        self.budget = [self.opts.max_small_steps] * B
        self.large.start(B, dev, encoder_kwargs[1] if encoder_kwargs else None)
        if self.small is not None:
            self.small.start(B, dev, encoder_kwargs[0] if encoder_kwargs else None)

        logits, offset, _, n = self._catch_up(self.large)  # prefill
        logits = self._last(logits, offset, n)
        processed = self._process_rows(lambda: [self._row(r) for r in range(B)], logits)
        first = self._choose(processed)
        self._commit([[int(first[r])] for r in range(B)], processed[:, None], logits[:, None], [0] * B)
        while not all(self.done):
            self._round()
        if self.streamer is not None:
            self.streamer.end()
        T = max(c - P for c in self.cur)
        return self.seqs[:, : P + T], self.scores, self.raw

    # -- one round ----------------------------------------------------------------------------------
    def _round(self) -> None:
        o, B, dev = self.opts, self.B, self.seqs.device
        remaining = [self.max_new - (c - self.P) for c in self.cur]
        budget = [0 if self.done[r] else max(0, min(self.budget[r], remaining[r] - 1)) for r in range(B)]
        drafting = self.small is not None and any(budget)
        drafts, q, read = self._draft(budget) if drafting else ([[] for _ in range(B)], None, None)
        p_logits, p_raw = self._verify(drafts)
        n_draft = torch.tensor([len(x) for x in drafts], device=dev)
        d = torch.full((B, p_logits.shape[1] - 1), self.pad, dtype=torch.long, device=dev)
        for r, x in enumerate(drafts):
            if x:
                d[r, : len(x)] = torch.tensor(x, dtype=torch.long, device=dev)
        p = p_logits.softmax(-1) if self.do_sample or o.verification == "rollback" else p_logits
        if not any(drafts):  # nothing to check: the large model writes the next token
            n_acc, nxt = torch.zeros(B, dtype=torch.long, device=dev), self._choose(p_logits[:, 0])
        elif o.verification == "rollback":
            n_acc, nxt = verify_rollback(d, n_draft, p, o.rollback_threshold, self.do_sample)
        elif self.do_sample:
            n_acc, nxt = verify_exact_sampling(d, n_draft, p, q, o.uno_epsilon)
        else:
            n_acc, nxt = verify_exact_greedy(d, n_draft, p)
        n_acc, nxt = n_acc.tolist(), nxt.tolist()
        new = []
        for r in range(B):
            k, a = len(drafts[r]), n_acc[r]
            new.append([] if self.done[r] else drafts[r][:a] + [nxt[r]])
            self.stats.drafted += k
            self.stats.accepted += a
            self.stats.rollbacks += int(a < k)
            if o.draft_schedule == "heuristic" and k:
                self.budget[r] = self.budget[r] + 2 if a == k == budget[r] else max(1, self.budget[r] - 1)
        before = list(self.cur)
        self._commit(new, p_logits, p_raw, n_acc)
        self._keep(self.large, [before[r] + n_acc[r] for r in range(B)])
        if drafting:
            self._keep(self.small, [before[r] + min(read[r], n_acc[r]) for r in range(B)])

    def _draft(self, budget: list[int]):
        """Small model drafts up to budget[r] tokens per row, stopping a row at fallback or eos.

        Returns the drafts, q [B, K, V] (probabilities each draft was drawn from; exact sampling only)
        and how many drafts of each row the small model has read into its cache."""
        B, thr, dev = self.B, self.opts.fallback_threshold, self.seqs.device
        logits, offset, _, n = self._catch_up(self.small)
        logits = self._last(logits, offset, n)
        drafts, read, qs = [[] for _ in range(B)], [0] * B, []
        active = torch.tensor([b > 0 for b in budget], device=dev)  # rows drafting this step
        driving = active.clone()  # rows that have not fallen back: the batch drafts while one is left
        # Exact verification, batch > 1: a row that fell back keeps drafting while another row drives.
        # Its tokens fill slots the batched small step and verify pass compute anyway, and the exact
        # check keeps the output unchanged. (BiLD's rollback rule would accept them: not done there.)
        fill = self.fill_batch_drafts and B > 1 and self.opts.verification == "exact"
        for _ in range(max(budget)):
            probs = self._process_rows(lambda: [self._row(r, drafts[r]) for r in range(B)], logits).softmax(-1)
            tok = torch.multinomial(probs, 1).squeeze(-1) if self.do_sample else probs.argmax(-1)
            low = probs.max(-1).values < thr
            fell_back = driving & low
            driving = driving & ~low
            take = active & (driving | driving.any()) if fill else active & driving
            if self.do_sample and self.opts.verification == "exact":
                qs.append(probs)
            self.stats.fallbacks += int(fell_back.sum())
            tok_l, take_l = tok.tolist(), take.tolist()
            for r in range(B):
                if take_l[r]:
                    drafts[r].append(tok_l[r])
            active = take & torch.tensor([len(drafts[r]) < budget[r] for r in range(B)], device=dev)
            if self.eos is not None:
                active &= ~torch.isin(tok, self.eos)
            driving &= active
            if not bool(driving.any()):
                break
            for r, a in enumerate(active.tolist()):
                read[r] += a
            logits = self.small.feed(tok[:, None], active[:, None], keep=1)[:, -1]
        return drafts, (torch.stack(qs, 1) if qs else None), read

    def _verify(self, drafts: list[list[int]]):
        """Large model reads each row's last committed token and its drafts in ONE forward pass.

        Returns processed and raw logits [B, K+1, V]: column j is the distribution for draft j, column
        len(drafts[r]) the one after row r's last draft."""
        K = max(len(x) for x in drafts)
        logits, offset, m, _ = self._catch_up(self.large, drafts)
        self.stats.verify_lengths.append(logits.shape[1] + offset)
        B, V = self.B, logits.shape[-1]
        idx = torch.tensor([[min(max(m[r] - 1 + j - offset, 0), logits.shape[1] - 1) for j in range(K + 1)]
                            for r in range(B)], device=logits.device)
        raw = logits.gather(1, idx[..., None].expand(B, K + 1, V))
        if not len(self.processors):
            return raw, raw
        processed = raw.clone()
        for j in range(K + 1):
            processed[:, j] = self._process_rows(lambda: [self._row(r, drafts[r][:j]) for r in range(B)], raw[:, j])
        return processed, raw

    # -- helpers ------------------------------------------------------------------------------------
    def _row(self, r: int, extra: list[int] | None = None) -> torch.Tensor:
        """Committed tokens of row r (prompt included), plus `extra` drafts: what logits processors see."""
        row = self.seqs[r, : self.cur[r]]
        if extra:
            row = torch.cat([row, torch.tensor(extra, dtype=torch.long, device=row.device)])
        return row

    def _process_rows(self, rows, scores: torch.Tensor) -> torch.Tensor:
        """Apply the logits processors to scores [B, V] given each row's prefix (`rows()` returns them;
        it is only called when there are processors).

        Processors take a rectangular [B, L] batch (some keep per-row state), so rows of different
        lengths are processed in one call per distinct length, the other rows filled in and ignored."""
        if not len(self.processors):
            return scores
        rows = rows()
        lengths = [len(x) for x in rows]
        if len(set(lengths)) == 1:
            return self.processors(torch.stack(rows), scores)
        out = torch.empty_like(scores)
        for L in sorted(set(lengths)):
            ids = torch.full((len(rows), L), self.pad, dtype=torch.long, device=scores.device)
            for r, x in enumerate(rows):
                n = min(L, len(x))
                ids[r, L - n:] = x[len(x) - n:]
            sel = torch.tensor([n == L for n in lengths], device=scores.device)
            out[sel] = self.processors(ids, scores.clone())[sel]
        return out

    @staticmethod
    def _last(logits: torch.Tensor, offset: int, n: list[int]) -> torch.Tensor:
        """logits [B, keep, V] from `_catch_up` -> [B, V] after each row's last fed token."""
        idx = torch.tensor([max(x - 1 - offset, 0) for x in n], device=logits.device)
        return logits[torch.arange(len(n), device=logits.device), idx]

    def _choose(self, scores: torch.Tensor) -> torch.Tensor:
        if self.do_sample:
            return torch.multinomial(scores.softmax(-1), 1).squeeze(-1)
        return scores.argmax(-1)

    def _catch_up(self, adapter: ModelAdapter, extra: list[list[int]] | None = None):
        """Feed each row the committed tokens this model has not read, then `extra` (drafts), left-aligned
        in one forward pass. Returns logits [B, keep, V], the first fed position they cover (`offset`),
        m[r] committed tokens fed and n[r] tokens fed in all, for row r."""
        fed, B, dev = self.fed[id(adapter)], self.B, self.seqs.device
        m = [0 if self.done[r] else self.cur[r] - fed[r] for r in range(B)]
        k = [len(extra[r]) if extra is not None and not self.done[r] else 0 for r in range(B)]
        n = [m[r] + k[r] for r in range(B)]
        width = max(n)
        ids = torch.full((B, width), self.pad, dtype=torch.long, device=dev)
        val = torch.zeros(B, width, dtype=torch.bool, device=dev)
        for r in range(B):
            if m[r]:
                ids[r, : m[r]] = self.seqs[r, fed[r] : self.cur[r]]
                val[r, : m[r]] = self.seq_valid[r, fed[r] : self.cur[r]]
            if k[r]:
                ids[r, m[r] : n[r]] = torch.tensor(extra[r], dtype=torch.long, device=dev)
                val[r, m[r] : n[r]] = True
            fed[r] = self.cur[r]
        # logits are needed from the last committed token on (the first is where drafts are predicted)
        offset = min(m[r] - 1 if extra is not None else n[r] - 1 for r in range(B) if n[r])
        logits = adapter.feed(ids, val, keep=width - offset)
        return logits, offset, m, n

    def _keep(self, adapter: ModelAdapter, read: list[int]) -> None:
        """Roll the cache back: row r keeps the first read[r] committed columns it has read (prompt
        padding included, which holds no token)."""
        fed = self.fed[id(adapter)]
        counts = []
        for r in range(self.B):
            fed[r] = read[r]
            counts.append(int(self.seq_valid[r, : read[r]].sum()))
        adapter.keep_first(torch.tensor(counts, device=adapter.n_valid.device))

    def _commit(self, new: list[list[int]], processed: torch.Tensor, raw: torch.Tensor, drafted: list[int]) -> None:
        """Append each row's new tokens, stopping at eos, the length limit or a stopping criterion.
        The first drafted[r] tokens of row r were written by the small model."""
        for r in range(self.B):
            if self.done[r] or not new[r]:
                continue
            for j, tok in enumerate(new[r]):
                self.seqs[r, self.cur[r]] = tok
                self.cur[r] += 1
                self.stats.new_tokens += 1
                self.sources[r].append("small" if j < drafted[r] else "large")
                if self.keep_scores:
                    self.scores[r].append(processed[r, j])
                if self.keep_logits:
                    self.raw[r].append(raw[r, j])
                if self.streamer is not None:
                    self.streamer.put(torch.tensor([tok]))
                stop = tok in self.eos_ids or self.cur[r] - self.P >= self.max_new
                if not stop and len(self.stopping):
                    stop = bool(self.stopping(self.seqs[r : r + 1, : self.cur[r]], None).any())
                if stop:
                    self.done[r] = True
                    break

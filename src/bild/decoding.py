"""The draft-then-verify loop shared by BiLD, speculative decoding, Decoding-UNO/OPT and batch speculative
decoding (the papers' Algorithm 1; Yin et al.'s Algorithm 4 with `num_drafts`).

One round, per row of the batch:
  draft     the small model writes tokens from its own cache while the draft policy (`policies.py`)
            says so: BiLD's fallback drops a low-confidence token and hands over, the budget caps the
            draft's length; in a batch under exact verification, a row that stopped drafts on while
            another row drafts (those "batch fill" slots are computed anyway)
  verify    the large model reads every unchecked token in ONE forward pass
  accept    a verification rule (see `verification.py`) keeps a prefix of the draft and picks the
            large model's next token (rollback replaces the first rejected draft); with num_drafts = M,
            rows r*M .. r*M+M-1 hold M drafts of prompt r and the rule picks the one to follow
  commit    tokens go to the output; both caches keep exactly the committed prefix they have read

The first new token comes from the large model's prefill. Model families and cache layouts are hidden
behind `ModelAdapter`; this module handles token ids, probabilities and per-row bookkeeping, all of it on
the host: it reads the device once per draft step and once per round (tests/test_host_reads.py).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList

from .adapters import ModelAdapter, to_device
from .policies import DraftPolicy, RoundRecord
from .stats import GenerationStats
from .verification import verify_batch_drafts, verify_block, verify_exact_greedy, verify_exact_sampling, verify_rollback


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

    @property
    def exact_rule(self) -> bool:
        """A lossless rule ("exact", "block"): what it keeps never changes the output's distribution."""
        return self.verification in ("exact", "block")

    @property
    def uses_small(self) -> bool:
        """A fallback threshold of 1 (or more) means the large model writes every token."""
        return self.fallback_threshold == "auto" or self.fallback_threshold < 1.0


class DraftVerifyLoop:
    """Runs one batched `generate` call. Tensor shapes: B rows, P prompt columns, V vocabulary."""

    fill_batch_drafts = True  # see `_draft`; False drafts every row as it would alone (for measurements)

    def __init__(self, small: ModelAdapter | None, large: ModelAdapter, opts: DecodeOptions, policy: DraftPolicy,
                 generation_config, logits_processor, stopping_criteria, streamer=None,
                 stats: GenerationStats | None = None, batch_slot: tuple[int, int] | None = None):
        self.small, self.large, self.opts = small if opts.uses_small else None, large, opts
        self.policy = policy
        self.M = opts.num_drafts  # rows r*M .. r*M+M-1 hold prompt r (batch speculative decoding)
        # (row, batch size) when this loop decodes one row of a larger batch: logits processors built for
        # the whole batch (e.g. encoder-side ones) then see that row at its place in the batch
        self.batch_slot = batch_slot
        self.do_sample = bool(generation_config.do_sample)
        self.processors = logits_processor if logits_processor is not None else []
        # transformers stops on its criteria list alone, in which a user's EosTokenCriteria / MaxLengthCriteria
        # replace the ones built from the generation config: the loop enforces the list's eos and length
        # natively, and checks the other criteria token by token
        criteria = list(stopping_criteria or [])
        self.stopping = StoppingCriteriaList(
            [c for c in criteria if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria))])
        self.max_length = min((c.max_length for c in criteria if isinstance(c, MaxLengthCriteria)), default=None)
        self.streamer = streamer
        self.stats = stats if stats is not None else GenerationStats()
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
        if self.max_length is not None:  # the criteria list's length (a user's MaxLengthCriteria included)
            max_new_tokens = max(1, self.max_length - P)
        self.P, self.B, self.max_new = P, B, max_new_tokens
        self.seqs = torch.full((B, P + max_new_tokens), self.pad, dtype=torch.long, device=dev)
        self.seqs[:, :P] = input_ids
        # prompt padding, on the host (read once): which prompt columns hold a token, per row
        self.prompt_valid = ([[True] * P for _ in range(B)] if attention_mask is None
                             else [[bool(x) for x in row] for row in attention_mask.tolist()])
        # prompt_tokens[r][c]: tokens in row r's first c prompt columns (what a rollback to column c keeps)
        self.prompt_tokens = [list(itertools.accumulate(row, initial=0)) for row in self.prompt_valid]
        self.cur = [P] * B  # committed length per row
        self.fed = {id(a): [0] * B for a in (self.small, self.large) if a is not None}
        self.done = [False] * B
        self.scores = [[] for _ in range(B)]
        self.raw = [[] for _ in range(B)]
        self.sources = self.stats.token_sources = [[] for _ in range(B)]
        self.large.start(B, dev, encoder_kwargs[1] if encoder_kwargs else None)
        if self.small is not None:
            self.small.start(B, dev, encoder_kwargs[0] if encoder_kwargs else None)

        logits, offset, _, n = self._catch_up(self.large)  # prefill
        logits = self._last(logits, offset, n)
        processed = self._process_rows(lambda: [self._row(r) for r in range(B)], logits)
        first = self._choose(processed[:: self.M]).repeat_interleave(self.M).tolist()  # one token per prompt
        self._commit([[first[r]] for r in range(B)], processed[:, None], logits[:, None], [0] * B)
        while not all(self.done):
            self._round()
        if self.streamer is not None:
            self.streamer.end()
        T = max(c - P for c in self.cur)
        return self.seqs[:, : P + T], self.scores, self.raw

    # -- one round ----------------------------------------------------------------------------------
    def _round(self) -> None:
        """Draft, verify, accept, commit; then the policy learns what the large model judged.
        Host reads: one per draft step (in `_draft`) and one for the verdict."""
        B, dev = self.B, self.seqs.device
        remaining = [0 if self.done[r] else max(0, self.max_new - (c - self.P) - 1) for r, c in enumerate(self.cur)]
        if self.small is None:
            budget = [0] * B
        else:  # the policy decides per prompt; with num_drafts each of its M rows drafts that budget
            budget = [b for b in self.policy.budgets(remaining[:: self.M]) for _ in range(self.M)]
        drafting = any(budget)
        d = self._draft(budget) if drafting else None
        drafts = d.drafts if drafting else [[] for _ in range(B)]
        K = max(len(x) for x in drafts)
        dt = to_device([x + [self.pad] * (K - len(x)) for x in drafts], dev, torch.long).reshape(B, K)  # [B, K]
        p_logits, p_raw = self._verify(drafts, dt)
        n_acc, nxt, pick = self._accept(drafts, dt, p_logits, d.q if drafting else None)
        if pick is not None:  # batch speculative decoding: every draft of a prompt continues the chosen one
            idx = to_device(pick, dev)
            p_logits, p_raw = p_logits.index_select(0, idx), p_raw.index_select(0, idx)
            drafts = [drafts[c] for c in pick]
            for adapter in (self.large, self.small if drafting else None):
                if adapter is not None:
                    adapter.select_rows(pick)
            if drafting:
                d.read, d.own, d.conf, d.first_conf = ([x[c] for c in pick] for x in (d.read, d.own, d.conf,
                                                                                      d.first_conf))
        new = [[] if self.done[r] else drafts[r][: n_acc[r]] + [nxt[r]] for r in range(B)]
        before = list(self.cur)
        committed = self._commit(new, p_logits, p_raw, from_small=n_acc)
        self._keep(self.large, [before[r] + n_acc[r] for r in range(B)])
        if drafting:
            self._keep(self.small, [before[r] + min(d.read[r], n_acc[r]) for r in range(B)])
        own = d.own if drafting else [0] * B
        # own drafts judged: up to and including the first rejection, within what the row committed
        judged = [min(a + 1, k, c) for a, k, c in zip(n_acc, own, committed)]
        accepted = [min(a, j) for a, j in zip(n_acc, judged)]
        one = slice(None, None, self.M)  # with num_drafts, the M rows of a prompt now hold the same tokens
        self._count(budget[one], drafts[one], own[one], judged[one], accepted[one], n_acc[one], committed[one])
        if drafting:
            self.policy.learn(RoundRecord(conf=d.conf[one], first_conf=d.first_conf[one], drafted=own[one],
                                          judged=judged[one], accepted=accepted[one], committed=committed[one],
                                          small_steps=d.steps, width=p_logits.shape[1] - 1))

    def _accept(self, drafts: list[list[int]], dt: torch.Tensor, p_logits: torch.Tensor, q: torch.Tensor | None):
        """The verification rule (`verification.py`) over the round's drafts (dt: [B, K], padded). Returns
        host lists n_acc[r]
        (drafts kept) and nxt[r] (the large model's token after them), and `pick`: None, or with num_drafts
        the row whose draft each row continues (all rows of a prompt the chosen one)."""
        o, B, M, dev = self.opts, self.B, self.M, p_logits.device
        K = dt.shape[1]
        n_draft = to_device([len(x) for x in drafts], dev)
        if M > 1:  # Yin et al. Alg. 4: the rule works per prompt, over its M rows
            G, V = B // M, p_logits.shape[-1]
            p = p_logits.softmax(-1).reshape(G, M, K + 1, V)
            qm = q[:, :K].reshape(G, M, K, V) if K else p[:, :, :0]  # (a step where every row fell back adds a column)
            chosen, n_acc, nxt = verify_batch_drafts(dt.reshape(G, M, K), n_draft.reshape(G, M), p, qm)
            chosen, n_acc, nxt = torch.stack([chosen, n_acc, nxt]).tolist()  # the round's one read
            pick = [g * M + chosen[g] for g in range(G) for _ in range(M)]
            return [n_acc[r // M] for r in range(B)], [nxt[r // M] for r in range(B)], pick
        if not K:  # nothing to check: the large model writes the next token
            n_acc, nxt = torch.zeros(B, dtype=torch.long, device=dev), self._choose(p_logits[:, 0])
        # a probe round of the adaptive policy (drafting off, measuring) is judged by the exact rule under
        # greedy decoding: it measures acceptance without letting in a token the large model would not write
        elif o.verification == "rollback" and not all(exact_rows := self._probe_rows()):
            n_acc, nxt = verify_rollback(dt, n_draft, p_logits.softmax(-1), o.rollback_threshold, self.do_sample)
            if any(exact_rows):  # some rows probe (RowwisePolicy): those are judged exactly
                ex_acc, ex_nxt = verify_exact_greedy(dt, n_draft, p_logits)
                sel = to_device(exact_rows, dev, torch.bool)
                n_acc, nxt = torch.where(sel, ex_acc, n_acc), torch.where(sel, ex_nxt, nxt)
        elif self.do_sample and o.verification == "block":
            n_acc, nxt = verify_block(dt, n_draft, p_logits.softmax(-1), q)
        elif self.do_sample:
            n_acc, nxt = verify_exact_sampling(dt, n_draft, p_logits.softmax(-1), q, o.uno_epsilon or o.opt_epsilon,
                                               "target" if o.uno_epsilon else "residual")
        else:
            n_acc, nxt = verify_exact_greedy(dt, n_draft, p_logits)
        n_acc, nxt = torch.stack([n_acc, nxt]).tolist()  # the round's one read of the verdict
        return n_acc, nxt, None

    def _probe_rows(self) -> list[bool]:
        """Per row, whether this round only measures under greedy decoding (judged by the exact rule, so a
        probe never lets in a token the large model would not write). `policy.probing`: one flag for the
        batch (AdaptivePolicy) or one per row (RowwisePolicy)."""
        probing = self.policy.probing
        rows = probing if isinstance(probing, list) else [bool(probing)] * self.B
        return [p and not self.do_sample for p in rows]

    def _count(self, budget, drafts, own, judged, accepted, n_acc, committed) -> None:
        """Statistics of a round (definitions in `stats.py`). Only committed tokens count: a row that
        stopped part-way through its accepted drafts counts the drafts before the stop."""
        st = self.stats
        st.rounds += 1
        st.draft_budgets.append(max(budget))
        st.draftless_rounds += not any(drafts)
        for r in range(len(drafts)):
            if not drafts[r]:
                continue
            k, a, c = own[r], n_acc[r], committed[r]
            st.drafted += k
            st.judged += judged[r]
            st.accepted += accepted[r]
            st.rollbacks += int(a < k and a < c)
            st.fill_drafted += len(drafts[r]) - k
            st.fill_accepted += max(0, min(a, c) - k)

    def _draft(self, budget: list[int]) -> "Draft":
        """Small model drafts up to budget[r] tokens per row; the policy stops a row (fallback, or enough).

        In a batch under exact verification a row that stopped keeps drafting while another row still
        drafts ("batch fill": those slots are computed anyway, and the exact check keeps the output).
        BiLD's rollback rule would accept them, so it does not fill. Every row feeds a token at every step
        (a row that stopped feeds one that `_keep` drops: a masked slot where the model takes positions, a
        token otherwise, so draft steps keep "aligned" rows contiguous; `ModelAdapter.masks_filler`). One host read
        per step: the tokens, the policy's answers and the confidences, together."""
        B, dev = self.B, self.seqs.device
        logits, offset, _, n = self._catch_up(self.small)
        logits = self._last(logits, offset, n)
        drafts, read, qs = [[] for _ in range(B)], [0] * B, []
        conf_h: list[list[float]] = [[] for _ in range(B)]
        own = [0] * B  # each row's own drafts (before its stop)
        active = [b > 0 for b in budget]  # rows drafting this step
        driving = list(active)  # rows writing their own draft: the batch drafts while one is left
        fill = self.fill_batch_drafts and B > 1 and self.opts.exact_rule
        first_conf, steps = None, 1
        for j in range(max(budget)):
            probs = self._process_rows(lambda: [self._row(r, drafts[r]) for r in range(B)], logits).softmax(-1)
            tok = torch.multinomial(probs, 1).squeeze(-1) if self.do_sample else probs.argmax(-1)
            conf = probs.max(-1).values
            live = to_device([d and a for d, a in zip(driving, active)], dev)
            keep, more = self.policy.step(j, conf, live)
            tok_l, keep_l, more_l, conf_l = torch.stack([tok.double(), keep.double(), more.double(),
                                                         conf.double()]).tolist()  # the step's one read
            if first_conf is None:
                first_conf = [c if a else None for c, a in zip(conf_l, active)]
            mine = [a and d and k > 0 for a, d, k in zip(active, driving, keep_l)]
            self.stats.fallbacks += sum(a and d and not k for a, d, k in zip(active[:: self.M], driving[:: self.M],
                                                                          keep_l[:: self.M]))
            driving = [m and x > 0 for m, x in zip(mine, more_l)]
            any_driving = any(driving)
            if self.do_sample and self.opts.exact_rule:
                qs.append(probs)
            for r in range(B):
                own[r] += mine[r]
                take = mine[r] or (fill and active[r] and any_driving)
                if take:
                    drafts[r].append(int(tok_l[r]))
                    conf_h[r].append(conf_l[r])
                active[r] = take and len(drafts[r]) < budget[r] and int(tok_l[r]) not in self.eos_ids
                driving[r] = driving[r] and active[r]
            if not any(driving):
                break
            for r in range(B):
                read[r] += active[r]
            filler = not self.small.masks_filler  # rows that stopped feed a token `_keep` drops
            logits = self.small.feed(tok[:, None], [[a or filler] for a in active], keep=1)[:, -1]
            steps += 1
        return Draft(drafts, torch.stack(qs, 1) if qs else None, read, own, conf_h, first_conf, steps)

    def _verify(self, drafts: list[list[int]], dt: torch.Tensor):
        """Large model reads each row's last committed token and its drafts (dt: [B, K], padded) in ONE
        forward pass.

        Returns processed and raw logits [B, K+1, V]: column j is the distribution for draft j, column
        len(drafts[r]) the one after row r's last draft."""
        K = dt.shape[1]
        logits, offset, m, n = self._catch_up(self.large, drafts, dt)
        self.stats.verify_widths.append(logits.shape[1] + offset)
        self.stats.verify_lengths.extend(x for x in n[:: self.M] if x)
        B, V = self.B, logits.shape[-1]
        idx = to_device([[min(max(m[r] - 1 + j - offset, 0), logits.shape[1] - 1) for j in range(K + 1)]
                         for r in range(B)], logits.device)
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
            row = torch.cat([row, to_device(extra, row.device, torch.long)])
        return row

    def _process_rows(self, rows, scores: torch.Tensor) -> torch.Tensor:
        """Apply the logits processors to scores [B, V] given each row's prefix (`rows()` returns them;
        it is only called when there are processors).

        Processors take a rectangular [B, L] batch (some keep per-row state), so rows of different
        lengths are processed in one call per distinct length, the other rows filled in and ignored."""
        if not len(self.processors):
            return scores
        rows = rows()
        if self.M > 1:  # num_drafts: processors built for B prompts see, per draft index m, one row per prompt
            out = torch.empty_like(scores)
            for m in range(self.M):
                out[m :: self.M] = self._process_batch(rows[m :: self.M], scores[m :: self.M])
            return out
        return self._process_batch(rows, scores)

    def _process_batch(self, rows: list[torch.Tensor], scores: torch.Tensor) -> torch.Tensor:
        if self.batch_slot is not None:  # one row of a batch: give the processors the whole batch's shape
            r, B = self.batch_slot
            full = self.processors(rows[0].expand(B, -1), scores.expand(B, -1).clone())
            return full[r : r + 1]
        lengths = [len(x) for x in rows]
        if len(set(lengths)) == 1:
            return self.processors(torch.stack(rows), scores)
        out = scores
        for L in sorted(set(lengths)):
            ids = torch.full((len(rows), L), self.pad, dtype=torch.long, device=scores.device)
            for r, x in enumerate(rows):
                n = min(L, len(x))
                ids[r, L - n:] = x[len(x) - n:]
            sel = to_device([n == L for n in lengths], scores.device)
            out = torch.where(sel[:, None], self.processors(ids, scores.clone()), out)  # no mask indexing: no read
        return out

    @staticmethod
    def _last(logits: torch.Tensor, offset: int, n: list[int]) -> torch.Tensor:
        """logits [B, keep, V] from `_catch_up` -> [B, V] after each row's last fed token."""
        idx = to_device([max(x - 1 - offset, 0) for x in n], logits.device)
        return logits[torch.arange(len(n), device=logits.device), idx]

    def _choose(self, scores: torch.Tensor) -> torch.Tensor:
        if self.do_sample:
            return torch.multinomial(scores.softmax(-1), 1).squeeze(-1)
        return scores.argmax(-1)

    def _catch_up(self, adapter: ModelAdapter, extra: list[list[int]] | None = None,
                  extra_t: torch.Tensor | None = None):
        """Feed each row the committed tokens this model has not read, then `extra` (drafts; `extra_t` the
        same padded [B, K] on the device), left-aligned in one forward pass. Returns logits [B, keep, V], the first fed position they cover (`offset`),
        m[r] committed tokens fed and n[r] tokens fed in all, for row r."""
        fed, B, dev = self.fed[id(adapter)], self.B, self.seqs.device
        if extra is None and B > 1 and adapter.layout == "aligned":
            self._even_out(adapter)
        m = [0 if self.done[r] else self.cur[r] - fed[r] for r in range(B)]
        k = [len(extra[r]) if extra is not None and not self.done[r] else 0 for r in range(B)]
        n = [m[r] + k[r] for r in range(B)]
        width = max(n)
        # the padded input in a few tensor ops whatever B: committed tokens from each row's read point, then
        # its drafts from column m[r]; columns past n[r] are masked (finished rows: filler)
        col = torch.arange(width, device=dev)[None]
        ids = self.seqs.gather(1, (to_device(fed, dev)[:, None] + col).clamp(max=self.seqs.shape[1] - 1))
        if any(k):
            K = extra_t.shape[1]
            at = col - to_device(m, dev)[:, None]
            ids = torch.where((at >= 0) & (at < K), extra_t.gather(1, at.clamp(0, K - 1)), ids)
        valid = []
        for r in range(B):
            row = [c >= self.P or self.prompt_valid[r][c] for c in range(fed[r], self.cur[r])] if m[r] else []
            valid.append([not adapter.masks_filler] * width if self.done[r]
                         else row + [True] * k[r] + [False] * (width - n[r]))
            fed[r] = self.cur[r]
        # logits are needed from the last committed token on (the first is where drafts are predicted)
        offset = min(m[r] - 1 if extra is not None else n[r] - 1 for r in range(B) if n[r])
        logits = adapter.feed(ids, valid, keep=width - offset)
        return logits, offset, m, n

    def _even_out(self, adapter: ModelAdapter) -> None:
        """"aligned" layout: before a catch-up, live rows that have fewer committed tokens to read than others
        re-read their last ones (rolled back), so the pass leaves no masked slot and needs no re-pack
        after it (re-reading costs the same compute as the masked slots would)."""
        fed = self.fed[id(adapter)]
        live = [r for r in range(self.B) if not self.done[r]]
        want = max((self.cur[r] - fed[r] for r in live), default=0)
        read = [fed[r] if self.done[r] else min(fed[r], max(self.P, self.cur[r] - want)) for r in range(self.B)]
        if read != fed:
            self._keep(adapter, read)

    def _keep(self, adapter: ModelAdapter, read: list[int]) -> None:
        """Roll the cache back: row r keeps the first read[r] committed columns it has read (prompt
        padding included, which holds no token)."""
        fed, P = self.fed[id(adapter)], self.P
        for r in range(self.B):
            fed[r] = read[r]
        # a finished row keeps what it holds (its cache is never read again)
        adapter.keep_first([adapter.n_valid[r] if self.done[r] else self.prompt_tokens[r][min(n, P)] + max(0, n - P)
                            for r, n in enumerate(read)])

    def _commit(self, new: list[list[int]], processed: torch.Tensor, raw: torch.Tensor,
                from_small: list[int]) -> list[int]:
        """Append each row's new tokens, stopping at eos, the length limit or a stopping criterion.
        The first from_small[r] tokens of row r were written by the small model. Returns the number of
        tokens each row committed."""
        committed = [0] * self.B
        writes: tuple[list, list, list] = ([], [], [])  # (row, column, token) of every new token: one device write
        for r in range(self.B):
            if self.done[r] or not new[r]:
                continue
            for j, tok in enumerate(new[r]):
                if len(self.stopping):  # criteria read the sequence: it must be up to date
                    self.seqs[r, self.cur[r]] = tok
                else:
                    for w, x in zip(writes, (r, self.cur[r], tok)):
                        w.append(x)
                self.cur[r] += 1
                committed[r] += 1
                self.sources[r].append("small" if j < from_small[r] else "large")
                if self.keep_scores:  # a copy: a view would keep the round's whole [B, K+1, V] tensor alive
                    self.scores[r].append(processed[r, j].clone())
                if self.keep_logits:
                    self.raw[r].append(raw[r, j].clone())
                if self.streamer is not None and r % self.M == 0:
                    self.streamer.put(torch.tensor([tok]))
                stop = tok in self.eos_ids or self.cur[r] - self.P >= self.max_new
                if not stop and len(self.stopping):
                    stop = bool(self.stopping(self.seqs[r : r + 1, : self.cur[r]], processed[r : r + 1, j]).any())
                if stop:
                    self.done[r] = True
                    break
        if writes[0]:
            rows, cols, toks = (to_device(w, self.seqs.device) for w in writes)
            self.seqs[rows, cols] = toks
        if self.M > 1:  # the M rows of a prompt stop together, as its first row does (time-based criteria)
            for r in range(self.B):
                lead = r - r % self.M
                self.done[r], self.cur[r], committed[r] = self.done[lead], self.cur[lead], committed[lead]
        self.stats.new_tokens += sum(committed[:: self.M])
        return committed


@dataclass
class Draft:
    """What `_draft` returns (B rows, K = longest draft).

    drafts      per row, the drafted token ids (own drafts first, then batch-fill drafts)
    q           [B, K, V] small-model probabilities each draft was drawn from (exact sampling only)
    read        per row, drafts the small model has read into its cache
    own         per row, drafts the row wrote before the policy stopped it (the rest is batch fill)
    conf        per row, the small model's top probability at each of its drafts (host floats)
    first_conf  per row, the top probability at the first step (None for rows that did not draft)
    steps       small-model forwards this round
    """

    drafts: list[list[int]]
    q: torch.Tensor | None
    read: list[int]
    own: list[int]
    conf: list[list[float]]
    first_conf: list[float | None]
    steps: int

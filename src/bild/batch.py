"""Per-call state of the draft-then-verify loop, and each model's read point into it.

BatchState     what has been committed, per row: the output buffer `seqs` [B, P + T] on the device, and its
               host bookkeeping (committed length, stop flags, prompt padding); with `num_drafts` = M, rows
               r*M .. r*M+M-1 hold M drafts of prompt r (`lead` / `expand` convert per-prompt lists)
CacheReader    one model's KV cache over that state: `read[r]`, the committed columns of row r the cache has
               read (one unit for every model: columns of `seqs`, prompt padding included), with the three
               moves the loop makes: catch up (feed what is unread, plus drafts), keep (roll back), even out
RowProcessors  transformers' logits processors applied to rows of different lengths

Everything here is host bookkeeping; the device is read only where a docstring says so.
"""

from __future__ import annotations

import itertools

import torch

from .adapters import ModelAdapter
from .devices import to_device


class BatchState:
    """Committed tokens of B rows (P prompt columns, at most `max_new` new tokens each)."""

    def __init__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        max_new: int,
        pad: int,
        eos_ids: set[int],
        num_drafts: int = 1,
    ):
        B, P = input_ids.shape
        self.B, self.P, self.M, self.max_new, self.pad, self.eos_ids = B, P, num_drafts, max_new, pad, eos_ids
        self.device = input_ids.device
        self.seqs = torch.full((B, P + max_new), pad, dtype=torch.long, device=self.device)
        self.seqs[:, :P] = input_ids
        # prompt padding, on the host (the mask is read once): which prompt columns hold a token, per row
        self.prompt_valid = (
            [[True] * P for _ in range(B)]
            if attention_mask is None
            else [[bool(x) for x in row] for row in attention_mask.tolist()]
        )
        # prompt_tokens[r][c]: tokens in row r's first c prompt columns (what a cache that read c columns holds)
        self.prompt_tokens = [list(itertools.accumulate(row, initial=0)) for row in self.prompt_valid]
        self.cur = [P] * B  # committed columns per row
        self.done = [False] * B
        self.history: list[list[int]] | None = None  # host copy of each row's tokens, kept once asked for

    # -- rows --------------------------------------------------------------------------------------
    def remaining(self) -> list[int]:
        """Per row, drafts it may still write this round (its last new token is the large model's)."""
        return [0 if d else max(0, self.max_new - (c - self.P) - 1) for d, c in zip(self.done, self.cur)]

    def row(self, r: int, extra: list[int] | None = None) -> torch.Tensor:
        """Committed tokens of row r (prompt included), plus `extra` drafts: what logits processors see."""
        row = self.seqs[r, : self.cur[r]]
        if extra:
            row = torch.cat([row, to_device(extra, row.device, torch.long)])
        return row

    def tokens(self) -> list[list[int]]:
        """Host copy of each row's tokens (prompt padding left out), kept up to date by `commit`. The first
        call reads the buffer from the device once."""
        if self.history is None:
            rows = self.seqs.tolist()
            self.history = [
                [t for t, v in zip(row, valid) if v] + row[self.P : c]
                for row, valid, c in zip(rows, self.prompt_valid, self.cur)
            ]
        return self.history

    def cache_tokens(self, r: int, columns: int) -> int:
        """Tokens a cache holds after reading row r's first `columns` committed columns."""
        return self.prompt_tokens[r][min(columns, self.P)] + max(0, columns - self.P)

    # -- num_drafts grouping -------------------------------------------------------------------------
    def lead(self, per_row: list) -> list:
        """Per-row values -> one per prompt (its first row)."""
        return per_row[:: self.M]

    def expand(self, per_prompt: list) -> list:
        """One value per prompt -> one per row."""
        return [x for x in per_prompt for _ in range(self.M)]


class CacheReader:
    """One model's cache over a `BatchState`: `read[r]` committed columns of row r are in it."""

    def __init__(self, adapter: ModelAdapter, state: BatchState):
        self.adapter, self.state = adapter, state
        self.read = [0] * state.B

    def catch_up(self, extra: list[list[int]] | None = None, extra_t: torch.Tensor | None = None):
        """Feed each row the committed tokens this model has not read, then `extra` (drafts; `extra_t` the
        same padded [B, K] on the device), left-aligned in one forward pass. Returns logits [B, keep, V],
        the first fed position they cover (`offset`), m[r] committed tokens fed and n[r] tokens fed in all."""
        st, adapter, fed = self.state, self.adapter, self.read
        B, dev = st.B, st.device
        if extra is None and B > 1 and adapter.layout == "aligned":
            self.even_out()
        m = [0 if st.done[r] else st.cur[r] - fed[r] for r in range(B)]
        k = [len(extra[r]) if extra is not None and not st.done[r] else 0 for r in range(B)]
        n = [m[r] + k[r] for r in range(B)]
        width = max(n)
        # the padded input in a few tensor ops whatever B: committed tokens from each row's read point, then
        # its drafts from column m[r]; columns past n[r] are masked (finished rows: filler)
        col = torch.arange(width, device=dev)[None]
        ids = st.seqs.gather(1, (to_device(fed, dev)[:, None] + col).clamp(max=st.seqs.shape[1] - 1))
        if any(k):
            K = extra_t.shape[1]
            at = col - to_device(m, dev)[:, None]
            ids = torch.where((at >= 0) & (at < K), extra_t.gather(1, at.clamp(0, K - 1)), ids)
        valid = []
        for r in range(B):
            row = [c >= st.P or st.prompt_valid[r][c] for c in range(fed[r], st.cur[r])] if m[r] else []
            valid.append(
                [not adapter.masks_filler] * width if st.done[r] else row + [True] * k[r] + [False] * (width - n[r])
            )
            fed[r] = st.cur[r]
        # logits are needed from the last committed token on (the first is where drafts are predicted)
        offset = min(m[r] - 1 if extra is not None else n[r] - 1 for r in range(B) if n[r])
        logits = adapter.feed(ids, valid, keep=width - offset)
        return logits, offset, m, n

    @staticmethod
    def last(logits: torch.Tensor, offset: int, n: list[int]) -> torch.Tensor:
        """logits [B, keep, V] from `catch_up` -> [B, V] after each row's last fed token."""
        idx = to_device([max(x - 1 - offset, 0) for x in n], logits.device)
        return logits[torch.arange(len(n), device=logits.device), idx]

    def keep(self, read: list[int]) -> None:
        """Roll the cache back: row r keeps the first read[r] committed columns it has read."""
        st = self.state
        self.read[:] = read  # in place: `catch_up` holds this list across `even_out`
        # a finished row keeps what it holds (its cache is never read again)
        self.adapter.keep_first(
            [self.adapter.n_valid[r] if st.done[r] else st.cache_tokens(r, n) for r, n in enumerate(read)]
        )

    def even_out(self) -> None:
        """ "aligned" layout: before a catch-up, live rows with fewer committed tokens to read than others
        re-read their last ones (rolled back), so the pass leaves no masked slot and needs no re-pack after
        it (re-reading costs the same compute as the masked slots would)."""
        st, fed = self.state, self.read
        live = [r for r in range(st.B) if not st.done[r]]
        want = max((st.cur[r] - fed[r] for r in live), default=0)
        read = [fed[r] if st.done[r] else min(fed[r], max(st.P, st.cur[r] - want)) for r in range(st.B)]
        if read != fed:
            self.keep(read)

    def select_rows(self, rows: list[int]) -> None:
        """Row r continues from what row rows[r] holds (batch speculative decoding)."""
        self.adapter.select_rows(rows)
        self.read = [self.read[i] for i in rows]


class RowProcessors:
    """transformers' logits processors over rows of different lengths. Processors take a rectangular
    [B, L] batch (some keep per-row state), so rows are processed in one call per distinct length, the other
    rows filled in and ignored. `batch_slot` = (row, batch size) when the loop decodes one row of a larger
    batch: processors built for the whole batch (e.g. encoder-side ones) then see that row at its place."""

    def __init__(self, processors, state: BatchState, batch_slot: tuple[int, int] | None = None):
        self.processors = processors if processors is not None else []
        self.state, self.batch_slot = state, batch_slot

    def __len__(self) -> int:
        return len(self.processors)

    def __call__(self, scores: torch.Tensor, extra: list[list[int]] | None = None) -> torch.Tensor:
        """scores [B, V] after each row's committed tokens plus extra[r] (drafts) -> processed [B, V]."""
        if not len(self.processors):
            return scores
        st = self.state
        rows = [st.row(r, extra[r] if extra is not None else None) for r in range(st.B)]
        if st.M > 1:  # num_drafts: processors built for B prompts see, per draft index m, one row per prompt
            out = torch.empty_like(scores)
            for m in range(st.M):
                out[m :: st.M] = self._batch(rows[m :: st.M], scores[m :: st.M])
            return out
        return self._batch(rows, scores)

    def _batch(self, rows: list[torch.Tensor], scores: torch.Tensor) -> torch.Tensor:
        if self.batch_slot is not None:
            r, B = self.batch_slot
            full = self.processors(rows[0].expand(B, -1), scores.expand(B, -1).clone())
            return full[r : r + 1]
        lengths = [len(x) for x in rows]
        if len(set(lengths)) == 1:
            return self.processors(torch.stack(rows), scores)
        out = scores
        for L in sorted(set(lengths)):
            ids = torch.full((len(rows), L), self.state.pad, dtype=torch.long, device=scores.device)
            for r, x in enumerate(rows):
                n = min(L, len(x))
                ids[r, L - n :] = x[len(x) - n :]
            sel = to_device([n == L for n in lengths], scores.device)
            out = torch.where(sel[:, None], self.processors(ids, scores.clone()), out)  # no mask indexing: no read
        return out

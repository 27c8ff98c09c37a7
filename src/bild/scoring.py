"""The scorer: the large model reads every unchecked token in ONE forward pass (the "score" step)."""

from __future__ import annotations

import torch

from .adapters import ModelAdapter
from .batch import BatchState, CacheReader, RowProcessors
from .devices import to_device


class Scorer:
    """The large model over a `BatchState`: its prefill, then one pass per round over each row's unread
    committed tokens and its drafts."""

    def __init__(
        self,
        adapter: ModelAdapter,
        state: BatchState,
        processors: RowProcessors,
        stats,
        encoder_kwargs: dict | None = None,
    ):
        self.adapter, self.state, self.processors, self.stats = adapter, state, processors, stats
        self.reader = CacheReader(adapter, state)
        adapter.start(state.B, state.device, encoder_kwargs)

    def prefill(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt in one pass. Returns processed and raw logits [B, V] for the first new token."""
        logits, offset, _, n = self.reader.catch_up()
        raw = CacheReader.last(logits, offset, n)
        return self.processors(raw), raw

    def score(self, drafts: list[list[int]], dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's last committed token (and any it has not read) and its drafts (dt: [B, K], padded) in
        one forward pass. Returns processed and raw logits [B, K+1, V]: column j is the distribution for
        draft j, column len(drafts[r]) the one after row r's last draft."""
        st, K = self.state, dt.shape[1]
        logits, offset, m, n = self.reader.catch_up(drafts, dt)
        self.stats.verify_widths.append(logits.shape[1] + offset)
        self.stats.verify_lengths.extend(x for x in st.lead(n) if x)
        B, V = st.B, logits.shape[-1]
        idx = to_device(
            [[min(max(m[r] - 1 + j - offset, 0), logits.shape[1] - 1) for j in range(K + 1)] for r in range(B)],
            logits.device,
        )
        raw = logits.gather(1, idx[..., None].expand(B, K + 1, V))
        if not len(self.processors):
            return raw, raw
        processed = raw.clone()
        for j in range(K + 1):
            processed[:, j] = self.processors(raw[:, j], [d[:j] for d in drafts])
        return processed, raw

    def keep(self, read: list[int]) -> None:
        self.reader.keep(read)

    def select_rows(self, pick: list[int]) -> None:
        self.reader.select_rows(pick)

"""Per-call counters of the draft-then-verify loop, and the papers' speedup formula."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class GenerationStats:
    """What one `generate` call did. Token counts are summed over the rows of a batch; forward counts
    count batched calls once.

    new_tokens       tokens written to the output (all rows)
    small_forwards   small-model forward calls (prefill included)
    large_forwards   large-model forward calls (prefill included)
    fallbacks        draft steps where the small model's top probability fell below `fallback_threshold`
    rollbacks        verifications that rejected a drafted token (the large model's token replaced it)
    drafted          drafted tokens sent to the large model for verification
    accepted         drafted tokens kept after verification
    verify_lengths   tokens per row fed to the large model in each verify pass (prefill excluded)
    small_tokens_fed / large_tokens_fed   token positions each model read (prompt included, padding excluded)
    token_sources    per row, "small" or "large" for each new token: which model wrote it
    """

    new_tokens: int = 0
    small_forwards: int = 0
    large_forwards: int = 0
    fallbacks: int = 0
    rollbacks: int = 0
    drafted: int = 0
    accepted: int = 0
    verify_lengths: list[int] = field(default_factory=list)
    small_tokens_fed: int = 0
    large_tokens_fed: int = 0
    token_sources: list[list[str]] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        """Fraction of drafted tokens the large model kept."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_large_call(self) -> float:
        """New tokens per large-model forward (prefill included); 1.0 for plain decoding."""
        return self.new_tokens / self.large_forwards if self.large_forwards else 0.0

    @property
    def fallback_rate(self) -> float:
        """Fallbacks per new token."""
        return self.fallbacks / self.new_tokens if self.new_tokens else 0.0

    @property
    def rollback_rate(self) -> float:
        """Rollbacks per new token."""
        return self.rollbacks / self.new_tokens if self.new_tokens else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(acceptance_rate=self.acceptance_rate, tokens_per_large_call=self.tokens_per_large_call,
                 fallback_rate=self.fallback_rate, rollback_rate=self.rollback_rate)
        return d


def expected_speedup(alpha: float, gamma: int, c: float) -> float:
    """Expected walltime improvement of speculative decoding (Leviathan et al. 2023, Thm 3.8).

    (1 - alpha^(gamma+1)) / ((1 - alpha) (gamma c + 1)) with alpha the per-token acceptance rate,
    gamma the draft length and c the cost of a small-model step over a large-model step. It assumes
    a verify pass over gamma+1 tokens costs one large step, which holds on a GPU, not on a CPU.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if gamma < 0 or c < 0:
        raise ValueError(f"gamma and c must be >= 0, got gamma={gamma}, c={c}")
    tokens = gamma + 1 if alpha == 1.0 else (1 - alpha ** (gamma + 1)) / (1 - alpha)
    return tokens / (gamma * c + 1)
